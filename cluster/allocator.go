package cluster

import (
	"math"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// FloorFraction is the part of a service's licensed CAPS that counts as
// every node's least demand: a node offered less (an idle one) is planned
// as if offered FloorFraction/n of the licence, so that traffic that
// suddenly reaches it finds capacity before the farm has heard of it.
const FloorFraction = 0.05

// SpareEven is the part of the spare (the licence less what the nodes
// want) of CAPS split evenly among the nodes; the rest goes in proportion
// to what each wants. In proportion, every node gets the same headroom
// relative to its demand (at 95 % of the licence, 5 %), where an even split
// left the busiest node the least (measured with cluster/sim: on 10 nodes
// skewed 40..1 at 95 %, 0.86 % of attempts refused with the even split,
// 0.02 % with this one); the even part keeps some headroom on idle nodes.
const SpareEven = 0.1

// Allocate splits a licence's CAPS among nodes by their demands (attempts
// per second offered). Each node wants its demand, or its floor
// (FloorFraction of limit split n ways) when that is more. When limit
// covers what all want, each gets what it wants and the spare as SpareEven
// says; when it does not, limit is split in proportion to what each wants.
// The shares always sum to limit exactly, so nodes that compute them from
// the same demands never over-admit together.
//
// Allocate is pure and deterministic; demands < 0 count as 0.
func Allocate(limit float64, demands []float64) []float64 {
	return allocate(limit, demands, SpareEven)
}

// AllocateHeld splits a count (sessions, subscribers, a token pool's rate)
// the same way, but with the spare split evenly: what a node holds says
// little of what it will be asked for next.
func AllocateHeld(limit float64, held []float64) []float64 {
	return allocate(limit, held, 1)
}

// allocate is Allocate with even the part of the spare split evenly.
func allocate(limit float64, demands []float64, even float64) []float64 {
	n := len(demands)
	shares := make([]float64, n)
	if n == 0 || limit <= 0 {
		return shares
	}
	floor := limit * FloorFraction / float64(n)
	want := wants(limit, demands)
	spare := limit - want
	for i, d := range demands {
		w := max(d, floor)
		switch {
		case spare >= 0:
			shares[i] = w + spare*(even/float64(n)+(1-even)*w/want)
		default:
			shares[i] = limit * w / want
		}
	}
	return shares
}

// wants is what nodes offered demands want of a licence of limit: each its
// demand or its floor, whichever is more, summed.
func wants(limit float64, demands []float64) float64 {
	floor := limit * FloorFraction / float64(max(len(demands), 1))
	var want float64
	for _, d := range demands {
		want += max(d, floor)
	}
	return want
}

// MaxBurst bounds the farm's burst: what n nodes' CAPS buckets can hold
// together when they split a licence of licence CAPS, at admission.burst
// burst. The licence's own depth is lent among them; each keeps its
// reserve beside it (admission.Reserve: 3 standard deviations of 200 ms of
// its share's attempts, rounded up), and the reserves of shares that sum
// to the licence sum to at most 3 × sqrt(0.2 × n × licence) + n.
func MaxBurst(licence float64, n int, burst time.Duration) float64 {
	d := float64(admission.Depth(licence, burst.Seconds()))
	if n <= 1 {
		return d
	}
	return d + admission.ReserveZ*math.Sqrt(admission.ReserveSpan.Seconds()*float64(n)*licence) + float64(n)
}
