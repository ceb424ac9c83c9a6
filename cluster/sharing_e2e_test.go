package cluster_test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster/farm"
)

// licensedFarm starts 3 nodes and loads on n1 a licence for service with
// caps CAPS and licArgs, returning once every node enforces it.
func licensedFarm(t *testing.T, opts []farm.Option, service string, caps int, licArgs ...string) *farm.Cluster {
	t.Helper()
	c := farm.New(t, 3, opts...)
	c.WaitMembers(3, 5*time.Second)
	c.LoadLicense(1, c.Issue(append([]string{"--service", service, "--caps", strconv.Itoa(caps)}, licArgs...)...))
	c.WaitCAPS(service, float64(caps), 2*time.Second)
	require.NoError(t, c.AwaitShares(service, float64(caps), 5*time.Second))
	return c
}

// quota returns one integer field of QUOTA service on node n.
func quota(t *testing.T, n *farm.Node, service, field string) int64 {
	t.Helper()
	v, err := n.Do("QUOTA", service)
	require.NoError(t, err)
	a := v.([]any)
	for i := 0; i+1 < len(a); i += 2 {
		if a[i] == field {
			switch x := a[i+1].(type) {
			case int64:
				return x
			case string:
				f, err := strconv.ParseFloat(x, 64)
				require.NoError(t, err)
				return int64(f)
			}
		}
	}
	t.Fatalf("QUOTA %s on %s has no %s: %v", service, n.Name, field, a)
	return 0
}

// total sums a QUOTA field over every node, polling until it equals want
// or timeout passes; it returns the last sum and how long it took.
func total(t *testing.T, c *farm.Cluster, service, field string, want int64, timeout time.Duration) (int64, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		var sum int64
		for _, n := range c.Nodes() {
			sum += quota(t, n, service, field)
		}
		if sum == want || time.Since(start) > timeout {
			return sum, time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSubscribersCountOnceAndReleaseAnywhere(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "voice", 1000, "--sessions", "60", "--subscribers", "60", "--id", "voice-subs")
	n := c.Nodes()

	// 20 subscribers register on n1, then each re-registers through n2 or
	// n3 (a proxy failing over): each still counts once.
	for i := range 20 {
		ok, reason, _, err := n[0].Decision("REGISTER", "voice", fmt.Sprintf("sip:u%d@example.net", i), "TTL", "600")
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	sum, _ := total(t, c, "voice", "subscribers_used", 20, time.Second)
	require.Equal(t, int64(20), sum)
	for i := range 20 {
		ok, reason, _, err := n[1+i%2].Decision("REGISTER", "voice", fmt.Sprintf("sip:u%d@example.net", i), "TTL", "600")
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	sum, took := total(t, c, "voice", "subscribers_used", 20, 2*time.Second)
	t.Logf("20 subscribers re-registered through other nodes: %d counted in all after %v (n1 %d, n2 %d, n3 %d)", sum, took,
		quota(t, n[0], "voice", "subscribers_used"), quota(t, n[1], "voice", "subscribers_used"), quota(t, n[2], "voice", "subscribers_used"))
	require.Equal(t, int64(20), sum, "a subscriber counts once in the cluster")
	require.Zero(t, quota(t, n[0], "voice", "subscribers_used"), "n1 let them go")

	// DEREGISTER through a node that never held them.
	for i := range 10 {
		v, err := n[0].Do("DEREGISTER", "voice", fmt.Sprintf("sip:u%d@example.net", i))
		require.NoError(t, err)
		require.Equal(t, int64(0), v, "n1 holds none: :0, forwarded")
	}
	sum, _ = total(t, c, "voice", "subscribers_used", 10, 2*time.Second)
	require.Equal(t, int64(10), sum, "DEREGISTER through any node")

	// Calls admitted on n1 are released through n2 and n3.
	for i := range 12 {
		ok, reason, _, err := n[0].Decision("ADMIT", "voice", "CALL", fmt.Sprintf("call-%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	require.Equal(t, int64(12), quota(t, n[0], "voice", "sessions_used"))
	for i := range 12 {
		_, err := n[1+i%2].Do("RELEASE", "voice", fmt.Sprintf("call-%d", i))
		require.NoError(t, err)
	}
	sum, took = total(t, c, "voice", "sessions_used", 0, 2*time.Second)
	t.Logf("12 calls admitted on n1, released through n2 and n3: %d sessions left after %v", sum, took)
	require.Zero(t, sum, "RELEASE works on any node")
}

// subscribersFarm starts 3 nodes sharing a licence of 2,000 subscribers,
// with a connection to each.
func subscribersFarm(t *testing.T, id string) (*farm.Cluster, []*farm.Node, []*farm.Conn) {
	t.Helper()
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "voice", 1000, "--subscribers", "2000", "--id", id)
	return c, c.Nodes(), dialEach(t, c.Nodes())
}

// dialEach opens a connection to each node, closed when the test ends.
func dialEach(t *testing.T, nodes []*farm.Node) []*farm.Conn {
	t.Helper()
	conns := make([]*farm.Conn, len(nodes))
	for k, node := range nodes {
		var err error
		conns[k], err = node.Dial()
		require.NoError(t, err)
		t.Cleanup(func() { conns[k].Close() })
	}
	return conns
}

// TestSimultaneousRegistersCountOnce: one subscriber's REGISTERs reach
// every node at once (proxies retrying, or a client registering through
// two SBCs); after the claims settle, it counts once, and DEREGISTERs sent
// to every node at once leave nothing behind.
func TestSimultaneousRegistersCountOnce(t *testing.T) {
	c, n, conns := subscribersFarm(t, "voice-simultaneous")
	const subscribers = 600
	// all sends cmd for each subscriber through the nodes in through at
	// once, one subscriber at a time, and returns the replies.
	all := func(cmd string, through []int, extra ...string) [][]any {
		replies := make([][]any, subscribers)
		for i := range subscribers {
			replies[i] = make([]any, len(through))
			var wg sync.WaitGroup
			for j, k := range through {
				wg.Go(func() {
					v, err := conns[k].Do(append([]string{cmd, "voice", fmt.Sprintf("sip:s%d@example.net", i)}, extra...)...)
					if err != nil {
						v = err
					}
					replies[i][j] = v
				})
			}
			wg.Wait()
		}
		return replies
	}
	registered := func(replies [][]any) {
		t.Helper()
		for i, r := range replies {
			for j, v := range r {
				a, ok := v.([]any)
				require.True(t, ok && len(a) == 4, "subscriber %d, reply %d: %v", i, j, v)
				require.Equal(t, int64(1), a[0], "subscriber %d, reply %d: %v", i, j, a)
			}
		}
	}

	registered(all("REGISTER", []int{0, 1, 2}, "TTL", "600"))
	sum, took := total(t, c, "voice", "subscribers_used", subscribers, 5*time.Second)
	t.Logf("%d subscribers, each registered through the 3 nodes at once: %d counted after %v (n1 %d, n2 %d, n3 %d)", subscribers, sum, took,
		quota(t, n[0], "voice", "subscribers_used"), quota(t, n[1], "voice", "subscribers_used"), quota(t, n[2], "voice", "subscribers_used"))
	require.Equal(t, int64(subscribers), sum, "a subscriber counts once in the cluster")

	// Again through two of them at once: the holder and another.
	registered(all("REGISTER", []int{1, 2}, "TTL", "600"))
	sum, took = total(t, c, "voice", "subscribers_used", subscribers, 5*time.Second)
	t.Logf("re-registered through n2 and n3 at once: %d counted after %v", sum, took)
	require.Equal(t, int64(subscribers), sum, "a subscriber counts once in the cluster")

	// DEREGISTER through every node at once: at most one node answers that
	// it let a subscriber go (one forwarded answers :0).
	released := 0
	for i, r := range all("DEREGISTER", []int{0, 1, 2}) {
		once := int64(0)
		for j, v := range r {
			x, ok := v.(int64)
			require.True(t, ok && (x == 0 || x == 1), "subscriber %d, reply %d: %v", i, j, v)
			once += x
		}
		require.LessOrEqual(t, once, int64(1), "subscriber %d: %v", i, r)
		released += int(once)
	}
	sum, took = total(t, c, "voice", "subscribers_used", 0, 5*time.Second)
	t.Logf("deregistered through the 3 nodes at once: %d answered :1, %d counted after %v", released, sum, took)
	require.Zero(t, sum, "nothing left behind")
}

// TestRegisterRightAfterDeregisterElsewhere: a subscriber deregistered
// through one node and registered at once through another (a phone moving
// between SBCs) stays registered: the DEREGISTER passed on to the other
// members does not end the later registration.
func TestRegisterRightAfterDeregisterElsewhere(t *testing.T) {
	c, n, conns := subscribersFarm(t, "voice-moving")
	const subscribers = 300
	sub := func(i int) string { return fmt.Sprintf("sip:m%d@example.net", i) }
	decided := func(v any, err error) {
		t.Helper()
		require.NoError(t, err)
		a, ok := v.([]any)
		require.True(t, ok && len(a) == 4 && a[0] == int64(1), "%v", v)
	}
	for i := range subscribers {
		decided(conns[2].Do("REGISTER", "voice", sub(i), "TTL", "600"))
	}
	sum, _ := total(t, c, "voice", "subscribers_used", subscribers, 5*time.Second)
	require.Equal(t, int64(subscribers), sum)
	for i := range subscribers {
		v, err := conns[0].Do("DEREGISTER", "voice", sub(i))
		require.NoError(t, err)
		require.Equal(t, int64(0), v, "n1 held none")
		decided(conns[1].Do("REGISTER", "voice", sub(i), "TTL", "600"))
	}
	// Settled: nothing on n3, every subscriber on n2.
	sum, took := total(t, c, "voice", "subscribers_used", subscribers, 5*time.Second)
	time.Sleep(500 * time.Millisecond) // the last DEREGISTERs passed on have arrived
	t.Logf("%d subscribers deregistered through n1 and registered through n2 at once: %d counted after %v (n1 %d, n2 %d, n3 %d)", subscribers, sum, took,
		quota(t, n[0], "voice", "subscribers_used"), quota(t, n[1], "voice", "subscribers_used"), quota(t, n[2], "voice", "subscribers_used"))
	require.Equal(t, int64(subscribers), quota(t, n[1], "voice", "subscribers_used"), "n2 holds every one")
	require.Zero(t, quota(t, n[2], "voice", "subscribers_used"), "n3 let them go")
	require.Zero(t, quota(t, n[0], "voice", "subscribers_used"))

	// The same through the node that holds them: the REGISTER refreshes a
	// registration the DEREGISTER passed on has not reached yet (when it
	// comes after it: forwarding is batched, so for most of them; the
	// engine's TestDeregisterBefore covers the order alone).
	for i := range subscribers {
		v, err := conns[0].Do("DEREGISTER", "voice", sub(i))
		require.NoError(t, err)
		require.Equal(t, int64(0), v, "n1 held none")
		decided(conns[1].Do("REGISTER", "voice", sub(i), "TTL", "600"))
	}
	time.Sleep(500 * time.Millisecond)
	t.Logf("deregistered through n1 and registered again through n2, which held them: n2 holds %d", quota(t, n[1], "voice", "subscribers_used"))
	require.Equal(t, int64(subscribers), quota(t, n[1], "voice", "subscribers_used"), "n2 holds every one")
	sum, _ = total(t, c, "voice", "subscribers_used", subscribers, time.Second)
	require.Equal(t, int64(subscribers), sum)

	// A DEREGISTER after the REGISTER still ends it, wherever it is sent.
	for i := range subscribers {
		_, err := conns[2].Do("DEREGISTER", "voice", sub(i))
		require.NoError(t, err)
	}
	sum, took = total(t, c, "voice", "subscribers_used", 0, 5*time.Second)
	t.Logf("then deregistered through n3: %d counted after %v", sum, took)
	require.Zero(t, sum)
}

func TestTokenPoolSharedByTheCluster(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and 4 s of paced load")
	c := licensedFarm(t, nil, "pre", 100000, "--tokens", "3000", "--tokens-per-attempt", "1", "--overage", "none", "--id", "pre-3000")
	// Let the first budgets settle, then draw the pool down from every
	// node at a skew, well past its end.
	time.Sleep(300 * time.Millisecond)
	run := openloop.Paced(c.RESPAddrs(), []float64{60, 30, 10}, 1500, 4*time.Second, "ADMIT pre")
	t.Logf("a 3000-token pool, 1 token an attempt, 1500/s offered 60/30/10 for 4 s: %v", run)
	require.NoError(t, run.Total.Err)
	require.Zero(t, run.Total.Errors, run.Total.LastError)
	assert.Equal(t, run.Total.Rejected, run.Total.Reasons["TOKENS"], "only TOKENS rejects")
	assert.LessOrEqual(t, run.Total.Admitted, 3000, "the cluster never spends more than the pool")
	assert.GreaterOrEqual(t, run.Total.Admitted, 2900, "and spends nearly all of it")
	used, _ := total(t, c, "pre", "tokens_used", int64(run.Total.Admitted), time.Second)
	assert.Equal(t, int64(run.Total.Admitted), used, "every admitted attempt was charged once")
}

func TestConsumeIDOnceAcrossNodes(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "pp", 1000, "--tokens", "9000", "--id", "pp-9000")
	time.Sleep(300 * time.Millisecond) // the first budgets
	n := c.Nodes()
	var first []int64
	for i := range 20 {
		ok, reason, left, err := n[0].Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
		first = append(first, left)
	}
	time.Sleep(100 * time.Millisecond) // a notice takes milliseconds
	for i := range 20 {
		ok, reason, left, err := n[1+i%2].Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("k%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
		require.Equal(t, first[i], left, "a repeat through another node gets the first decision")
	}
	used, _ := total(t, c, "pp", "tokens_used", 100, time.Second)
	t.Logf("20 CONSUME IDs of 5 tokens on n1, each repeated through n2 or n3: %d tokens charged in all", used)
	require.Equal(t, int64(100), used, "each ID charged once in the cluster")
}

func TestUsageOfTheWholeCluster(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and 3 s of ledger intervals")
	c := licensedFarm(t, []farm.Option{farm.WithArgs("--ledger-interval", "1s")}, "voice", 10000, "--id", "voice-usage")
	time.Sleep(300 * time.Millisecond)
	n := c.Nodes()
	for i, k := range []int{7, 11, 13} {
		for range k {
			ok, reason, _, err := n[i].Decision("ADMIT", "voice")
			require.NoError(t, err)
			require.True(t, ok, reason)
		}
	}
	var v struct {
		Nodes   []string `json:"nodes"`
		Missing []string `json:"missing"`
		Usage   []struct {
			Service  string   `json:"service"`
			Attempts int      `json:"attempts"`
			Admitted int      `json:"admitted"`
			Nodes    []string `json:"nodes"`
		} `json:"usage"`
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		require.NoError(t, n[0].GetJSON("/v1/usage?service=voice", &v))
		if (len(v.Usage) == 1 && v.Usage[0].Attempts == 31) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("GET /v1/usage on n1: %+v", v)
	require.Len(t, v.Usage, 1)
	require.Equal(t, 31, v.Usage[0].Attempts, "7 + 11 + 13 attempts on three nodes")
	require.Equal(t, 31, v.Usage[0].Admitted)
	require.ElementsMatch(t, []string{"n1", "n2", "n3"}, v.Usage[0].Nodes)
	require.Empty(t, v.Missing)
}

// A node killed with open calls and registrations restores them from disk;
// what happened to them elsewhere while it was down reaches it when it
// comes back.
func TestRestartedNodeCatchesUp(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, one killed and restarted")
	c := licensedFarm(t, nil, "voice", 1000, "--sessions", "60", "--subscribers", "60", "--id", "voice-catch")
	n := c.Nodes()
	for i := range 10 {
		ok, reason, _, err := n[2].Decision("REGISTER", "voice", fmt.Sprintf("sip:r%d@example.net", i), "TTL", "3600")
		require.NoError(t, err)
		require.True(t, ok, reason)
		ok, reason, _, err = n[2].Decision("ADMIT", "voice", "CALL", fmt.Sprintf("rc-%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	time.Sleep(200 * time.Millisecond) // journaled (every 20 ms)
	n[2].Kill()
	c.WaitMembers(2, 5*time.Second)
	// While n3 is down: its subscribers re-register through n1, its calls
	// end through n2.
	for i := range 10 {
		ok, reason, _, err := n[0].Decision("REGISTER", "voice", fmt.Sprintf("sip:r%d@example.net", i), "TTL", "3600")
		require.NoError(t, err)
		require.True(t, ok, reason)
		_, err = n[1].Do("RELEASE", "voice", fmt.Sprintf("rc-%d", i))
		require.NoError(t, err)
	}
	require.NoError(t, n[2].Restart())
	c.WaitMembers(3, 10*time.Second)
	subs, took := total(t, c, "voice", "subscribers_used", 10, 5*time.Second)
	sessions, _ := total(t, c, "voice", "sessions_used", 0, 5*time.Second)
	t.Logf("n3 restarted: %d subscribers and %d sessions in the cluster (%v after it answered); n3 holds %d and %d",
		subs, sessions, took, quota(t, n[2], "voice", "subscribers_used"), quota(t, n[2], "voice", "sessions_used"))
	require.Equal(t, int64(10), subs, "each subscriber once: n3 let go of those that re-registered elsewhere")
	require.Zero(t, sessions, "calls released while n3 was down are released on n3 too")
}

// An account's allocation holds for the farm as one, of a prepaid pool
// or of a pay-per-use licence's (its tokens unlimited).
func TestAccountAllocationSharedByTheCluster(t *testing.T) {
	for _, pool := range []struct{ name, tokens string }{{"prepaid", "9000"}, {"pay-per-use", ""}} {
		t.Run(pool.name, func(t *testing.T) { accountAllocationShared(t, pool.tokens) })
	}
}

// On a node alone, an account of a pay-per-use licence spends its
// allocation, as a node process does it (its tokens durable, reserved
// ahead), and no more; the service's own pool stays unlimited.
func TestAccountOfAPayPerUseLicenceAlone(t *testing.T) {
	needsProcesses(t, "a capsgate node")
	c := farm.New(t, 1)
	c.LoadLicense(1, c.Issue("--service", "ppu", "--caps", "100000", "--id", "ppu-alone"))
	c.WaitCAPS("ppu", 100000, 2*time.Second)
	out, code := c.Ctl(1, "accounts", "set", "ppu", "acme", "--tokens", "30")
	require.Zero(t, code, out)
	n := c.Nodes()[0]
	var reasons []string
	for i := range 35 {
		_, reason, left, err := n.Decision("CONSUME", "ppu", "acme", "1", "ID", fmt.Sprintf("t-%d", i))
		require.NoError(t, err)
		reasons = append(reasons, fmt.Sprintf("%s:%d", reason, left))
	}
	require.Equal(t, "OK:29", reasons[0])
	require.Equal(t, "OK:0", reasons[29])
	require.Equal(t, []string{"TOKENS:0", "TOKENS:0", "TOKENS:0", "TOKENS:0", "TOKENS:0"}, reasons[30:], "30 allocated, 30 spent")
	ok, reason, _, err := n.Decision("CONSUME", "ppu", "walk-in", "1000000000")
	require.NoError(t, err)
	require.True(t, ok, "an account never allocated draws on the unlimited pool: %s", reason)
}

func accountAllocationShared(t *testing.T, tokens string) {
	needsProcesses(t, "3 capsgate nodes and 2 s of paced load")
	args := []string{"--id", "pp-acct"}
	if tokens != "" {
		args = append(args, "--tokens", tokens)
	}
	c := licensedFarm(t, nil, "pp", 100000, args...)
	out, code := c.Ctl(1, "accounts", "set", "pp", "acme", "--tokens", "300")
	require.Zero(t, code, out)
	// Every node has the allocation.
	for _, n := range c.Nodes() {
		var v struct {
			Accounts []struct {
				Account string `json:"account"`
				Tokens  int64  `json:"tokens"`
			} `json:"accounts"`
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			require.NoError(t, n.GetJSON("/v1/services/pp/accounts", &v))
			if len(v.Accounts) == 1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		require.Len(t, v.Accounts, 1, n.Name)
		require.Equal(t, int64(300), v.Accounts[0].Tokens, n.Name)
	}
	time.Sleep(300 * time.Millisecond) // the first budgets
	run := openloop.Paced(c.RESPAddrs(), []float64{50, 30, 20}, 600, 2*time.Second, "CONSUME pp acme 1")
	t.Logf("a 300-token account, 600/s CONSUME 1 offered 50/30/20 for 2 s: %v", run)
	require.NoError(t, run.Total.Err)
	assert.Equal(t, run.Total.Rejected, run.Total.Reasons["TOKENS"], "only TOKENS rejects")
	assert.LessOrEqual(t, run.Total.Admitted, 300, "the account never spends more than its allocation in the cluster")
	assert.GreaterOrEqual(t, run.Total.Admitted, 290, "and spends nearly all of it")
}
