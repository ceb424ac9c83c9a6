package sim

import "time"

// Window sums a run's series, over all nodes, over one span of the run.
type Window struct {
	Start, Length time.Duration
	Offered       int64
	Admitted      int64
	RefusedBelow  int64
}

// Windows sums r's series over consecutive windows of width w (rounded
// down to whole Steps, at least one), from the start of the run; the last
// one ends with the run and may be shorter. The windows' sums are r's
// totals: Offered, Admitted and RefusedBelow.
func (r Result) Windows(w time.Duration) []Window {
	per := max(int(w/Step), 1)
	end := r.Scenario.Duration
	width := time.Duration(per) * Step
	n := int((end + width - 1) / width)
	out := make([]Window, n)
	for i := range out {
		start := time.Duration(i) * width
		out[i] = Window{Start: start, Length: min(width, end-start)}
	}
	for _, s := range r.Series {
		for k := range s.Offered {
			// A step past the run's end holds nothing; it joins the last window.
			win := &out[min(k/per, n-1)]
			win.Offered += s.Offered[k]
			win.Admitted += s.Admitted[k]
			win.RefusedBelow += s.RefusedBelow[k]
		}
	}
	return out
}
