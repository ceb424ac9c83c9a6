package cluster

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// meterRun feeds a rate meter a seeded Poisson stream sampled every 100 ms
// (one exchange), its rate given per sample by rate(t), and returns the
// meter's rate after each sample.
func meterRun(seed uint64, samples int, rate func(t float64) float64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 0x6d65746572))
	var m rateMeter
	var n uint64
	next := 0.0 // the next arrival, in seconds
	out := make([]float64, samples)
	m.push(sample{t: 0, n: 0})
	for k := range samples {
		end := float64(k+1) * 0.1
		// Arrivals by thinning: a stream at the highest rate, each kept
		// with the rate of its instant over the highest.
		for {
			next += rng.ExpFloat64() / 1000
			if next > end {
				next = end
				break
			}
			if rng.Float64()*1000 < rate(next) {
				n++
			}
		}
		out[k] = m.push(sample{t: end, n: n})
	}
	return out
}

// A node whose load leaves entirely is seen to have none within the
// exchanges the quiet test needs at its rate (e^-10.4 of a lull: 260 ms at
// 40 CAPS, 580 ms at 18), and the rate after the fall keeps nothing of the
// attempts before it. Before the quiet test a node at 36 CAPS kept its
// part for seconds: the 4-sigma test cannot see a fall of 18 expected
// attempts in 500 ms.
func TestRateMeterSeesLoadLeave(t *testing.T) {
	for _, c := range []struct {
		rate   float64
		within int // samples of 100 ms after the load left
	}{{360, 4}, {90, 4}, {40, 4}, {36, 4}, {27, 5}, {18, 7}} {
		for seed := range uint64(5) {
			got := meterRun(seed, 50, func(t float64) float64 {
				if t < 3 {
					return c.rate
				}
				return 0
			})
			require.InDelta(t, c.rate, got[29], 4*c.rate/10, "rate %v seed %d before the fall", c.rate, seed)
			require.Zero(t, got[29+c.within], "rate %v seed %d: %v", c.rate, seed, got[28:])
		}
	}
}

// A Poisson lull never reads as a fall: over 60 s of seeded arrivals the
// rate never drops below a quarter of the true rate (a fall reads below a
// fifth; a 3 s window at 18 CAPS holds 54 ± 7 attempts, and the seeds hold
// 3-sigma lulls).
func TestRateMeterKeepsLulls(t *testing.T) {
	for _, rate := range []float64{18, 40, 100, 400} {
		for seed := range uint64(3) {
			got := meterRun(seed, 600, func(float64) float64 { return rate })
			for k := 30; k < len(got); k++ {
				require.Greater(t, got[k], rate/4, "rate %v seed %d: lull read as a fall at sample %d", rate, seed, k)
			}
		}
	}
}

// A proxy that stalls 200 ms every 2 s and then sends its backlog within
// 10 ms, 30 stalls on each of 20 seeds: at most one stall in a hundred
// reads as a fall at any rate (measured: 1 of 600 at 20 and 40 CAPS, 3 at
// 100, where the 4-sigma test takes them), and the arrivals after it undo
// each within 500 ms (the backlog at once, where it is 7 attempts or more;
// at 20 CAPS the rise test needs 200 ms of attempts).
func TestRateMeterStalls(t *testing.T) {
	for _, rate := range []float64{20, 40, 100, 400} {
		falls := 0
		for seed := range uint64(20) {
			got := meterRun(seed, 600, func(t float64) float64 {
				switch s := math.Mod(t, 2); {
				case s >= 1.75 && s < 1.95:
					return 0
				case s >= 1.95 && s < 1.96:
					return rate * 21 // the 200 ms backlog within 10 ms
				}
				return rate
			})
			for k := 30; k < len(got)-6; k++ {
				if got[k] < rate/4 {
					falls++
					require.Greater(t, slices.Max(got[k+1:k+6]), rate/3, "rate %v seed %d: a fall at sample %d not undone within 500 ms", rate, seed, k)
				}
			}
		}
		t.Logf("%v CAPS: %d of 600 stalls read as a fall", rate, falls)
		require.LessOrEqual(t, falls, 6, "rate %v", rate)
	}
}

// push skips detect while nothing was counted in the window: over seeded
// streams that go idle and busy, sampled at irregular instants (early
// plans), every push returns what detect returns and leaves the meter as
// detect leaves it.
func TestRateMeterIdleShortcutChangesNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 0x69646c65))
	shortcuts := 0
	for range 200 {
		var m rateMeter
		var n uint64
		tm := 0.0
		for range 300 {
			tm += 0.01 + rng.Float64()*0.1
			switch r := rng.Float64(); {
			case r < 0.6: // idle
			case r < 0.9:
				n += uint64(rng.IntN(5))
			default:
				n += uint64(rng.IntN(200))
			}
			ref := m
			var want float64
			if span, ok := ref.add(sample{t: tm, n: n}); ok {
				if ref.rate(0) == 0 {
					shortcuts++
				}
				want = ref.detect(span)
			} else {
				want = ref.rate(0)
			}
			require.Equal(t, want, m.push(sample{t: tm, n: n}))
			require.Equal(t, ref, m)
		}
	}
	require.Greater(t, shortcuts, 1000, "the idle stretches took the shortcut")
}

// An idle meter's push: detect made it cost the square of the samples
// held (30 in 3 s of exchanges), for each of a farm's idle services.
func BenchmarkRateMeterIdle(b *testing.B) {
	var m rateMeter
	for i := range 64 {
		m.push(sample{t: float64(i) * 0.1})
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.push(sample{t: float64(64+i) * 0.1})
	}
}
