package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// accountFarm drives member a's planner, of a farm of a and b, with one
// service whose pool is allocated to accounts accounts.
type accountFarm struct {
	t0    time.Time
	live  []string
	lic   map[string]admission.Limits
	a     *Planner
	used  map[string]int64 // by account of svc; absent: not allocated
	old   int64            // sessions of a second service, "old"
	steps int
}

func newAccountFarm(accounts int) *accountFarm {
	f := &accountFarm{t0: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), live: []string{"a", "b"},
		lic: map[string]admission.Limits{"svc": {Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: 1 << 40}},
		a:   NewPlanner("a", PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond), used: map[string]int64{}}
	f.a.Joined(f.t0.Add(-time.Second), "b")
	for i := range accounts {
		f.used[fmt.Sprintf("acct-%06d", i)] = 0
	}
	return f
}

// step plans one exchange and returns a's report.
func (f *accountFarm) step() Report {
	su := ServiceUsage{Name: "svc", Offered: uint64(f.steps), Depth: 100, Avail: 100}
	for acct, used := range f.used {
		su.Accounts = append(su.Accounts, AccountUsage{Account: acct, Size: 1 << 20, Used: used})
	}
	u := Usage{su}
	if _, ok := f.lic["old"]; ok {
		u = append(u, ServiceUsage{Name: "old", Sessions: f.old, Depth: 100, Avail: 100})
	}
	f.steps++
	return f.a.Plan(f.t0.Add(time.Duration(f.steps)*ExchangeInterval), f.live, f.lic, u).Report
}

// Above deltaAbove entries a member's reports carry what changed and a
// slice of the rest in turn: a member that loses a third of them at
// random still holds, once the changes stop, exactly what a whole report
// would tell it, removed accounts forgotten; and an idle farm's report
// weighs a small part of the whole one.
func TestDeltaReportsConverge(t *testing.T) {
	f := newAccountFarm(2000)
	b := NewPlanner("b", PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)
	b.Joined(f.t0.Add(-time.Second), "a")
	rng := rand.New(rand.NewPCG(7, 7))
	deltas, lost := 0, 0
	next := 2000
	for i := range 300 {
		// Charges to 20 accounts, 2 accounts removed and 2 allocated.
		for range 20 {
			acct := fmt.Sprintf("acct-%06d", rng.IntN(next))
			if _, ok := f.used[acct]; ok {
				f.used[acct] += int64(1 + rng.IntN(50))
			}
		}
		for range 2 {
			delete(f.used, fmt.Sprintf("acct-%06d", rng.IntN(next)))
			f.used[fmt.Sprintf("acct-%06d", next)] = 0
			next++
		}
		r := f.step()
		if r.Delta {
			deltas++
		}
		if i > 0 && rng.Float64() < 1.0/3 {
			lost++
			continue
		}
		b.Heard(f.t0, "a", r)
	}
	require.Greater(t, deltas, 290)
	require.Greater(t, lost, 80)
	// Quiet: every entry is refreshed within deltaRefresh reports, and one
	// removed while every report that said so was lost is forgotten after
	// deltaExpire.
	for range deltaExpire + deltaRefresh {
		b.Heard(f.t0, "a", f.step())
	}
	want := everything(f.a)
	got := b.peers["a"].report
	require.Equal(t, want.Held, got.Held)
	// A part of zero is as good as none (the receiver forgets it).
	for k, v := range want.Applied {
		require.True(t, sameApplied(v, got.Applied[k]), k)
	}
	for k := range got.Applied {
		require.Contains(t, want.Applied, k)
	}
	// 2,000 accounts, every one budgeted: the idle delta names the ones
	// whose turn it is.
	whole, _ := json.Marshal(want)
	delta, _ := json.Marshal(f.step())
	require.Less(t, len(delta)*deltaRefresh, 2*len(whole), "idle delta %d bytes, whole %d", len(delta), len(whole))
}

// A member that joins gets a whole report first; so does every member
// after any join (a restarted one numbers its reports from 1 again).
func TestDeltaReportsWholeAfterAJoin(t *testing.T) {
	f := newAccountFarm(deltaAbove + 10)
	require.False(t, f.step().Delta)
	require.True(t, f.step().Delta)
	require.True(t, f.step().Delta)
	f.a.Joined(f.t0, "c")
	require.False(t, f.step().Delta)
	require.True(t, f.step().Delta)
	// At deltaAbove entries or fewer, every report is whole.
	small := newAccountFarm(10)
	for range 5 {
		require.False(t, small.step().Delta)
	}
}

// A report's maps are its own: the planner gathers each report's services
// into one map it reuses, and a whole report carries a copy, so the
// reports a receiver (or the simulator's network) still holds do not
// change under it.
func TestReportsKeepTheirMaps(t *testing.T) {
	for _, accounts := range []int{10, deltaAbove + 10} {
		f := newAccountFarm(accounts)
		f.lic["old"] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: 1 << 40}
		f.old = 3
		var reports []Report
		var held []map[string]Held
		for i := range 8 {
			f.old = int64(3 + i)
			f.used["acct-000001"] += 7
			r := f.step()
			reports, held = append(reports, r), append(held, maps.Clone(r.Held))
		}
		require.Contains(t, held[0], "old", "%d accounts", accounts)
		for i, r := range reports {
			require.Equal(t, held[i], r.Held, "%d accounts, report %d", accounts, i)
		}
	}
}

// A delta older than the last report heard (a packet that arrived late)
// changes nothing.
func TestLateDeltaIgnored(t *testing.T) {
	f := newAccountFarm(deltaAbove + 10)
	b := NewPlanner("b", PolicyConfig{}, 100*time.Millisecond)
	b.Heard(f.t0, "a", f.step())
	f.used["acct-000001"] = 5
	late := f.step()
	f.used["acct-000001"] = 9
	b.Heard(f.t0, "a", f.step())
	require.Equal(t, int64(9), b.peers["a"].report.Held["svc/acct-000001"].Tokens)
	b.Heard(f.t0, "a", late)
	require.Equal(t, int64(9), b.peers["a"].report.Held["svc/acct-000001"].Tokens)
}

// An entry removed (a service's sessions back to 0) while every report
// that said so was lost is forgotten once the sender has not named it for
// deltaExpire reports; idle ones are refreshed and stay.
func TestDeltaForgetsWhatIsNoLongerNamed(t *testing.T) {
	f := newAccountFarm(deltaAbove + 10)
	f.lic = maps.Clone(f.lic) // another map: Plan takes a map as unchanging
	f.lic["old"] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: admission.Unlimited}
	f.old = 5
	b := NewPlanner("b", PolicyConfig{}, 100*time.Millisecond)
	b.Heard(f.t0, "a", f.step())
	b.Heard(f.t0, "a", f.step())
	require.Equal(t, int64(5), b.peers["a"].report.Held["old"].Sessions)
	f.old = 0
	for range deltaRepeat {
		f.step() // lost
	}
	for range deltaExpire - deltaRepeat - 2 {
		b.Heard(f.t0, "a", f.step())
	}
	require.Contains(t, b.peers["a"].report.Held, "old", "forgotten too soon")
	for range deltaRefresh {
		b.Heard(f.t0, "a", f.step())
	}
	require.NotContains(t, b.peers["a"].report.Held, "old")
	require.Contains(t, b.peers["a"].report.Held, "svc/acct-000004")
	require.Equal(t, everything(f.a).Held, b.peers["a"].report.Held)
}

// everything is what a whole report of p would say now.
func everything(p *Planner) Report {
	r := p.servicesReport(nil)
	for _, e := range p.book.byKey {
		if h := e.held(); h != (Held{}) {
			r.Held[e.key] = h
		}
	}
	return r
}

// A budget moves only by more than a sixteenth of the room it leaves, so
// that the small moves a busy pool's budget makes at every exchange (the
// members' rates change a little) are not changes every report carries;
// as the room runs out, every move is made.
func TestBudgetKeepsSmallMoves(t *testing.T) {
	p := NewPlanner("a", PolicyConfig{}, 100*time.Millisecond)
	// No other member: the target is used + part × (pool − used).
	for _, c := range []struct {
		part      float64
		used, cur int64
		planned   bool
		want      int64
		why       string
	}{
		{0.5, 100, 600, true, 550, "a fall of 50, over a sixteenth of the room (31)"},
		{0.53, 100, 600, true, 600, "a fall of 23: kept"},
		{0.56, 100, 600, true, 600, "a rise of 4: kept"},
		{0.6, 100, 600, true, 640, "a rise of 40: made"},
		{0.53, 100, 600, false, 577, "never planned: no budget to keep"},
		{0.5, 590, 600, true, 795, "little room left: every move is made"},
		{0.5, 600, 600, true, 800, "none left"},
		{0, 0, 0, true, 0, "zero"},
	} {
		// Alone, this node's part is the side's fraction.
		parts := &budgetParts{p: p, names: []string{"a"}, fraction: c.part, rates: make([]float64, 1)}
		require.Equal(t, c.want, p.tokenBudget("k", 1000, parts, c.used, c.cur, c.planned), c.why)
	}
}

// deltaOf, given the keys that moved, carries what delta finds by walking
// the whole map, for a map whose keys are never removed: over random
// moves, after a whole report and across refreshes, stretched or not.
func TestDeltaOfIsDelta(t *testing.T) {
	for _, stretch := range []uint64{1, 3} {
		rng := rand.New(rand.NewPCG(5, 9))
		walk, index := wireState[Share]{eq: sameApplied}, wireState[Share]{eq: sameApplied}
		cur := map[string]Share{}
		for k := range 500 {
			cur["svc#k"+strconv.Itoa(k)] = Share{CAPS: 0.5}
		}
		walk.record(cur, 1)
		index.record(cur, 1)
		for seq := uint64(2); seq < 2+3*deltaRefresh*stretch; seq++ {
			var moved []string
			for range rng.IntN(20) {
				k := "svc#k" + strconv.Itoa(rng.IntN(600)) // some new
				cur[k] = Share{CAPS: float64(rng.IntN(4)) / 4}
				moved = append(moved, k)
			}
			require.Equal(t, walk.delta(cur, seq, stretch), index.deltaOf(cur, moved, seq, stretch), "report %d, stretch %d", seq, stretch)
		}
	}
}

// A member that has charged nothing keeps a budget while the pool has far
// more left than the members charge in budgetHorizon: another member's
// first charges do not take it away (a CONSUME that reaches it next must
// not be refused TOKENS with 9,000 tokens left). A pool running out is
// split by the rates.
func TestIdleMemberKeepsABudget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	live := []string{"n1", "n2", "n3"}
	budgetOf := func(pool, othersUsed int64, othersRate float64) int64 {
		p := NewPlanner("n2", PolicyConfig{}, 100*time.Millisecond)
		for _, n := range live {
			p.Joined(t0.Add(-time.Second), n)
		}
		lic := map[string]admission.Limits{"pp": {Licensed: true, CAPS: 1000, Sessions: admission.Unlimited,
			Subscribers: admission.Unlimited, Tokens: pool}}
		var b int64
		for step := range 30 { // budgets rise by parts of what is free

			now := t0.Add(time.Duration(step) * ExchangeInterval)
			p.Heard(now, "n1", Report{Seq: uint64(step + 1), Held: map[string]Held{"pp": {Budget: pool / 3}}})
			p.Heard(now, "n3", Report{Seq: uint64(step + 1), TokenRate: map[string]float64{"pp": othersRate},
				Held: map[string]Held{"pp": {Tokens: othersUsed, Budget: pool / 3}}})
			b = p.Plan(now, live, lic, Usage{{Name: "pp", Depth: -1, Avail: -1}}).Parts["pp"].TokensBudget
		}
		return b
	}
	// 9,000 tokens, n3 charged 5 at 50 a second: n2's budget rises
	// towards the 3,000 n1 and n3 leave it, not to 9, the part of the
	// pool its rate of 0 was given by the rates alone. Each rise takes a
	// third of what is free, and stops once that is within a sixteenth
	// of the budget (TestBudgetKeepsSmallMoves): 3,000 / (1 + 3/16) =
	// 2,526 at the least.
	b := budgetOf(9000, 5, 50)
	require.True(t, b >= 2526 && b <= 3000, "budget %d", b)
	// 300 tokens, n3 charging 1,000 a second: the 295 left are split by
	// the rates, n2's idle one counted as its floor (295 × 5 % / 3 = 4.9
	// against 1,000): 1.4 tokens, of which a rise from nothing takes the
	// same part of the 100 that n1 and n3 leave free: 0.
	require.Equal(t, int64(0), budgetOf(300, 5, 1000))
}

// A service with a limited token pool and accounts settles once nothing
// moves: no member charges it, its budgets came out the same twice, no
// account is left to plan. It is then not planned, and what it applies
// stays. A member's token rate on one of its accounts, or an allocation
// that changes, has it planned again; it settles again once they stop.
func TestIdleTokenPoolsSettle(t *testing.T) {
	p, t0, live := memberOfThree()
	lic := map[string]admission.Limits{"pp": {Licensed: true, CAPS: 1000, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 9000}}
	accounts := []AccountUsage{{Account: "acme", Size: 3000}, {Account: "globex", Size: 1500}}
	step := 0
	plan := func(rate map[string]float64, u Usage) Plan {
		t.Helper()
		step++
		now := t0.Add(time.Duration(step) * ExchangeInterval)
		for _, n := range []string{"n1", "n3"} {
			p.Heard(now, n, Report{Seq: uint64(step), TokenRate: rate, Held: map[string]Held{"pp": {Budget: 1000}}})
		}
		return p.Plan(now, live, lic, u)
	}
	idle := Usage{{Name: "pp", Depth: -1, Avail: -1}}
	first := plan(nil, Usage{{Name: "pp", Depth: -1, Avail: -1, Accounts: accounts}})
	require.Equal(t, 1, first.Planned)
	// settles reports whether the pool settles within 30 idle exchanges.
	settles := func() bool {
		for range 30 {
			if plan(nil, idle).Planned == 0 {
				return true
			}
		}
		return false
	}
	require.True(t, settles())
	applied := p.applied["pp"]
	require.Positive(t, applied.TokensBudget)
	for range 10 {
		pl := plan(nil, idle)
		require.Zero(t, pl.Planned)
		require.NotContains(t, pl.Parts, "pp")
	}
	require.Equal(t, applied, p.applied["pp"], "what it applies stays")

	// n1 and n3 charge acme: planned at every exchange while they do.
	for range 5 {
		require.Equal(t, 1, plan(map[string]float64{"pp/acme": 40}, idle).Planned)
	}
	require.True(t, settles(), "settles again once the charges stop")

	// globex's allocation grows: planned again.
	grown := Usage{{Name: "pp", Depth: -1, Avail: -1, Accounts: []AccountUsage{{Account: "globex", Size: 2500}}}}
	require.Equal(t, 1, plan(nil, grown).Planned)
	require.Equal(t, int64(3000+2500), p.book.allocated["pp"], "the book has the new allocation")
}

// memberOfThree returns n2's planner in a farm of n1, n2 and n3, each
// joined a second before t0.
func memberOfThree() (p *Planner, t0 time.Time, live []string) {
	t0, live = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), []string{"n1", "n2", "n3"}
	p = NewPlanner("n2", PolicyConfig{}, 100*time.Millisecond)
	for _, n := range live {
		p.Joined(t0.Add(-time.Second), n)
	}
	return p, t0, live
}

// A service that holds something here (open sessions, tokens charged
// this period) and whose holding does not move settles as an idle one
// does: it is planned again when its holding moves, and settles again.
// (Every service of a farm whose pools had been charged this period was
// planned at every plan.)
func TestSteadyHoldingSettles(t *testing.T) {
	p, t0, live := memberOfThree()
	lic := map[string]admission.Limits{"held": {Licensed: true, CAPS: 1000, Sessions: 300, Subscribers: admission.Unlimited,
		Tokens: 1 << 40}}
	step := 0
	plan := func(u Usage) Plan {
		t.Helper()
		step++
		now := t0.Add(time.Duration(step) * ExchangeInterval)
		for _, n := range []string{"n1", "n3"} {
			p.Heard(now, n, Report{Seq: uint64(step), Held: map[string]Held{"held": {Sessions: 10, Budget: 1 << 30}}})
		}
		return p.Plan(now, live, lic, u)
	}
	holding := func(sessions, used int64) Usage {
		return Usage{{Name: "held", Sessions: sessions, PoolUsed: used, Depth: 100, Avail: 100}}
	}
	settles := func(u Usage) bool {
		for range 30 {
			if plan(u).Planned == 0 {
				return true
			}
		}
		return false
	}
	require.Equal(t, 1, plan(holding(20, 17000)).Planned)
	require.True(t, settles(holding(20, 17000)), "20 sessions and 17,000 tokens, steady")
	parts := p.applied["held"]
	require.GreaterOrEqual(t, parts.Sessions, 20.0/300, "its part covers what it holds")
	for range 10 {
		require.Zero(t, plan(holding(20, 17000)).Planned)
	}
	require.Equal(t, parts, p.applied["held"], "what it applies stays")
	// A session more: planned again, then settled again.
	require.Equal(t, 1, plan(holding(21, 17000)).Planned)
	require.True(t, settles(holding(21, 17000)))
	// Tokens charged (the pool's use moves): planned again.
	require.Equal(t, 1, plan(holding(21, 17500)).Planned)
	require.True(t, settles(holding(21, 17500)))
	// Every session gone: planned again.
	require.Equal(t, 1, plan(holding(0, 17500)).Planned)
}

// Past deltaRefresh × refreshEntries entries the refresh stretches: each
// idle entry is named once in deltaRefresh × stretch reports (not once in
// deltaRefresh), a report says its stretch, and a receiver forgets an
// entry it lost the removal of only after deltaExpire × stretch reports,
// keeping every idle one.
func TestDeltaRefreshStretches(t *testing.T) {
	f := newAccountFarm(600)
	f.a.refreshEntries = 2 // 600 accounts and a few entries: a stretch of 4
	f.lic = maps.Clone(f.lic)
	f.lic["old"] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: admission.Unlimited}
	f.old = 5
	b := NewPlanner("b", PolicyConfig{}, 100*time.Millisecond)
	r := f.step()
	require.False(t, r.Delta)
	require.Equal(t, uint64(4), r.Stretch)
	b.Heard(f.t0, "a", r)
	for range 50 { // the budgets settle
		b.Heard(f.t0, "a", f.step())
	}
	// One whole cycle, idle: every entry named exactly once.
	const stretch = 4
	named := map[string]int{}
	var oldNamed uint64 // the last report that named "old"
	for range deltaRefresh * stretch {
		r := f.step()
		require.True(t, r.Delta)
		require.Equal(t, uint64(stretch), r.Stretch)
		for k := range r.Held {
			named[k]++
		}
		if _, ok := r.Held["old"]; ok {
			oldNamed = r.Seq
		}
		for k := range r.Applied {
			named["applied "+k]++
		}
		b.Heard(f.t0, "a", r)
	}
	want := everything(f.a)
	require.Len(t, want.Held, 600+2)
	for k := range want.Held {
		require.Equal(t, 1, named[k], k)
	}
	for k := range f.a.applied {
		require.Equal(t, 1, named["applied "+k], k)
	}
	require.Len(t, named, len(want.Held)+len(f.a.applied), "nothing else named")

	// "old" back to 0 sessions while every report that said so is lost:
	// b holds it until deltaExpire × stretch reports after the last that
	// named it (unstretched, it would forget it after deltaExpire), and
	// not a refresh later.
	f.old = 0
	for range deltaRepeat {
		f.step()
	}
	for f.a.seq < oldNamed+deltaExpire*stretch {
		b.Heard(f.t0, "a", f.step())
	}
	held := func(k string) bool { _, ok := b.peers["a"].report.Held[k]; return ok }
	require.True(t, held("old"), "forgotten before deltaExpire × stretch reports")
	for range deltaRefresh {
		b.Heard(f.t0, "a", f.step())
	}
	require.False(t, held("old"))
	require.True(t, maps.Equal(everything(f.a).Held, b.peers["a"].report.Held), "every idle entry kept")
}

// refreshStretch at 0, 1, the bound and past it, and at the largest count.
func TestRefreshStretch(t *testing.T) {
	per := refreshEntries
	for _, c := range []struct {
		entries int
		want    uint64
	}{
		{0, 1}, {1, 1}, {deltaRefresh * per, 1}, {deltaRefresh*per + 1, 2}, {2*deltaRefresh*per + 1, 4},
		{4 * deltaRefresh * per, 4}, {100_000 + 1_000, 8},
		{math.MaxInt, 1 << bits.Len64(uint64(math.MaxInt/(deltaRefresh*per)))},
	} {
		require.Equal(t, c.want, refreshStretch(c.entries, per), "%d entries", c.entries)
	}
	// Each hash is due once in every deltaRefresh × stretch reports.
	for _, stretch := range []uint64{1, 2, 7} {
		for h := range uint64(1000) {
			due := 0
			for seq := uint64(12345); seq < 12345+deltaRefresh*stretch; seq++ {
				if refreshDue(h, seq, stretch) {
					due++
				}
			}
			require.Equal(t, 1, due, "hash %d, stretch %d", h, stretch)
		}
	}
}

// A count of entries that moves across a stretch's bound (a service's
// sessions come and go) would have the stretch flip from one pass to the
// next, and an entry due only when both stretches agree go unnamed past
// the receiver's expiry: the stretch only grows between whole reports, and
// the receiver holds every idle entry throughout.
func TestStretchOnlyGrowsBetweenWholeReports(t *testing.T) {
	f := newAccountFarm(600)
	b := NewPlanner("b", PolicyConfig{}, 100*time.Millisecond)
	b.Heard(f.t0, "a", f.step())
	var last uint64
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 6000 {
		// What the count asks flips between a stretch of 4 and of 7 (8)
		// at random passes of the refresh slots.
		if i%deltaRefresh == 0 {
			f.a.refreshEntries = 1 + rng.IntN(2)
		}
		r := f.step()
		require.True(t, r.Delta)
		require.GreaterOrEqual(t, r.Stretch, last, "report %d", r.Seq)
		last = r.Stretch
		b.Heard(f.t0, "a", r)
		if i > 50 {
			require.Len(t, b.peers["a"].report.Held, len(everything(f.a).Held), "report %d: an idle entry forgotten", r.Seq)
		}
	}
	require.Equal(t, uint64(8), last) // 7 rounded up
	// A whole report (a member joined) starts from what the count asks.
	f.a.refreshEntries = 2
	f.a.Joined(f.t0, "c")
	r := f.step()
	require.False(t, r.Delta)
	require.Equal(t, uint64(4), r.Stretch)
}

// The stretch is taken from a report up to maxStretch: a report claiming
// more cannot make deltaExpire × it overflow (2^62 × 300 is 0 in uint64,
// and every entry not named in the last report would be expired).
func TestStretchFromTheWireIsBounded(t *testing.T) {
	f := newAccountFarm(deltaAbove + 10)
	b := NewPlanner("b", PolicyConfig{}, 100*time.Millisecond)
	r := f.step()
	r.Stretch = 1 << 62
	b.Heard(f.t0, "a", r)
	require.Equal(t, uint64(maxStretch), b.peers["a"].stretch)
	for range 2 * deltaRefresh {
		r := f.step()
		r.Stretch = 1 << 62
		b.Heard(f.t0, "a", r)
	}
	require.Len(t, b.peers["a"].report.Held, len(everything(f.a).Held))
}

// A member of an earlier release reads no stretch, nor packed messages:
// while one is live, no member stretches its refresh, and none packs what
// it sends that member.
func TestReadsStretch(t *testing.T) {
	now, _ := json.Marshal(meta{Version: Version, RESPAddr: "127.0.0.1:6380", Stretch: true, Packs: true})
	for _, c := range []struct {
		meta           []byte
		stretch, packs bool
	}{
		{now, true, true},
		{[]byte(`{"v":"0.1.0","resp":"127.0.0.1:6381","max_caps":0,"stretch":true}`), true, false},
		{[]byte(`{"v":"0.1.0","resp":"127.0.0.1:6381","max_caps":0}`), false, false},
		{[]byte("not json"), false, false},
	} {
		var p peer
		p.noteMeta(c.meta)
		require.Equal(t, c.stretch, p.stretch, "%s", c.meta)
		require.Equal(t, c.packs, p.packs, "%s", c.meta)
		require.Equal(t, c.meta, p.metaRaw)
	}
	// With noStretch, a count of any size keeps a stretch of 1.
	require.Equal(t, uint64(1), refreshStretch(1<<62, noStretch))
	require.Equal(t, uint64(1), refreshStretch(10_000_000, noStretch))
}

// However the count of entries grows (a provisioning run, one pass of the
// refresh slots after another), every entry is named within one cycle of
// the stretch of the moment: the receiver, which forgets after three,
// never loses an idle one. Stretches that grew a step at a time (3, 4,
// 5, ...) could each miss an entry's turn; powers of two nest.
func TestRefreshScheduleNestsAsTheStretchGrows(t *testing.T) {
	per := refreshEntries
	const hashes = 2_000
	last := make([]uint64, hashes) // the report that last named each hash
	var stretch uint64 = 1
	entries := 0
	for seq := uint64(1); seq < 64*deltaRefresh; seq++ {
		if seq%deltaRefresh == 0 {
			entries += deltaRefresh * per // the raw stretch grows by one a pass
		}
		stretch = max(stretch, refreshStretch(entries, per))
		for h := range uint64(hashes) {
			if refreshDue(h*7919, seq, stretch) {
				last[h] = seq
			}
			if seq-last[h] > deltaRefresh*stretch {
				t.Fatalf("hash %d unnamed since report %d at report %d, stretch %d", h, last[h], seq, stretch)
			}
		}
	}
	require.Equal(t, uint64(64), stretch)
}

// The planner's bound follows the members alive: none while a member of
// an earlier release is, refreshEntries once it left or was upgraded.
func TestRefreshBoundFollowsTheMembers(t *testing.T) {
	c := &Cluster{peers: map[string]*peer{"a": {alive: true, stretch: true}, "b": {alive: true}}}
	require.Equal(t, noStretch, c.refreshBound())
	c.peers["b"].alive = false
	require.Equal(t, refreshEntries, c.refreshBound())
	c.peers["b"].alive, c.peers["b"].stretch = true, true
	require.Equal(t, refreshEntries, c.refreshBound())
}

// Settling changes no part: a planner that settles services and a twin
// that plans every service at every plan (no service ever settled), fed
// the same seeded inputs (holdings that sit still for a while and then
// move, the other members' reports with their own holdings and bursts of
// demand, early plans, some within ReportSettle of the last), apply the
// same parts after every plan. Four of the services license 100,000
// CAPS and have traffic at every plan, at every member, each demand mostly
// under the floor (1,667 a member) and now and then past it: settled while
// every demand is under it, they are planned again once one passes it.
func TestSettlingChangesNoPart(t *testing.T) {
	settling, t0, live := memberOfThree()
	every, _, _ := memberOfThree()
	lic := map[string]admission.Limits{}
	names := make([]string, 12)
	for i := range names {
		caps := 1000.0
		names[i] = fmt.Sprintf("svc%d", i)
		if i >= 8 {
			names[i], caps = fmt.Sprintf("big%d", i-8), 100000
		}
		lic[names[i]] = admission.Limits{Licensed: true, CAPS: caps, Sessions: 300, Subscribers: 500, Tokens: admission.Unlimited}
	}
	busy := func(name string) bool { return strings.HasPrefix(name, "big") }
	bigSkipped := 0 // plans that left a busy service out
	rng := rand.New(rand.NewPCG(31, 0x736574746c65))
	type holding struct {
		offered             uint64
		sessions, subs, ivl int64
	}
	mine := make([]holding, len(names))
	peers := map[string][]Held{"n1": make([]Held, len(names)), "n3": make([]Held, len(names))}
	now, seq, settled := t0, uint64(0), 0
	for step := range 3000 {
		// Each service's holding here moves now and then, else sits still.
		for i := range mine {
			if rng.IntN(20) == 0 {
				mine[i].sessions = int64(rng.IntN(120))
				mine[i].subs = int64(rng.IntN(200))
			}
			if rng.IntN(50) == 0 { // a burst of attempts
				mine[i].offered += uint64(rng.IntN(80))
			}
			if busy(names[i]) { // about 200 a second, now and then far more
				mine[i].offered += uint64(rng.IntN(40))
				if rng.IntN(80) == 0 {
					mine[i].offered += uint64(400 + rng.IntN(400))
				}
			}
		}
		seq++
		for _, n := range []string{"n1", "n3"} {
			// Each names the parts it applies, as members do: a third of
			// each licence.
			r := Report{Seq: seq, Held: map[string]Held{}, Demand: map[string]float64{}, Applied: map[string]Share{}}
			for i, name := range names {
				if rng.IntN(30) == 0 {
					peers[n][i] = Held{Sessions: int64(rng.IntN(100)), Subscribers: int64(rng.IntN(150))}
				}
				if peers[n][i] != (Held{}) {
					r.Held[name] = peers[n][i]
				}
				r.Applied[name] = Share{CAPS: 1.0 / 3, Sessions: 1.0 / 3, Subscribers: 1.0 / 3, Depth: 1.0 / 3}
				if rng.IntN(40) == 0 {
					r.Demand[name] = float64(rng.IntN(300))
				}
				if busy(name) {
					r.Demand[name] = float64(1 + rng.IntN(1600))
					if rng.IntN(60) == 0 {
						r.Demand[name] = float64(2000 + rng.IntN(4000))
					}
				}
			}
			for _, p := range []*Planner{settling, every} {
				c := r
				c.Held, c.Demand, c.Applied = maps.Clone(r.Held), maps.Clone(r.Demand), maps.Clone(r.Applied)
				p.Heard(now, n, c)
			}
		}
		u := Usage{}
		for i, name := range names {
			u = append(u, ServiceUsage{Name: name, Offered: mine[i].offered, Sessions: mine[i].sessions, Subscribers: mine[i].subs,
				Depth: 100, Avail: 100})
		}
		for _, st := range every.svcs { // nothing settled: every service planned
			st.isSettled = false
		}
		every.unsettled = nil
		var a, b Plan
		if early := rng.IntN(4) == 0; early {
			a, b = settling.PlanNow(now, live, lic, u), every.PlanNow(now, live, lic, slices.Clone(u))
		} else {
			a, b = settling.Plan(now, live, lic, u), every.Plan(now, live, lic, slices.Clone(u))
		}
		if a.Planned < len(names) {
			settled++
		}
		for _, name := range names {
			if _, planned := a.Parts[name]; busy(name) && !planned {
				bigSkipped++
			}
		}
		for _, name := range names {
			require.True(t, sameApplied(settling.applied[name], every.applied[name]), "step %d, %s: %+v settling, %+v planning every time",
				step, name, settling.applied[name], every.applied[name])
		}
		require.Equal(t, b.Planned, len(names))
		// The next plan: an exchange later, or sooner (an early plan), at
		// times within ReportSettle of this one.
		gap := ExchangeInterval
		if rng.IntN(4) == 0 {
			gap = time.Duration(1+rng.IntN(int(2*ReportSettle/time.Millisecond))) * time.Millisecond
		}
		now = now.Add(gap)
	}
	require.Greater(t, settled, 300, "the settling planner settled some services at some plans")
	// Demanded at every plan, they were planned at every plan before
	// the floor settled them (none skipped); a part capped by the others'
	// (a member holding more sessions than its third) does not settle.
	require.Greater(t, bigSkipped, 1000, "the busy services under the floor settled at some plans")
}

// TestReportClearsPromises: a report sent after the last one taken clears
// what was promised to its sender, an older whole report (sent before a
// delta taken, arrived after it) does not, a map grown past promisedKeep
// is let go, and a member gone has nothing promised.
func TestReportClearsPromises(t *testing.T) {
	p := NewPlanner("n1", PolicyConfig{}, 100*time.Millisecond)
	v := p.peer("n2")
	v.take(Report{Seq: 5}, func(string) {})
	v.promised = map[string][2]float64{"voice": {0.1, 0.2}}
	v.take(Report{Seq: 3}, func(string) {}) // an older whole report
	require.Equal(t, [2]float64{0.1, 0.2}, v.promised["voice"])
	v.take(Report{Seq: 6, Delta: true}, func(string) {})
	require.Empty(t, v.promised)
	require.NotNil(t, v.promised, "a small map is kept for the next plan")
	for i := range promisedKeep + 1 {
		v.promised[strconv.Itoa(i)] = [2]float64{1, 1}
	}
	v.take(Report{Seq: 7, Delta: true}, func(string) {})
	require.Nil(t, v.promised, "a map grown past promisedKeep is let go")
	v.promised = map[string][2]float64{"voice": {0.1, 0}}
	p.Gone(time.Unix(0, 0), "n2", true)
	require.Nil(t, v.promised)
}

// Three members with a farm's busy licences far below what they license
// (every demand under the floor, every bucket owing the few attempts
// taken since the engine's clock ticked, a different few at each
// measure), each planning on the others' latest reports in a seeded
// order, some of them early, settle: after a warm-up no member's parts
// move, no plan plans a licence and no report calls for an early plan.
// With the debt measured anew at each
// measure, every report moved what each holds, and each member planned
// every licence again at every plan. Then some buckets owe for a while, and the depth parts move to
// lend them attempts: the CAPS parts, planned again each time, stay.
func TestBusyFarmFarBelowItsLicencesSettles(t *testing.T) {
	live := []string{"n1", "n2", "n3"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lic := map[string]admission.Limits{}
	names := make([]string, 20)
	for i := range names {
		names[i] = fmt.Sprintf("svc%02d", i)
		lic[names[i]] = admission.Limits{Licensed: true, CAPS: 1e6, Sessions: 1000, Subscribers: 1000, Tokens: admission.Unlimited}
	}
	ps := make([]*Planner, len(live))
	offered := make([][]uint64, len(live))
	last := make([]Report, len(live))
	for i, n := range live {
		ps[i] = NewPlanner(n, PolicyConfig{}, 100*time.Millisecond)
		for _, o := range live {
			ps[i].Joined(t0.Add(-time.Second), o)
		}
		offered[i] = make([]uint64, len(names))
	}
	rng := rand.New(rand.NewPCG(7, 0x6661726d))
	const depth = 100000 // a tenth of a second of the licence
	now := t0
	moved, planned, depthMoved, capsMoved, urgent := 0, 0, 0, 0, 0
	owes := make([][]int64, len(live)) // a debt that matters, from step 400
	for i := range owes {
		owes[i] = make([]int64, len(names))
	}
	for step := range 800 {
		now = now.Add(time.Duration(20+rng.IntN(40)) * time.Millisecond)
		i := rng.IntN(len(live))
		u := Usage{}
		for s, name := range names {
			offered[i][s] += uint64(rng.IntN(60)) // about 250 a second, each member
			if step >= 400 && rng.IntN(10) == 0 {
				owes[i][s] = int64(rng.IntN(3)) * 5000
			}
			u = append(u, ServiceUsage{Name: name, Offered: offered[i][s], Depth: depth, Avail: depth - owes[i][s] - int64(rng.IntN(60))})
		}
		before := maps.Clone(ps[i].applied)
		plan := ps[i].Plan
		if rng.IntN(4) == 0 {
			plan = ps[i].PlanNow // an early plan
		}
		pl := plan(now, live, lic, u)
		last[i] = pl.Report
		for j := range live {
			if j != i && ps[j].Heard(now, live[i], last[i]) && step >= 100 && step < 400 {
				urgent++
			}
		}
		for _, name := range names {
			b, a := before[name], ps[i].applied[name]
			switch {
			case step < 100:
			case step < 400 && !sameApplied(b, a):
				moved++
			case step >= 400 && b.Depth != a.Depth:
				depthMoved++
			}
			if step >= 100 && b.CAPS != a.CAPS {
				capsMoved++
			}
		}
		if step >= 100 && step < 400 {
			planned += pl.Planned
		}
	}
	require.Zero(t, moved, "parts that moved after the warm-up")
	require.Zero(t, planned, "licences planned after the warm-up")
	require.Zero(t, urgent, "reports that called for an early plan after the warm-up")
	require.Greater(t, depthMoved, 100, "depth parts lent to the buckets that owe")
	require.Zero(t, capsMoved, "CAPS parts that moved after the warm-up")
	var sum float64
	for _, p := range ps {
		sum += p.applied["svc00"].CAPS
	}
	require.LessOrEqual(t, sum, 1.0)
	require.Greater(t, sum, 1-1e-9, "the whole licence is shared out")
}

// A bucket's debt is measured anew when it is nothing or moves by a 64th
// of the bucket's depth (at least one attempt); else it stays as it was.
func TestOwedOf(t *testing.T) {
	for _, c := range []struct{ was, depth, avail, want int64 }{
		{0, 64000, 64000, 0},    // full
		{0, 64000, 63999, 0},    // one attempt: less than a step
		{0, 64000, 63001, 0},    // 999
		{0, 64000, 63000, 1000}, // a step
		{1000, 64000, 63000 + 999, 1000},
		{1000, 64000, 62001, 1000}, // 1,999: within a step of 1,000
		{1000, 64000, 62000, 2000},
		{5000, 64000, 64000, 0},    // repaid: nothing at once
		{5000, 64000, 63999, 1},    // one attempt, down from 5,000
		{5000, 64000, 59999, 5000}, // 4,001: within a step
		{5000, 64000, 60000, 4000}, // a step down
		{5000, 64000, 60001, 3999},
		{0, 10, 9, 1}, // a small bucket: every attempt
		{3, 10, 8, 2},
		{0, 10, 15, 0}, // more than its depth: owes nothing
		{0, -1, -1, 0}, // unlimited
		{7, 0, 0, 0},   // closed
		{0, math.MaxInt64, 0, math.MaxInt64},
	} {
		require.Equal(t, c.want, owedOf(c.was, c.depth, c.avail), "%+v", c)
	}
}

// The rises of a demand heard between plans are added to what the
// members want, until the next plan computes it again: a licence settled
// under its floor, whose demands rise and fall under it at every report,
// is not planned, and its rises must not pile up past half the licence
// and call for an early plan at every report.
func TestRisesUnderTheFloorDoNotPileUp(t *testing.T) {
	p, t0, live := memberOfThree()
	lic := map[string]admission.Limits{"voice": {Licensed: true, CAPS: 1e6, Sessions: 1000, Subscribers: 1000, Tokens: admission.Unlimited}}
	u := Usage{{Name: "voice", Depth: 100000, Avail: 100000}}
	urgent := 0
	for step := range 400 {
		now := t0.Add(time.Duration(step) * ExchangeInterval)
		for k, n := range []string{"n1", "n3"} {
			d := 1000.0 // and 5,000 at the next report: a rise of 4,000, under the floor of 16,667
			if (step+k)%2 == 0 {
				d = 5000
			}
			r := Report{Seq: uint64(step + 1), Demand: map[string]float64{"voice": d},
				Applied: map[string]Share{"voice": {CAPS: 1.0 / 3, Sessions: 1.0 / 3, Subscribers: 1.0 / 3, Depth: 1.0 / 3}}}
			if p.Heard(now, n, r) && step >= 20 {
				urgent++
			}
		}
		pl := p.Plan(now, live, lic, u)
		if step >= 20 {
			require.Zero(t, pl.Planned, "step %d", step)
		}
	}
	require.Zero(t, urgent, "reports that called for an early plan")
}

// BenchmarkHeldDelta: the delta of a member's 1,000 licences' pools (their
// token budgets) when ten of them move a report, as a farm of 1,000
// licences reports ten times a second.
//
//	go test ./cluster -run '^$' -bench HeldDelta -benchmem
func BenchmarkHeldDelta(b *testing.B) {
	cur := map[string]Held{}
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("s%012d", i)
		cur[keys[i]] = Held{Budget: 50_000, Owed: int64(i % 3)}
	}
	w := wireState[Held]{eq: sameHeld}
	w.record(cur, 1)
	b.ReportAllocs()
	b.ResetTimer()
	named := 0
	for i := range b.N {
		for j := range 10 {
			k := keys[(i*10+j)%len(keys)]
			h := cur[k]
			h.Budget++
			cur[k] = h
		}
		named += len(w.delta(cur, uint64(i+2), 1))
	}
	b.ReportMetric(float64(named)/float64(b.N), "named/report")
}
