package cluster_test

import (
	"fmt"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster"
)

// Two nodes share a 1000-CAPS licence. Each plans every exchange from the
// reports it has heard and sends its own; the one offered 600 attempts a
// second ends up with its demand and most of the spare: 600 + 200 × (0.1/2
// + 0.9 × 600/800).
func ExamplePlanner() {
	licence := map[string]admission.Limits{"voice": {Licensed: true, CAPS: 1000,
		Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}}
	names := []string{"n1", "n2"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	nodes := map[string]*cluster.Planner{}
	for _, n := range names {
		nodes[n] = cluster.NewPlanner(n, cluster.PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)
	}
	offered := map[string]float64{"n1": 600, "n2": 200}
	var parts map[string]cluster.Share
	for k := 1; k <= 20; k++ {
		now := t0.Add(time.Duration(k) * cluster.ExchangeInterval)
		reports := map[string]cluster.Report{}
		parts = map[string]cluster.Share{}
		for _, n := range names {
			usage := cluster.Usage{{Name: "voice", Offered: uint64(offered[n] * 0.1 * float64(k))}}
			p := nodes[n].Plan(now, names, licence, usage)
			reports[n], parts[n] = p.Report, p.Parts["voice"]
		}
		for from, r := range reports { // every report arrives
			for _, to := range names {
				nodes[to].Heard(now, from, r)
			}
		}
	}
	for _, n := range names {
		fmt.Printf("%s: %.0f CAPS\n", n, parts[n].CAPS*1000)
	}
	// Output:
	// n1: 745 CAPS
	// n2: 255 CAPS
}
