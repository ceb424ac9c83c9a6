package cluster

import (
	"encoding/json"
	"testing"

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

	for i := range 200 {
		req, err := json.Marshal(replayRequest{Node: "ghost-" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Since: 0})
		require.NoError(t, err)
		a.replayAsked(req)
	}
	a.replay.mu.Lock()
	answering := a.replay.answering
	a.replay.mu.Unlock()
	require.Equal(t, replayAnswering, answering, "at most replayAnswering at once")
}
