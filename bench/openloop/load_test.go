package openloop_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster/farm"
)

// requireDecisions checks that every command got a decision and every
// rejection was CAPS.
func requireDecisions(t *testing.T, c openloop.Count, sent int) {
	t.Helper()
	require.NoError(t, c.Err)
	require.Equal(t, sent, c.Sent)
	require.Equal(t, sent, c.Admitted+c.Rejected, "every reply is a decision; last other: %q", c.LastError)
	require.Equal(t, c.Rejected, c.Reasons["CAPS"], "only CAPS rejects: %v", c.Reasons)
}

// requireGCRA checks a run offered above rate against a full bucket of
// rate per second and depth burst.
func requireGCRA(t *testing.T, c openloop.Count, rate, burst float64) {
	t.Helper()
	lo, hi := c.GCRABounds(rate, burst)
	slo, shi := c.Span()
	t.Logf("admitted %d of %d over a span of %v..%v (longest gap between batches %v): GCRA allows %.0f..%.0f",
		c.Admitted, c.Sent, slo, shi, c.MaxGap, lo, hi)
	require.GreaterOrEqual(t, float64(c.Admitted), lo)
	require.LessOrEqual(t, float64(c.Admitted), hi)
}

// A --dev node (demo: 1000 CAPS, burst 100) offered 2000/s for 2 s admits
// what its bucket allows: Paced sends on time and reads every reply.
func TestPacedHoldsDevNodeToGCRABounds(t *testing.T) {
	n := farm.NewDev(t)
	tally := openloop.Paced([]string{n.RESPAddr}, nil, 2000, 2*time.Second, "ADMIT demo")
	t.Log(tally)
	requireDecisions(t, tally.Total, 4000)
	requireGCRA(t, tally.Total, 1000, 100)
	require.Equal(t, tally.Total, tally.Nodes[0])
}

// Weights split the rate; the per-connection counts add up to the total,
// whose span covers all of them.
func TestPacedSplitsByWeight(t *testing.T) {
	n := farm.NewDev(t)
	tally := openloop.Paced([]string{n.RESPAddr, n.RESPAddr, n.RESPAddr}, []float64{3, 1, 0}, 2000, time.Second, "ADMIT demo")
	t.Log(tally)
	requireDecisions(t, tally.Total, 2000)
	require.Equal(t, 1500, tally.Nodes[0].Sent)
	require.Equal(t, 500, tally.Nodes[1].Sent)
	require.Zero(t, tally.Nodes[2].Sent, "a zero weight sends nothing")
	require.Equal(t, tally.Total.Admitted, tally.Nodes[0].Admitted+tally.Nodes[1].Admitted)
	requireGCRA(t, tally.Total, 1000, 100)

	bad := openloop.Paced([]string{n.RESPAddr}, []float64{1, 1}, 100, time.Second, "ADMIT demo")
	require.ErrorContains(t, bad.Total.Err, "2 weights for 1 addresses")
	require.Zero(t, bad.Total.Sent)
}

// A Load sends each connection what its arrivals plan, and the tally
// says which they were.
func TestLoadSendsItsPlan(t *testing.T) {
	n := farm.NewDev(t)
	addrs := []string{n.RESPAddr, n.RESPAddr}
	for _, a := range []openloop.Arrivals{poisson, stalling} {
		tally := openloop.Load{Addrs: addrs, Weights: []float64{3, 1}, Rate: 400, Duration: 2 * time.Second,
			Command: "ADMIT demo", Arrivals: a}.Run()
		t.Logf("%v: %v (longest gap between writes %v, a write %v late at worst)", a, tally, tally.Total.MaxGap, tally.Total.MaxLate)
		for i, rate := range []float64{300, 100} {
			requireDecisions(t, tally.Nodes[i], sum(a.Counts(i, rate, 2*time.Second)))
		}
		require.Equal(t, a, tally.Arrivals)
		require.Contains(t, tally.String(), a.String())
	}
}

// GCRABounds holds for an exact token bucket fed in batches every 10 ms,
// with random reply delays and, now and then, a stall of up to half a
// second on either side; without stalls it is within 3 of the count.
func TestGCRABoundsHoldUnderStalls(t *testing.T) {
	const rate, burst = 1000.0, 100.0
	rng := rand.New(rand.NewPCG(1, 2))
	jitter := func(d time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(d))) }
	for trial := range 300 {
		stalls := trial%3 != 0
		var c openloop.Count
		level, last := burst, time.Time{}
		at := time.Unix(1e9, 0)
		for range 200 {
			b := openloop.Batch{Send: at, N: 20}
			decision := at.Add(jitter(300 * time.Microsecond))
			for range b.N {
				if !last.IsZero() {
					level = min(burst, level+rate*decision.Sub(last).Seconds())
				}
				last = decision
				if level >= 1 {
					level--
					b.Admitted++
				}
				decision = decision.Add(time.Microsecond)
			}
			b.Reply = last.Add(jitter(300 * time.Microsecond))
			c.Batches = append(c.Batches, b)
			c.Sent += b.N
			c.Admitted += b.Admitted
			at = b.Send.Add(10 * time.Millisecond)
			if b.Reply.After(at) {
				at = b.Reply
			}
			if stalls && rng.IntN(20) == 0 {
				at = at.Add(jitter(500 * time.Millisecond))
			}
		}
		first, final := c.Batches[0], c.Batches[len(c.Batches)-1]
		c.FirstSend, c.FirstReply, c.LastSend, c.LastReply = first.Send, first.Reply, final.Send, final.Reply
		lo, hi := c.GCRABounds(rate, burst)
		require.LessOrEqual(t, lo, float64(c.Admitted), "trial %d", trial)
		require.GreaterOrEqual(t, hi, float64(c.Admitted), "trial %d", trial)
		if !stalls {
			require.Greater(t, lo, float64(c.Admitted)-3, "trial %d: a run without stalls gets the tight bound", trial)
		}
	}
}
