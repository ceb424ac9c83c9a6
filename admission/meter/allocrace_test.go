package meter

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// Allocations made at once on two members, each checked against its own,
// that the pool cannot hold together: every member keeps them in the
// order they were made while the pool holds them and takes the first
// that does not fit back to nothing, whichever it heard of first; the
// allocations and their digests agree, the engine never holds more than
// the pool, and a restart keeps the same.
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
	nothing := func(at int64) admission.Allocation { return admission.Allocation{Overage: "none", At: at} }
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

	want := map[string]admission.Allocation{"base": alloc(360, 1), "x": alloc(400, 5), "y": nothing(6), "z": alloc(100, 7)}
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
	require.Equal(t, nothing(8), a.Allocations()["pool"]["w"])
	require.Equal(t, alloc(100, 7), a.Allocations()["pool"]["z"])
	require.NoError(t, a.Apply("pool", "v", alloc(40, 9)))
	require.Equal(t, alloc(40, 9), a.Allocations()["pool"]["v"], "40 fit: 900 in all")

	// A restart keeps what b settled on.
	digest := b.AllocationsDigest()
	require.NoError(t, b.Close())
	eb2, b2 := open(dirB)
	require.Equal(t, want, b2.Allocations()["pool"])
	require.Equal(t, wantLimits, limits(eb2))
	require.Equal(t, digest, b2.AllocationsDigest())
	require.NoError(t, b2.Close())
	require.NoError(t, a.Close())
}
