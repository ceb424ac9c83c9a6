package cluster

import (
	"math"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/require"
)

// splitter returns an f-test of an allocation function: limit split by
// the inputs gives want, within 0.05.
func splitter(t *testing.T, split func(limit float64, in []float64) []float64) func(limit float64, in, want []float64) {
	return func(limit float64, in, want []float64) {
		t.Helper()
		got := split(limit, in)
		require.Len(t, got, len(want))
		for i := range want {
			require.InDelta(t, want[i], got[i], 0.05, "node %d of %v", i, got)
		}
	}
}

func TestAllocateExamples(t *testing.T) {
	f := splitter(t, Allocate)
	// 2× the licence, skewed 70/20/10: the licence in proportion.
	f(1000, []float64{1400, 400, 200}, []float64{700, 200, 100})
	// 90 % of the licence: every node gets its demand, the spare a tenth
	// evenly and the rest in proportion (100 × (0.1/3 + 0.9 × 630/900)).
	f(1000, []float64{630, 180, 90}, []float64{696.3, 201.3, 102.3})
	// Idle cluster: even split.
	f(1000, []float64{0, 0, 0, 0}, []float64{250, 250, 250, 250})
	// All load on one node: the others want their floors, 16.7 of 5016.7.
	f(1000, []float64{5000, 0, 0}, []float64{993.4, 3.3, 3.3})
	// 10 % of the licence on one node: the floors count, the spare mostly
	// goes to the busy node.
	f(1000, []float64{100, 0, 0}, []float64{713.9, 143.1, 143.1})
	f(1000, []float64{900}, []float64{1000})
	f(1000, nil, nil)
	f(0, []float64{10, 10}, []float64{0, 0})
}

func TestAllocateHeldExamples(t *testing.T) {
	f := splitter(t, AllocateHeld)
	// 60 subscribers, 10 registered on the third node: the others each get
	// their floor (1) and a third of the spare (48), not a part in
	// proportion to what they hold (which would leave them 6).
	f(60, []float64{0, 0, 10}, []float64{17, 17, 26})
	// Holdings past the count: in proportion, the idle node at its floor
	// (1.67) cut alike.
	f(100, []float64{80, 40, 0}, []float64{65.75, 32.88, 1.37})
}

// TestAllocateInvariants checks on random inputs what the cluster's bounds
// rest on: the shares sum to the limit, every node keeps its floor (cut
// in proportion when the licence does not cover what all want), a demand
// the licence can carry beside the floors is met, and no node gets less
// because its demand is higher.
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
			if s < floor*min(1, limit/total)-1e-9 {
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
