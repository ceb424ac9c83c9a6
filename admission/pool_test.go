package admission

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// durableEngine is a service "voice" of durable tokens with n accounts,
// each allocated 1<<40 tokens and reserved without end.
func durableEngine(t testing.TB, n int) *Engine {
	t.Helper()
	e, _ := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 1 << 60},
		func(c *Config) { c.DurableTokens = true })
	s := e.Service("voice")
	for i := range n {
		name := accountName(i)
		require.NoError(t, e.SetAccount("voice", name, 1<<40, Overage{}))
		s.Reserve(name, math.MaxInt64, 0)
	}
	s.Reserve("", math.MaxInt64, 0)
	return e
}

func accountName(i int) string { return "a" + itoa(i) }

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		if i /= 10; i == 0 {
			return string(b[n:])
		}
	}
}

// BenchmarkConsumeAccount: CONSUMEs of one token to one of 1,000
// accounts of a durable pool, the reservation covering them.
//
//	go test -run '^$' -bench ConsumeAccount -benchmem ./admission/
func BenchmarkConsumeAccount(b *testing.B) {
	e := durableEngine(b, 1000)
	accts := make([][]byte, 1000)
	for i := range accts {
		accts[i] = []byte(accountName(i))
	}
	now := e.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if d := e.Consume(now, svc, accts[i%len(accts)], 1, nil); d.Reason != OK {
			b.Fatal(d)
		}
	}
}

// BenchmarkConsumeAccountWatched is BenchmarkConsumeAccount with two
// pool watches, drained every 1,000 charges as the reserver would: what
// marking the pools costs a charge.
//
//	go test -run '^$' -bench ConsumeAccount -benchmem ./admission/
func BenchmarkConsumeAccountWatched(b *testing.B) {
	e := durableEngine(b, 1000)
	s := e.Service("voice")
	w1, err := e.WatchPools()
	require.NoError(b, err)
	w2, err := e.WatchPools()
	require.NoError(b, err)
	accts := make([][]byte, 1000)
	for i := range accts {
		accts[i] = []byte(accountName(i))
	}
	var buf []PoolState
	now := e.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if d := e.Consume(now, svc, accts[i%len(accts)], 1, nil); d.Reason != OK {
			b.Fatal(d)
		}
		if i%1000 == 999 {
			buf = s.ChangedPools(w1, buf[:0])
			buf = s.ChangedPools(w2, buf[:0])
		}
	}
}

// A charge to a watched pool allocates nothing once the pending lists have
// grown: they keep their room when drained.
func TestWatchedChargeAllocatesNothing(t *testing.T) {
	e := durableEngine(t, 10)
	s := e.Service("voice")
	w, err := e.WatchPools()
	require.NoError(t, err)
	buf := s.ChangedPools(w, nil)
	require.Len(t, buf, 11)
	a := []byte(accountName(3))
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		e.Consume(e.Now(), svc, a, 1, nil)
		buf = s.ChangedPools(w, buf[:0])
	}))
	require.Len(t, buf, 1)
	require.Equal(t, accountName(3), buf[0].Account)
}

// Every pool that changed is reported once to each watch, and nothing
// else (its service once to ChangedServices), against a model of which operations change which pools: random
// charges (to accounts and to the service's pool), charges that find the
// reservation short, allocations new and changed, reservations, new
// periods, and watches drained at random.
func TestChangedPoolsModel(t *testing.T) {
	e := durableEngine(t, 0)
	s := e.Service("voice")
	rng := rand.New(rand.NewPCG(1, 2))
	watches := []PoolWatch{}
	pending := []map[string]bool{} // the model: per watch, the pools changed since it asked
	touch := func(accts ...string) {
		for _, m := range pending {
			for _, a := range accts {
				m[a] = true
			}
		}
	}
	var names []string
	period := int64(0)
	drain := func(i int) {
		t.Helper()
		services := e.ChangedServices(watches[i], nil)
		if len(pending[i]) > 0 {
			require.Equal(t, []*Service{s}, services)
		} else {
			require.Empty(t, services)
		}
		got := s.ChangedPools(watches[i], nil)
		seen := map[string]bool{}
		for _, p := range got {
			require.False(t, seen[p.Account], "reported twice: %q", p.Account)
			seen[p.Account] = true
			now, ok := s.Pool(p.Account)
			require.True(t, ok)
			require.Equal(t, now, p, "the state as it is")
		}
		require.Equal(t, pending[i], seen)
		pending[i] = map[string]bool{}
	}
	addWatch := func() {
		w, err := e.WatchPools()
		require.NoError(t, err)
		all := map[string]bool{"": true} // a new watch gets every pool once
		for _, n := range names {
			all[n] = true
		}
		watches, pending = append(watches, w), append(pending, all)
	}
	addWatch()
	for step := range 20000 {
		if step == 5000 || step == 10000 {
			addWatch()
		}
		switch op := rng.IntN(100); {
		case op < 50: // a charge, to an account or (unknown) the service's pool
			acct := "nobody"
			if len(names) > 0 && rng.IntN(10) > 0 {
				acct = names[rng.IntN(len(names))]
			}
			e.Consume(e.Now(), svc, []byte(acct), 1+rng.Int64N(5), nil)
			if slices.Contains(names, acct) {
				touch(acct)
			} else {
				touch("")
			}
		case op < 60: // a new or changed allocation
			acct := accountName(rng.IntN(300))
			require.NoError(t, e.SetAccount("voice", acct, 1<<40+rng.Int64N(3), Overage{}))
			if !slices.Contains(names, acct) {
				names = append(names, acct)
			}
			touch(acct, "")
		case op < 70 && len(names) > 0: // a reservation, now and then one short of the next charge
			acct := names[rng.IntN(len(names))]
			p, _ := s.Pool(acct)
			r := int64(math.MaxInt64)
			if rng.IntN(2) == 0 {
				r = p.Total
			}
			s.Reserve(acct, r, 0)
			touch(acct)
		case op == 70: // a new period: every pool
			period++
			require.NoError(t, e.SetLimits("voice", Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited,
				Tokens: 1 << 60, PeriodID: period}))
			touch(append([]string{""}, names...)...)
		case op < 90:
			drain(rng.IntN(len(watches)))
		}
	}
	for i := range watches {
		drain(i)
		drain(i) // nothing since
	}
}

// Only MaxPoolWatches watches are handed out.
func TestWatchPoolsLimit(t *testing.T) {
	e := durableEngine(t, 0)
	for want := range PoolWatch(MaxPoolWatches) {
		w, err := e.WatchPools()
		require.NoError(t, err)
		require.Equal(t, want, w)
	}
	_, err := e.WatchPools()
	require.ErrorIs(t, err, ErrTooManyWatches)
}

// An account allocated part of a pay-per-use licence's pool (its tokens
// unlimited) may spend its allocation and its overage, no more, and no
// less; the service's own pool stays unlimited. In a farm it spends this
// node's budget of it.
func TestAccountOfAnUnlimitedPool(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l)
	voice := []byte("voice")
	require.NoError(t, e.SetAccount("voice", "acme", 300, Overage{}))
	require.NoError(t, e.SetAccount("voice", "tenpct", 100, Overage{Kind: OveragePercent, Percent: 10}))
	require.NoError(t, e.SetAccount("voice", "zero", 0, Overage{}))
	consume := func(acct string, units int64) Decision { return e.Consume(clk.Now(), voice, []byte(acct), units, nil) }
	require.Equal(t, Decision{Reason: OK, Remaining: 299}, consume("acme", 1))
	require.Equal(t, Decision{Reason: OK, Remaining: 0}, consume("acme", 299))
	require.Equal(t, TOKENS, consume("acme", 1).Reason, "300 allocated, 300 spent")
	require.Equal(t, OK, consume("tenpct", 110).Reason, "100 and 10 % overage")
	require.Equal(t, TOKENS, consume("tenpct", 1).Reason)
	require.Equal(t, TOKENS, consume("zero", 1).Reason)
	require.Equal(t, OK, consume("zero", 0).Reason)
	require.Equal(t, OK, consume("", math.MaxInt64).Reason, "the service's pool is unlimited")
	require.Equal(t, OK, consume("walk-in", 1<<40).Reason, "an account never allocated draws on it")

	// A farm: this node's budget of each allocation.
	l.TokensShared, l.AccountBudgets = true, map[string]int64{"acme": 400, "tenpct": 50}
	require.NoError(t, e.SetLimits("voice", l))
	require.NoError(t, e.SetAccount("voice", "late", 40, Overage{}))
	require.Equal(t, TOKENS, consume("acme", 1).Reason, "its budget 400 is past its allocation: 300, all spent")
	require.Equal(t, TOKENS, consume("tenpct", 1).Reason, "its budget of 50 and 10 % is below the 110 spent")
	require.Equal(t, TOKENS, consume("late", 1).Reason, "no budget yet")
	require.Equal(t, OK, consume("", math.MaxInt64).Reason, "the service's pool stays unlimited")
	l.AccountBudgets = map[string]int64{"late": 25}
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, OK, consume("late", 25).Reason)
	require.Equal(t, TOKENS, consume("late", 1).Reason, "its budget of 25 spent")

	// Alone again: whole allocations.
	l.TokensShared, l.AccountBudgets = false, nil
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 0}, consume("late", 15))
	require.Equal(t, TOKENS, consume("late", 1).Reason)
}
