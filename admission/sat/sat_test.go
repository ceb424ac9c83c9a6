package sat

import (
	"math"
	"math/big"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/require"
)

// clampBig is the int64 nearest to x: the reference the saturating
// functions must agree with.
func clampBig(x *big.Int) int64 {
	switch {
	case x.Cmp(big.NewInt(math.MaxInt64)) > 0:
		return math.MaxInt64
	case x.Cmp(big.NewInt(math.MinInt64)) < 0:
		return math.MinInt64
	}
	return x.Int64()
}

// edgy spreads quick's uniform int64s over the values that break
// arithmetic: the ends of the range, around zero and around 2^32.
func edgy(v int64) int64 {
	edges := []int64{0, 1, -1, 2, math.MaxInt64, math.MaxInt64 - 1, math.MinInt64, math.MinInt64 + 1, 1 << 32, -(1 << 32), 1 << 62, 3037000499, 3037000500}
	switch k := uint64(v) % 4; k {
	case 0, 1:
		return edges[(uint64(v)>>2)%uint64(len(edges))]
	case 2:
		return v >> (uint64(v) % 64) // small and middling magnitudes
	}
	return v
}

func TestAddSubMul(t *testing.T) {
	ops := []struct {
		name string
		sat  func(a, b int64) int64
		big  func(z, a, b *big.Int) *big.Int
	}{
		{"Add", Add, (*big.Int).Add},
		{"Sub", Sub, (*big.Int).Sub},
		{"Mul", Mul, (*big.Int).Mul},
	}
	for _, op := range ops {
		f := func(x, y int64) bool {
			a, b := edgy(x), edgy(y)
			want := clampBig(op.big(new(big.Int), big.NewInt(a), big.NewInt(b)))
			if got := op.sat(a, b); got != want {
				t.Logf("%s(%d, %d) = %d, want %d", op.name, a, b, got, want)
				return false
			}
			return true
		}
		require.NoError(t, quick.Check(f, &quick.Config{MaxCount: 20000}), op.name)
	}
	// Properties the limit arithmetic relies on, for non-negative counts:
	// the result never goes below either operand (no inversion), and
	// addition is commutative and monotone.
	nonneg := func(v int64) int64 { return edgy(v) & math.MaxInt64 }
	props := func(x, y int64) bool {
		a, b := nonneg(x), nonneg(y)
		s, m := Add(a, b), Mul(a, b)
		return s >= a && s >= b && s == Add(b, a) && m >= 0 && m == Mul(b, a) &&
			(a == 0 || b == 0 || (m >= a && m >= b)) && Add(s, 1) >= s
	}
	require.NoError(t, quick.Check(props, &quick.Config{MaxCount: 20000}))
	f := func(a, b, want int64) {
		t.Helper()
		require.Equal(t, want, Add(a, b))
	}
	f(math.MaxInt64, math.MaxInt64, math.MaxInt64)
	f(math.MaxInt64, 1, math.MaxInt64)
	f(math.MaxInt64-1, 1, math.MaxInt64)
	f(math.MinInt64, -1, math.MinInt64)
	f(5, -3, 2)
}

func TestPercentOf(t *testing.T) {
	f := func(x, y int64) bool {
		v, pct := edgy(x)&math.MaxInt64, edgy(y)&math.MaxInt64
		prod := new(big.Int).Mul(big.NewInt(v), big.NewInt(pct))
		want := clampBig(prod.Quo(prod, big.NewInt(100)))
		if got := PercentOf(v, pct); got != want {
			t.Logf("PercentOf(%d, %d) = %d, want %d", v, pct, got, want)
			return false
		}
		return true
	}
	// PercentOf saturates at the sum of its two parts, so a product above
	// the range comes out as math.MaxInt64 whichever part overflows.
	require.NoError(t, quick.Check(f, &quick.Config{MaxCount: 20000}))
	require.Equal(t, int64(922337203685477580), PercentOf(math.MaxInt64, 10))
	require.Equal(t, int64(math.MaxInt64), PercentOf(math.MaxInt64, 1000))
	require.Equal(t, int64(0), PercentOf(9, 10))
	require.Equal(t, int64(1), PercentOf(10, 10))
}

func TestFloorAndPartOf(t *testing.T) {
	f := func(x float64, want int64) {
		t.Helper()
		require.Equal(t, want, Floor(x))
	}
	f(math.NaN(), 0)
	f(math.Inf(1), math.MaxInt64)
	f(math.Inf(-1), math.MinInt64)
	f(float64(math.MaxInt64), math.MaxInt64) // 2^63: Go's conversion gives math.MinInt64 on amd64
	f(-float64(1<<63), math.MinInt64)
	f(1e300, math.MaxInt64)
	f(2.9, 2)
	f(-2.1, -3)
	p := func(part float64, limit, want int64) {
		t.Helper()
		require.Equal(t, want, PartOf(part, limit))
	}
	p(1, math.MaxInt64, math.MaxInt64)
	p(0.5, math.MaxInt64, 1<<62)
	p(0.999999999, math.MaxInt64, 9223372027631404032)
	p(1, 1<<53+1, 1<<53+1) // the whole, exactly, where float64 would round
	p(0.5, 3, 1)
	p(0, 100, 0)
	p(-1, 100, 0)
	p(math.NaN(), 100, 0)
	p(2, 100, 100)
	p(1-2.0/3, 60, 20)    // 0.33333333333333326: a rounding error below 20
	p(0.33, 60, 19)       // 19.8: a part below a whole number stays below
	p(19.9999/60, 60, 19) // not a rounding error
	// A part of a limit is never negative and never more than the limit.
	g := func(part float64, x int64) bool {
		limit := edgy(x) & math.MaxInt64
		got := PartOf(math.Abs(math.Mod(part, 1)), limit)
		return got >= 0 && got <= limit
	}
	require.NoError(t, quick.Check(g, &quick.Config{MaxCount: 20000}))
}

func TestAddU(t *testing.T) {
	require.Equal(t, uint64(math.MaxUint64), AddU(math.MaxUint64, 1))
	require.Equal(t, uint64(math.MaxUint64), AddU(1<<63, 1<<63))
	require.Equal(t, uint64(3), AddU(1, 2))
}
