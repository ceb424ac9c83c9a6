package cluster_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/farm"
)

// End-to-end tests of the SPEC's cluster guarantees against real capsgate
// processes on loopback ports (clustertest). They run one after another:
// their figures are timings, which sharing the CPU would blur.

// needsProcesses skips under -short, saying what the test would have run.
func needsProcesses(t *testing.T, what string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs real processes: " + what)
	}
}

// threeNodes starts 3 nodes, waits for one membership and loads a
// 1000-CAPS voice licence on n1; it returns when every node enforces it
// and how long after the start of `capsctl license add` each of n2 and n3
// first showed it.
func threeNodes(t *testing.T) (*farm.Cluster, []time.Duration) {
	t.Helper()
	c := farm.New(t, 3)
	c.WaitMembers(3, 5*time.Second)
	lic := c.Issue("--service", "voice", "--caps", "1000", "--id", "voice-1000")
	t0 := time.Now()
	c.LoadLicense(1, lic)
	reached := reachCAPS(c.Nodes()[1:], "voice", 1000, t0, 2*time.Second)
	require.NotContains(t, reached, time.Duration(-1), "the licence reached n2, n3 after %v (-1: not within 2 s)", reached)
	c.WaitCAPS("voice", 1000, time.Second)
	require.NoError(t, c.AwaitShares("voice", 1000, 5*time.Second))
	return c, reached
}

// reachCAPS polls each node's GET /v1/services/{service} every 2 ms until
// its licensed CAPS reach caps, and returns how long after t0 each did
// (-1: not before t0 + timeout).
func reachCAPS(nodes []*farm.Node, service string, caps float64, t0 time.Time, timeout time.Duration) []time.Duration {
	took := make([]time.Duration, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			took[i] = -1
			for time.Since(t0) < timeout {
				if s, err := n.Service(service); err == nil && s.Limits.CAPS >= caps {
					took[i] = time.Since(t0)
					return
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	return took
}

// shares says each member's state and share of service as node i sees it.
func shares(c *farm.Cluster, i int, service string) string {
	ms, err := c.Node(i).Members()
	if err != nil {
		return err.Error()
	}
	s := fmt.Sprintf("as %s sees it:", c.Node(i).Name)
	for _, m := range ms {
		s += fmt.Sprintf(" %s %s %.1f (demand %.0f);", m.Name, m.State, m.Shares[service], m.Demand[service])
	}
	return s
}

func TestThreeNodesHoldLicenceUnderSkew(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes under 20 s of load")
	c, reached := threeNodes(t)
	t.Logf("1000-CAPS licence loaded on n1 reached n2 after %v, n3 after %v (from the start of capsctl)", reached[0], reached[1])
	skew := []float64{70, 20, 10}
	requireNoneRefusedUnderLicence(t, c, skew)
	requireLicenceHeld(t, c, skew, 10*time.Second)
}

// The offered loads of the licence tests, against a 1000-CAPS licence.
const (
	overRate  = 2000 // twice the licence
	underRate = 950  // 95 % of it
)

// requireLicenceHeld offers overRate ADMITs a second to c's nodes split by
// skew for d and checks that the farm admits its 1000-CAPS licence: at
// least 0.99 × 1000 × d, at most 1.01 × 1000 × d + the farm's burst
// (cluster.MaxBurst). It runs after requireNoneRefusedUnderLicence: a farm
// (or a single node) whose buckets an overload emptied refuses more below
// the licence until they have filled again, which is not what that check
// measures.
//
// The arrivals are paced. At twice the licence every node's bucket is
// empty nearly all the time, so what is admitted is set by the shares and
// the buckets' depth, not by when within a second the attempts come; paced
// arrivals keep the offered count exact (2000 × d) and the figure
// comparable with earlier runs. The arrival shape matters below the
// licence, where requireNoneRefusedUnderLicence offers Poisson arrivals.
func requireLicenceHeld(t *testing.T, c *farm.Cluster, skew []float64, d time.Duration) {
	t.Helper()
	over := openloop.Paced(c.RESPAddrs(), skew, overRate, d, "ADMIT voice")
	t.Logf("%d nodes, %d/s offered %v for %v: %v", len(skew), overRate, skew, d, over)
	t.Log(shares(c, 1, "voice"))
	require.NoError(t, over.Total.Err)
	require.Equal(t, int(overRate*d.Seconds()), over.Total.Sent)
	require.Zero(t, over.Total.Errors, over.Total.LastError)
	assert.Equal(t, over.Total.Rejected, over.Total.Reasons["CAPS"], "only CAPS rejects")
	licence := 1000 * d.Seconds()
	assert.GreaterOrEqual(t, float64(over.Total.Admitted), 0.99*licence, "nothing rejected below the licence")
	burst := cluster.MaxBurst(1000, len(skew), 100*time.Millisecond)
	assert.LessOrEqual(t, float64(over.Total.Admitted), 1.01*licence+burst, "nothing admitted beyond 1.01 × the licence + burst (%.0f)", burst)
}

// requireNoneRefusedUnderLicence offers underRate ADMITs a second, 95 % of
// c's 1000-CAPS licence, to its nodes split by skew for 10 s, and checks
// that at most 0.1 % are refused. The arrivals are Poisson, as call
// attempts from many subscribers are, from a fixed seed so that a run can
// be repeated; the measurement is made once, and a bad one fails the test
// whatever the cause (a stall of the load generator included: the log
// says how late its writes came).
func requireNoneRefusedUnderLicence(t *testing.T, c *farm.Cluster, skew []float64) {
	t.Helper()
	under := openloop.Load{Addrs: c.RESPAddrs(), Weights: skew, Rate: underRate, Duration: 10 * time.Second,
		Command: "ADMIT voice", Arrivals: openloop.Arrivals{Model: openloop.PoissonArrivals, Seed: 1}}.Run()
	t.Logf("%d nodes, %d/s offered %v for 10 s: %v; %.3f %% refused (a write %v late at worst)",
		len(skew), underRate, skew, under, 100*under.Total.RejectedFraction(), under.Total.MaxLate.Round(time.Millisecond))
	t.Log(shares(c, 1, "voice"))
	require.NoError(t, under.Total.Err)
	require.Zero(t, under.Total.Errors, under.Total.LastError)
	assert.LessOrEqual(t, under.Total.Rejected*1000, under.Total.Sent, "at most 0.1 % refused at 95 % of the licence")
}

func TestLoadShift(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes under 6 s of paced load")
	c, _ := threeNodes(t)
	addrs := c.RESPAddrs()

	on1 := openloop.Paced(addrs, []float64{1, 0, 0}, 900, 3*time.Second, "ADMIT voice")
	t.Logf("900/s on n1 for 3 s: %v", on1)
	t.Log(shares(c, 1, "voice"))
	shifted := openloop.Paced(addrs, []float64{0, 0, 1}, 900, time.Second, "ADMIT voice")
	lastRefusal := time.Duration(-1)
	for _, b := range shifted.Total.Batches {
		if b.Admitted < b.N {
			lastRefusal = b.Send.Sub(shifted.Total.FirstSend)
		}
	}
	t.Logf("moved to n3, first second: %v; its last refusal came in the batch sent %v after the move (-1: none)",
		shifted, lastRefusal)
	settled := openloop.Paced(addrs, []float64{0, 0, 1}, 900, 2*time.Second, "ADMIT voice")
	t.Logf("on n3, the next 2 s: %v (%.3f %% rejected)", settled, 100*settled.Total.RejectedFraction())
	t.Log(shares(c, 3, "voice"))
	for _, r := range []openloop.Tally{on1, shifted, settled} {
		require.NoError(t, r.Total.Err)
	}
	require.Equal(t, 1800, settled.Total.Sent)
	assert.LessOrEqual(t, settled.Total.Rejected*1000, settled.Total.Sent,
		"at most 0.1 % rejected on n3 from 1 s after the load moved there")
}

func TestKillDetectedAndShareMoves(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, one killed, restarted, and 5 s of paced load")
	c, _ := threeNodes(t)
	survivors := c.Nodes()[:2]

	c.Node(3).Kill()
	killed := time.Now()
	detected := make([]time.Duration, len(survivors))
	var wg sync.WaitGroup
	for i, n := range survivors {
		wg.Go(func() {
			detected[i] = -1
			for time.Since(killed) < 10*time.Second {
				ms, err := n.Members()
				if err == nil && !slices.ContainsFunc(ms, func(m cluster.Member) bool { return m.Name == "n3" && m.State == "alive" }) {
					detected[i] = time.Since(killed)
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	t.Logf("n3 killed with SIGKILL; not alive for n1 after %v, for n2 after %v (-1: not within 10 s)", detected[0], detected[1])
	for i, d := range detected {
		require.NotEqual(t, time.Duration(-1), d, "%s never saw n3 go", survivors[i].Name)
		assert.LessOrEqual(t, d, 2*time.Second, "%s detects a dead node within 2 s", survivors[i].Name)
	}

	// The dead node keeps its part for cluster.reclaim_after (3 s), then
	// the survivors' shares add up to the licence again.
	var sum float64
	moved := time.Since(killed)
	for time.Since(killed) < moved+5*time.Second {
		sum = 0
		for _, n := range survivors {
			if s, err := n.Service("voice"); err == nil {
				sum += s.Limits.CAPSShare
			}
		}
		if sum > 999 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("survivors' shares add up to %.1f CAPS %v after the kill; %s", sum, time.Since(killed), shares(c, 1, "voice"))
	require.Greater(t, sum, 999.0, "the dead node's share goes to the survivors")

	depths := []int64{quota(t, survivors[0], "voice", "caps_burst"), quota(t, survivors[1], "voice", "caps_burst")}
	load := openloop.Paced(c.RESPAddrs()[:2], []float64{50, 50}, 2000, 5*time.Second, "ADMIT voice")
	t.Logf("2000/s on n1, n2 50/50 for 5 s: %v", load)
	require.NoError(t, load.Total.Err)
	require.Equal(t, 10000, load.Total.Sent)
	assert.GreaterOrEqual(t, load.Total.Admitted, 4950, "the survivors admit the whole licence")
	// And no more than the licence over the span of their decisions, as
	// the load measured it, and what their two buckets hold full: each its
	// depth and its reserve (80 each: 50 and 30), and one for the GCRA's
	// rounding, at most cluster.MaxBurst in all. (A bound of 5,050 + 100
	// left the reserves out, and a run admitted 5,151: over a 4.99 s span
	// the buckets allow 4,990 + 160 + 2.)
	_, span := load.Total.Span()
	most := 1000*span.Seconds() + cluster.MaxBurst(1000, 2, 100*time.Millisecond)
	t.Logf("the survivors' buckets held %v full; decisions over %v: at most %.1f admitted", depths, span, most)
	assert.LessOrEqual(t, float64(depths[0]+depths[1]+2), cluster.MaxBurst(1000, 2, 100*time.Millisecond), "their buckets within the farm's burst")
	assert.LessOrEqual(t, float64(load.Total.Admitted), most, "and no more")

	restarted := time.Now()
	require.NoError(t, c.Node(3).Restart())
	c.WaitMembers(3, 10*time.Second)
	rejoined := time.Since(restarted)
	c.WaitCAPS("voice", 1000, 5*time.Second)
	t.Logf("n3 restarted: every node sees 3 alive after %v; n3 enforces 1000 CAPS after %v", rejoined, time.Since(restarted))
}

func TestLicenceSpreadLatency(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and 20 licence loads")
	c := farm.New(t, 3)
	c.WaitMembers(3, 5*time.Second)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	const trials = 20
	var took []time.Duration
	for k := 1; k <= trials; k++ {
		lic := c.Issue("--service", "voice", "--caps", "100", "--id", fmt.Sprintf("spread-%02d", k))
		at := 1 + rng.IntN(3)
		var others []*farm.Node
		for _, n := range c.Nodes() {
			if n != c.Node(at) {
				others = append(others, n)
			}
		}
		t0 := time.Now()
		require.NoError(t, c.Node(at).PostLicense(lic))
		reached := reachCAPS(others, "voice", float64(100*k), t0, 2*time.Second)
		for i, d := range reached {
			require.NotEqual(t, time.Duration(-1), d, "licence %d loaded on n%d did not reach %s within 2 s (seed %d)", k, at, others[i].Name, seed)
		}
		took = append(took, reached...)
	}
	slices.Sort(took)
	p50, p99 := percentile(took, 0.50), percentile(took, 0.99)
	target := "met"
	if p99 > 100*time.Millisecond {
		target = "missed"
	}
	t.Logf("licence spread over %d loads (%d node-samples, seed %d, from POST to GET showing it, polled every 2 ms): min %v, p50 %v, p99 %v, max %v; 100 ms p99 target %s",
		trials, len(took), seed, took[0], p50, p99, took[len(took)-1], target)
	require.LessOrEqual(t, p99, time.Second, "a loaded licence limits every node within 1 s")
}

// percentile is the nearest-rank q-quantile of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// voiceFarm starts n nodes, waits for one membership and loads a
// 1000-CAPS voice licence on node `on`; it returns once every node
// enforces it.
func voiceFarm(t *testing.T, n, on int) *farm.Cluster {
	t.Helper()
	c := farm.New(t, n)
	c.WaitMembers(n, time.Duration(2*n)*time.Second)
	c.LoadLicense(on, c.Issue("--service", "voice", "--caps", "1000", "--id", fmt.Sprintf("voice-%d", n)))
	c.WaitCAPS("voice", 1000, 5*time.Second)
	require.NoError(t, c.AwaitShares("voice", 1000, 5*time.Second))
	return c
}

func TestFiveNodesHoldLicence(t *testing.T) {
	needsProcesses(t, "5 capsgate nodes under 15 s of load")
	c := voiceFarm(t, 5, 2)
	skew := []float64{50, 20, 15, 10, 5}
	requireNoneRefusedUnderLicence(t, c, skew)
	requireLicenceHeld(t, c, skew, 5*time.Second)
}

func TestTenNodesHoldLicence(t *testing.T) {
	needsProcesses(t, "10 capsgate nodes under 20 s of load")
	c := voiceFarm(t, 10, 1)
	skew := []float64{40, 20, 10, 10, 5, 5, 4, 3, 2, 1}
	requireNoneRefusedUnderLicence(t, c, skew)
	requireLicenceHeld(t, c, skew, 10*time.Second)
}
