package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Arrivals name the traffic models a scenario offers.
const (
	// Paced: evenly spaced attempts, the easy case.
	Paced = "paced"
	// Poisson: independent attempts, exponential gaps; SIP arrivals at best.
	Poisson = "poisson"
	// Bursty: Poisson at twice the rate during on-periods and nothing in
	// off-periods, both exponential with a mean of 100 ms: the same mean
	// load in bunches.
	Bursty = "bursty"
	// Stalling: Poisson through a proxy that stalls for 50-200 ms about
	// every 2 s (exponential gaps) and then sends its backlog at once.
	Stalling = "stalling"
)

// ParseArrivals checks an arrival model's name.
func ParseArrivals(s string) (string, error) {
	switch s {
	case Paced, Poisson, Bursty, Stalling:
		return s, nil
	}
	return "", fmt.Errorf("unknown arrivals %q: want paced, poisson, bursty or stalling", s)
}

// source makes one node's attempt instants: the next instant after t at
// the node's offered rate, which may change over time. It is seeded, so a
// scenario repeats exactly.
type source struct {
	model string
	rng   *rand.Rand
	// bursty: whether the source is on, and until when.
	on      bool
	phaseTo int64
	// stalling: the next stall's start and end.
	stallAt, stallTo int64
	// at is the instant of the last attempt drawn (before any stall held it).
	at int64
	// change returns the first instant after t at which the offered rate
	// may change (nil: never): a gap drawn at the old rate stops there and
	// is drawn again at the new one (the arrivals are memoryless).
	change func(t int64) int64
}

const (
	burstyPhase = int64(100 * time.Millisecond)
	stallEvery  = 2 * float64(time.Second)
	stallMin    = int64(50 * time.Millisecond)
	stallMax    = int64(200 * time.Millisecond)
)

func newSource(model string, seed uint64, node int) *source {
	s := &source{model: model, rng: rand.New(rand.NewPCG(seed, uint64(node)+1)), on: true}
	s.phaseTo = s.exp(float64(burstyPhase))
	s.stallAt = s.exp(stallEvery)
	s.stallTo = s.stallAt + stallMin + s.rng.Int64N(stallMax-stallMin+1)
	return s
}

// exp draws an exponential duration of the given mean, in nanoseconds.
func (s *source) exp(mean float64) int64 { return int64(s.rng.ExpFloat64()*mean) + 1 }

// next returns the instant of the source's next attempt, drawn after the
// previous one at the offered rate that rate gives at each instant
// (piecewise constant: a change takes effect at the next draw), or limit
// (the end of the run) when none comes before it. A stalled
// proxy holds what arrives during its stall and sends it at the stall's
// end, so several attempts may share one instant.
func (s *source) next(limit int64, rate func(int64) float64) int64 {
	t := s.at
	for t < limit {
		r := rate(t)
		if s.model == Bursty {
			for s.phaseTo <= t {
				s.on = !s.on
				s.phaseTo += s.exp(float64(burstyPhase))
			}
			if !s.on {
				t = s.phaseTo
				continue
			}
			r *= 2
		}
		if !(r > 0) {
			t += int64(time.Millisecond)
			continue
		}
		var gap int64
		if s.model == Paced {
			gap = int64(math.Round(1e9 / r))
		} else {
			gap = s.exp(1e9 / r)
		}
		nt := t + max(gap, 1)
		if s.model == Bursty && nt > s.phaseTo {
			// The phase ended first: draw again from its end (memoryless).
			t = s.phaseTo
			continue
		}
		if s.change != nil {
			if c := s.change(t); nt > c {
				// The rate changes first: draw again from then.
				t = c
				continue
			}
		}
		s.at = nt
		if s.model == Stalling {
			for s.stallTo <= nt {
				s.stallAt = s.stallTo + s.exp(stallEvery)
				s.stallTo = s.stallAt + stallMin + s.rng.Int64N(stallMax-stallMin+1)
			}
			if nt >= s.stallAt {
				return s.stallTo
			}
		}
		return nt
	}
	s.at = limit
	return limit
}
