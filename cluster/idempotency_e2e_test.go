package cluster_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// TestConsumeIDAcrossNodesAndRestarts: with a 35-day idempotency window,
// CONSUME IDs charged on n1 are answered with their first decision,
// uncharged, through n2 and n3 once every node's hot set (2 s) has let
// them go (so from each node's key store), and again after n3 and then
// n1 were killed with SIGKILL and restarted.
func TestConsumeIDAcrossNodesAndRestarts(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, two killed and restarted")
	c := licensedFarm(t, []farm.Option{farm.WithArgs("--admission-idempotency-window", "840h")},
		"pp", 1000, "--tokens", "100000", "--id", "pp-ids")
	time.Sleep(300 * time.Millisecond) // the first budgets
	n := c.Nodes()
	const ids = 50
	first := chargeIDs(t, ids, "bill", func(i int) *farm.Node { return n[0] })
	used := func() int64 { t.Helper(); return tokensUsed(t, c, "pp") }
	repeat := func(via func(i int) *farm.Node, what string) {
		t.Helper()
		before := used()
		for i := range ids {
			ok, reason, left, err := via(i).Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("bill-%d", i))
			require.NoError(t, err)
			require.True(t, ok, reason)
			require.Equal(t, first[i], left, "%s: a repeat gets the first decision", what)
		}
		require.Equal(t, before, used(), "%s: no repeat was charged", what)
	}
	time.Sleep(2500 * time.Millisecond) // past every node's hot set
	repeat(func(i int) *farm.Node { return n[1+i%2] }, "through n2 and n3 from their stores")
	got, _ := total(t, c, "pp", "tokens_used", 5*ids, time.Second)
	require.Equal(t, int64(5*ids), got, "each ID charged once in the cluster")

	for _, k := range []int{2, 0} {
		n[k].Kill()
		require.NoError(t, n[k].Restart())
		c.WaitMembers(3, 10*time.Second)
	}
	repeat(func(i int) *farm.Node { return n[2*(i%2)] }, "through n3 and n1 after kill -9 and restart")
	// A new ID is still charged: the counters are live.
	before := used()
	ok, reason, _, err := n[1].Decision("CONSUME", "pp", "acct1", "5", "ID", "bill-new")
	require.NoError(t, err)
	require.True(t, ok, reason)
	got, _ = total(t, c, "pp", "tokens_used", before+5, time.Second)
	require.Equal(t, before+5, got)
}

// TestConsumeIDsReachAMemberThatWasDown: CONSUME IDs charged on n1 while n3
// was killed reach n3 when it comes back (the replay of what it missed):
// their repeats through n3 get the first decision, uncharged.
func TestConsumeIDsReachAMemberThatWasDown(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, one killed and restarted")
	c := licensedFarm(t, []farm.Option{farm.WithArgs("--admission-idempotency-window", "840h")},
		"pp", 1000, "--tokens", "100000", "--id", "pp-down")
	n := c.Nodes()
	n[2].Kill()
	require.Eventually(t, func() bool {
		ms, err := n[0].Members()
		if err != nil {
			return false
		}
		for _, m := range ms {
			if m.Name == "n3" {
				return m.State == "dead"
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "n1 sees n3 dead")
	const ids = 40
	first := chargeIDs(t, ids, "down", func(i int) *farm.Node { return n[0] })
	require.NoError(t, n[2].Restart())
	c.WaitMembers(3, 10*time.Second)
	used := func() int64 { t.Helper(); return tokensUsed(t, c, "pp") }
	var charged int
	require.Eventually(t, func() bool {
		// The replay follows the rejoin: wait until n3 has stored the IDs
		// (it charged none itself).
		body, err := n[2].GetRaw("/metrics")
		return err == nil && metric(t, body, "capsgate_idempotency_keys_written_total") >= ids
	}, 10*time.Second, 50*time.Millisecond, "n3 stores the IDs charged while it was down")
	before := used()
	for i := range ids {
		ok, reason, left, err := n[2].Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("down-%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
		if left != first[i] {
			charged++
		}
	}
	require.Zero(t, charged, "a repeat through the member that was down gets the first decision")
	require.Equal(t, before, used(), "and is not charged")
}

// TestConsumeIDRepeatsAtOnceChargeOnce: each of 150 IDs is sent through
// the three nodes at the same moment (a client retrying through another
// node before the first answer came): each is charged once in the farm,
// and all three answers are the first decision. Every node sends an ID to
// the same owner, which decides it (without the owner, a repeat that
// arrived before the notice of the first charge was charged again).
func TestConsumeIDRepeatsAtOnceChargeOnce(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "pp", 1000, "--tokens", "1000000", "--id", "pp-race")
	time.Sleep(300 * time.Millisecond) // the first budgets
	n := c.Nodes()
	const ids, units = 150, 3
	for i := range ids {
		var wg sync.WaitGroup
		var ok [3]bool
		var reason [3]string
		var left [3]int64
		var err [3]error
		for k := range n {
			wg.Go(func() {
				ok[k], reason[k], left[k], err[k] = n[k].Decision("CONSUME", "pp", "acct1", fmt.Sprint(units), "ID", fmt.Sprintf("race-%d", i))
			})
		}
		wg.Wait()
		for k := range n {
			require.NoError(t, err[k])
			require.True(t, ok[k], "ID %d through %s: %s", i, n[k].Name, reason[k])
		}
		require.Equal(t, left[0], left[1], "ID %d: n1 and n2 answer the first decision", i)
		require.Equal(t, left[0], left[2], "ID %d: n1 and n3 answer the first decision", i)
	}
	got, _ := total(t, c, "pp", "tokens_used", units*ids, time.Second)
	require.Equal(t, int64(units*ids), got, "each ID charged once in the farm")
	var routed, conflicts float64
	for _, x := range n {
		body, err := x.GetRaw("/metrics")
		require.NoError(t, err)
		routed += metric(t, body, `capsgate_consume_routed_total{result="sent"}`)
		conflicts += metric(t, body, "capsgate_consume_id_conflicts_total")
	}
	// Of the 450 CONSUMEs, those through a node not owning their ID and
	// not yet knowing it were sent: at least one in three of the 300.
	require.GreaterOrEqual(t, routed, float64(100), "CONSUMEs sent to their ID's owner")
	require.LessOrEqual(t, routed, float64(2*ids))
	require.Zero(t, conflicts, "no ID charged on two members")
}

// TestConsumeIDsReachANewMember: a member added to a farm asks every member
// it meets for the IDs charged in the window (the replay log): it owns a
// part of the IDs from then on, and every repeat, through it or routed to
// it, gets the first decision, uncharged.
func TestConsumeIDsReachANewMember(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes and a fourth added")
	c := licensedFarm(t, []farm.Option{farm.WithArgs("--admission-idempotency-window", "840h")},
		"pp", 1000, "--tokens", "100000", "--id", "pp-new")
	time.Sleep(300 * time.Millisecond) // the first budgets
	n := c.Nodes()
	const ids = 60
	first := chargeIDs(t, ids, "old", func(i int) *farm.Node { return n[i%3] })
	n4, err := c.Add()
	require.NoError(t, err)
	c.WaitMembers(4, 10*time.Second)
	require.Eventually(t, func() bool {
		body, err := n4.GetRaw("/metrics")
		return err == nil && metric(t, body, "capsgate_idempotency_keys_written_total") >= ids
	}, 10*time.Second, 50*time.Millisecond, "n4 stores the IDs charged before it joined")
	require.NoError(t, c.AwaitShares("pp", 1000, 5*time.Second))
	before := tokensUsed(t, c, "pp")
	var charged, routed int
	for i := range ids {
		for _, via := range []*farm.Node{n4, n[i%3]} {
			ok, reason, left, err := via.Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("old-%d", i))
			require.NoError(t, err)
			require.True(t, ok, "old-%d through %s: %s", i, via.Name, reason)
			if left != first[i] {
				charged++
			}
		}
	}
	for _, x := range n {
		body, err := x.GetRaw("/metrics")
		require.NoError(t, err)
		routed += int(metric(t, body, `capsgate_consume_routed_total{result="sent"}`))
	}
	require.Zero(t, charged, "a repeat through or to the new member gets the first decision")
	require.Equal(t, before, tokensUsed(t, c, "pp"), "and is not charged")
	// n4 owns a part of the IDs: some repeats through n1-n3 went to it.
	require.Positive(t, routed, "repeats routed to n4")
}

// chargeIDs sends CONSUME pp acct1 5 ID prefix-i for i in [0, n), each
// through via(i), requires each admitted and returns their remaining.
func chargeIDs(t *testing.T, n int, prefix string, via func(i int) *farm.Node) []int64 {
	t.Helper()
	first := make([]int64, n)
	for i := range n {
		ok, reason, left, err := via(i).Decision("CONSUME", "pp", "acct1", "5", "ID", fmt.Sprintf("%s-%d", prefix, i))
		require.NoError(t, err)
		require.True(t, ok, "CONSUME %s-%d through %s: %s", prefix, i, via(i).Name, reason)
		first[i] = left
	}
	return first
}

// tokensUsed sums QUOTA's tokens_used for service over c's nodes.
func tokensUsed(t *testing.T, c *farm.Cluster, service string) int64 {
	t.Helper()
	var sum int64
	for _, x := range c.Nodes() {
		sum += quota(t, x, service, "tokens_used")
	}
	return sum
}
