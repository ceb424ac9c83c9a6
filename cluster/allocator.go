package cluster

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
