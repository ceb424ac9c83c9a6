package cluster_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/farm"
)

// trunkNode is what GET /v1/services/{service}/limits/{key} shows of a
// node's part.
type trunkNode struct {
	Node struct {
		CAPS         *float64 `json:"caps"`
		Sessions     *int64   `json:"sessions"`
		SessionsOpen int64    `json:"sessions_open"`
	} `json:"node"`
}

// awaitTrunk waits until every node enforces parts of key's limits that
// sum to caps (within a hundredth) and returns them.
func awaitTrunk(t *testing.T, c *farm.Cluster, service, key string, caps float64) []float64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		parts, sum := make([]float64, 0, 3), 0.0
		for _, n := range c.Nodes() {
			var v trunkNode
			if n.GetJSON("/v1/services/"+service+"/limits/"+key, &v) == nil && v.Node.CAPS != nil {
				parts = append(parts, *v.Node.CAPS)
				sum += *v.Node.CAPS
			}
		}
		if len(parts) == len(c.Nodes()) && sum > 0.99*caps && sum <= caps*1.0001 {
			return parts
		}
		require.True(t, time.Now().Before(deadline), "key %s's parts %v (sum %.1f) never summed to %.0f", key, parts, sum, caps)
		time.Sleep(20 * time.Millisecond)
	}
}

// Two trunks of one licence over three nodes, each with its own CAPS
// limit: carrier-a offered twice its limit is held to it for the farm,
// carrier-b offered 95 % of its own (Poisson arrivals) loses at most
// 0.1 %, as a licence would; the licence itself does not bind.
func TestTrunkLimitsHoldForTheFarm(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and 10 s of load on two trunks")
	c := licensedFarm(t, nil, "voice", 100000, "--id", "voice-trunks")
	const limit = 300
	for i, key := range []string{"carrier-a", "carrier-b"} {
		out, code := c.Ctl(i+1, "limits", "set", "voice", key, "--caps", fmt.Sprint(limit))
		require.Zero(t, code, out)
	}
	t.Logf("parts of carrier-a %v, carrier-b %v", awaitTrunk(t, c, "voice", "carrier-a", limit), awaitTrunk(t, c, "voice", "carrier-b", limit))

	const d = 10 * time.Second
	var over, under openloop.Tally
	var wg sync.WaitGroup
	wg.Go(func() {
		over = openloop.Paced(c.RESPAddrs(), []float64{70, 20, 10}, 2*limit, d, "ADMIT voice TRUNK carrier-a")
	})
	wg.Go(func() {
		under = openloop.Load{Addrs: c.RESPAddrs(), Weights: []float64{10, 20, 70}, Rate: 0.95 * limit, Duration: d,
			Command: "ADMIT voice TRUNK carrier-b", Arrivals: openloop.Arrivals{Model: openloop.PoissonArrivals, Seed: 3}}.Run()
	})
	wg.Wait()
	t.Logf("carrier-a, %d/s offered 70/20/10 for %v: %v", 2*limit, d, over)
	t.Logf("carrier-b, %.0f/s Poisson offered 10/20/70 for %v: %v; %.3f %% refused (a write %v late at worst)",
		0.95*limit, d, under, 100*under.Total.RejectedFraction(), under.Total.MaxLate.Round(time.Millisecond))
	for _, r := range []openloop.Tally{over, under} {
		require.NoError(t, r.Total.Err)
		require.Zero(t, r.Total.Errors, r.Total.LastError)
	}
	assert.Equal(t, over.Total.Rejected, over.Total.Reasons["TRUNK_CAPS"], "only the key's limit refuses")
	want := limit * d.Seconds()
	burst := cluster.MaxBurst(limit, 3, 100*time.Millisecond)
	assert.GreaterOrEqual(t, float64(over.Total.Admitted), 0.99*want, "nothing refused below the key's limit")
	assert.LessOrEqual(t, float64(over.Total.Admitted), 1.01*want+burst, "nothing beyond 1.01 × the key's limit + the farm's burst (%.0f)", burst)
	assert.Equal(t, under.Total.Rejected, under.Total.Reasons["TRUNK_CAPS"])
	assert.LessOrEqual(t, under.Total.Rejected*1000, under.Total.Sent, "at most 0.1 %% refused at 95 %% of the key's limit")
}

// A key's sessions hold for the farm: calls through every node stop at
// the key's limit, and released anywhere they free it everywhere.
func TestTrunkSessionsHoldForTheFarm(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "voice", 100000, "--sessions", "1000", "--id", "voice-trunk-sessions")
	out, code := c.Ctl(3, "limits", "set", "voice", "pbx-1", "--sessions", "30")
	require.Zero(t, code, out)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var sum int64
		for _, n := range c.Nodes() {
			var v trunkNode
			if n.GetJSON("/v1/services/voice/limits/pbx-1", &v) == nil && v.Node.Sessions != nil {
				sum += *v.Node.Sessions
			}
		}
		if sum == 30 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the nodes' session parts sum to %d, not 30", sum)
		time.Sleep(20 * time.Millisecond)
	}
	nodes := c.Nodes()
	admitted, refused := 0, map[string]int{}
	for i := range 60 {
		// A call every 10 ms, through each node in turn: the reports of
		// what each holds keep up, as they do under a SIP platform's load.
		ok, reason, _, err := nodes[i%3].Decision("ADMIT", "voice", "CALL", fmt.Sprintf("call-%d", i), "TRUNK", "pbx-1")
		require.NoError(t, err)
		if ok {
			admitted++
		} else {
			refused[reason]++
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("60 calls through 3 nodes on a 30-session key: %d admitted, refused %v", admitted, refused)
	assert.LessOrEqual(t, admitted, 30, "never more sessions than the key's limit")
	assert.GreaterOrEqual(t, admitted, 27, "and nearly all of them")
	assert.Equal(t, 60-admitted, refused["TRUNK_SESSIONS"])
	for i := range 60 {
		_, err := nodes[(i+1)%3].Do("RELEASE", "voice", fmt.Sprintf("call-%d", i))
		require.NoError(t, err)
	}
	deadline = time.Now().Add(3 * time.Second)
	for {
		var open int64
		for _, n := range nodes {
			var v trunkNode
			require.NoError(t, n.GetJSON("/v1/services/voice/limits/pbx-1", &v))
			open += v.Node.SessionsOpen
		}
		if open == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "%d of the key's sessions still open after RELEASE through other nodes", open)
		time.Sleep(20 * time.Millisecond)
	}
	ok, reason, _, err := nodes[0].Decision("ADMIT", "voice", "CALL", "after", "TRUNK", "pbx-1")
	require.NoError(t, err)
	require.True(t, ok, reason)
}

// A key's token pool over three nodes: the allocation set through one
// node reaches every member, and the farm charges no more than the pool
// (1 token an attempt) under Poisson arrivals from all three, and nearly
// all of it; the licence's own pool is not charged for the key's.
func TestTrunkTokenPoolHoldsForTheFarm(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and 4 s of load on a trunk with a token pool")
	c := licensedFarm(t, nil, "pre", 100000, "--tokens", "100000", "--tokens-per-attempt", "1", "--id", "pre-trunk-pool")
	const pool = 2000
	out, code := c.Ctl(2, "limits", "set", "pre", "carrier-a", "--caps", "10000", "--tokens", fmt.Sprint(pool))
	require.Zero(t, code, out)
	for _, n := range c.Nodes() {
		require.Eventually(t, func() bool {
			var v struct {
				Pool *struct{ Tokens int64 } `json:"pool"`
			}
			return n.GetJSON("/v1/services/pre/limits/carrier-a", &v) == nil && v.Pool != nil && v.Pool.Tokens == pool
		}, 5*time.Second, 20*time.Millisecond, "%s has the pool", n.Name)
	}
	time.Sleep(300 * time.Millisecond) // the first budgets of the pool
	run := openloop.Load{Addrs: c.RESPAddrs(), Weights: []float64{60, 30, 10}, Rate: 1000, Duration: 4 * time.Second,
		Command: "ADMIT pre TRUNK carrier-a", Arrivals: openloop.Arrivals{Model: openloop.PoissonArrivals, Seed: 11}}.Run()
	t.Logf("a %d-token pool of carrier-a, 1 token an attempt, 1000/s Poisson offered 60/30/10 for 4 s: %v", pool, run)
	require.NoError(t, run.Total.Err)
	require.Zero(t, run.Total.Errors, run.Total.LastError)
	assert.Equal(t, run.Total.Rejected, run.Total.Reasons["TRUNK_TOKENS"], "only the key's pool refuses")
	assert.LessOrEqual(t, run.Total.Admitted, pool, "the farm never charges more than the key's pool")
	assert.GreaterOrEqual(t, run.Total.Admitted, pool*97/100, "and charges nearly all of it")
	used, _ := total(t, c, "pre", "tokens_used", int64(run.Total.Admitted), time.Second)
	assert.Equal(t, int64(run.Total.Admitted), used, "every admitted attempt charged once, to the key's pool")
}
