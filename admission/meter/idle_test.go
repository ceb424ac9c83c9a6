package meter

import (
	"log/slog"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// idleEngine is an engine whose short charges wait for a Step at *now, run
// on the charging goroutine (waits counts them), and its reserver, which
// takes reservations back after idleAfter.
func idleEngine(t *testing.T, now *time.Time, idleAfter time.Duration) (*admission.Engine, *Reserver, *admission.FakeClock, *int) {
	t.Helper()
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	var res *Reserver
	waits := new(int)
	cfg.Clock, cfg.DurableTokens, cfg.ReserveWake = clk, true, make(chan struct{}, 1)
	cfg.AwaitReserve = func() bool { *waits++; return res.Step(*now) == nil }
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("pre", idleLimits))
	var err error
	res, err = OpenReserver(e, t.TempDir(), slog.Default())
	require.NoError(t, err)
	res.idleAfter = idleAfter
	require.NoError(t, res.Step(*now))
	return e, res, clk, waits
}

var idleLimits = admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
	Subscribers: admission.Unlimited, Tokens: 1 << 40}

// A pool not charged for IdleRelease has its reservation ahead taken
// back: a kill -9 then counts it exactly, where it counted a block more at
// every crash. A pool charged meanwhile keeps its reservation; a released
// pool's next charge waits for one reservation and is made.
func TestIdleReservationsAreTakenBack(t *testing.T) {
	base := t0
	now := base
	e, res, clk, waits := idleEngine(t, &now, IdleRelease)
	accounts := []string{"busy", "once", "never"}
	for _, a := range accounts {
		require.NoError(t, res.SetAccount("pre", a, admission.Allocation{Tokens: 1 << 30, Overage: "none"}))
	}
	charged := map[string]int64{}
	charge := func(acct string, n int64) {
		t.Helper()
		require.Equal(t, admission.OK, e.Consume(clk.Now(), []byte("pre"), []byte(acct), n, nil).Reason, acct)
		charged[acct] += n
	}
	step := func(d time.Duration) {
		t.Helper()
		now = base.Add(d)
		require.NoError(t, res.Step(now))
	}
	// over is what a kill -9 now would count beyond the charges, by pool
	// ("" the service's own).
	over := func() map[string]int64 {
		t.Helper()
		out := map[string]int64{}
		for acct, p := range restart(t, res, idleLimits) {
			out[acct] = p.Total - charged[acct]
			require.GreaterOrEqual(t, out[acct], int64(0), "kill -9 under-counted %q", acct)
		}
		require.Len(t, out, 4)
		return out
	}

	charge("busy", 10)
	charge("once", 10)
	step(IdleRelease - time.Second)
	require.Equal(t, map[string]int64{"": MinBlock, "never": MinBlock, "busy": MinBlock - 10, "once": MinBlock - 10}, over(),
		"within IdleRelease of the start: a block reserved ahead of each")

	step(IdleRelease)
	require.Equal(t, map[string]int64{"": 0, "never": 0, "busy": MinBlock - 10, "once": MinBlock - 10}, over(),
		"the pools not charged are taken back IdleRelease after their reservation")

	charge("busy", 10)
	step(IdleRelease + IdleRelease/2)
	step(2*IdleRelease - time.Second)
	require.Equal(t, map[string]int64{"": 0, "never": 0, "busy": MinBlock - 20, "once": MinBlock - 10}, over())
	step(2 * IdleRelease)
	require.Equal(t, map[string]int64{"": 0, "never": 0, "busy": MinBlock - 20, "once": 0}, over(),
		"a pool not charged for IdleRelease is taken back; one charged meanwhile is not")
	for _, a := range []string{"", "never", "once"} {
		p, ok := e.Service("pre").Pool(a)
		require.True(t, ok)
		require.Equal(t, p.Total, p.Durable, "%q: nothing reserved ahead", a)
	}

	// Steps leave a released pool as it is, and its next charge waits for
	// one reservation.
	step(2*IdleRelease + time.Minute)
	require.Equal(t, int64(0), over()["once"])
	before := *waits
	charge("once", 5)
	require.Equal(t, before+1, *waits, "one reservation waited for")
	o := over()
	require.Positive(t, o["once"], "reserved ahead again")
	require.LessOrEqual(t, o["once"], int64(MinBlock))
	require.Equal(t, int64(0), o["never"])

	// A released pool looked at again (its allocation changed, a new
	// period) is given nothing ahead until a charge waits.
	require.NoError(t, res.SetAccount("pre", "never", admission.Allocation{Tokens: 2 << 30, Overage: "none"}))
	step(2*IdleRelease + 2*time.Minute)
	p, ok := e.Service("pre").Pool("never")
	require.True(t, ok)
	require.Equal(t, p.Total, p.Durable, "a released pool stays released when looked at again")
	require.Equal(t, int64(0), over()["never"])

	// A clean stop is exact for every pool, released or not.
	require.NoError(t, res.Close())
	for acct, p := range restart(t, res, idleLimits) {
		require.Equal(t, charged[acct], p.Total, "%q after a clean stop", acct)
	}
}

// One step takes back at most maxReleases reservations; the next takes
// the rest.
func TestReleasesPerStepAreBounded(t *testing.T) {
	now := t0
	e, res, _, _ := idleEngine(t, &now, IdleRelease)
	const n = maxReleases + 904
	for i := range n {
		require.NoError(t, e.SetAccount("pre", "a"+strconv.Itoa(i), 1<<20, admission.Overage{}))
	}
	require.NoError(t, res.Step(now))
	released := func() (k int) {
		for _, p := range e.Service("pre").Pools() {
			if p.Durable == p.Total {
				k++
			}
		}
		return k
	}
	require.Equal(t, 0, released())
	now = t0.Add(IdleRelease)
	require.NoError(t, res.Step(now))
	require.Equal(t, maxReleases, released(), "the service's pool and the first accounts")
	now = now.Add(StepEvery)
	require.NoError(t, res.Step(now))
	require.Equal(t, n+1, released())
	require.Empty(t, res.ahead[res.aheadHead:])
}

// A pool smaller than 16 blocks reserves a sixteenth of its size ahead (at
// least MinSmallBlock): a kill -9 counts a small account that much more at
// most, where a block covered an account of 900 tokens whole. Charged a
// token at a time, arrivals Poisson at 20 a second (seeded), with a step
// every 50 ms as in a node, it never waits.
func TestSmallPoolsReserveASixteenth(t *testing.T) {
	now := t0
	e, res, clk, waits := idleEngine(t, &now, IdleRelease)
	want := map[string]int64{"s900": 56, "s100": MinSmallBlock, "s15999": 999, "s16000": MinBlock, "": MinBlock}
	for acct := range want {
		if acct != "" {
			size, _ := strconv.ParseInt(acct[1:], 10, 64)
			require.NoError(t, res.SetAccount("pre", acct, admission.Allocation{Tokens: size, Overage: "none"}))
		}
	}
	over := func(charged map[string]int64) map[string]int64 {
		t.Helper()
		out := map[string]int64{}
		for acct, p := range restart(t, res, idleLimits) {
			out[acct] = p.Total - charged[acct]
		}
		return out
	}
	require.Equal(t, want, over(nil), "a kill -9 after the first reservations")

	charged := map[string]int64{}
	rng := rand.New(rand.NewPCG(3, 9))
	at, nextStep := now, now.Add(StepEvery)
	for i := range 800 {
		at = at.Add(time.Duration(rng.ExpFloat64() * float64(StepEvery)))
		for ; !nextStep.After(at); nextStep = nextStep.Add(StepEvery) {
			now = nextStep
			require.NoError(t, res.Step(now))
		}
		require.Equal(t, admission.OK, e.Consume(clk.Now(), []byte("pre"), []byte("s900"), 1, nil).Reason, "charge %d", i)
		charged["s900"]++
	}
	require.Equal(t, 0, *waits, "no charge waited")
	o := over(charged)
	require.LessOrEqual(t, o["s900"], int64(56), "over-count within a sixteenth of the pool")
	require.Positive(t, o["s900"])
	require.Equal(t, admission.TOKENS, e.Consume(clk.Now(), []byte("pre"), []byte("s900"), 101, nil).Reason, "100 left")
}

// Whatever comes in one step (a release due, a charge that waits, an
// allocation raised so that the pool's reservation may grow, a lookahead
// that shrinks as time passes), the engine never allows a pool's charges
// past the reservation the step wrote: a release and a grant or a wake
// mark of the same pool in one step must not leave the engine the larger.
// Seeded: charges, top-ups and steps at random, releases due after 2 s.
func TestReleasesKeepTheEngineWithinTheDisk(t *testing.T) {
	now := t0
	e, res, clk, _ := idleEngine(t, &now, 2*time.Second)
	const accounts = 12
	name := func(i int) string { return "a" + strconv.Itoa(i) }
	rng := rand.New(rand.NewPCG(7, 17))
	sizes := make([]int64, accounts)
	for i := range accounts {
		sizes[i] = 100 + rng.Int64N(3_000)
		require.NoError(t, e.SetAccount("pre", name(i), sizes[i], admission.Overage{}))
	}
	require.NoError(t, res.Step(now))
	released, steps := 0, 0
	for i := range 6_000 {
		a := rng.IntN(accounts)
		switch op := rng.IntN(10); {
		case op < 5:
			e.Consume(clk.Now(), []byte("pre"), []byte(name(a)), 1+rng.Int64N(64), nil)
		case op < 7: // a top-up: the pool is looked at again, its ceiling higher
			sizes[a] += rng.Int64N(500)
			require.NoError(t, e.SetAccount("pre", name(a), sizes[a], admission.Overage{}))
		default:
			now = now.Add(time.Duration(rng.Int64N(int64(3 * time.Second))))
			require.NoError(t, res.Step(now))
			steps++
			for _, p := range e.Service("pre").Pools() {
				ps := res.state.Services["pre"].Pools[p.Account]
				require.NotNil(t, ps, "%q has a reservation written", p.Account)
				require.LessOrEqual(t, p.Durable, ps.Reserved, "op %d: %q may charge past what the token log holds", i, p.Account)
				require.LessOrEqual(t, p.Total, p.Durable, "op %d: %q", i, p.Account)
				if res.rate[poolKey{"pre", p.Account}].released {
					released++
				}
			}
		}
	}
	t.Logf("%d steps; a pool found released after %d of them", steps, released)
	require.Positive(t, released, "releases happened")
}

// A pool due for release whose allocation was raised since the last step
// (its lookahead floor from 62 tokens to a block: the step would grant
// it more) is released, and the engine allows it no more than the token
// log holds.
func TestReleaseAndGrantInOneStep(t *testing.T) {
	now := t0
	e, res, clk, _ := idleEngine(t, &now, IdleRelease)
	require.NoError(t, e.SetAccount("pre", "low", 1000, admission.Overage{}))
	require.NoError(t, res.Step(now))
	require.Equal(t, admission.OK, e.Consume(clk.Now(), []byte("pre"), []byte("low"), 40, nil).Reason)
	now = now.Add(time.Second)
	require.NoError(t, res.Step(now)) // 22 of 62 left: reserved further
	now = now.Add(IdleRelease)
	require.NoError(t, res.Step(now)) // charged since it was queued: queued again
	p, _ := e.Service("pre").Pool("low")
	require.Greater(t, p.Durable, p.Total, "reserved ahead")

	require.NoError(t, e.SetAccount("pre", "low", 20_000, admission.Overage{}))
	now = now.Add(IdleRelease)
	require.NoError(t, res.Step(now))
	p, _ = e.Service("pre").Pool("low")
	require.Equal(t, int64(40), p.Durable, "released, not granted a block")
	require.Equal(t, int64(40), res.state.Services["pre"].Pools["low"].Reserved)
}
