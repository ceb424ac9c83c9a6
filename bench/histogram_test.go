package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBuckets(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 123456789, 1<<63 + 12345, 1<<64 - 1} {
		i := bucketOf(v)
		require.GreaterOrEqual(t, upper(i), v, "v=%d", v)
		if i > 0 {
			require.Less(t, upper(i-1), v, "v=%d", v)
		}
		require.Less(t, i, buckets)
	}
}

func TestQuantilesAgainstSort(t *testing.T) {
	var h Histogram
	var all []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		d := time.Duration(r.ExpFloat64() * 50000) // µs-scale latencies with a tail
		h.Record(d)
		all = append(all, d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		require.InEpsilon(t, float64(want), float64(got), 1.0/sub+0.001, "q=%v", q)
	}
	require.Equal(t, all[len(all)-1], h.Max())
	require.Equal(t, h.Max(), h.Quantile(1))
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	require.Equal(t, 2*h.Count(), m.Count())
	require.Equal(t, h.Quantile(0.99), m.Quantile(0.99))
}
