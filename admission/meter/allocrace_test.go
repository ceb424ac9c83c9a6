package meter

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// Allocations made at once on two members, each checked against its own,
// that the pool cannot hold together: every member keeps them as made
// and gives the engine, in the order they were made, each while the pool
// holds it and nothing for one that does not fit, whichever it heard of
// first; the allocations and their digests agree, the engine never holds
// more than the pool, a restart gives the same, and an allocation taken
// back comes back once the pool holds it.
func TestAllocationsMadeAtOnceAgree(t *testing.T) {
	lim := admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 900}
	open := func(dir string) (*admission.Engine, *Reserver) {
		e := admission.NewEngine(admission.DefaultConfig())
		require.NoError(t, e.SetLimits("pool", lim))
		r, err := OpenReserver(e, dir, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		r.Restore()
		return e, r
	}
	alloc := func(tokens, at int64) admission.Allocation {
		return admission.Allocation{Tokens: tokens, Overage: "none", At: at}
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	ea, a := open(dirA)
	eb, b := open(dirB)
	for _, r := range []*Reserver{a, b} {
		require.NoError(t, r.Apply("pool", "base", alloc(360, 1)))
	}
	// a takes x at 5; b takes y at 6 and z at 7, each fitting there.
	require.NoError(t, a.SetAccount("pool", "x", alloc(400, 5)))
	require.NoError(t, b.SetAccount("pool", "y", alloc(400, 6)))
	require.NoError(t, b.SetAccount("pool", "z", alloc(100, 7)))
	// Each hears of the others'.
	require.NoError(t, a.Apply("pool", "y", alloc(400, 6)))
	require.NoError(t, a.Apply("pool", "z", alloc(100, 7)))
	require.NoError(t, b.Apply("pool", "x", alloc(400, 5)))

	want := map[string]admission.Allocation{"base": alloc(360, 1), "x": alloc(400, 5), "y": alloc(400, 6), "z": alloc(100, 7)}
	limits := func(e *admission.Engine) map[string]int64 {
		out := map[string]int64{}
		for _, p := range e.Service("pool").Pools()[1:] {
			out[p.Account] = p.Limit
		}
		return out
	}
	wantLimits := map[string]int64{"base": 360, "x": 400, "y": 0, "z": 100}
	for _, c := range []struct {
		e *admission.Engine
		r *Reserver
	}{{ea, a}, {eb, b}} {
		require.Equal(t, want, c.r.Allocations()["pool"])
		require.Equal(t, wantLimits, limits(c.e))
	}
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())
	// Heard again, in any order: nothing moves.
	require.NoError(t, b.Apply("pool", "y", alloc(400, 6)))
	require.NoError(t, a.Apply("pool", "x", alloc(400, 5)))
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())

	// One made later that does not fit beside those before it is taken
	// back alone: the ones before it stay.
	require.NoError(t, a.Apply("pool", "w", alloc(41, 8)))
	require.NoError(t, a.Apply("pool", "v", alloc(40, 9)))
	require.Equal(t, map[string]int64{"base": 360, "x": 400, "y": 0, "z": 100, "w": 0, "v": 40}, limits(ea), "40 fit: 900 in all")
	// While some are taken back, an operator's allocation, the latest, is
	// refused unless the pool holds it after all those made before it: x
	// lowered to 100 would let y back in ahead of it, and hold nothing.
	require.ErrorIs(t, a.SetAccount("pool", "x", alloc(100, 10)), admission.ErrOverAllocated)
	require.Equal(t, alloc(400, 5), a.Allocations()["pool"]["x"], "nothing changed")
	// A bad one while some are taken back is refused as at any time, and
	// changes nothing (kept, it would stop the engine from taking the
	// service's others, at every restart too).
	taken := a.AllocationsDigest()
	require.ErrorContains(t, a.SetAccount("pool", "x", alloc(-5, 10)), "below 0")
	require.ErrorContains(t, a.SetAccount("pool", "../x", alloc(5, 10)), "not a valid account name")
	require.Equal(t, taken, a.AllocationsDigest())
	require.Equal(t, map[string]int64{"base": 360, "x": 400, "y": 0, "z": 100, "w": 0, "v": 40}, limits(ea))
	// base given up: y comes back whole, x and z stay, w and v do not fit.
	require.NoError(t, a.SetAccount("pool", "base", alloc(0, 11)))
	require.Equal(t, map[string]int64{"base": 0, "x": 400, "y": 400, "z": 100, "w": 0, "v": 0}, limits(ea))
	require.NoError(t, b.Apply("pool", "base", alloc(0, 11)))
	require.NoError(t, b.Apply("pool", "w", alloc(41, 8)))
	require.NoError(t, b.Apply("pool", "v", alloc(40, 9)))
	require.Equal(t, limits(ea), limits(eb), "heard in another order")
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())
	want = a.Allocations()["pool"]
	wantLimits = limits(ea)

	// A bad allocation from a member is refused, not kept: kept, it would
	// stop the engine from taking the service's others.
	before := b.AllocationsDigest()
	require.ErrorContains(t, b.Apply("pool", "../x", alloc(1, 12)), "not a valid account name")
	require.ErrorContains(t, b.Apply("pool", "u", alloc(-1, 12)), "below 0")
	require.ErrorContains(t, b.Apply(strings.Repeat("p", 1<<20), "u", alloc(1, 12)), "not a valid service name")
	require.ErrorContains(t, b.Apply("../pool", "u", alloc(1, 12)), "not a valid service name")
	require.ErrorContains(t, b.Apply("pool", "u", alloc(1, math.MaxInt64)), "not between 0 and 4611686018427387904")
	require.Equal(t, before, b.AllocationsDigest())

	// A restart keeps what b settled on, and skips a bad allocation an
	// earlier release may have kept in its log.
	digest := b.AllocationsDigest()
	b.mu.Lock()
	b.store.alloc("pool", "u", alloc(-1, 13))
	b.store.alloc("pool", "../v", alloc(1, 13))
	b.store.alloc("../pool", "v", alloc(1, 13))
	b.store.alloc("pool", "late", alloc(1, math.MaxInt64))
	require.NoError(t, b.stepLocked(time.Now()))
	b.mu.Unlock()
	require.NoError(t, b.Close())
	eb2, b2 := open(dirB)
	require.Equal(t, want, b2.Allocations()["pool"])
	require.Equal(t, wantLimits, limits(eb2))
	require.Equal(t, digest, b2.AllocationsDigest())
	require.NoError(t, b2.Close())
	require.NoError(t, a.Close())
}

// Members that hear of the same allocations in any order (updates of an
// account among them) hold the same ones and give their engines the same,
// within the pool: 200 seeded sets, each heard in two random orders.
func TestAllocationsAgreeInAnyOrder(t *testing.T) {
	lim := admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 900}
	type made struct {
		acct string
		a    admission.Allocation
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for trial := range 200 {
		var all []made
		for i := range 10 {
			all = append(all, made{acct: string(rune('a' + rng.IntN(5))),
				a: admission.Allocation{Tokens: rng.Int64N(500), Overage: "none", At: int64(i + 1)}})
		}
		var engines [2]*admission.Engine
		var rs [2]*Reserver
		for k := range 2 {
			engines[k] = admission.NewEngine(admission.DefaultConfig())
			require.NoError(t, engines[k].SetLimits("pool", lim))
			r, err := OpenReserver(engines[k], t.TempDir(), slog.New(slog.DiscardHandler))
			require.NoError(t, err)
			r.Restore()
			rs[k] = r
			for _, i := range rng.Perm(len(all)) {
				require.NoError(t, r.Apply("pool", all[i].acct, all[i].a))
			}
		}
		var sums [2]int64
		limits := [2]map[string]int64{{}, {}}
		for k := range 2 {
			for _, p := range engines[k].Service("pool").Pools()[1:] {
				limits[k][p.Account] = p.Size
				sums[k] += p.Size
			}
		}
		require.Equal(t, rs[0].Allocations(), rs[1].Allocations(), "trial %d", trial)
		require.Equal(t, limits[0], limits[1], "trial %d", trial)
		require.LessOrEqual(t, sums[0], int64(900), "trial %d", trial)
		for k := range 2 {
			require.NoError(t, rs[k].Close())
		}
	}
}
