package cluster

import (
	"encoding/json"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHeardPlansEarlyNearTheLicence: a member's demand that moves by a
// tenth calls for an early plan only where what the members want, with
// the rise, passes half the licence (far below it every part is at least
// 1.9 times its member's want and the next exchange is soon enough), or
// where the member wants more than the part it applies; rises heard
// between two plans add up.
func TestHeardPlansEarlyNearTheLicence(t *testing.T) {
	const licence = 1000.0 // 3 members: each member's floor 16.67, half 500
	cases := []struct {
		from, to float64
		part     float64 // n1's applied part of the licence
		early    bool
	}{
		{0, 1, 0.6, false},       // wants 50 + 1
		{100, 115, 0.6, false},   // wants 133.3 + 15
		{100, 109, 0.6, false},   // not a tenth
		{400, 450, 0.6, false},   // wants 433.3 + 50: 483.3
		{450, 500, 0.6, true},    // 483.3 + 50 passes 500
		{460, 520, 0.6, true},    // 493.3 + 60
		{440, 390, 0.6, false},   // a fall within half: 473.3
		{480, 420, 0.6, true},    // a fall from past half: 513.3
		{2000, 1000, 0.6, false}, // saturated at the last plan: nothing to gain
		{100, 180, 0.2, false},   // within its part of 200
		{100, 250, 0.2, true},    // past its part, wants 283.3 within half
		{0, 10, 0, true},         // a member that applies nothing (it joined)
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%v-%v-%v", c.from, c.to, c.part), func(t *testing.T) {
			p, now := heardAfter(t, licence, c.from, c.part)
			assert.Equal(t, c.early, p.Heard(now, "n1", n1Report(6, c.to, c.part)))
		})
	}
	// Rises between plans add up: 100 to 300 to 480 passes half (wants
	// 133.3 + 200 + 180), where the last plan's wants and the last rise
	// alone would not (133.3 + 180).
	p, now := heardAfter(t, licence, 100, 0.6)
	assert.False(t, p.Heard(now, "n1", n1Report(6, 300, 0.6)))
	assert.True(t, p.Heard(now, "n1", n1Report(7, 480, 0.6)))
}

// heardAfter returns n2 of a farm of three after 5 exchanges in which n1
// was offered from attempts a second and applied part of the licence
// (n3 none, a third), and the instant just after the last.
func heardAfter(t *testing.T, caps, from, part float64) (*Planner, time.Time) {
	t.Helper()
	p, names, lim, t0 := heardFarm(caps)
	third := map[string]Share{"voice": {CAPS: 1.0 / 3, Depth: 1.0 / 3}}
	var now time.Time
	for k := 1; k <= 5; k++ {
		now = t0.Add(time.Duration(k) * ExchangeInterval)
		p.Heard(now, "n1", n1Report(uint64(k), from, part))
		p.Heard(now, "n3", Report{Seq: uint64(k), Demand: map[string]float64{"voice": 0}, Applied: third})
		p.Plan(now, names, lim, Usage{{Name: "voice"}})
	}
	return p, now.Add(time.Millisecond)
}

// n1Report is n1's report seq: offered demand attempts a second, applying
// part of the licence.
func n1Report(seq uint64, demand, part float64) Report {
	return Report{Seq: seq, Demand: map[string]float64{"voice": demand}, Applied: map[string]Share{"voice": {CAPS: part, Depth: part}}}
}

// TestHeardRoomForDepth: a member whose depth part falls makes room for
// this node's depth part waiting below what it computed; planning early
// for it gains something only while this node's own bucket is spending
// (it owed attempts when last measured).
func TestHeardRoomForDepth(t *testing.T) {
	for _, owes := range []int64{0, 1, 5} {
		assert.Equal(t, owes > 0, roomHeard(t, owes), "this node owing %d", owes)
	}
}

// roomHeard returns what n2 of a farm of three says of n1's report that
// its depth part fell, n2's own depth part waiting for room and its
// bucket owing owes attempts.
func roomHeard(t *testing.T, owes int64) bool {
	t.Helper()
	p, names, lim, t0 := heardFarm(1000)
	seq := uint64(0)
	report := func(now time.Time, n1Owed int64, n1Depth float64) {
		seq++
		p.Heard(now, "n1", Report{Seq: seq, Demand: map[string]float64{"voice": 300},
			Held:    map[string]Held{"voice": {Owed: n1Owed}},
			Applied: map[string]Share{"voice": {CAPS: 0.6, Depth: n1Depth}}})
		p.Heard(now, "n3", Report{Seq: seq, Demand: map[string]float64{"voice": 0},
			Applied: map[string]Share{"voice": {CAPS: 0.2, Depth: 0.2}}})
	}
	var now time.Time
	plan := func(k int) {
		now = t0.Add(time.Duration(k) * ExchangeInterval)
		p.Plan(now, names, lim, Usage{{Name: "voice", Depth: 20, Avail: 20 - owes}})
	}
	// n1 owes 60 of the licence's 100 attempts of depth: its part is high,
	// this node's low.
	for k := 1; k <= 5; k++ {
		report(t0.Add(time.Duration(k)*ExchangeInterval), 60, 0.75)
		plan(k)
	}
	// n1 owes nothing now, but still applies its high part: this node's
	// part waits below what it computes.
	for k := 6; k <= 8; k++ {
		report(t0.Add(time.Duration(k)*ExchangeInterval), 0, 0.75)
		plan(k)
	}
	st := p.svcs["voice"]
	require.Greater(t, st.wanted.Depth, p.applied["voice"].Depth+1e-9, "waiting for room")
	seq++
	return p.Heard(now.Add(time.Millisecond), "n1", Report{Seq: seq, Demand: map[string]float64{"voice": 300},
		Applied: map[string]Share{"voice": {CAPS: 0.6, Depth: 0.3}}})
}

// TestHeardDebtToLend: a member's bucket that owes more calls for an
// early plan when this node would lend it a token or more and it owes a
// quarter of its depth part or more (here 15 of its 60 attempts).
func TestHeardDebtToLend(t *testing.T) {
	cases := []struct {
		from, to int64
		early    bool
	}{
		{0, 10, false}, // a sixth of its part
		{10, 20, true},
		{0, 15, true},
		{20, 27, false}, // this node would lend 0.89 of a token (its weight 0.128)
		{20, 28, true},
		{30, 20, false}, // it owes less
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d-%d", c.from, c.to), func(t *testing.T) {
			assert.Equal(t, c.early, owedHeard(t, c.from, c.to))
		})
	}
}

// owedHeard returns what n2 of a farm of three (a licence of 1,000 CAPS,
// 100 attempts deep; n1 applying 60 % of the depth) says of n1's report
// that its bucket owes to where it owed from.
func owedHeard(t *testing.T, from, to int64) bool {
	t.Helper()
	p, names, lim, t0 := heardFarm(1000)
	n1 := func(seq uint64, owed int64) Report {
		return Report{Seq: seq, Demand: map[string]float64{"voice": 100}, Held: map[string]Held{"voice": {Owed: owed}},
			Applied: map[string]Share{"voice": {CAPS: 1.0 / 3, Depth: 0.6}}}
	}
	var now time.Time
	for k := 1; k <= 5; k++ {
		now = t0.Add(time.Duration(k) * ExchangeInterval)
		p.Heard(now, "n1", n1(uint64(k), from))
		p.Heard(now, "n3", Report{Seq: uint64(k), Demand: map[string]float64{"voice": 0},
			Applied: map[string]Share{"voice": {CAPS: 1.0 / 3, Depth: 0.2}}})
		p.Plan(now, names, lim, Usage{{Name: "voice"}})
	}
	return p.Heard(now.Add(time.Millisecond), "n1", n1(6, to))
}

// heardFarm returns n2's planner of a farm of three sharing a licence of
// caps CAPS for "voice" (100 ms deep), the farm and the time it starts.
func heardFarm(caps float64) (*Planner, []string, map[string]admission.Limits, time.Time) {
	lim := map[string]admission.Limits{"voice": {Licensed: true, CAPS: caps,
		Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}}
	p := NewPlanner("n2", PolicyConfig{ReclaimAfter: 3 * time.Second}, ExchangeInterval)
	return p, []string{"n1", "n2", "n3"}, lim, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
}

// TestHeardOutOfBoundsReport: a member's report with figures no member
// can mean (a demand of 1e306, negative debts, holdings, budgets and
// parts) leaves every part this node plans finite and within the licence,
// and its own report sendable, while that member speaks and after it
// falls silent; a NaN part would fail open (the whole licence here).
func TestHeardOutOfBoundsReport(t *testing.T) {
	p, names, lim, t0 := heardFarm(1000)
	lim["voice"] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: 100, Subscribers: 100, Tokens: 1000}
	bad := Report{Seq: 1, Demand: map[string]float64{"voice": 1e306}, TokenRate: map[string]float64{"voice": 1e306},
		Held:    map[string]Held{"voice": {Sessions: -5, Subscribers: -5, Tokens: -1e15, Owed: -9e18, Budget: -1e15}},
		Applied: map[string]Share{"voice": {CAPS: 0, Sessions: -3, Subscribers: 1e300, Depth: -1e6}}}
	third := map[string]Share{"voice": {CAPS: 1.0 / 3, Depth: 1.0 / 3}}
	var offered uint64
	for k := 1; k <= 60; k++ {
		now := t0.Add(time.Duration(k) * ExchangeInterval)
		if k <= 3 {
			bad.Seq = uint64(k)
			p.Heard(now, "n1", bad)
		}
		p.Heard(now, "n3", Report{Seq: uint64(k), Demand: map[string]float64{"voice": 100}, Applied: third})
		offered += 30
		plan := p.Plan(now, names, lim, Usage{{Name: "voice", Offered: offered, Depth: 10, Avail: 5, Sessions: 3, Subscribers: 3}})
		sh := plan.Parts["voice"]
		for _, x := range []float64{sh.CAPS, sh.Depth, sh.Sessions, sh.Subscribers} {
			require.False(t, math.IsNaN(x) || math.IsInf(x, 0), "plan %d: %+v", k, sh)
			require.LessOrEqual(t, x, 1.0, "plan %d: %+v", k, sh)
		}
		_, err := json.Marshal(plan.Report)
		require.NoError(t, err, "plan %d", k)
	}
	d := p.Demand("n1")["voice"]
	require.Equal(t, maxReportRate, d, "a demand past the bound is the bound")
	require.Equal(t, Held{}, p.Held("n1")["voice"], "negative holdings and debts are none")
}
