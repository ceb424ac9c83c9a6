package clustertest_test

import (
	"math/rand/v2"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/clustertest"
)

// requireDecisions checks that every command got a decision and every
// rejection was CAPS.
func requireDecisions(t *testing.T, c clustertest.Count, sent int) {
	t.Helper()
	require.NoError(t, c.Err)
	require.Equal(t, sent, c.Sent)
	require.Equal(t, sent, c.Admitted+c.Rejected, "every reply is a decision; last other: %q", c.LastError)
	require.Equal(t, c.Rejected, c.Reasons["CAPS"], "only CAPS rejects: %v", c.Reasons)
}

// requireGCRA checks a run offered above rate against a full bucket of
// rate per second and depth burst.
func requireGCRA(t *testing.T, c clustertest.Count, rate, burst float64) {
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
	n := clustertest.NewDev(t)
	tally := clustertest.Paced([]string{n.RESPAddr}, nil, 2000, 2*time.Second, "ADMIT demo")
	t.Log(tally)
	requireDecisions(t, tally.Total, 4000)
	requireGCRA(t, tally.Total, 1000, 100)
	require.Equal(t, tally.Total, tally.Nodes[0])
}

// Weights split the rate; the per-connection counts add up to the total,
// whose span covers all of them.
func TestPacedSplitsByWeight(t *testing.T) {
	n := clustertest.NewDev(t)
	tally := clustertest.Paced([]string{n.RESPAddr, n.RESPAddr, n.RESPAddr}, []float64{3, 1, 0}, 2000, time.Second, "ADMIT demo")
	t.Log(tally)
	requireDecisions(t, tally.Total, 2000)
	require.Equal(t, 1500, tally.Nodes[0].Sent)
	require.Equal(t, 500, tally.Nodes[1].Sent)
	require.Zero(t, tally.Nodes[2].Sent, "a zero weight sends nothing")
	require.Equal(t, tally.Total.Admitted, tally.Nodes[0].Admitted+tally.Nodes[1].Admitted)
	requireGCRA(t, tally.Total, 1000, 100)

	bad := clustertest.Paced([]string{n.RESPAddr}, []float64{1, 1}, 100, time.Second, "ADMIT demo")
	require.ErrorContains(t, bad.Total.Err, "2 weights for 1 addresses")
	require.Zero(t, bad.Total.Sent)
}

// A Load sends each connection what its arrivals plan, and the tally
// says which they were.
func TestLoadSendsItsPlan(t *testing.T) {
	n := clustertest.NewDev(t)
	addrs := []string{n.RESPAddr, n.RESPAddr}
	for _, a := range []clustertest.Arrivals{poisson, stalling} {
		tally := clustertest.Load{Addrs: addrs, Weights: []float64{3, 1}, Rate: 400, Duration: 2 * time.Second,
			Command: "ADMIT demo", Arrivals: a}.Run()
		t.Logf("%v: %v (longest gap between writes %v, a write %v late at worst)", a, tally, tally.Total.MaxGap, tally.Total.MaxLate)
		for i, rate := range []float64{300, 100} {
			requireDecisions(t, tally.Nodes[i], sum(a.Counts(i, rate, 2*time.Second)))
		}
		require.Equal(t, a, tally.Arrivals)
		require.Contains(t, tally.String(), a.String())
	}
}

// One real node: a licence through capslicense and capsctl, kill -9 and a
// restart on the same ports and data dir, SIGTERM exits 0.
func TestOneNodeLifecycle(t *testing.T) {
	c := clustertest.New(t, 1)
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "500", "--id", "life-1"))
	c.WaitCAPS("voice", 500, time.Second)
	out, code := c.Ctl(1, "--json", "status", "voice")
	require.Zero(t, code, out)
	require.Contains(t, out, `"caps": 500`)

	pid := n.Pid()
	n.Kill()
	require.False(t, n.Running())
	require.Error(t, n.Ping())
	require.NoError(t, n.Restart())
	require.NotEqual(t, pid, n.Pid())
	require.Equal(t, 500.0, c.Service(1, "voice").Limits.CAPS, "the licence is back from the data dir")
	require.Error(t, n.Restart(), "a running node is not started twice")

	require.NoError(t, n.Stop())
	require.Contains(t, n.Log(), "=== clustertest: start 2 of n1")
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
		var c clustertest.Count
		level, last := burst, time.Time{}
		at := time.Unix(1e9, 0)
		for range 200 {
			b := clustertest.Batch{Send: at, N: 20}
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

// A tied process outlives the goroutine, and the thread, that asked for
// it: only this process's death kills it. Started with Pdeathsig from a
// goroutine locked to its thread, it would die when that goroutine ends
// (unless the thread is the main one, which the runtime keeps: hence
// three, from three such goroutines).
func TestStartTiedOutlivesTheCallersThread(t *testing.T) {
	for i := range 3 {
		cmd := exec.Command("sleep", "30")
		started := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			started <- clustertest.StartTied(cmd)
		}()
		require.NoError(t, <-started)
		var waitErr error
		exited := make(chan struct{})
		go func() { waitErr = cmd.Wait(); close(exited) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
		select {
		case <-exited:
			t.Fatalf("tied process %d ended with the caller's thread: %v", i, waitErr)
		case <-time.After(300 * time.Millisecond):
		}
		require.NoError(t, cmd.Process.Signal(syscall.Signal(0)), "still running")
		require.Equal(t, syscall.SIGKILL, cmd.SysProcAttr.Pdeathsig, "dies with this process")
	}
}
