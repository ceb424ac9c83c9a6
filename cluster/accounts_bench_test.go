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
	const warmUp = 50
	for _, n := range []int{100, 10000, 100000} {
		b.Run(fmt.Sprintf("accounts=%d", n), func(b *testing.B) {
			live := []string{"a", "b", "c"}
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			type member struct {
				eng    *admission.Engine
				shares *Shares
				usage  *UsageReader
				p      *Planner
				last   Report
			}
			var ms []*member
			for _, name := range live {
				eng := admission.NewEngine(admission.DefaultConfig())
				m := &member{eng: eng, shares: NewShares(eng), p: NewPlanner(name, PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)}
				if err := m.shares.SetLimits("svc", admission.Limits{Licensed: true, CAPS: 1000, Sessions: 1000, Subscribers: 1000, Tokens: 1 << 40}); err != nil {
					b.Fatal(err)
				}
				for a := range n {
					if err := eng.SetAccount("svc", fmt.Sprintf("acct-%06d", a), 1000, admission.Overage{}); err != nil {
						b.Fatal(err)
					}
				}
				m.usage = NewUsageReader(eng)
				for _, other := range live {
					m.p.Joined(t0.Add(-time.Second), other)
				}
				ms = append(ms, m)
			}
			exchange := func(m *member, now time.Time) {
				pl := m.p.Plan(now, live, m.shares.Licensed(), m.usage.Read())
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
				for j, m := range ms {
					if j > 0 && timed {
						b.StopTimer()
					}
					if j == 0 {
						if err := m.eng.SetAccount("svc", "acct-000001", int64(1000+i%2), admission.Overage{}); err != nil {
							b.Fatal(err)
						}
					}
					exchange(m, now)
					if j > 0 && timed {
						b.StartTimer()
					}
				}
				for _, m := range ms {
					hear(m, now)
				}
			}
			// The first exchanges plan every account, until their budgets
			// settle; then only what moves.
			for i := range warmUp {
				step(i, false)
			}
			b.ResetTimer()
			for i := range b.N {
				step(warmUp+i, true)
			}
		})
	}
}
