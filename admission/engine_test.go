package admission

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"testing/quick"
	"time"

	"github.com/stretchr/testify/require"
)

var (
	svc  = []byte("voice")
	acct = []byte("acme")
)

func newTestEngine(t testing.TB, l Limits, mod ...func(*Config)) (*Engine, *FakeClock) {
	t.Helper()
	clk := NewFakeClock()
	cfg := DefaultConfig()
	cfg.Clock = clk
	for _, m := range mod {
		m(&cfg)
	}
	e := NewEngine(cfg)
	require.NoError(t, e.SetLimits("voice", l))
	return e, clk
}

func capsOnly(caps float64) Limits {
	return Limits{Licensed: true, CAPS: caps, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
}

// admitted counts the admitted decisions of n attempts made by f.
func admitted(n int, f func(i int) Decision) (ok int, reasons map[Reason]int) {
	reasons = map[Reason]int{}
	for i := 0; i < n; i++ {
		d := f(i)
		reasons[d.Reason]++
		if d.Admitted() {
			ok++
		}
	}
	return ok, reasons
}

func TestBurstAtOneInstant(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	now := clk.Now()
	ok, reasons := admitted(5000, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 100, ok)
	require.Equal(t, 4900, reasons[CAPS])
	d := e.Admit(now, svc, nil, nil, Normal)
	require.Equal(t, CAPS, d.Reason)
	require.Equal(t, int64(1), d.RetryAfterMS, "one token refills in 1 ms at 1000 CAPS")
	require.Equal(t, int64(0), d.Remaining)
}

func TestSteadyTenSeconds(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	start := clk.Now()
	// 2000/s over the closed interval [0 s, 10 s]: one attempt every 0.5 ms.
	ok, reasons := admitted(20001, func(i int) Decision {
		return e.Admit(start+int64(i)*int64(500*time.Microsecond), svc, nil, nil, Normal)
	})
	require.Equal(t, 10000+100, ok, "10 s at 1000 CAPS plus the 100-attempt burst")
	require.Equal(t, 20001-10100, reasons[CAPS])
	require.Equal(t, uint64(10100), e.Service("voice").Stats().Admissions[OK])
}

// TestSmallRatesKeepAUsableBurst: a bucket at a small rate (a cluster
// node's share) holds at least 20 attempts, or one second of its rate.
func TestSmallRatesKeepAUsableBurst(t *testing.T) {
	f := func(rate float64, want int) {
		t.Helper()
		e, clk := newTestEngine(t, capsOnly(rate))
		ok, _ := admitted(100, func(int) Decision { return e.Admit(clk.Now(), svc, nil, nil, Normal) })
		require.Equal(t, want, ok, "rate %g", rate)
	}
	f(0.5, 1)
	f(5, 5)
	f(16.7, 16)
	f(123, 20)
	f(250, 25)
}

func TestFirstAdmitRemaining(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	d := e.Admit(clk.Now(), svc, nil, nil, Normal)
	require.Equal(t, Decision{Reason: OK, RetryAfterMS: 0, Remaining: 99}, d)
}

// TestGCRAMatchesReference checks the lock-free bucket against a naive token
// bucket kept in nanoseconds of credit, on random rates, bursts and arrivals.
func TestGCRAMatchesReference(t *testing.T) {
	rates := []float64{1, 10, 100, 250, 1000, 2000, 5000, 1e6}
	f := func(seed uint64, ri uint8, burstTokens uint8, steps []uint16) bool {
		rate := rates[int(ri)%len(rates)]
		burst := int64(burstTokens%50) + 1
		g := newGCRA(rate, float64(burst)/rate)
		burst = g.burst // newGCRA keeps a least depth at small rates
		var tat atomic.Int64
		interval := int64(1e9 / rate)
		credit, now := burst*interval, int64(1e12)
		tat.Store(now)
		rng := rand.New(rand.NewPCG(seed, 1))
		for _, st := range steps {
			dt := int64(st) * int64(rng.IntN(4)) * interval / 64
			now += dt
			credit = min(burst*interval, credit+dt)
			want := credit >= interval
			if want {
				credit -= interval
			}
			if got, _ := g.take(&tat, now); got != want {
				return false
			}
		}
		return true
	}
	require.NoError(t, quick.Check(f, &quick.Config{MaxCount: 2000}))
}

// A rate too small for its interval to fit in nanoseconds (a limit of
// 1e-11 CAPS from the admin API or max_caps, a share's float residue, the
// smallest float) admits its depth, one attempt, and then nothing for
// maxInterval, however far the clock is: it never turns into a billion
// attempts a second, nor wraps.
func TestGCRATinyRates(t *testing.T) {
	for _, rate := range []float64{1e-9, 1.08e-10, 1e-11, 1e-16, math.SmallestNonzeroFloat64} {
		g := newGCRA(rate, 1)
		require.True(t, g.mode == gcraLimited, "rate %g", rate)
		require.Equal(t, int64(1), g.burst, "rate %g", rate)
		for _, now := range []int64{0, 1e12, 1.8e18, math.MaxInt64 / 4} {
			var tat atomic.Int64
			tat.Store(now)
			ok, _ := g.take(&tat, now)
			require.True(t, ok, "rate %g: the first attempt", rate)
			for i := range 1000 {
				ok, wait := g.take(&tat, now+int64(i)*1e9)
				require.False(t, ok, "rate %g, attempt %d a second apart", rate, i+2)
				require.Positive(t, wait, "rate %g: no wrap", rate)
			}
		}
	}
	// At 1e-9 (one attempt in about 32 years) the interval is exact.
	require.Equal(t, int64(1e18), newGCRA(1e-9, 1).interval)
}

func TestConcurrentAdmitsAreExact(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	now := clk.Now()
	var wg sync.WaitGroup
	var ok atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if e.Admit(now, svc, nil, nil, Normal).Admitted() {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int64(100), ok.Load())
}

func TestUnlicensedAndEmergency(t *testing.T) {
	e := NewEngine(DefaultConfig())
	now := NewFakeClock().Now()
	require.Equal(t, UNLICENSED, e.Admit(now, []byte("nosuch"), nil, nil, Normal).Reason)
	require.Equal(t, UNLICENSED, e.Admit(now, []byte("nosuch"), nil, nil, High).Reason)
	require.Equal(t, uint64(2), e.UnknownServiceAdmissions()[UNLICENSED])
	d := e.Admit(now, []byte("nosuch"), []byte("sos-1"), nil, Emergency)
	require.Equal(t, Decision{Reason: OK, Remaining: -1}, d)
	require.Nil(t, e.Service("nosuch"), "a made-up name adds no service")
	require.Equal(t, int64(1), e.Service(UnlicensedBucket).Stats().EmergencySessions)
	require.True(t, e.Release(now, []byte("nosuch"), []byte("sos-1"), 30))
	require.Equal(t, int64(0), e.Service(UnlicensedBucket).Stats().EmergencySessions)
	require.Equal(t, UNLICENSED, e.Admit(now, []byte("nosuch"), nil, nil, Normal).Reason, "emergency does not license the service")
}

func TestEmergencyIgnoresEveryLicenceLimit(t *testing.T) {
	l := Limits{Licensed: true, CAPS: 10, Sessions: 1, Subscribers: Unlimited, Tokens: 0, TokensPerAttempt: 5}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	ok, _ := admitted(1000, func(i int) Decision {
		return e.Admit(now, svc, []byte(fmt.Sprintf("sos-%d", i)), nil, Emergency)
	})
	require.Equal(t, 1000, ok)
	st := e.Service("voice").Stats()
	require.Equal(t, uint64(1000), st.Emergency)
	require.Equal(t, uint64(0), st.Admissions[OK], "emergency is counted on its own")
	require.Equal(t, int64(1000), st.EmergencySessions)
	require.Equal(t, int64(0), st.Sessions)
	require.Equal(t, int64(0), st.TokensUsed)
	// A normal call still has its licensed session free.
	require.Equal(t, TOKENS, e.Admit(now, svc, []byte("n1"), nil, Normal).Reason)
}

func TestOverloadStopsEvenEmergency(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(Unlimited), func(c *Config) { c.MaxCAPS = 500 })
	now := clk.Now()
	ok, reasons := admitted(200, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 45, ok, "node burst: 100 ms of the 450 CAPS outside the emergency reserve")
	require.Equal(t, 155, reasons[OVERLOAD])
	ok, reasons = admitted(10, func(i int) Decision { return e.Admit(now, svc, []byte(fmt.Sprint("sos", i)), nil, Emergency) })
	require.Equal(t, 5, ok, "emergency calls take the reserve: 100 ms of 50 CAPS")
	d := e.Admit(now, svc, []byte("sos"), nil, Emergency)
	require.Equal(t, OVERLOAD, d.Reason)
	require.Equal(t, int64(2), d.RetryAfterMS)
	// Unlimited licence: only the node limit (less the reserve), over 10 s.
	start := now + int64(time.Second)
	ok, _ = admitted(20001, func(i int) Decision {
		return e.Admit(start+int64(i)*int64(500*time.Microsecond), svc, nil, nil, Normal)
	})
	require.Equal(t, 4500+45, ok)
}

// TestNodeCapacitySpentInOrder: with node.max_caps set, what no licence
// covers takes none of the node's capacity (refused UNLICENSED, however
// many), and a flood of licensed attempts leaves emergency calls their
// reserve: 10 emergency calls a second among 20,000 licensed attempts a
// second, all 10 admitted every second for 10 s.
func TestNodeCapacitySpentInOrder(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(Unlimited), func(c *Config) { c.MaxCAPS = 1000 })
	start := clk.Now()
	var licensed, sos, unlicensed int
	for ms := range 10_000 {
		now := start + int64(ms)*int64(time.Millisecond)
		for range 100 { // 100,000 a second for names no licence covers
			if e.Admit(now, []byte("made-up"), nil, nil, Normal).Reason == UNLICENSED {
				unlicensed++
			}
		}
		for range 20 { // 20,000 a second, licensed
			if e.Admit(now, svc, nil, nil, Normal).Admitted() {
				licensed++
			}
		}
		if ms%100 == 0 { // 10 a second
			if e.Admit(now, svc, []byte(fmt.Sprint("sos", ms)), nil, Emergency).Admitted() {
				sos++
			}
		}
	}
	require.Equal(t, 1_000_000, unlicensed)
	require.Equal(t, 100, sos, "every emergency call")
	require.Equal(t, 9000+90-1, licensed, "900 CAPS over 10 s and the burst: the rest is the reserve")
}

func TestHighPriorityHeadroom(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	now := clk.Now()
	ok, _ := admitted(500, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 100, ok)
	ok, _ = admitted(500, func(int) Decision { return e.Admit(now, svc, nil, nil, High) })
	require.Equal(t, 20, ok, "10 % headroom: a bucket of 100 CAPS, its least depth of 20")
	// Steady: 10 s of high-priority attempts at 2000/s get licence + headroom.
	start := now + int64(time.Second)
	ok, _ = admitted(20001, func(i int) Decision {
		return e.Admit(start+int64(i)*int64(500*time.Microsecond), svc, nil, nil, High)
	})
	// The licence's 10000 + 100 burst; the headroom bucket, full at the
	// start, is drawn on from the moment the main one runs dry (at 0.1 s):
	// 20 + 100/s × 9.9 s.
	require.Equal(t, 10000+100+20+990, ok)
	require.Equal(t, uint64(20+11110), e.Service("voice").Stats().High)
}

func TestSessionsAndIdempotentCall(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: 500, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	call := func(i int) []byte { return []byte(fmt.Sprintf("call-%d@pbx", i)) }
	ok, reasons := admitted(600, func(i int) Decision { return e.Admit(now, svc, call(i), nil, Normal) })
	require.Equal(t, 500, ok)
	require.Equal(t, 100, reasons[SESSIONS])
	// A retransmission of an open call gets its first answer, uncounted.
	first := e.Admit(now, svc, call(7), nil, Normal)
	require.Equal(t, Decision{Reason: OK, Remaining: 500 - 7 - 1}, first)
	require.Equal(t, uint64(500), e.Service("voice").Stats().Admissions[OK])
	// High priority may use 10 % more sessions.
	ok, _ = admitted(100, func(i int) Decision { return e.Admit(now, svc, call(1000+i), nil, High) })
	require.Equal(t, 50, ok)
	require.Equal(t, SESSIONS, e.Admit(now, svc, call(2000), nil, High).Reason)
	require.True(t, e.Release(now, svc, call(3), 0))
	require.False(t, e.Release(now, svc, call(3), 0), "release is idempotent")
	require.False(t, e.Release(now, svc, []byte("never"), 0))
	require.Equal(t, SESSIONS, e.Admit(now, svc, call(3000), nil, Normal).Reason, "549 open: above the normal limit")
	require.Equal(t, OK, e.Admit(now, svc, call(3000), nil, High).Reason, "a released slot is free again")
	require.Equal(t, SESSIONS, e.Admit(now, svc, call(3001), nil, High).Reason)
	// Sessions not released end after the TTL.
	later := now + int64(3*time.Hour) + 1
	e.Tick(later)
	require.Equal(t, int64(0), e.Service("voice").Stats().Sessions)
	require.Equal(t, OK, e.Admit(later, svc, call(7), nil, Normal).Reason)
	require.Equal(t, int64(1), e.Service("voice").Stats().Sessions)
}

func TestSessionExpiryWithoutTick(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: 2, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l, func(c *Config) { c.SessionTTL = 1500 * time.Millisecond })
	now := clk.Now()
	require.True(t, e.Admit(now, svc, []byte("a"), nil, Normal).Admitted())
	require.True(t, e.Admit(now, svc, []byte("b"), nil, Normal).Admitted())
	require.Equal(t, SESSIONS, e.Admit(now+int64(time.Second), svc, []byte("c"), nil, Normal).Reason)
	// At the limit the engine sweeps what is due before refusing.
	require.True(t, e.Admit(now+int64(1500*time.Millisecond), svc, []byte("c"), nil, Normal).Admitted())
	require.Equal(t, int64(1), e.Service("voice").Stats().Sessions)
}

// TestTickSkipsEmptyTables: Tick lowers a service's held flag once its
// tables are empty and leaves the service alone while it stays low; a put
// raises it again, and what is put after ticks skipped for longer than
// the wheel's span still expires on time.
func TestTickSkipsEmptyTables(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l)
	s := e.Service("voice")
	now := clk.Now()
	require.False(t, s.held.Load(), "a new service holds nothing")
	require.True(t, e.Register(now, svc, []byte("sip:a@x"), 10).Admitted())
	require.True(t, e.Admit(now, svc, []byte("call-1"), nil, Normal).Admitted())
	require.True(t, s.held.Load(), "a put raises it")
	e.Tick(now + 5e9)
	require.True(t, s.held.Load(), "live entries keep it up")
	e.Tick(now + 11e9)
	require.Equal(t, int64(0), s.Stats().Subscribers)
	require.True(t, s.held.Load(), "the call is still open")
	require.True(t, e.Release(now+11e9, svc, []byte("call-1"), 0))
	e.Tick(now + 12e9)
	require.False(t, s.held.Load(), "every table empty: lowered")
	// Ticks skip the service for longer than the wheel turns (wheelSlots
	// seconds); a registration made then expires at its time, not before.
	later := now + int64(3*wheelSlots)*1e9
	for at := now + 13e9; at < later; at += 7e9 {
		e.Tick(at)
	}
	require.True(t, e.Register(later, svc, []byte("sip:b@x"), 30).Admitted())
	require.True(t, s.held.Load())
	e.Tick(later + 29e9)
	require.Equal(t, int64(1), s.Stats().Subscribers, "not due yet")
	e.Tick(later + 31e9)
	require.Equal(t, int64(0), s.Stats().Subscribers, "expired on time")
	require.False(t, s.held.Load())
	// A remembered CONSUME ID and a call released before it was admitted
	// (the other two tables) raise it too, and keep it up until they go.
	at := later + 40e9
	require.True(t, e.Consume(at, svc, nil, 1, []byte("id-1")).Admitted())
	require.True(t, s.held.Load())
	e.Tick(at + int64(e.cfg.IdempotencyWindow) + 1e9)
	require.False(t, s.held.Load())
	at += int64(e.cfg.IdempotencyWindow) + 2e9
	e.Ended(at, svc, []byte("never-admitted"))
	require.True(t, s.held.Load(), "an ended call is held")
	e.Tick(at + int64(EndedFor) - 1e9)
	require.True(t, s.held.Load())
	e.Tick(at + int64(EndedFor) + 1e9)
	require.False(t, s.held.Load())
}

func TestSubscribers(t *testing.T) {
	l := Limits{Licensed: true, CAPS: 1, Sessions: Unlimited, Subscribers: 3, Tokens: Unlimited}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	sub := func(i int) []byte { return []byte(fmt.Sprintf("sip:+1555000%d@example.net", i)) }
	require.Equal(t, Decision{Reason: OK, Remaining: 2}, e.Register(now, svc, sub(1), 60))
	require.Equal(t, Decision{Reason: OK, Remaining: 2}, e.Register(now, svc, sub(1), 60), "re-register refreshes, never counts twice")
	require.True(t, e.Register(now, svc, sub(2), 60).Admitted())
	require.True(t, e.Register(now, svc, sub(3), 3600).Admitted())
	d := e.Register(now, svc, sub(4), 60)
	require.Equal(t, SUBSCRIBERS, d.Reason)
	require.Greater(t, d.RetryAfterMS, int64(0))
	// sub 1 refreshed at +50 s lives until +110 s; sub 2 ends at +60 s.
	require.True(t, e.Register(now+50e9, svc, sub(1), 60).Admitted())
	require.True(t, e.Register(now+61e9, svc, sub(4), 60).Admitted())
	require.Equal(t, SUBSCRIBERS, e.Register(now+61e9, svc, sub(5), 60).Reason)
	require.True(t, e.Deregister(now+61e9, svc, sub(4)))
	require.False(t, e.Deregister(now+61e9, svc, sub(4)))
	require.True(t, e.Register(now+61e9, svc, sub(5), 0).Admitted())
	e.Tick(now + 200e9)
	require.Equal(t, int64(2), e.Service("voice").Stats().Subscribers, "subs 3 (1 h) and 5 (default 1 h) remain")
}

func TestTokenPoolExact(t *testing.T) {
	f := func(ov Overage, want int) {
		t.Helper()
		l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 1000, TokensPerAttempt: 1, Overage: ov}
		e, clk := newTestEngine(t, l)
		ok, reasons := admitted(2000, func(int) Decision { return e.Admit(clk.Now(), svc, nil, nil, Normal) })
		require.Equal(t, want, ok, ov.String())
		require.Equal(t, 2000-want, reasons[TOKENS])
		st := e.Service("voice").Stats()
		require.Equal(t, int64(want), st.TokensUsed)
		require.Equal(t, int64(max(want-1000, 0)), st.Overage)
	}
	f(Overage{}, 1000)
	f(Overage{Kind: OveragePercent, Percent: 10}, 1100)
	f(Overage{Kind: OverageUnlimited}, 2000)
}

// In a cluster a node draws on the service pool up to its budget.
func TestSharedTokenPool(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 1000,
		TokensShared: true, TokensBudget: 400}
	e, clk := newTestEngine(t, l)
	consume := func(n int64) Decision { return e.Consume(clk.Now(), svc, nil, n, nil) }
	require.Equal(t, Decision{Reason: OK, Remaining: 100}, consume(300))
	require.Equal(t, Decision{Reason: OK, Remaining: 0}, consume(100))
	require.Equal(t, TOKENS, consume(1).Reason)
	l.TokensBudget = 550
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 0}, consume(150))
	require.Equal(t, TOKENS, consume(1).Reason)
	// A budget cut below what was charged refuses, and never goes negative.
	l.TokensBudget = 100
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: TOKENS, RetryAfterMS: retryUnlicensedMS, Remaining: 0}, consume(1))
	require.Equal(t, int64(550), e.Service("voice").Stats().PoolUsed)
	// Alone again: the whole pool.
	l.TokensShared = false
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 0}, consume(450))
}

func TestConsumeIdempotentAndAccounts(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 1000, TokensPerMinute: 2}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	require.NoError(t, e.SetAccount("voice", "acme", 300, Overage{}))
	require.ErrorContains(t, e.SetAccount("voice", "big", 701, Overage{}), "already allocated")
	require.Equal(t, Decision{Reason: OK, Remaining: 200}, e.Consume(now, svc, acct, 100, []byte("tx-1")))
	require.Equal(t, Decision{Reason: OK, Remaining: 200}, e.Consume(now, svc, acct, 100, []byte("tx-1")), "same ID, same answer")
	require.Equal(t, Decision{Reason: OK, Remaining: 600}, e.Consume(now, svc, []byte("walk-in"), 100, []byte("tx-1")), "IDs are per account")
	d := e.Consume(now, svc, acct, 250, []byte("tx-2"))
	require.Equal(t, TOKENS, d.Reason)
	require.Equal(t, int64(200), d.Remaining)
	require.NoError(t, e.SetAccount("voice", "acme", 500, Overage{}))
	require.Equal(t, Decision{Reason: OK, Remaining: 150}, e.Consume(now, svc, acct, 250, []byte("tx-2")), "a refused charge left its ID free")
	// Per-minute charging on release goes to the call's account.
	require.True(t, e.Admit(now, svc, []byte("c1"), acct, Normal).Admitted())
	require.True(t, e.Release(now, svc, []byte("c1"), 61))
	require.Equal(t, Decision{Reason: OK, Remaining: 145}, e.Consume(now, svc, acct, 1, nil), "2 minutes × 2 tokens charged")
	// IDs are forgotten after the window.
	later := now + int64(10*time.Minute) + 1
	require.Equal(t, Decision{Reason: OK, Remaining: 45}, e.Consume(later, svc, acct, 100, []byte("tx-1")))
}

// In a cluster an account's pool is its budget here; the limits name only
// the budgets that changed, and the others keep theirs. An account never
// given one charges nothing; an allocation made meanwhile keeps the
// budget; a pool no longer shared is the whole allocation again.
func TestAccountBudgetsArriveAsChanges(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 1000,
		TokensShared: true, TokensBudget: 100}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	require.NoError(t, e.SetAccount("voice", "acme", 300, Overage{}))
	require.NoError(t, e.SetAccount("voice", "zeta", 300, Overage{}))
	require.Equal(t, TOKENS, e.Consume(now, svc, acct, 1, nil).Reason, "no budget yet")
	l.AccountBudgets = map[string]int64{"acme": 50}
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 40}, e.Consume(now, svc, acct, 10, nil))
	l.AccountBudgets = map[string]int64{"zeta": 70}
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 30}, e.Consume(now, svc, acct, 10, nil), "acme kept its budget")
	require.Equal(t, Decision{Reason: OK, Remaining: 69}, e.Consume(now, svc, []byte("zeta"), 1, nil))
	require.NoError(t, e.SetAccount("voice", "acme", 40, Overage{}))
	require.Equal(t, Decision{Reason: OK, Remaining: 19}, e.Consume(now, svc, acct, 1, nil), "the smaller of 40 allocated and 50 budgeted")
	l.TokensShared, l.AccountBudgets = false, nil
	require.NoError(t, e.SetLimits("voice", l))
	require.Equal(t, Decision{Reason: OK, Remaining: 299 - 1}, e.Consume(now, svc, []byte("zeta"), 1, nil), "all of its allocation")
}

func TestSetLimitsLiveKeepsState(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(500))
	now := clk.Now()
	ok, _ := admitted(200, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 50, ok)
	require.NoError(t, e.SetLimits("voice", capsOnly(1000)))
	// The bucket keeps what it owed, in attempts (50), not in time: the new
	// depth of 100 has 50 left. It is neither reset to full nor left with
	// the old, slower debt.
	ok, _ = admitted(200, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 50, ok)
	start := now + int64(time.Second)
	ok, _ = admitted(10000, func(i int) Decision {
		return e.Admit(start+int64(i)*int64(100*time.Microsecond), svc, nil, nil, Normal)
	})
	require.InDelta(t, 1000+100, ok, 1)
	require.Equal(t, uint64(50+50+ok), e.Service("voice").Stats().Admissions[OK])
}

// TestRateFallKeepsTheDebt: a bucket that spent its burst and whose rate
// falls (a cluster node whose share moves to another) keeps owing every
// attempt it admitted, beyond its new, smaller depth: it admits the new
// rate less what it still owes, not a fresh part of a burst.
func TestRateFallKeepsTheDebt(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	now := clk.Now()
	burst, _ := admitted(1000, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 100, burst, "1000 CAPS: a depth of 0.1 s")
	require.NoError(t, e.SetLimits("voice", capsOnly(500)))
	// Owed: 100 attempts = 200 ms at 500/s; the new depth is 50. Over the
	// next second, 2000 offered evenly: 500 refilled − 50 owed beyond the
	// depth = 450.
	ok, _ := admitted(2000, func(i int) Decision {
		return e.Admit(now+int64(i+1)*int64(500*time.Microsecond), svc, nil, nil, Normal)
	})
	require.InDelta(t, 450, ok, 2)
}

// TestRateRiseIsUsableAtOnce: a bucket that ran at a trickle (a cluster
// node's floor share) and took one attempt must not keep the trickle's
// debt once its rate rises.
func TestRateRiseIsUsableAtOnce(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(0.5))
	now := clk.Now()
	require.True(t, e.Admit(now, svc, nil, nil, Normal).Admitted())
	require.NoError(t, e.SetLimits("voice", capsOnly(50)))
	ok, _ := admitted(150, func(i int) Decision {
		return e.Admit(now+int64(i)*int64(10*time.Millisecond), svc, nil, nil, Normal)
	})
	require.GreaterOrEqual(t, ok, 70, "1.5 s at 50 CAPS, one attempt owed")
}

func TestCountsSaturate(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited, TokensPerMinute: 1000}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	require.True(t, e.Admit(now, svc, []byte("c"), nil, Normal).Admitted())
	require.True(t, e.Release(now, svc, []byte("c"), math.MaxInt64))
	require.Equal(t, int64(MaxReleaseSeconds/60*1000), e.Service("voice").Stats().TokensUsed)
	require.True(t, e.Consume(now, svc, acct, math.MaxInt64, nil).Admitted())
	require.True(t, e.Consume(now, svc, acct, math.MaxInt64, nil).Admitted())
	require.Equal(t, int64(math.MaxInt64), e.Service("voice").Stats().TokensUsed)
}

func TestNoAllocations(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited, TokensPerMinute: 1}
	e, clk := newTestEngine(t, l)
	now := clk.Now()
	call, sub := []byte("a84b4c76e66710@pc33.atlanta.example.com"), []byte("sip:alice@atlanta.example.com")
	// Warm up the tables to their working size.
	for i := 0; i < 10; i++ {
		e.Admit(now, svc, call, acct, Normal)
		e.Release(now, svc, call, 60)
	}
	f := func(name string, fn func()) {
		t.Helper()
		require.Zero(t, testing.AllocsPerRun(1000, fn), name)
	}
	f("admit", func() { e.Admit(now, svc, nil, nil, Normal) })
	f("admit call + release", func() { e.Admit(now, svc, call, acct, High); e.Release(now, svc, call, 61) })
	f("register", func() { e.Register(now, svc, sub, 3600) })
	f("consume", func() { e.Consume(now, svc, acct, 1, nil) })
	f("unknown", func() { e.Admit(now, []byte("other"), nil, nil, Normal) })
}

func BenchmarkAdmit(b *testing.B) {
	e, clk := newTestEngine(b, capsOnly(1e9))
	now := clk.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.Admit(now+int64(i), svc, nil, nil, Normal)
	}
}

func BenchmarkAdmitParallel(b *testing.B) {
	e, clk := newTestEngine(b, capsOnly(1e9))
	now := clk.Now()
	var i atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Admit(now+i.Add(1), svc, nil, nil, Normal)
		}
	})
}

func BenchmarkAdmitCallRelease(b *testing.B) {
	e, clk := newTestEngine(b, Limits{Licensed: true, CAPS: 1e9, Sessions: 1 << 30, Subscribers: Unlimited, Tokens: Unlimited})
	now := clk.Now()
	calls := make([][]byte, 1024)
	for i := range calls {
		calls[i] = []byte(fmt.Sprintf("%08x-4b1c-11ef-9c3a-0242ac120002@10.0.0.1", i))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c := calls[i%len(calls)]
		e.Admit(now, svc, c, nil, Normal)
		e.Release(now, svc, c, 0)
	}
}

func BenchmarkRegister(b *testing.B) {
	e, clk := newTestEngine(b, Limits{Licensed: true, CAPS: 1, Sessions: 1, Subscribers: Unlimited, Tokens: Unlimited})
	now := clk.Now()
	subs := make([][]byte, 1024)
	for i := range subs {
		subs[i] = []byte(fmt.Sprintf("sip:+1555%07d@example.net", i))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.Register(now, svc, subs[i%len(subs)], 3600)
	}
}

// TestMadeUpEmergencyServicesAreBounded: emergency calls naming services no
// licence covers are admitted and held under one bucket, UnlicensedBucket,
// each call-id scoped by the name it gave; they add no service, and never
// stop a licence from taking effect.
func TestMadeUpEmergencyServicesAreBounded(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(10))
	now := clk.Now()
	for i := range 5000 {
		require.True(t, e.Admit(now, []byte(fmt.Sprintf("x%d", i)), []byte("sos"), nil, Emergency).Admitted())
	}
	require.Len(t, e.Services(), 2, "voice and the bucket")
	b := e.Service(UnlicensedBucket).Stats()
	require.Equal(t, int64(5000), b.EmergencySessions, "the same call-id under 5000 names: 5000 calls")
	require.Equal(t, uint64(5000), b.Emergency)
	require.False(t, e.Release(now, []byte("x5000"), []byte("sos"), 0), "no such call under that name")
	require.True(t, e.Release(now, []byte("x4999"), []byte("sos"), 0))
	// A licence for one of the names: its calls already open are still
	// released by name.
	require.NoError(t, e.SetLimits("x7", capsOnly(10)))
	require.True(t, e.Admit(now, []byte("x7"), nil, nil, Normal).Admitted())
	require.True(t, e.Release(now, []byte("x7"), []byte("sos"), 0))
	require.Equal(t, int64(4998), e.Service(UnlicensedBucket).Stats().EmergencySessions)
}

// TestEmergencySessionsAreBounded: at most MaxEmergencySessions emergency
// sessions are open on a node, licensed services and the bucket together;
// beyond, an emergency call with CALL is refused OVERLOAD (and counted so),
// one without CALL is still admitted, and a release makes room. 0 means the
// default; 1 holds one.
func TestEmergencySessionsAreBounded(t *testing.T) {
	require.Equal(t, 100_000, NewEngine(Config{}).Config().MaxEmergencySessions)
	e, clk := newTestEngine(t, capsOnly(10), func(c *Config) { c.MaxEmergencySessions = 3 })
	now := clk.Now()
	sos := func(service, call string) Decision {
		var c []byte
		if call != "" {
			c = []byte(call)
		}
		return e.Admit(now, []byte(service), c, nil, Emergency)
	}
	require.True(t, sos("voice", "a").Admitted())
	require.True(t, sos("nosuch", "b").Admitted())
	require.True(t, sos("other", "c").Admitted())
	d := sos("voice", "d")
	require.Equal(t, OVERLOAD, d.Reason)
	require.Equal(t, int64(1000), d.RetryAfterMS)
	require.Equal(t, OVERLOAD, sos("nosuch", "e").Reason)
	require.True(t, sos("voice", "a").Admitted(), "a retransmission of an open call")
	require.True(t, sos("voice", "").Admitted(), "no CALL: nothing held")
	require.Equal(t, uint64(1), e.Service("voice").Stats().Admissions[OVERLOAD])
	require.True(t, e.Release(now, []byte("nosuch"), []byte("b"), 0))
	require.True(t, sos("voice", "d").Admitted())
	// Expiry makes room too.
	clk.Advance(e.Config().SessionTTL + time.Second)
	e.Tick(clk.Now())
	now = clk.Now()
	for _, c := range []string{"x", "y", "z"} {
		require.True(t, sos("voice", c).Admitted(), c)
	}
	require.Equal(t, OVERLOAD, sos("voice", "w").Reason)

	one, clk1 := newTestEngine(t, capsOnly(10), func(c *Config) { c.MaxEmergencySessions = 1 })
	require.True(t, one.Admit(clk1.Now(), []byte("voice"), []byte("a"), nil, Emergency).Admitted())
	require.Equal(t, OVERLOAD, one.Admit(clk1.Now(), []byte("voice"), []byte("b"), nil, Emergency).Reason)
}

func TestRepeatRunsUntilStopped(t *testing.T) {
	stop := make(chan struct{})
	var waits []time.Duration
	plan := []time.Duration{3 * time.Millisecond, 0, -time.Second} // a negative wait runs at once
	Repeat(stop, 0, func() time.Duration {
		waits = append(waits, plan[len(waits)])
		if len(waits) == len(plan) {
			close(stop)
		}
		return waits[len(waits)-1]
	})
	require.Len(t, waits, 3, "fn ran three times, then Repeat returned on stop")
	// Closed before the first run: fn never runs.
	done := make(chan struct{})
	close(done)
	Repeat(done, time.Hour, func() time.Duration { t.Fatal("ran after stop"); return 0 })
}

// A bucket lent part of a farm's depth keeps a reserve beside it; one that
// holds the whole of it (its part rounded a hair below 1) is alone and
// keeps the licence's depth, no more.
func TestLentDepth(t *testing.T) {
	f := func(share float64, caps float64, want int64) {
		t.Helper()
		e := NewEngine(Config{Clock: NewFakeClock()})
		require.NoError(t, e.SetLimits("voice", Limits{Licensed: true, CAPS: caps, LicensedCAPS: 1000, DepthShared: true, DepthShare: share,
			Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}))
		require.Equal(t, want, e.Service("voice").Stats().Burst, "part %v at %v CAPS", share, caps)
	}
	f(1, 1000, 100)
	f(1-1e-9, 1000-1e-7, 100)
	// The whole depth lent to a node that shares the licence: its reserve
	// stays beside it (it may owe the whole depth).
	f(1, 945, 100+Reserve(945))
	f(0.5, 500, 50+Reserve(500))
	f(0, 300, Reserve(300))
	f(0, 0.01, 1) // a closed-looking share still has a token of depth
	require.Equal(t, int64(30), Reserve(500))
}

// A spilled attempt counts once in the farm: a spillable refusal counts
// only when settled (Refused, or SpilledOut when another member admitted
// it, in the demand only); the member that decides a spilled attempt
// counts it admitted (and SpilledIn) but not refused.
func TestSpilledAttemptsCountOnce(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: 1, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited})
	svc := []byte("voice")
	now := clk.Now()
	stats := func() Stats { return e.Service("voice").Stats() }
	require.Equal(t, OK, e.AdmitSpillable(now, svc, nil, nil, Normal).Reason)
	require.Equal(t, CAPS, e.AdmitSpillable(now, svc, nil, nil, Normal).Reason)
	require.Equal(t, CAPS, e.AdmitSpillable(now, svc, []byte("c1"), nil, Normal).Reason, "the session path too")
	st := stats()
	require.Equal(t, uint64(1), st.Admissions[OK])
	require.Zero(t, st.Admissions[CAPS], "not counted before it is settled")
	e.Refused(svc, nil, CAPS)
	e.SpilledOut(svc, nil)
	st = stats()
	require.Equal(t, uint64(1), st.Admissions[CAPS])
	require.Equal(t, uint64(1), st.SpilledOut)

	require.Equal(t, CAPS, e.AdmitSpilled(now, svc, nil, nil, Normal).Reason)
	require.Equal(t, uint64(1), stats().Admissions[CAPS], "a spilled attempt refused here is counted by its member")
	require.Equal(t, CAPS, e.Admit(now, svc, nil, nil, Normal).Reason)
	require.Equal(t, uint64(2), stats().Admissions[CAPS], "Admit counts at once")
	clk.Advance(2 * time.Second)
	require.Equal(t, OK, e.AdmitSpilled(clk.Now(), svc, nil, nil, Normal).Reason)
	st = stats()
	require.Equal(t, uint64(2), st.Admissions[OK])
	require.Equal(t, uint64(1), st.SpilledIn)
}

// A call a client RELEASEd before its ADMIT reached this node (a proxy that
// gave up on a stalled node) is marked ended: the late ADMIT is answered
// and counted but opens no session, and its retransmissions get the same
// answer, uncounted, opening none either (EndedFor after it); the mark
// lasts EndedFor, and at most MaxEnded are kept.
func TestEndedCallOpensNoSession(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: 10, Subscribers: Unlimited, Tokens: Unlimited})
	s := e.Service("voice")
	call := []byte("a84b4c76e66710@pc33.example.com")
	require.False(t, e.Release(clk.Now(), svc, call, 0))
	e.Ended(clk.Now(), svc, call)
	d := e.Admit(clk.Now(), svc, call, nil, Normal)
	require.True(t, d.Admitted())
	require.Equal(t, int64(0), s.Stats().Sessions, "the late ADMIT opened no session")
	require.Equal(t, uint64(1), s.Stats().Admissions[OK], "and was counted")
	// A retransmission: the same answer, not counted, no session.
	clk.Advance(time.Second)
	require.Equal(t, d, e.Admit(clk.Now(), svc, call, nil, High))
	require.Equal(t, int64(0), s.Stats().Sessions, "the retransmission opened no session")
	require.Equal(t, uint64(1), s.Stats().Admissions[OK], "nor was counted")
	require.False(t, e.Release(clk.Now(), svc, call, 0))
	e.Ended(clk.Now(), svc, call) // the RELEASE's mark: the answered one stays
	clk.Advance(EndedFor - 2*time.Second)
	e.Tick(clk.Now())
	require.Equal(t, d, e.Admit(clk.Now(), svc, call, nil, Normal), "until EndedFor after the answer")
	require.Equal(t, int64(0), s.Stats().Sessions)
	require.Equal(t, uint64(1), s.Stats().Admissions[OK])
	// Past it the call-id is new again.
	clk.Advance(time.Second)
	e.Tick(clk.Now())
	require.True(t, e.Admit(clk.Now(), svc, call, nil, Normal).Admitted())
	require.Equal(t, int64(1), s.Stats().Sessions)
	require.True(t, e.Release(clk.Now(), svc, call, 0))

	// An emergency call too.
	e.Ended(clk.Now(), svc, []byte("e-1"))
	require.True(t, e.Admit(clk.Now(), svc, []byte("e-1"), nil, Emergency).Admitted())
	require.Equal(t, int64(0), s.Stats().EmergencySessions)
	require.Equal(t, Decision{Reason: OK, Remaining: -1}, e.Admit(clk.Now(), svc, []byte("e-1"), nil, Emergency))
	require.Equal(t, int64(0), s.Stats().EmergencySessions)

	// A mark lasts EndedFor.
	e.Ended(clk.Now(), svc, []byte("c-2"))
	clk.Advance(EndedFor)
	e.Tick(clk.Now())
	require.True(t, e.Admit(clk.Now(), svc, []byte("c-2"), nil, Normal).Admitted())
	require.Equal(t, int64(1), s.Stats().Sessions, "after EndedFor the ADMIT opens its session")

	// At most MaxEnded are kept: the one past it is not marked.
	for i := range MaxEnded + 1 {
		e.Ended(clk.Now(), svc, fmt.Appendf(nil, "x-%d", i))
	}
	s.mu.Lock()
	n := s.ended.len()
	s.mu.Unlock()
	require.Equal(t, MaxEnded, n)
	require.True(t, e.Admit(clk.Now(), svc, fmt.Appendf(nil, "x-%d", MaxEnded), nil, Normal).Admitted())
	require.Equal(t, int64(2), s.Stats().Sessions)
	// A service no licence made: nothing marked, nothing made.
	e.Ended(clk.Now(), []byte("nobody"), call)
	require.Nil(t, e.Service("nobody"))
}

// SetLimitsAt changes a bucket's rate at the instant it is given, not at
// the engine clock's: an engine whose clock stands still and one whose
// clock reached that instant decide a seeded Poisson stream alike after a
// rate change at the same instant (what the bucket owes is rescaled from
// there: from the clock's instant instead, the still engine admitted none
// of the next 2,000 where the other admitted 217).
func TestSetLimitsAtTheGivenInstant(t *testing.T) {
	high, low := capsOnly(1000), capsOnly(100)
	moved, clk := newTestEngine(t, high)
	still, _ := newTestEngine(t, high)
	rng := rand.New(rand.NewPCG(7, 7))
	at := clk.Now()
	decide := func(n int) (admitted [2]int) {
		for range n {
			at += int64(rng.ExpFloat64() * 1e6) // Poisson, 1,000/s
			for i, e := range []*Engine{moved, still} {
				if e.Admit(at, []byte("voice"), nil, nil, Normal).Reason == OK {
					admitted[i]++
				}
			}
		}
		return admitted
	}
	before := decide(500)
	require.Equal(t, before[0], before[1])
	clk.Set(at)
	require.NoError(t, moved.SetLimits("voice", low))
	require.NoError(t, still.SetLimitsAt(at, "voice", low))
	after := decide(2000)
	require.Equal(t, after[0], after[1], "the same change at the same instant")
	require.Less(t, after[0], 4*before[0]/3, "the lower rate admits fewer")
}

// TestServicesSortedAndShared: Services lists every service by name
// without copying or sorting at each call, and a list handed out is never
// changed by a service added after it.
func TestServicesSortedAndShared(t *testing.T) {
	e := NewEngine(DefaultConfig())
	require.Empty(t, e.Services())
	for _, n := range []string{"m", "b", "x", "a", "n"} {
		require.NoError(t, e.SetLimits(n, DevLimits()))
	}
	names := func(ss []*Service) (out []string) {
		for _, s := range ss {
			out = append(out, s.Name())
		}
		return out
	}
	before := e.Services()
	require.Equal(t, []string{"a", "b", "m", "n", "x"}, names(before))
	require.NoError(t, e.SetLimits("c", DevLimits()))
	require.NoError(t, e.SetLimits("m", DevLimits()), "a known service adds nothing")
	require.Equal(t, []string{"a", "b", "m", "n", "x"}, names(before), "the list handed out before")
	require.Equal(t, []string{"a", "b", "c", "m", "n", "x"}, names(e.Services()))
	require.Equal(t, len(e.Services()), cap(e.Services()), "an append by a caller copies")
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = e.Services() }))
}
