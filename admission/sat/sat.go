// Package sat is saturating arithmetic on limits and counters.
//
// Limit arithmetic saturates: a licence may say 9223372036854775807
// sessions, and licences stack, so a sum, a headroom or a share of such a
// limit must stop at math.MaxInt64 rather than wrap to a negative number
// (which every comparison would read as "nothing left"). A limit of
// math.MaxInt64 is a finite limit that no node can reach; it is not
// Unlimited (-1), and reports show it as it is.
package sat

import (
	"math"
	"math/bits"
)

// Add returns a + b, stopping at math.MaxInt64 or math.MinInt64 instead
// of wrapping.
func Add(a, b int64) int64 {
	s := a + b
	if (s > a) != (b > 0) {
		if b > 0 {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return s
}

// Sub returns a - b, stopping at math.MaxInt64 or math.MinInt64 instead
// of wrapping.
func Sub(a, b int64) int64 {
	if b == math.MinInt64 {
		if a >= 0 {
			return math.MaxInt64
		}
		return a - b // a < 0: a - MinInt64 = a + 2^63 fits
	}
	return Add(a, -b)
}

// Mul returns a × b, stopping at math.MaxInt64 or math.MinInt64 instead
// of wrapping.
func Mul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	p := a * b
	if p/b != a || (a == -1 && b == math.MinInt64) || (b == -1 && a == math.MinInt64) {
		if (a > 0) == (b > 0) {
			return math.MaxInt64
		}
		return math.MinInt64
	}
	return p
}

// Floor returns ⌊x⌋ as an int64, stopping at the ends of its range (Go's
// conversion of a float beyond them is undefined: on amd64 it gives
// math.MinInt64 for 2^63, the float nearest math.MaxInt64). NaN is 0.
func Floor(x float64) int64 {
	switch {
	case x != x:
		return 0
	case x >= 1<<63:
		return math.MaxInt64
	case x <= -(1 << 63):
		return math.MinInt64
	}
	return int64(math.Floor(x))
}

// PartOf returns ⌊part × limit⌋ for a part in 0..1 of a non-negative
// limit: a cluster node's share. The product is computed in floating
// point and saturates, so a part of math.MaxInt64 stays positive.
// A part of 1 or more is the whole limit, exactly (float64 cannot hold
// every int64); a part that is not positive is 0. A product a rounding
// error below a whole number is that number: a third of 60 computed a
// hair low (0.33333333333333326, as 1 less two other thirds can be) is 20,
// not 19.
func PartOf(part float64, limit int64) int64 {
	switch {
	case part >= 1:
		return limit
	case !(part > 0):
		return 0
	}
	x := part * float64(limit)
	if x < 1<<40 { // beyond, float64 has no room for a fraction to round
		x += max(1e-6, x*1e-15)
	}
	return min(Floor(x), limit)
}

// PercentOf returns ⌊v × pct / 100⌋ for non-negative v and pct (a
// negative one counts as 0), exactly, saturating at math.MaxInt64: the
// product is taken on 128 bits.
func PercentOf(v, pct int64) int64 {
	hi, lo := bits.Mul64(uint64(max(v, 0)), uint64(max(pct, 0)))
	if hi >= 100 {
		return math.MaxInt64
	}
	q, _ := bits.Div64(hi, lo, 100)
	return int64(min(q, math.MaxInt64))
}

// AddU returns a + b, stopping at math.MaxUint64 instead of wrapping:
// for counters that sum other counters (usage over nodes and intervals).
func AddU(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}
