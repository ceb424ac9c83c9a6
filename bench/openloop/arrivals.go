package openloop

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Arrivals is when a Load's connections write their requests: how many in
// each 10 ms tick, all of a tick's in one write. The zero value is paced.
// The other models are seeded: the same Arrivals, connection, rate and
// duration always give the same counts (Counts), and nothing draws from
// global randomness, so a run can be repeated from its seed.
type Arrivals struct {
	Model ArrivalModel
	// Seed: connection i (the index of its address in Load.Addrs) draws
	// its counts from PCG(Seed, 2i) and its stalls from PCG(Seed, 2i+1).
	Seed uint64
}

// ArrivalModel is one of PacedArrivals, PoissonArrivals, StallingArrivals.
type ArrivalModel uint8

const (
	// PacedArrivals: by the end of tick k (from 1), round(rate × 10 ms ×
	// k) are due, capped at round(rate × d): exactly round(rate × d)
	// requests, evenly spread. Paced's model, and the default.
	PacedArrivals ArrivalModel = iota
	// PoissonArrivals: each of the ⌈d / 10 ms⌉ ticks carries a count
	// drawn from a Poisson distribution of mean rate × d / ticks (rate ×
	// 10 ms): independent arrivals, as call attempts from many
	// subscribers are. The total is round(rate × d) only on average.
	PoissonArrivals
	// StallingArrivals: PoissonArrivals from a proxy that stalls. After a
	// gap drawn from an exponential distribution of mean 2 s, it skips the
	// writes of 5 to 20 ticks (50–200 ms, uniform), then writes what they
	// held together with its next tick's: the whole backlog at once. The
	// total is PoissonArrivals' for the same seed; a stall may carry the
	// last write up to 200 ms past d.
	StallingArrivals
)

const (
	// stallMeanGap is StallingArrivals' mean time between the end of one
	// stall and the start of the next.
	stallMeanGap = 2 * time.Second
	// stallMin and stallMax bound a stall, in whole ticks.
	stallMin, stallMax = 50 * time.Millisecond, 200 * time.Millisecond
)

var arrivalModels = [...]string{PacedArrivals: "paced", PoissonArrivals: "poisson", StallingArrivals: "stalling"}

func (m ArrivalModel) String() string {
	if m.valid() {
		return arrivalModels[m]
	}
	return fmt.Sprintf("ArrivalModel(%d)", m)
}

func (m ArrivalModel) valid() bool { return int(m) < len(arrivalModels) }

// ParseArrivalModel returns the model named s: paced, poisson or stalling.
func ParseArrivalModel(s string) (ArrivalModel, error) {
	for m, name := range arrivalModels {
		if s == name {
			return ArrivalModel(m), nil
		}
	}
	return 0, fmt.Errorf("unknown arrival model %q: want paced, poisson or stalling", s)
}

func (a Arrivals) String() string {
	if a.Model == PacedArrivals {
		return "paced arrivals"
	}
	return fmt.Sprintf("%v arrivals, seed %d", a.Model, a.Seed)
}

// Counts returns connection conn's plan for rate per second over d:
// counts[k] requests are written together k ticks (10 ms each) after the
// start. It is what Load sends, without a network. A connection whose
// rate × d rounds to 0 gets no tick at all. A plan has at most
// ⌈d / 10 ms⌉ + 20 ticks.
func (a Arrivals) Counts(conn int, rate float64, d time.Duration) []int {
	p := a.plan(conn, rate, d)
	var counts []int
	for !p.over() {
		counts = append(counts, p.next())
	}
	return counts
}

// maxLate is how far past d a plan of a may write.
func (a Arrivals) maxLate() time.Duration {
	if a.Model == StallingArrivals {
		return stallMax
	}
	return 0
}

// expected is round(rate × d), 0 for a rate that is not a finite number
// above 0.
func expected(rate float64, d time.Duration) int {
	if !(rate > 0) || math.IsInf(rate, 1) || d <= 0 {
		return 0
	}
	return int(math.Round(rate * d.Seconds()))
}

// plan yields one connection's counts tick by tick, so a long load needs
// no memory for its plan. Not safe for concurrent use.
type plan struct {
	model ArrivalModel
	k     int // ticks yielded
	// Paced: the rate per second, the exact total and what is due so far.
	rate       float64
	total, due int
	// Poisson: ticks is how many the plan draws for, mean their mean.
	ticks int
	mean  float64
	draws *rand.Rand
	// Stalling: the next stall skips ticks [stallAt, stallEnd), whose
	// counts are held in backlog until tick stallEnd.
	stalls            *rand.Rand
	stallAt, stallEnd int
	backlog           int
}

func (a Arrivals) plan(conn int, rate float64, d time.Duration) *plan {
	p := &plan{model: a.Model, rate: rate, total: expected(rate, d)}
	if a.Model == PacedArrivals || p.total == 0 {
		return p
	}
	p.ticks = int((d + tick - 1) / tick)
	p.mean = rate * d.Seconds() / float64(p.ticks)
	p.draws = rand.New(rand.NewPCG(a.Seed, 2*uint64(conn)))
	p.stallAt = math.MaxInt
	if a.Model == StallingArrivals {
		p.stalls = rand.New(rand.NewPCG(a.Seed, 2*uint64(conn)+1))
		p.nextStall()
	}
	return p
}

// over says the plan has no tick left.
func (p *plan) over() bool {
	if p.model == PacedArrivals {
		return p.due >= p.total
	}
	return p.k >= p.ticks && p.backlog == 0
}

// next returns the count of the next tick; only while !over().
func (p *plan) next() int {
	k := p.k
	p.k++
	if p.model == PacedArrivals {
		due := min(p.total, int(math.Round(p.rate*tick.Seconds()*float64(p.k))))
		n := due - p.due
		p.due = due
		return n
	}
	n := 0
	if k < p.ticks {
		n = poisson(p.draws, p.mean)
	}
	switch {
	case k < p.stallAt:
		return n
	case k < p.stallEnd:
		p.backlog += n
		return 0
	}
	n += p.backlog
	p.backlog = 0
	p.nextStall()
	return n
}

// nextStall draws the stall after tick p.k-1 (the first: after tick 0):
// it starts at least one tick later, so a stall's release is written.
func (p *plan) nextStall() {
	gap := max(1, int(math.Round(p.stalls.ExpFloat64()*float64(stallMeanGap/tick))))
	p.stallAt = max(p.k, 1) + gap - 1
	p.stallEnd = p.stallAt + int(stallMin/tick) + p.stalls.IntN(int((stallMax-stallMin)/tick)+1)
}

// poisson draws from a Poisson distribution of mean mean > 0: below 10 by
// inversion (one uniform, about mean steps), above by Hörmann's
// transformed rejection with squeeze (PTRS, "The transformed rejection
// method for generating Poisson random variables", 1993; numpy's
// random_poisson_ptrs), which takes about two uniforms whatever the mean.
func poisson(r *rand.Rand, mean float64) int {
	if mean < 10 {
		u, p := r.Float64(), math.Exp(-mean)
		k, cdf := 0, p
		for u > cdf && p > 0 { // p underflows to 0 within a few hundred steps
			k++
			p *= mean / float64(k)
			cdf += p
		}
		return k
	}
	slam, loglam := math.Sqrt(mean), math.Log(mean)
	b := 0.931 + 2.53*slam
	a := -0.059 + 0.02483*b
	invalpha := 1.1239 + 1.1328/(b-3.4)
	vr := 0.9277 - 3.6224/(b-2)
	for {
		u := r.Float64() - 0.5
		v := r.Float64()
		us := 0.5 - math.Abs(u)
		if us == 0 {
			continue
		}
		k := math.Floor((2*a/us+b)*u + mean + 0.43)
		if us >= 0.07 && v <= vr {
			return int(k)
		}
		if k < 0 || (us < 0.013 && v > us) {
			continue
		}
		lg, _ := math.Lgamma(k + 1)
		if math.Log(v)+math.Log(invalpha)-math.Log(a/(us*us)+b) <= -mean+k*loglam-lg {
			return int(k)
		}
	}
}
