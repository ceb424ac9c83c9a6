package sim

import "slices"

// Validate reports what makes sc impossible to run, as Run would.
func (sc Scenario) Validate() error { return sc.validate() }

// TailSkew is the weights of a farm of n nodes whose first node takes 90 %
// of the load and the others share 10 % evenly (one node alone takes it
// all).
func TailSkew(n int) []float64 {
	if n <= 1 {
		return slices.Repeat([]float64{100}, n)
	}
	w := slices.Repeat([]float64{10 / float64(n-1)}, n)
	w[0] = 90
	return w
}
