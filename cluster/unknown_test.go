package cluster

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A demand report under a name memberlist never told of (a made-up
// member, or a member's report ahead of the news of its join) gets no
// view in the planner, and so no say in parts, token budgets or the
// ledger's witnesses; a member's is heard. Replay requests under made-up
// names copy nothing and hold at most replayAnswering goroutines.
func TestNonMembersNotHeard(t *testing.T) {
	a, _ := joinedPair(t)
	report := func(from string, seq uint64) []byte {
		m, err := json.Marshal(demandMsg{Node: from, Report: Report{Seq: seq, Demand: map[string]float64{"voice": 1e6}}})
		require.NoError(t, err)
		return append([]byte{msgDemand}, m...)
	}
	d := (*delegate)(a)
	unknown := demandUnknown.Get()
	for i := range 100 {
		d.NotifyMsg(report("ghost-"+string(rune('a'+i%26))+string(rune('a'+i/26)), 1))
	}
	d.NotifyMsg(report("b", 1))
	a.mu.Lock()
	for i := range 100 {
		known, _ := a.planner.Known("ghost-" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
		require.False(t, known)
	}
	known, _ := a.planner.Known("b")
	_, ghostPeer := a.peers["ghost-aa"]
	peers := len(a.peers)
	a.mu.Unlock()
	require.True(t, known)
	require.False(t, ghostPeer)
	require.Equal(t, 2, peers, "a and b")
	require.Equal(t, unknown+100, demandUnknown.Get())

	a.mu.Lock()
	require.Len(t, a.early, earlyKeep, "the names kept to ask at their join are bounded")
	clear(a.early)
	a.mu.Unlock()
	// A name no member can have (past node_name's 64 bytes) is not kept,
	// nor is its replay request.
	long := strings.Repeat("n", 1<<20)
	d.NotifyMsg(report(long, 1))
	req, err := json.Marshal(replayRequest{Node: long})
	require.NoError(t, err)
	a.replayAsked(req)
	a.mu.Lock()
	require.Empty(t, a.early)
	a.mu.Unlock()
	a.replay.mu.Lock()
	require.Empty(t, a.replay.pending)
	a.replay.mu.Unlock()
	for i := range earlyKeep {
		d.NotifyMsg(report("ghost-"+string(rune('a'+i%26))+string(rune('a'+i/26)), 1))
	}

	// A whole report is made when asked at most once each wholeEvery,
	// whoever asks.
	asked := wholeAsked.Get()
	for _, from := range []string{"b", "ghost-ab", "b", "c"} {
		d.NotifyMsg(append([]byte{msgWhole}, from...))
	}
	require.Equal(t, asked+1, wholeAsked.Get())

	// Replay requests under names that are no members start nothing:
	// they wait, bounded, for a join.
	refused := replayRefused.Get()
	for i := range replayAskedKeep + 10 {
		req, err := json.Marshal(replayRequest{Node: fmt.Sprintf("ghost-%d", i), Since: 0})
		require.NoError(t, err)
		a.replayAsked(req)
	}
	a.replay.mu.Lock()
	answering, pending := a.replay.answering, len(a.replay.pending)
	a.replay.mu.Unlock()
	require.Zero(t, answering)
	require.Equal(t, replayAskedKeep, pending)
	require.Equal(t, refused+10, replayRefused.Get())

	// A member whose report and replay request come before the news of
	// its join: at the join it is asked for a whole report, and its
	// request is answered.
	c := bareMember(t, "c")
	a.mu.Lock()
	delete(a.early, "ghost-aa") // room for c's
	a.mu.Unlock()
	a.replay.mu.Lock()
	delete(a.replay.pending, "ghost-0")
	a.replay.mu.Unlock()
	d.NotifyMsg(report("c", 1))
	req, err = json.Marshal(replayRequest{Node: "c", Since: 0})
	require.NoError(t, err)
	a.replayAsked(req)
	asked = wholeAsked.Get()
	_, err = c.ml.Join([]string{a.cfg.BindAddr})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hasMet(a, "c") && wholeAsked.Get() > asked }, 5*time.Second, 10*time.Millisecond)
	a.mu.Lock()
	_, early := a.early["c"]
	a.mu.Unlock()
	require.False(t, early)
	a.replay.mu.Lock()
	_, waiting := a.replay.pending["c"]
	a.replay.mu.Unlock()
	require.False(t, waiting, "answered at the join")
}
