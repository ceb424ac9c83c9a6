package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// BenchmarkExchangeWithAccounts: one exchange of a member of three (read
// the engine's counters, plan, apply the parts, take the two others'
// reports) for one service whose pool is allocated to the accounts, of
// which one changes at each exchange, once the budgets have settled. The
// other two members run their own engines and planners, off the clock.
//
//	go test ./cluster -run '^$' -bench ExchangeWithAccounts -benchtime 20x -benchmem
func BenchmarkExchangeWithAccounts(b *testing.B) {
	for _, n := range []int{100, 10000, 100000} {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) {
			benchExchange(b, 0, func(eng *admission.Engine, shares *Shares) error {
				for a := range n {
					if err := eng.SetAccount("svc", fmt.Sprintf("acct-%06d", a), 1000, admission.Overage{}); err != nil {
						return err
					}
				}
				return nil
			}, func(eng *admission.Engine, i int) error {
				return eng.SetAccount("svc", "acct-000001", int64(1000+i%2), admission.Overage{})
			})
		})
	}
}

// BenchmarkExchangeWithTrunks is BenchmarkExchangeWithAccounts for a
// service with n trunk keys with limits of their own, busy of them busy
// (a decision on each between exchanges), the rest idle.
//
//	go test ./cluster -run '^$' -bench ExchangeWithTrunks -benchtime 20x -benchmem
func BenchmarkExchangeWithTrunks(b *testing.B) {
	for _, c := range []struct{ n, busy int }{{100, 1}, {10000, 1}, {100000, 1}, {10000, 1000}} {
		n, busy := c.n, c.busy
		b.Run(fmt.Sprintf("keys=%d/busy=%d", n, busy), func(b *testing.B) {
			benchExchange(b, 0, func(eng *admission.Engine, shares *Shares) error {
				for k := range n {
					if err := shares.SetLimits(admission.TrunkName("svc", fmt.Sprintf("key-%06d", k)),
						admission.Limits{Licensed: true, CAPS: 100, Sessions: 100, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}); err != nil {
						return err
					}
				}
				return nil
			}, func(eng *admission.Engine, i int) error {
				for k := range busy {
					eng.AdmitTrunk(eng.Now(), []byte("svc"), nil, nil, fmt.Appendf(nil, "key-%06d", k), admission.Normal)
				}
				return nil
			})
		})
	}
}

// benchExchange times one exchange of a member of three (read the
// engine's counters, plan, apply the parts, take the two others'
// reports) for one service set up by setup, with change made on the
// first member before each exchange, once the first warm-up exchanges
// have settled. The other two members run their own engines and
// planners, off the clock. who is the member timed: 0, the first (every
// member's taking of the reports is timed), or another, which sees the
// first's changes in its reports only (its own taking of them is timed).
// planned/op is what the timed member's plans planned.
func benchExchange(b *testing.B, who int, setup func(*admission.Engine, *Shares) error, change func(*admission.Engine, int) error) {
	const warmUp = 50
	live := []string{"a", "b", "c"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type member struct {
		eng    *admission.Engine
		shares *Shares
		usage  *UsageReader
		p      *Planner
		last   Report
		lic    map[string]admission.Limits
	}
	var ms []*member
	for _, name := range live {
		eng := admission.NewEngine(admission.DefaultConfig())
		m := &member{eng: eng, shares: NewShares(eng), p: NewPlanner(name, PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond),
			lic: map[string]admission.Limits{}}
		if err := m.shares.SetLimits("svc", admission.Limits{Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: 1 << 40}); err != nil {
			b.Fatal(err)
		}
		if err := setup(eng, m.shares); err != nil {
			b.Fatal(err)
		}
		m.usage = NewUsageReader(eng)
		for _, other := range live {
			m.p.Joined(t0.Add(-time.Second), other)
		}
		ms = append(ms, m)
	}
	planned := 0
	exchange := func(m *member, now time.Time) {
		m.p.LimitsChanged(m.shares.SyncLicensed(m.lic)) // as the cluster's exchange does
		pl := m.p.Plan(now, live, m.lic, m.usage.Read())
		if m == ms[who] {
			planned += pl.Planned
		}
		for s, part := range pl.Parts {
			if err := m.shares.SetShare(s, part); err != nil {
				b.Fatal(err)
			}
		}
		m.last = pl.Report
	}
	hear := func(m *member, now time.Time) {
		for i, o := range ms {
			if o != m {
				m.p.Heard(now, live[i], o.last)
			}
		}
	}
	step := func(i int, timed bool) {
		now := t0.Add(time.Duration(i) * ExchangeInterval)
		off := func(j int) bool { return timed && j != who }
		for j, m := range ms {
			if off(j) {
				b.StopTimer()
			}
			if j == 0 {
				if err := change(m.eng, i); err != nil {
					b.Fatal(err)
				}
			}
			exchange(m, now)
			if off(j) {
				b.StartTimer()
			}
		}
		for j, m := range ms {
			if who > 0 && off(j) {
				b.StopTimer()
			}
			hear(m, now)
			if who > 0 && off(j) {
				b.StartTimer()
			}
		}
	}
	// The first exchanges plan every account, until their budgets
	// settle; then only what moves.
	for i := range warmUp {
		step(i, false)
	}
	b.ResetTimer()
	planned = 0
	for i := range b.N {
		step(warmUp+i, true)
	}
	b.ReportMetric(float64(planned)/float64(b.N), "planned/op")
}

// BenchmarkExchangeWithServices is one exchange of a member of three
// holding n licences, busy of them busy (attempts on each between
// exchanges): what a farm spread over many services pays ten times a
// second on every member. With accounts, each licence has a pool of
// tokens allocated to accounts spread evenly over the licences (every
// member's reports then hold an entry for each account). quiet: the
// member timed is one without traffic, that hears the busy one's reports.
//
//	go test ./cluster -run '^$' -bench ExchangeWithServices -benchtime 50x -benchmem
func BenchmarkExchangeWithServices(b *testing.B) {
	for _, c := range []struct {
		n, busy, accounts int
		quiet             bool
	}{{1000, 1, 0, false}, {1000, 1000, 0, false}, {1000, 1000, 100000, false}, {1000, 1000, 0, true}, {1000, 1000, 100000, true}} {
		n, busy, accounts, who := c.n, c.busy, c.accounts, 0
		name := fmt.Sprintf("services=%d/busy=%d/accounts=%d", n, busy, accounts)
		if c.quiet {
			name, who = name+"/quiet", 1
		}
		b.Run(name, func(b *testing.B) {
			names := make([][]byte, n)
			for s := range n {
				names[s] = fmt.Appendf(nil, "svc-%04d", s)
			}
			tokens := int64(admission.Unlimited)
			if accounts > 0 {
				tokens = 1 << 40
			}
			benchExchange(b, who, func(eng *admission.Engine, shares *Shares) error {
				for _, name := range names {
					if err := shares.SetLimits(string(name), admission.Limits{Licensed: true, CAPS: 1e6, Sessions: 1000,
						Subscribers: 1000, Tokens: tokens}); err != nil {
						return err
					}
				}
				for a := range accounts {
					if err := eng.SetAccount(string(names[a%n]), fmt.Sprintf("acct-%06d", a), 1000, admission.Overage{}); err != nil {
						return err
					}
				}
				return nil
			}, func(eng *admission.Engine, i int) error {
				for _, name := range names[:busy] {
					for range 1 + i%3 { // demand that moves a little
						eng.Admit(eng.Now(), name, nil, nil, admission.Normal)
					}
				}
				return nil
			})
		})
	}
}
