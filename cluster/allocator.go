package cluster

import (
	"math"
	"sort"
)

// FloorFraction is the part of a service's licensed CAPS split evenly among
// all live nodes whatever their demand, so a node that suddenly receives
// traffic has capacity before the next demand exchange reaches everyone.
const FloorFraction = 0.05

// Allocate splits limit among nodes by their demands (attempts per second
// offered). Every node first gets an equal floor (FloorFraction of limit
// split n ways). The rest goes by demand above the floor: when it covers
// every node's demand, each gets its demand and the spare is split evenly
// (headroom for growth everywhere); when it does not, it is split in
// proportion to the demands. The shares always sum to limit exactly, so
// nodes that compute them from the same demands never over-admit together.
//
// Allocate is pure and deterministic; demands < 0 count as 0.
func Allocate(limit float64, demands []float64) []float64 {
	n := len(demands)
	shares := make([]float64, n)
	if n == 0 || limit <= 0 {
		return shares
	}
	floor := limit * FloorFraction / float64(n)
	avail := limit - floor*float64(n)
	var want float64
	for _, d := range demands {
		want += max(d-floor, 0)
	}
	for i, d := range demands {
		w := max(d-floor, 0)
		switch {
		case want <= avail:
			shares[i] = floor + w + (avail-want)/float64(n)
		default:
			shares[i] = floor + avail*w/want
		}
	}
	return shares
}

// wholeEpsilon absorbs floating-point error when a part of a licence is
// turned into a whole number of sessions or subscribers: k/L × L may come
// out a hair under k.
const wholeEpsilon = 1e-6

// WholeParts turns shares of a count (sessions, subscribers) into whole
// numbers that sum to ⌊Σ shares⌋: each share is rounded down, and the
// units left go one each to the largest remainders, ties to the earlier
// node. Rounding each node's share down on its own would leave up to n−1
// licensed units unused; nodes that compute WholeParts from the same
// shares get the same parts, which still sum to no more than the licence.
// No part is less than its share rounded down.
func WholeParts(shares []float64) []int64 {
	parts := make([]int64, len(shares))
	var sum float64
	var given int64
	for i, s := range shares {
		s = max(s, 0)
		sum += s
		parts[i] = int64(math.Floor(s + wholeEpsilon))
		given += parts[i]
	}
	left := int64(math.Floor(sum+wholeEpsilon)) - given
	if left <= 0 {
		return parts
	}
	order := make([]int, len(shares))
	for i := range order {
		order[i] = i
	}
	rem := func(i int) float64 { return max(shares[i], 0) - float64(parts[i]) }
	sort.SliceStable(order, func(a, b int) bool { return rem(order[a]) > rem(order[b]) })
	for _, i := range order[:min(int(left), len(order))] {
		parts[i]++
	}
	return parts
}

// wholeOf is fraction of total as a whole number, rounded down.
func wholeOf(fraction float64, total int64) int64 {
	return int64(math.Floor(fraction*float64(total) + wholeEpsilon))
}
