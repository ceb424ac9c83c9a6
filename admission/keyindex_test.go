package admission

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// The index against a Go map under a seeded random mix of puts, refreshes
// and deletions, through growth from one small segment to a directory of
// hundreds, splits and the deletion's back-shifts across a segment's end.
func TestKeyIndexAgainstAMap(t *testing.T) {
	for _, reserve := range []int{0, 50_000} {
		var tb table[int]
		tb.init(nil)
		tb.reserve(reserve)
		ref := map[Key]int{}
		rng := rand.New(rand.NewPCG(7, uint64(reserve)))
		var keys []Key
		for op := range 400_000 {
			switch r := rng.IntN(10); {
			case r < 6 || len(keys) == 0: // a new key
				k := Key{rng.Uint64(), rng.Uint64()}
				tb.put(k, op, 1e12)
				ref[k] = op
				keys = append(keys, k)
			case r < 8: // a present key
				k := keys[rng.IntN(len(keys))]
				e, ok := tb.get(k, 0)
				v, want := ref[k]
				require.Equal(t, want, ok)
				if ok {
					require.Equal(t, v, e.v)
				}
			default: // delete one
				j := rng.IntN(len(keys))
				k := keys[j]
				keys[j] = keys[len(keys)-1]
				keys = keys[:len(keys)-1]
				v, live := tb.del(k, 0)
				require.True(t, live)
				require.Equal(t, ref[k], v)
				delete(ref, k)
			}
			if op%50_000 == 0 {
				require.Equal(t, len(ref), tb.len())
			}
		}
		require.Equal(t, len(ref), tb.len())
		require.Greater(t, len(tb.idx.dir), 128, "grown to a directory of many segments")
		for k, v := range ref {
			e, ok := tb.get(k, 0)
			require.True(t, ok)
			require.Equal(t, v, e.v)
		}
		for k := range ref {
			_, live := tb.del(k, 0)
			require.True(t, live)
		}
		require.Zero(t, tb.len())
		for _, s := range tb.idx.dir {
			require.Zero(t, s.n)
		}
		k := Key{1, 2}
		_, ok := tb.get(k, 0)
		require.False(t, ok)
	}
}

// Keys whose index hashes share their segment position and most of their
// prefix (as crafted keys would, were the hash not seeded) still split the
// segment they crowd, and are all found.
func TestKeyIndexCrowdedSegment(t *testing.T) {
	var x keyIndex
	x.init()
	const n = 5_000
	// Hashes differing only in bits 21..9 counted from the top (a shared
	// 8-bit prefix, then spread) and with the same low bits: one home
	// position in every segment.
	for i := range uint32(n) {
		x.insert(0xAB000000|i<<10|5, int32(i))
	}
	require.Equal(t, n, x.n)
	var total int32
	var last *segment
	for _, s := range x.dir {
		if s != last {
			total += s.n
			require.LessOrEqual(t, int(s.n)*8, len(s.slots)*maxLoad)
			last = s
		}
	}
	require.Equal(t, int32(n), total)
	for i := range uint32(n) {
		h := 0xAB000000 | i<<10 | 5
		s := x.segmentOf(h)
		found := false
		for _, o := range s.slots {
			if o.h == h && o.at == int32(i)+1 {
				found = true
			}
		}
		require.True(t, found, "hash %x", h)
	}
}
