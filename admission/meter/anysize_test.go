package meter

import (
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// syncEngine is an engine whose short charges wait for a reservation made
// at once, on the charging goroutine (the node waits for its reserver
// goroutine instead; TestAwait checks that path): time stands still, so
// the tests step through reservations deterministically. steps counts the
// reservations charges waited for.
func syncEngine(t testing.TB, l admission.Limits) (*admission.Engine, *Reserver, *admission.FakeClock, *atomic.Int64) {
	e, res, clk, steps, _ := syncEngineWake(t, l)
	return e, res, clk, steps
}

// syncEngineWake is syncEngine with the engine's Config.ReserveWake.
func syncEngineWake(t testing.TB, l admission.Limits) (*admission.Engine, *Reserver, *admission.FakeClock, *atomic.Int64, chan struct{}) {
	clk := admission.NewFakeClock()
	wake := make(chan struct{}, 1)
	cfg := admission.DefaultConfig()
	var res *Reserver
	steps := new(atomic.Int64)
	cfg.Clock, cfg.DurableTokens, cfg.ReserveWake = clk, true, wake
	cfg.AwaitReserve = func() bool { steps.Add(1); return res.Step(t0) == nil }
	e := admission.NewEngine(cfg)
	l.Licensed, l.CAPS, l.Sessions, l.Subscribers = true, admission.Unlimited, admission.Unlimited, admission.Unlimited
	require.NoError(t, e.SetLimits("pre", l))
	var err error
	res, err = OpenReserver(e, t.TempDir(), slog.Default())
	require.NoError(t, err)
	require.NoError(t, res.Step(t0))
	return e, res, clk, steps, wake
}

// restart is a kill -9 and a restart on res's state file: the pools of
// service pre as a new engine restores them.
func restart(t *testing.T, res *Reserver, l admission.Limits) map[string]admission.PoolState {
	t.Helper()
	e2 := admission.NewEngine(admission.Config{DurableTokens: true})
	l.Licensed, l.CAPS, l.Sessions, l.Subscribers = true, admission.Unlimited, admission.Unlimited, admission.Unlimited
	require.NoError(t, e2.SetLimits("pre", l))
	res2, err := OpenReserver(e2, filepathDir(res), slog.Default())
	require.NoError(t, err)
	res2.Restore()
	out := map[string]admission.PoolState{}
	for _, p := range e2.Service("pre").Pools() {
		out[p.Account] = p
	}
	return out
}

func filepathDir(r *Reserver) string { return r.dir }

// A CONSUME of any size the pool can take is charged on its first try,
// from an idle pool whose reservation covers MinBlock, on the service's
// pool and on an account's; one the pool cannot take is refused TOKENS
// and makes no reservation; a kill -9 after it counts every charge and at
// most the lookahead more.
func TestChargesOfAnySizeOnTheFirstTry(t *testing.T) {
	const pool = 1_000_000_000
	f := func(account string, units int64, want admission.Reason) {
		t.Helper()
		lim := admission.Limits{Tokens: pool}
		if account == "" {
			lim.Tokens = pool
		} else {
			lim.Tokens = 2 * pool
		}
		e, res, clk, steps := syncEngine(t, lim)
		if account != "" {
			require.NoError(t, res.SetAccount("pre", account, admission.Allocation{Tokens: pool, Overage: "none"}))
		}
		d := e.Consume(clk.Now(), []byte("pre"), []byte(account), units, nil)
		require.Equal(t, want, d.Reason, "account %q, %d units: %+v", account, units, d)
		p := poolOf(e, account)
		charged := int64(0)
		if want == admission.OK {
			charged = max(units, 0)
			if units > MinBlock {
				require.Equal(t, int64(1), steps.Load(), "one reservation waited for")
			}
		} else {
			require.Zero(t, steps.Load(), "a charge the pool refuses does not wait")
		}
		require.Equal(t, charged, p.Total)
		require.LessOrEqual(t, p.Total, p.Durable, "charged under the reservation")
		after := restart(t, res, lim)[account]
		require.GreaterOrEqual(t, after.Total, charged, "kill -9 under-counted")
		require.LessOrEqual(t, after.Total-charged, int64(2*MinBlock), "over-count beyond the lookahead")
		require.LessOrEqual(t, after.Total, int64(pool), "reserved past the pool")
	}
	for _, acct := range []string{"", "acme"} {
		f(acct, 0, admission.OK)
		f(acct, 1, admission.OK)
		f(acct, MinBlock+1, admission.OK)
		f(acct, pool-1, admission.OK)
		f(acct, pool, admission.OK)
		f(acct, pool+1, admission.TOKENS)
		f(acct, math.MaxInt64, admission.TOKENS)
	}
}

func poolOf(e *admission.Engine, account string) admission.PoolState {
	for _, p := range e.Service("pre").Pools() {
		if p.Account == account {
			return p
		}
	}
	return admission.PoolState{Durable: -1}
}

// The same at the ends of the range: an unlimited pool and one of
// math.MaxInt64 tokens take a charge of math.MaxInt64 on the first try.
func TestChargesAtTheEndOfTheRange(t *testing.T) {
	f := func(tokens, units int64) {
		t.Helper()
		e, _, clk, _ := syncEngine(t, admission.Limits{Tokens: tokens})
		d := e.Consume(clk.Now(), []byte("pre"), nil, units, nil)
		require.Equal(t, admission.OK, d.Reason, "%d of %d: %+v", units, tokens, d)
		require.True(t, e.Consume(clk.Now(), []byte("pre"), nil, 1, nil).Admitted() || tokens != admission.Unlimited)
		p := poolOf(e, "")
		require.LessOrEqual(t, p.Total, p.Durable)
	}
	f(admission.Unlimited, math.MaxInt64)
	f(admission.Unlimited, math.MaxInt64-1)
	f(math.MaxInt64, math.MaxInt64)
	f(math.MaxInt64, math.MaxInt64-1)
}

// tokens_per_attempt and tokens_per_minute of any size up to the pool are
// charged on the first ADMIT and at the RELEASE; the minutes of an ended
// call even beyond the pool (they were used), under a reservation.
func TestLicenceChargesOfAnySize(t *testing.T) {
	const pool = 10_000_000
	lim := admission.Limits{Tokens: pool, TokensPerAttempt: pool / 2, TokensPerMinute: pool / 4}
	e, res, clk, _ := syncEngine(t, lim)
	require.Equal(t, admission.OK, e.Admit(clk.Now(), []byte("pre"), []byte("c1"), nil, admission.Normal).Reason)
	require.Equal(t, admission.OK, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason)
	require.Equal(t, admission.TOKENS, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason)
	require.True(t, e.Release(clk.Now(), []byte("pre"), []byte("c1"), 150)) // 3 minutes
	p := poolOf(e, "")
	require.Equal(t, int64(pool+3*pool/4), p.Total, "the minutes beyond the pool are charged: they were used")
	require.LessOrEqual(t, p.Total, p.Durable, "and reserved first")
	after := restart(t, res, lim)[""]
	require.GreaterOrEqual(t, after.Total, p.Total)
	require.LessOrEqual(t, after.Total-p.Total, int64(2*MinBlock))

	// The first ADMIT of a licence costing the whole pool.
	lim = admission.Limits{Tokens: pool, TokensPerAttempt: pool}
	e, _, clk, _ = syncEngine(t, lim)
	require.Equal(t, admission.OK, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason)
	require.Equal(t, admission.TOKENS, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason)
}

// Mixed sizes from 1 to 10^6, the reserver woken as in a node (when half
// the lookahead is left, or a charge waits): no charge is refused, none is
// charged past its reservation, and a kill -9 at any point counts every
// charge and at most the lookahead and the charge waiting more. Time
// stands still (no rate is measured): the lookahead grows only while a
// charge finds less than it needs, to twice the largest charge at most.
func TestMixedSizesKill(t *testing.T) {
	lim := admission.Limits{Tokens: 1 << 50}
	e, res, clk, steps, wake := syncEngineWake(t, lim)
	lows := 0
	rng := uint64(1)
	var charged int64
	for i := range 2000 {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		n := int64(rng%1_000_000) + 1
		d := e.Consume(clk.Now(), []byte("pre"), nil, n, nil)
		require.Equal(t, admission.OK, d.Reason, "charge %d of %d: %+v", i, n, d)
		charged += n
		select {
		case <-wake: // half the lookahead left (or a charge waited)
			require.NoError(t, res.Step(t0))
			lows++
		default:
		}
		if i%200 == 199 {
			p := poolOf(e, "")
			require.Equal(t, charged, p.Total)
			after := restart(t, res, lim)[""]
			require.GreaterOrEqual(t, after.Total, charged, "kill -9 under-counted")
			require.Equal(t, p.Durable, after.Total)
			require.LessOrEqual(t, after.Total-charged, int64(4*1_000_000+1_000_000), "over-count after %d charges", i+1)
		}
	}
	t.Logf("2,000 charges of 1..10^6 tokens: %d reservations waited for, %d made at low water", steps.Load(), lows)
}

// Await returns once a Step begun after it has written; at once with
// false while the last Step failed (a full disk), and the charge is then
// refused OVERLOAD.
func TestAwait(t *testing.T) {
	clk := admission.NewFakeClock()
	wake := make(chan struct{}, 1)
	cfg := admission.DefaultConfig()
	var res *Reserver
	cfg.Clock, cfg.DurableTokens, cfg.ReserveWake = clk, true, wake
	cfg.AwaitReserve = func() bool { return res.Await() }
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("pre", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 1e12}))
	dir := t.TempDir()
	var err error
	res, err = OpenReserver(e, dir, slog.Default())
	require.NoError(t, err)
	require.NoError(t, res.Step(t0))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the node's reserving loop
		for {
			select {
			case <-stop:
				return
			case <-wake:
				_ = res.Step(time.Now())
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	for _, n := range []int64{5000, 1e9, 1e11} {
		require.Equal(t, admission.OK, e.Consume(clk.Now(), []byte("pre"), nil, n, nil).Reason, "%d", n)
	}

	// The token log can no longer be written (as on a full disk).
	res.mu.Lock()
	require.NoError(t, res.store.file.Close())
	res.mu.Unlock()
	start := time.Now()
	d := e.Consume(clk.Now(), []byte("pre"), nil, 1e11, nil)
	require.Equal(t, admission.OVERLOAD, d.Reason)
	require.Less(t, time.Since(start), 3*MaxWait, "one failed write waited for, no more")
	start = time.Now()
	require.Equal(t, admission.OVERLOAD, e.Consume(clk.Now(), []byte("pre"), nil, 1e11, nil).Reason)
	require.Less(t, time.Since(start), MaxWait/2, "while writes fail, a charge does not wait")
	require.True(t, e.Consume(clk.Now(), []byte("pre"), nil, 1, nil).Admitted(), "charges within the reservation go on")
}

// A charge its reservation covers takes the service's mutex only and
// allocates nothing, with reservations on and charges able to wait.
func TestCoveredChargesAllocateNothing(t *testing.T) {
	e, _, clk, steps := syncEngine(t, admission.Limits{Tokens: 1 << 40, TokensPerAttempt: 1})
	service, acct := []byte("pre"), []byte("acme")
	allocs := testing.AllocsPerRun(200, func() {
		e.Consume(clk.Now(), service, acct, 2, nil)
		e.Admit(clk.Now(), service, nil, nil, admission.Normal)
	})
	require.Zero(t, allocs)
	require.Zero(t, steps.Load(), "all within the first reservation")
	require.Equal(t, int64(200*3+3), poolOf(e, "").Total) // AllocsPerRun runs it once more first
}
