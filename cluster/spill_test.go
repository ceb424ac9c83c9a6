package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// SpillTo names the member whose bucket holds the most by its last report
// (its lent depth and reserve, less what it owed, less what was spilled to
// it since), ties to the first name, down to the last whole attempt; none
// when every bucket is empty (an overload) or the reports are stale; a new
// report starts the count again, and a member that refused one counts as
// empty until its next report.
func TestSpillToTheMostRoom(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lic := map[string]admission.Limits{"voice": {Licensed: true, CAPS: 1000, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}}
	live := []string{"a", "b", "c"}
	p := NewPlanner("a", PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)
	part := Share{CAPS: 0.3, Depth: 0.3, Sessions: -1, Subscribers: -1}
	// b: depth 30 of the licence's 100 and a reserve of 24 (3 × sqrt(0.2 ×
	// 300), rounded up), all of it held; c: the same, owing 50 of it.
	hear := func(now time.Time, bDemand, cDemand float64) {
		p.Heard(now, "b", Report{Demand: map[string]float64{"voice": bDemand}, Applied: map[string]Share{"voice": part}})
		p.Heard(now, "c", Report{Demand: map[string]float64{"voice": cDemand}, Applied: map[string]Share{"voice": part},
			Held: map[string]Held{"voice": {Owed: 50}}})
	}
	for _, n := range live {
		p.Joined(t0.Add(-time.Second), n)
	}
	hear(t0, 100, 300)
	p.Plan(t0, live, lic, nil)
	count := func(now time.Time) map[string]int {
		got := map[string]int{}
		for range 1000 {
			to, ok := p.SpillTo(now, "voice", 1000)
			if !ok {
				break
			}
			got[to]++
		}
		return got
	}
	first := make([]string, 0, 52)
	for range 52 {
		to, ok := p.SpillTo(t0, "voice", 1000)
		require.True(t, ok)
		first = append(first, to)
	}
	for i, to := range first[:51] {
		require.Equal(t, "b", to, "spill %d: b holds 54 - %d, c 4", i, i)
	}
	require.Equal(t, "c", first[51], "b holds 3 after 51, c 4")
	require.Equal(t, map[string]int{"b": 3, "c": 3}, count(t0), "54 + 4 whole attempts in all")

	// A report starts again from what it says; 10 ms later c has refilled
	// 10 × 0.01 s × (300 - 300) = nothing, b 2 (200/s to spare).
	hear(t0.Add(100*time.Millisecond), 100, 300)
	require.Equal(t, map[string]int{"b": 54 + 0, "c": 4}, count(t0.Add(100*time.Millisecond)))
	require.Equal(t, map[string]int{"b": 2}, count(t0.Add(110*time.Millisecond)), "b refills at its part less its demand")

	// Stale reports: nobody.
	require.Empty(t, count(t0.Add(100*time.Millisecond+staleAfter)))

	// An overload: every bucket owes its depth, every member's demand is
	// beyond its part: nobody. b's bucket refills: b.
	full := func(now time.Time, owed int64) {
		for _, n := range []string{"b", "c"} {
			p.Heard(now, n, Report{Demand: map[string]float64{"voice": 700}, Applied: map[string]Share{"voice": part},
				Held: map[string]Held{"voice": {Owed: owed}}})
		}
	}
	full(t0.Add(2*time.Second), 54)
	_, ok := p.SpillTo(t0.Add(2*time.Second), "voice", 1000)
	require.False(t, ok, "every bucket empty")
	_, ok = p.SpillTo(t0.Add(2050*time.Millisecond), "voice", 1000)
	require.False(t, ok, "and none refills: each is offered more than its part")
	full(t0.Add(2100*time.Millisecond), 53)
	to, ok := p.SpillTo(t0.Add(2100*time.Millisecond), "voice", 1000)
	require.True(t, ok)
	require.Equal(t, "b", to, "b and c hold 1 each: the first name")
	hear(t0.Add(2100*time.Millisecond), 100, 300)
	// b refused one: empty until its next report; c is next.
	p.SpillRefused("voice", "b")
	require.Equal(t, map[string]int{"c": 4}, count(t0.Add(2100*time.Millisecond)))
	hear(t0.Add(2200*time.Millisecond), 100, 300)
	to, ok = p.SpillTo(t0.Add(2200*time.Millisecond), "voice", 1000)
	require.True(t, ok)
	require.Equal(t, "b", to, "b's next report counts again")
}
