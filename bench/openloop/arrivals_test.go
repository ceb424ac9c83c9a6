package openloop_test

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
)

const tick = 10 * time.Millisecond

var (
	paced    = openloop.Arrivals{}
	poisson  = openloop.Arrivals{Model: openloop.PoissonArrivals, Seed: 1}
	stalling = openloop.Arrivals{Model: openloop.StallingArrivals, Seed: 1}
)

func sum(counts []int) int {
	n := 0
	for _, k := range counts {
		n += k
	}
	return n
}

// maxTicks bounds a plan's length: ⌈d / tick⌉, and up to a 200 ms stall.
func maxTicks(d time.Duration) int { return int((d+tick-1)/tick) + 20 }

// A paced plan sends exactly round(rate × d), round(rate × 10 ms × k) by
// the end of tick k: the counts Paced sent before it had arrival models.
func TestPacedArrivalsAreExact(t *testing.T) {
	f := func(rate float64, d time.Duration, total, ticks int) {
		t.Helper()
		for _, a := range []openloop.Arrivals{paced, {Seed: 99}} { // a paced plan ignores the seed
			counts := a.Counts(0, rate, d)
			require.Equal(t, total, sum(counts), "rate %v for %v", rate, d)
			require.Len(t, counts, ticks, "rate %v for %v", rate, d)
			due := 0
			for k, n := range counts {
				due += n
				require.Equal(t, min(total, int(math.Round(rate*tick.Seconds()*float64(k+1)))), due, "rate %v, tick %d", rate, k)
			}
		}
	}
	f(950, 10*time.Second, 9500, 1000)
	f(665, 10*time.Second, 6650, 1000) // 70 % of 950: 6 and 7 in turn
	f(9.5, 10*time.Second, 95, 995)    // 1 % of 950: one every 10 or 11 ticks, the last at 9.94 s
	f(2000, 10*time.Second, 20000, 1000)
	f(1500, 4*time.Second, 6000, 400)
	f(0.04, 10*time.Second, 0, 0)
	f(0, 10*time.Second, 0, 0)
}

// A Poisson plan is the same from the same seed and connection, and
// another from another.
func TestPoissonArrivalsRepeatFromTheSeed(t *testing.T) {
	for _, a := range []openloop.Arrivals{poisson, stalling} {
		first := a.Counts(2, 665, 10*time.Second)
		require.Equal(t, first, a.Counts(2, 665, 10*time.Second), "%v", a)
		require.NotEqual(t, first, a.Counts(1, 665, 10*time.Second), "%v: another connection", a)
		other := a
		other.Seed++
		require.NotEqual(t, first, other.Counts(2, 665, 10*time.Second), "%v: another seed", a)
		require.LessOrEqual(t, len(first), maxTicks(10*time.Second))
	}
}

// Over 100,000 ticks, a Poisson plan's counts have the mean, the variance
// and the share of empty ticks of a Poisson distribution of mean rate ×
// 10 ms, each within 5 standard deviations of its estimate; a paced
// plan's variance is below 1/4 (its counts differ by at most one).
func TestPoissonArrivalsArePoisson(t *testing.T) {
	const ticks = 100_000
	d := ticks * tick
	for _, lambda := range []float64{0.095, 6.65, 9.99, 10, 20, 500} { // both samplers, either side of 10
		counts := poisson.Counts(0, lambda/tick.Seconds(), d)
		require.Len(t, counts, ticks)
		n := float64(ticks)
		mean, variance := moments(counts, ticks)
		zeros := 0.0
		for _, k := range counts {
			if k == 0 {
				zeros++
			}
		}
		p0 := math.Exp(-lambda)
		// The sample mean's variance is λ/N; the sample variance's is
		// (μ4 − σ⁴)/N with μ4 = λ + 3λ² for a Poisson distribution.
		meanBound := 5 * math.Sqrt(lambda/n)
		varBound := 5 * math.Sqrt((lambda+2*lambda*lambda)/n)
		p0Bound := 5 * math.Sqrt(p0*(1-p0)/n)
		t.Logf("λ %v: mean %.4f (±%.4f), variance %.4f (±%.4f), empty ticks %.4f (e^-λ %.4f ±%.4f)",
			lambda, mean, meanBound, variance, varBound, zeros/n, p0, p0Bound)
		require.InDelta(t, lambda, mean, meanBound, "λ %v: mean", lambda)
		require.InDelta(t, lambda, variance, varBound, "λ %v: variance", lambda)
		require.InDelta(t, p0, zeros/n, p0Bound, "λ %v: share of empty ticks", lambda)

		_, pacedVariance := moments(paced.Counts(0, lambda/tick.Seconds(), d), ticks)
		require.Less(t, pacedVariance, 0.25, "λ %v: paced", lambda)
	}
}

// moments returns the mean and variance of the counts of n ticks, those
// past the end of counts empty.
func moments(counts []int, n int) (mean, variance float64) {
	var s, s2 float64
	for _, k := range counts {
		s += float64(k)
		s2 += float64(k) * float64(k)
	}
	mean = s / float64(n)
	return mean, s2/float64(n) - mean*mean
}

// A stalling plan is the Poisson plan of its seed with, now and then, 5 to
// 20 ticks (50–200 ms) of nothing, whose counts come with the next tick's
// in one write; stalls come every 2 s on average.
func TestStallingArrivalsHoldTheBacklog(t *testing.T) {
	const seconds = 200
	d := seconds * time.Second
	for seed := range uint64(3) {
		a := openloop.Arrivals{Model: openloop.StallingArrivals, Seed: seed}
		base := openloop.Arrivals{Model: openloop.PoissonArrivals, Seed: seed}.Counts(0, 2000, d)
		require.NotContains(t, base, 0, "at λ = 20 a Poisson tick is empty with probability 2e-9: every empty tick is a stall's")
		counts := a.Counts(0, 2000, d)
		require.Equal(t, sum(base), sum(counts), "seed %d: the same requests", seed)
		require.LessOrEqual(t, len(counts), maxTicks(d))
		at := func(c []int, k int) int { // beyond its end a plan sends nothing
			if k < len(c) {
				return c[k]
			}
			return 0
		}
		stalls, stalled := 0, 0
		for k := 0; k < len(counts); k++ {
			if counts[k] != 0 {
				require.Equal(t, base[k], counts[k], "seed %d: tick %d, outside a stall", seed, k)
				continue
			}
			from := k
			for k < len(counts) && counts[k] == 0 {
				k++
			}
			require.Less(t, k, len(counts), "seed %d: a stall from tick %d is never released", seed, from)
			require.GreaterOrEqual(t, k-from, 5, "seed %d: the stall at tick %d lasts 50 ms or more", seed, from)
			require.LessOrEqual(t, k-from, 20, "seed %d: the stall at tick %d lasts 200 ms or less", seed, from)
			backlog := 0
			for j := from; j <= k; j++ {
				backlog += at(base, j)
			}
			require.Equal(t, backlog, counts[k], "seed %d: tick %d writes the stall's backlog with its own", seed, k)
			stalls++
			stalled += k - from
		}
		// Stalls start after gaps of mean 2 s and last 125 ms on average:
		// about seconds / 2.125 of them, a count whose standard deviation
		// is about its square root (the gaps are exponential).
		want := seconds / (2 + 0.125)
		t.Logf("seed %d: %d stalls in %d s (%.0f expected), %d ticks stalled, %d sent", seed, stalls, seconds, want, stalled, sum(counts))
		require.InDelta(t, want, stalls, 5*math.Sqrt(want), "seed %d: stalls", seed)
	}

	// At a low rate most ticks are empty anyway; the plan still sends
	// Poisson's requests, and ends at most 200 ms late.
	low := stalling.Counts(5, 9.5, 10*time.Second)
	require.Equal(t, sum(poisson.Counts(5, 9.5, 10*time.Second)), sum(low))
	require.LessOrEqual(t, len(low), maxTicks(10*time.Second))
}

func TestParseArrivalModel(t *testing.T) {
	for _, m := range []openloop.ArrivalModel{openloop.PacedArrivals, openloop.PoissonArrivals, openloop.StallingArrivals} {
		got, err := openloop.ParseArrivalModel(m.String())
		require.NoError(t, err)
		require.Equal(t, m, got)
	}
	_, err := openloop.ParseArrivalModel("bursty")
	require.EqualError(t, err, `unknown arrival model "bursty": want paced, poisson or stalling`)
	require.Equal(t, "poisson arrivals, seed 1", poisson.String())
	require.Equal(t, "paced arrivals", paced.String())
}
