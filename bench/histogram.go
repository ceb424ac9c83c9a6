package bench

import (
	"math/bits"
	"time"
)

// Histogram counts latencies in log-linear buckets, as HdrHistogram does:
// values below 2^subBits ns exactly, above that 2^subBits buckets per
// power of two, so a quantile is within 1/2^subBits (0.8 %) of the value
// recorded. Recording is an index computation and an increment; it is
// owned by one goroutine (merge them afterwards).
type Histogram struct {
	counts [buckets]uint64
	n      uint64
	sum    uint64
	max    uint64
}

const (
	subBits = 7
	sub     = 1 << subBits
	// buckets covers every uint64: exponents 0..64-subBits-1, sub each.
	buckets = (64 - subBits + 1) * sub
)

// bucketOf returns v's bucket.
func bucketOf(v uint64) int {
	if v < sub {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1 // v>>e is in [sub, 2*sub)
	return (e+1)*sub + int(v>>e) - sub
}

// upper returns the largest value of bucket i.
func upper(i int) uint64 {
	if i < sub {
		return uint64(i)
	}
	e := i/sub - 1
	return (uint64(i%sub+sub)+1)<<e - 1
}

// Record counts one latency (negative ones as 0).
func (h *Histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += v
	h.max = max(h.max, v)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest value recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean of the values recorded.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// Quantile returns the value at quantile q (0..1): the upper end of the
// bucket holding it, never above Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(upper(i), h.max))
		}
	}
	return time.Duration(h.max)
}
