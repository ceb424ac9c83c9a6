package sim

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTailSkew(t *testing.T) {
	f := func(n int, want []float64) {
		t.Helper()
		require.Equal(t, want, TailSkew(n))
	}
	f(1, []float64{100})
	f(2, []float64{90, 10})
	f(5, []float64{90, 2.5, 2.5, 2.5, 2.5})
}

// Windows sums every node's steps into windows of whole steps; the last
// window ends with the run.
func TestWindowsByHand(t *testing.T) {
	r := Result{Scenario: Scenario{Duration: 250 * time.Millisecond}, Series: []NodeSeries{
		{Offered: []int64{1, 2, 3}, Admitted: []int64{1, 1, 1}, RefusedBelow: []int64{0, 1, 0}},
		{Offered: []int64{10, 20, 30}, Admitted: []int64{10, 20, 0}, RefusedBelow: []int64{0, 0, 30}},
	}}
	require.Equal(t, []Window{
		{Start: 0, Length: 200 * time.Millisecond, Offered: 33, Admitted: 32, RefusedBelow: 1},
		{Start: 200 * time.Millisecond, Length: 50 * time.Millisecond, Offered: 33, Admitted: 1, RefusedBelow: 30},
	}, r.Windows(200*time.Millisecond))
	require.Len(t, r.Windows(time.Millisecond), 3, "narrower than a step: one step each")
}

// A run's windows, of any width, sum to its totals, and the same scenario
// run twice measures the same.
func TestWindowsSumToTotals(t *testing.T) {
	sc := Scenario{Nodes: 3, CAPS: 200, Duration: 2550 * time.Millisecond, Seed: 7, Arrivals: Stalling, Load: 0.99,
		Skew: []float64{70, 20, 10}, ShiftAt: time.Second, Net: LAN}
	r, err := Run(sc)
	require.NoError(t, err)
	require.Positive(t, r.RefusedBelow, "the scenario should refuse below the licence for the sums to mean something")
	for _, w := range []time.Duration{Step, 250 * time.Millisecond, time.Second, 10 * time.Second} {
		var offered, admitted, refused int64
		for _, win := range r.Windows(w) {
			offered += win.Offered
			admitted += win.Admitted
			refused += win.RefusedBelow
		}
		require.Equal(t, []int64{r.Offered, r.Admitted, r.RefusedBelow}, []int64{offered, admitted, refused}, "windows of %v", w)
	}
	again, err := Run(sc)
	require.NoError(t, err)
	require.Equal(t, r, again)
}

func TestValidateExported(t *testing.T) {
	require.NoError(t, Scenario{Nodes: 1, CAPS: 1, Duration: time.Second, Arrivals: Paced}.Validate())
	require.ErrorContains(t, Scenario{Nodes: 0, CAPS: 1, Duration: time.Second, Arrivals: Paced}.Validate(), "0 nodes")
}
