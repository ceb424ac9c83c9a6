package sim

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster"
)

// The accuracy targets, checked on seeded, repeatable runs of the real
// planner and buckets. Every scenario holds the licence idle for a second
// first, as a farm does before traffic comes.

var (
	skew3  = []float64{70, 20, 10}
	skew10 = []float64{40, 20, 10, 10, 5, 5, 4, 3, 2, 1}
)

// tail is one node with 90 % of the load and n-1 sharing the rest.
func tail(n int) []float64 {
	w := make([]float64, n)
	w[0] = 90
	for i := 1; i < n; i++ {
		w[i] = 10 / float64(n-1)
	}
	return w
}

func run(t *testing.T, sc Scenario) (farm, ref Result) {
	t.Helper()
	if sc.CAPS == 0 {
		sc.CAPS = 1000
	}
	if sc.Seed == 0 {
		sc.Seed = 1
	}
	if sc.Net == (Net{}) {
		sc.Net = LAN
	}
	sc.Prelude = time.Second
	farm, err := Run(sc)
	require.NoError(t, err)
	sc.Reference = true
	ref, err = Run(sc)
	require.NoError(t, err)
	return farm, ref
}

func name(sc Scenario) string {
	s := fmt.Sprintf("%d nodes %s %.0f%% of %.0f", sc.Nodes, sc.Arrivals, 100*sc.Load, max(sc.CAPS, 1000))
	if sc.Nodes > 1 && sc.Skew == nil {
		s += " even"
	}
	return s
}

// TestRefusedBelowLicence: at 95 % of the licence under Poisson arrivals,
// at most 0.1 % of attempts are refused, and no more than twice what one
// node holding the whole licence refuses under the same arrivals.
func TestRefusedBelowLicence(t *testing.T) {
	for _, sc := range []Scenario{
		{Nodes: 3, Skew: skew3},
		{Nodes: 10, Skew: skew10},
		{Nodes: 10, Skew: tail(10)},
		// Larger farms carry larger licences: 100 CAPS a node on average.
		{Nodes: 30, CAPS: 3000, Skew: tail(30)},
		{Nodes: 30, CAPS: 3000},
		// 30 nodes sharing 1000 CAPS, 90 % on one: the others at 3.3 CAPS.
		{Nodes: 30, Skew: tail(30)},
		{Nodes: 100, CAPS: 10000, Skew: tail(100), Duration: 20 * time.Second},
		{Nodes: 100, CAPS: 10000, Duration: 20 * time.Second},
	} {
		sc.Arrivals, sc.Load = Poisson, 0.95
		if sc.Duration == 0 {
			sc.Duration = 30 * time.Second
		}
		t.Run(name(sc), func(t *testing.T) {
			farm, ref := run(t, sc)
			t.Logf("refused %d of %d (%.3f %%); one node holding the licence: %d (%.3f %%)", farm.RefusedBelow, farm.OfferedBelow,
				100*farm.RefusedBelowFraction(), ref.RefusedBelow, 100*ref.RefusedBelowFraction())
			require.Greater(t, farm.OfferedBelow, int64(0.9*0.95*sc.CAPS*sc.Duration.Seconds()))
			assert.LessOrEqual(t, farm.RefusedBelow*1000, farm.OfferedBelow, "at most 0.1 %% refused at 95 %% of the licence")
			assert.LessOrEqual(t, farm.RefusedBelow, 2*ref.RefusedBelow, "no more than twice what one node holding the licence refuses")
		})
	}
}

// TestAdmittedWithinLicence: whatever the arrivals, over any 1 s the farm
// admits at most the licence and its burst, over any 10 s at most 1.01 ×
// the licence and its burst (cluster.MaxBurst).
func TestAdmittedWithinLicence(t *testing.T) {
	for _, sc := range []Scenario{
		{Nodes: 3, Skew: skew3, Arrivals: Poisson, Load: 2},
		{Nodes: 10, Skew: skew10, Arrivals: Poisson, Load: 2},
		{Nodes: 3, Skew: skew3, Arrivals: Bursty, Load: 2},
		{Nodes: 10, Skew: skew10, Arrivals: Stalling, Load: 2},
		{Nodes: 3, Skew: skew3, Arrivals: Poisson, Load: 0.5, FlashAt: 10 * time.Second, FlashFor: 2 * time.Second, FlashFactor: 10},
		{Nodes: 3, Skew: skew3, Arrivals: Poisson, Ramp: true, RampTo: 1.5},
		{Nodes: 30, Skew: tail(30), Arrivals: Poisson, Load: 2},
	} {
		sc.Duration = 30 * time.Second
		t.Run(name(sc), func(t *testing.T) {
			farm, _ := run(t, sc)
			burst := cluster.MaxBurst(1000, sc.Nodes, 100*time.Millisecond)
			t.Logf("worst 1 s %d, worst 10 s %d, burst %.0f (deepest seen %d), most CAPS in force %.1f", farm.Worst1s, farm.Worst10s, burst, farm.Burst, farm.MaxCAPS)
			assert.LessOrEqual(t, float64(farm.Burst), burst, "the buckets' depths sum to at most MaxBurst")
			// Two nodes rising into the same room at once (each planning on
			// a report the other had not received) summed to 1098.8 here.
			assert.LessOrEqual(t, farm.MaxCAPS, 1000*1.001, "the parts in force sum to the licence, but for rounding")
			assert.LessOrEqual(t, float64(farm.Worst1s), 1000+burst, "over any 1 s: the licence and its burst")
			assert.LessOrEqual(t, float64(farm.Worst10s), 1.01*1000*10+burst, "over any 10 s: 1.01 × the licence and its burst")
		})
	}
}

// TestPartsInForceWhateverTheSeed: over 40 seeds of a load rising from
// nothing to twice the licence on 10 members (Poisson and stalling
// arrivals), the CAPS parts in force never sum above the licence, but for
// float rounding (a billionth). A member plans early as well as at each
// exchange: one that planned twice before another's rise was reported
// took its part of the other's room again (without cluster's promise, 5
// of these 80 runs summed above 1,000.1, up to 1,001.94).
func TestPartsInForceWhateverTheSeed(t *testing.T) {
	var worst float64
	for seed := uint64(1); seed <= 40; seed++ {
		for _, arrivals := range []string{Poisson, Stalling} {
			sc := Scenario{Nodes: 10, Skew: skew10, Arrivals: arrivals, Load: 2, CAPS: 1000, Duration: 5 * time.Second,
				Seed: seed, Net: LAN, Prelude: time.Second}
			r, err := Run(sc)
			require.NoError(t, err)
			assert.LessOrEqualf(t, r.MaxCAPS, 1000*(1+1e-9), "seed %d, %s: the parts in force sum to the licence, but for float rounding", seed, arrivals)
			worst = max(worst, r.MaxCAPS)
		}
	}
	t.Logf("the most the parts in force summed to: %.3f of 1000", worst)
}

// TestLoadMoves: when all the load moves to another node, that node
// enforces its full demand within 500 ms, on 3 and on 10 nodes, seeds 1-3.
// The nodes that lost the load see it gone after 250-350 ms, those that
// carried a few CAPS each by the quiet test (no attempt where 10.4 were
// due), and the node that got it plans early on their reports. Its bucket
// may still refuse some after that: it spent the depth it was lent while
// it waited, and repays it from its part above its demand (last refusals
// 324-604 ms after the move over seeds 1-5 on 10 nodes).
func TestLoadMoves(t *testing.T) {
	for _, sc := range []Scenario{{Nodes: 3, Skew: skew3}, {Nodes: 10, Skew: skew10}} {
		for seed := range uint64(3) {
			sc := sc
			sc.Arrivals, sc.Load, sc.Duration, sc.ShiftAt, sc.Seed = Poisson, 0.9, 20*time.Second, 10*time.Second, seed+1
			t.Run(name(sc)+fmt.Sprintf("/seed%d", sc.Seed), func(t *testing.T) {
				farm, _ := run(t, sc)
				t.Logf("whole demand enforced %v after the move, last refusal %v after it; %d refused of %d", farm.Covered, farm.Converge, farm.Refused, farm.Offered)
				assert.GreaterOrEqual(t, farm.Covered, time.Duration(0), "covered in the run")
				assert.LessOrEqual(t, farm.Covered, 500*time.Millisecond)
				assert.GreaterOrEqual(t, farm.Converge, time.Duration(0), "no refusal in the run's last second")
				assert.LessOrEqual(t, farm.Converge, time.Second, "no refusal a second after the move")
			})
		}
	}
}

// TestRunRepeats: a scenario and its seed determine the run.
func TestRunRepeats(t *testing.T) {
	sc := Scenario{Nodes: 5, CAPS: 1000, Duration: 5 * time.Second, Seed: 7, Arrivals: Stalling, Load: 1.2,
		Net: Net{Delay: time.Millisecond, Jitter: time.Millisecond, Loss: 0.05}}
	a, err := Run(sc)
	require.NoError(t, err)
	b, err := Run(sc)
	require.NoError(t, err)
	require.Equal(t, a, b)
	sc.Seed = 8
	c, err := Run(sc)
	require.NoError(t, err)
	require.NotEqual(t, a.Admitted, c.Admitted, "another seed, another run")
}

func TestScenarioValidation(t *testing.T) {
	ok := Scenario{Nodes: 3, CAPS: 1000, Duration: time.Second, Arrivals: Poisson, Load: 0.5}
	f := func(change func(*Scenario), want string) {
		t.Helper()
		sc := ok
		change(&sc)
		_, err := Run(sc)
		if want == "" {
			require.NoError(t, err)
			return
		}
		require.ErrorContains(t, err, want)
	}
	f(func(*Scenario) {}, "")
	f(func(sc *Scenario) { sc.Nodes = 0 }, "nodes")
	f(func(sc *Scenario) { sc.Nodes = 1001 }, "nodes")
	f(func(sc *Scenario) { sc.CAPS = 0 }, "CAPS")
	f(func(sc *Scenario) { sc.Duration = time.Second - 1 }, "1 s to 1 h")
	f(func(sc *Scenario) { sc.Arrivals = "steady" }, "unknown arrivals")
	f(func(sc *Scenario) { sc.Skew = []float64{1, 2} }, "2 weights for 3 nodes")
	f(func(sc *Scenario) { sc.Skew = []float64{0, 0, 0} }, "sum to 0")
	f(func(sc *Scenario) { sc.Net.Loss = 1.5 }, "loss")
	f(func(sc *Scenario) { sc.Load = -1 }, "between 0 and 100")
	f(func(sc *Scenario) { sc.Prelude = time.Second }, "prelude shorter than the run")
	f(func(sc *Scenario) { sc.FlashFactor = 1001 }, "flash factor")
}
