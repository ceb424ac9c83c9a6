package cluster_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
)

// The key the CL.THROTTLE farm tests hammer: CL.THROTTLE rl:k 9 100 10,
// a bucket of limit max_burst+1 = 10 refilled at 100 per 10 s, an
// emission interval T of 100 ms.
const (
	throttleLimit    = 10
	throttleEmission = 100 * time.Millisecond
)

var throttleArgs = []string{"CL.THROTTLE", "rl:k", "9", "100", "10"}

// throttleBucket is the most one redis-cell bucket admits of a key over a
// run of length elapsed: max_burst+1 + floor(elapsed/T). A bucket's
// theoretical arrival time grows by T at each admission from at least the
// instant d0 of its first decision, and an admission at d needs it within
// τ = T×(max_burst+1) of d, so k admissions by d1 need d0 + k×T ≤ d1 + τ.
// A node decides at the instant it reads the command, on the monotonic
// clock every process of the machine shares, so d0 and d1 lie within the
// run's start (before the first command was sent) and end (after the last
// reply came): d1 - d0 ≤ elapsed.
func throttleBucket(elapsed time.Duration) int {
	return throttleLimit + int(elapsed/throttleEmission)
}

// TestThrottleFarmAdmitsOneBucket: one key hammered through the three
// nodes at once, pipelined, is admitted as one redis-cell bucket would
// admit it: every node sends it to its owner, whose bucket is the farm's.
// The design lets a node decide on a bucket of its own only when the
// owner did not answer in time, was marked down, or too many commands
// were in flight (counted as unanswered, owner_down, busy); each node that
// did may add one bucket, so the bound is one bucket per node that
// decided, and exactly one bucket when none of those happened.
func TestThrottleFarmAdmitsOneBucket(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c, owner := throttleFarm(t)
	t.Logf("rl:k is owned by %s", owner.Name)
	run := requireThrottleBound(t, c.Nodes(), 3*time.Second)
	require.GreaterOrEqual(t, run.admitted, throttleLimit, "a new key's full bucket is admitted")
}

// TestThrottleOwnerKilled: with the key's owner killed (SIGKILL), every
// CL.THROTTLE through the two others is still answered with a valid
// reply: while they take the owner for down each decides on a bucket of
// its own (at most one bucket per node that decides), and once both see
// it gone the key has one owner among them again, whose bucket is the
// farm's.
func TestThrottleOwnerKilled(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, the key's owner killed")
	c, owner := throttleFarm(t)
	var rest []*farm.Node
	for _, x := range c.Nodes() {
		if x != owner {
			rest = append(rest, x)
		}
	}
	owner.Kill()
	// From the kill on, before and while the survivors notice it: the key
	// is new to them (the peeks took nothing).
	run := requireThrottleBound(t, rest, 2*time.Second)
	require.GreaterOrEqual(t, run.admitted, throttleLimit, "a full bucket is admitted")
	c.WaitMembers(2, 15*time.Second)
	next := throttleOwner(t, rest)
	t.Logf("rl:k owned by %s, then by %s once it was killed", owner.Name, next.Name)
	requireThrottleBound(t, rest, 2*time.Second)
}

// throttleFarm starts 3 nodes taking CL.THROTTLE keys under rl: and
// returns them with rl:k's owner.
func throttleFarm(t *testing.T) (*farm.Cluster, *farm.Node) {
	t.Helper()
	c := farm.New(t, 3, farm.WithArgs("--throttle-allow", "rl:"))
	c.WaitMembers(3, 10*time.Second)
	return c, throttleOwner(t, c.Nodes())
}

// throttleRun is what a hammering of rl:k got.
type throttleRun struct {
	sent, admitted int
	elapsed        time.Duration // from before the first command to after the last reply
}

// throttleReplyWait bounds one pipeline's replies: a node that is not the
// key's owner answers its commands one at a time, each within the
// owner's answer or RouteTimeout (250 ms), so 8 take at most 2 s; the
// rest is room for a loaded machine.
const throttleReplyWait = 10 * time.Second

// hammerThrottle sends CL.THROTTLE rl:k 9 100 10 through every node of
// nodes for d: two connections a node, each a pipeline of 8 commands
// every 20 ms (at most 400 a second a connection), and checks every
// reply's fields.
func hammerThrottle(t *testing.T, nodes []*farm.Node, d time.Duration) throttleRun {
	t.Helper()
	const conns, depth, every = 2, 8, 20 * time.Millisecond
	batch := bytes.Repeat(client.AppendCommand(nil, throttleArgs...), depth)
	var cs []net.Conn
	for _, x := range nodes {
		for range conns {
			nc, err := net.Dial("tcp", x.RESPAddr)
			require.NoError(t, err)
			t.Cleanup(func() { nc.Close() })
			cs = append(cs, nc)
		}
	}
	var mu sync.Mutex // guards the following fields
	var run throttleRun
	var errs []error
	var wg sync.WaitGroup
	start := time.Now()
	for _, nc := range cs {
		wg.Go(func() {
			r := client.NewReplyReader(nc)
			tick := time.NewTicker(every)
			defer tick.Stop()
			sent, admitted := 0, 0
			var err error
			for ; err == nil && time.Since(start) < d; <-tick.C {
				_ = nc.SetDeadline(time.Now().Add(throttleReplyWait))
				if _, err = nc.Write(batch); err != nil {
					break
				}
				sent += depth
				for range depth {
					var rep *client.Reply
					if rep, err = r.Read(); err != nil {
						break
					}
					var ok bool
					if ok, err = throttleReply(rep); err != nil {
						break
					}
					if ok {
						admitted++
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			run.sent += sent
			run.admitted += admitted
			if err != nil {
				errs = append(errs, fmt.Errorf("through %s: %w", nc.RemoteAddr(), err))
			}
		})
	}
	wg.Wait()
	run.elapsed = time.Since(start)
	require.NoError(t, errors.Join(errs...), "every CL.THROTTLE answered with redis-cell's reply")
	return run
}

// throttleReply checks a reply to CL.THROTTLE rl:k 9 100 10 and returns
// whether it admitted. Its fields follow from the bucket (τ = 1 s, T =
// 100 ms): limit 10; remaining 0 to 9 after an admission (it took a
// place), 0 when limited (less than T of room); retry_after -1 when
// admitted, else at most T rounded up to a second; reset_after at most
// τ, 1 s.
func throttleReply(r *client.Reply) (bool, error) {
	if r.Kind != client.Array || len(r.Elems) != 5 {
		return false, fmt.Errorf("a reply of kind %s (%q), not 5 integers", r.Kind, r.Str)
	}
	var v [5]int64
	for i := range v {
		if r.Elems[i].Kind != client.Integer {
			return false, fmt.Errorf("a %s among the integers", r.Elems[i].Kind)
		}
		v[i] = r.Elems[i].Int
	}
	limited, limit, remaining, retry, reset := v[0], v[1], v[2], v[3], v[4]
	ok := limit == throttleLimit && reset >= 0 && reset <= 1
	switch limited {
	case 0:
		ok = ok && remaining >= 0 && remaining < throttleLimit && retry == -1
	case 1:
		ok = ok && remaining == 0 && retry >= 0 && retry <= 1
	default:
		ok = false
	}
	if !ok {
		return false, fmt.Errorf("reply %v is not one of a bucket of limit %d, τ 1 s", v, throttleLimit)
	}
	return limited == 0, nil
}

// throttleStats are a node's CL.THROTTLE counters: what it decided on its
// own table (for itself or for a member, peeks included), and why it
// decided a key it does not own.
type throttleStats struct {
	decided, answered, fellBack float64
}

func throttleStatsOf(t *testing.T, x *farm.Node) throttleStats {
	t.Helper()
	body, err := x.GetRaw("/metrics")
	require.NoError(t, err)
	m := func(name string) float64 { return metric(t, body, name) }
	return throttleStats{
		decided: m(`capsgate_throttle_total{result="allowed"}`) + m(`capsgate_throttle_total{result="limited"}`) +
			m(`capsgate_throttle_total{result="full"}`),
		answered: m(`capsgate_throttle_routed_total{result="answered"}`),
		fellBack: m(`capsgate_throttle_routed_total{result="unanswered"}`) +
			m(`capsgate_throttle_routed_skipped_total{why="owner_down"}`) + m(`capsgate_consume_routed_skipped_total{why="busy"}`),
	}
}

// requireThrottleBound hammers rl:k through nodes for d (hammerThrottle)
// and requires its admissions within one bucket (throttleBucket) for each
// node that decided it on its own table meanwhile, and that only one did
// when none fell back (no unanswered, owner_down or busy).
func requireThrottleBound(t *testing.T, nodes []*farm.Node, d time.Duration) throttleRun {
	t.Helper()
	before := make([]throttleStats, len(nodes))
	for i, x := range nodes {
		before[i] = throttleStatsOf(t, x)
	}
	run := hammerThrottle(t, nodes, d)
	deciders, fellBack := 0, 0.0
	var routed []string
	for i, x := range nodes {
		s := throttleStatsOf(t, x)
		if s.decided > before[i].decided {
			deciders++
		}
		fellBack += s.fellBack - before[i].fellBack
		routed = append(routed, fmt.Sprintf("%s decided %.0f, had %.0f answered by the owner",
			x.Name, s.decided-before[i].decided, s.answered-before[i].answered))
	}
	bound := throttleBucket(run.elapsed)
	t.Logf("%d CL.THROTTLE in %v through %d nodes: %d admitted, one bucket's bound %d; %v; %.0f fell back",
		run.sent, run.elapsed, len(nodes), run.admitted, bound, routed, fellBack)
	require.LessOrEqual(t, run.admitted, deciders*bound, "at most one bucket per node that decided")
	if fellBack == 0 {
		require.Equal(t, 1, deciders, "with no fallback, only the owner decides")
		require.LessOrEqual(t, run.admitted, bound, "the farm admits as one bucket")
	}
	return run
}

// throttleOwner returns the member owning rl:k in nodes: it sends a
// peek (quantity 0, which takes nothing) through each node until one
// node alone decides all of them, the others sending theirs to it.
func throttleOwner(t *testing.T, nodes []*farm.Node) *farm.Node {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		before := make([]throttleStats, len(nodes))
		for i, x := range nodes {
			before[i] = throttleStatsOf(t, x)
		}
		for _, x := range nodes {
			v, err := x.Do(append(throttleArgs, "0")...)
			require.NoError(t, err)
			require.Len(t, v, 5, "a peek through %s", x.Name)
			require.Equal(t, []any{int64(0), int64(throttleLimit)}, v.([]any)[:2], "a peek through %s", x.Name)
		}
		var owner *farm.Node
		one := true
		for i, x := range nodes {
			switch throttleStatsOf(t, x).decided - before[i].decided {
			case float64(len(nodes)):
				owner = x
			case 0:
			default:
				one = false
			}
		}
		if one && owner != nil {
			return owner
		}
		if time.Now().After(deadline) {
			t.Fatalf("no member decides rl:k for every node of %d within 10 s", len(nodes))
		}
	}
}
