package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A member whose reports do not name a licence yet holds an even part of
// it for others' rises while the licence is new here (newLicence), and
// nothing once it is not; a member that names it holds what it applies; a
// member not heard since it joined holds everything.
func TestRiseCapKeepsTheLicencesWayToAMember(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	p := NewPlanner("n1", PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)
	heard := func(applied map[string]Share) *view {
		return &view{heard: t0, joinedAt: t0.Add(-time.Minute), report: Report{Applied: applied}}
	}
	p.peers["n2"] = heard(map[string]Share{"voice": {CAPS: 0.2, Depth: 0.25, Sessions: 0.3, Subscribers: 0.1}})
	p.peers["n3"] = heard(map[string]Share{}) // the licence has not reached it
	live := []string{"n1", "n2", "n3"}
	for _, at := range []time.Duration{0, newLicence - time.Millisecond} {
		cp := p.riseCap("voice", live, 1, t0.Add(at), t0)
		require.InDelta(t, 1-0.2-1.0/3, cp.CAPS, 1e-9, "at %v", at)
		require.InDelta(t, 1-0.25-1.0/3, cp.Depth, 1e-9)
		require.InDelta(t, 1-0.3-1.0/3, cp.Sessions, 1e-9)
		require.InDelta(t, 1-0.1-1.0/3, cp.Subscribers, 1e-9)
	}
	cp := p.riseCap("voice", live, 1, t0.Add(newLicence), t0)
	require.Equal(t, Share{CAPS: 0.8, Depth: 0.75, Sessions: 0.7, Subscribers: 0.9}, cp, "not new: the member holds nothing of it")
	// A side of 2/3 of the farm: the even part is of the side's fraction.
	cp = p.riseCap("voice", live, 2.0/3, t0, t0)
	require.InDelta(t, 2.0/3-0.2-2.0/9, cp.CAPS, 1e-9)
	// A member not heard since it joined: no rise at all.
	p.peers["n3"].joinedAt = t0.Add(time.Second)
	require.Equal(t, Share{}, p.riseCap("voice", live, 1, t0, t0))
}
