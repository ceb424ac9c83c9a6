package cluster

import (
	"math"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/require"
)

func TestAllocateExamples(t *testing.T) {
	f := func(limit float64, demands []float64, want []float64) {
		t.Helper()
		got := Allocate(limit, demands)
		require.Len(t, got, len(want))
		for i := range want {
			require.InDelta(t, want[i], got[i], 0.05, "node %d of %v", i, got)
		}
	}
	// 2× the licence, skewed 70/20/10: the licence in proportion.
	f(1000, []float64{1400, 400, 200}, []float64{690.6, 203.4, 106.0})
	// 90 % of the licence: every node gets its demand plus a third of the spare.
	f(1000, []float64{630, 180, 90}, []float64{663.3, 213.3, 123.3})
	// Idle cluster: even split.
	f(1000, []float64{0, 0, 0, 0}, []float64{250, 250, 250, 250})
	// All load on one node: it gets everything but the others' floors.
	f(1000, []float64{5000, 0, 0}, []float64{966.7, 16.7, 16.7})
	f(1000, []float64{900}, []float64{1000})
	f(1000, nil, nil)
	f(0, []float64{10, 10}, []float64{0, 0})
}

// TestAllocateInvariants checks on random inputs what the cluster's bounds
// rest on: the shares sum to the limit, every node keeps its floor, a
// demand the licence can carry beside the floors is met, and no node gets less because its
// demand is higher.
func TestAllocateInvariants(t *testing.T) {
	check := func(limitSeed uint16, raw []uint16) bool {
		if len(raw) == 0 || len(raw) > 50 {
			return true
		}
		limit := float64(limitSeed) + 1
		demands := make([]float64, len(raw))
		var total float64 // what the licence must carry: demands, floors where above
		floor := limit * FloorFraction / float64(len(raw))
		for i, r := range raw {
			demands[i] = float64(r) / 10
			total += max(demands[i], floor)
		}
		shares := Allocate(limit, demands)
		var sum float64
		for i, s := range shares {
			sum += s
			if s < floor-1e-9 {
				return false
			}
			if total <= limit && s < demands[i]-1e-9 {
				return false
			}
			for j := range shares {
				if demands[i] > demands[j] && shares[i] < shares[j]-1e-9 {
					return false
				}
			}
		}
		return math.Abs(sum-limit) < 1e-6*limit
	}
	require.NoError(t, quick.Check(check, &quick.Config{MaxCount: 5000}))
}

func TestWholeParts(t *testing.T) {
	// 10 sessions over 3 idle nodes: 3.33 each; rounding down alone would
	// leave one unused.
	require.Equal(t, []int64{4, 3, 3}, WholeParts(Allocate(10, []float64{0, 0, 0})), "the unit left to the earliest of equal remainders")
	require.Equal(t, []int64{3, 4, 3}, WholeParts([]float64{3.2, 3.6, 3.2}))
	require.Equal(t, []int64{2, 1, 2}, WholeParts([]float64{1.7, 1.6, 1.7}), "largest remainders first")
	require.Equal(t, []int64{2, 1, 1}, WholeParts([]float64{1.7, 1.6, 1.1}), "4.4: four units")
	// Floating-point error does not cost a unit: 1/3 of 3 each.
	third := 1.0 / 3.0
	require.Equal(t, []int64{1, 1, 1}, WholeParts([]float64{third * 3, third * 3, third * 3}))
	require.Equal(t, []int64{0, 0}, WholeParts([]float64{0.4, 0.4}), "0.8 is no whole unit")
	require.Equal(t, []int64{0, 5}, WholeParts([]float64{-1, 5}), "a negative share counts as none")
	require.Empty(t, WholeParts(nil))
	require.EqualValues(t, 1, wholeOf(third, 3))
	require.EqualValues(t, 3, wholeOf(0.3, 10))
	require.EqualValues(t, 2, wholeOf(0.29, 10))
}

func TestWholePartsInvariants(t *testing.T) {
	check := func(limitSeed uint16, raw []uint16) bool {
		if len(raw) == 0 || len(raw) > 50 {
			return true
		}
		limit := float64(limitSeed % 5000)
		held := make([]float64, len(raw))
		for i, r := range raw {
			held[i] = float64(r % 200)
		}
		shares := Allocate(limit, held)
		parts := WholeParts(shares)
		var sum int64
		for i, p := range parts {
			// Never less than the share rounded down, never a unit more
			// than it rounded up.
			if p < int64(math.Floor(shares[i]+wholeEpsilon)) || float64(p) > math.Ceil(shares[i])+wholeEpsilon {
				return false
			}
			sum += p
		}
		// The whole licence is used, and no more.
		return sum == int64(math.Floor(limit+wholeEpsilon))
	}
	require.NoError(t, quick.Check(check, &quick.Config{MaxCount: 2000}))
}
