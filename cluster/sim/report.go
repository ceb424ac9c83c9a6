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

// GossipRate sums r.Gossip over the run: the bytes of reports each node
// sent per second, their mean and most over the nodes, the reports a node
// sent per second on average (early ones among them) and the largest
// report. A node's bytes per second are its reports' size × (nodes − 1) ×
// its reports per second.
type GossipRate struct {
	MeanBytes, MaxBytes   float64
	Reports, EarlyReports float64
	Largest               int
}

// GossipRate is r's GossipRate (zero for a run of one node).
func (r Result) GossipRate() GossipRate {
	var g GossipRate
	secs := r.Scenario.Duration.Seconds()
	if len(r.Gossip) == 0 || secs <= 0 {
		return g
	}
	for _, n := range r.Gossip {
		b := float64(n.Bytes) / secs
		g.MeanBytes += b
		g.MaxBytes = max(g.MaxBytes, b)
		g.Reports += float64(n.Reports) / secs
		g.EarlyReports += float64(n.Early) / secs
		g.Largest = max(g.Largest, n.Largest)
	}
	n := float64(len(r.Gossip))
	g.MeanBytes, g.Reports, g.EarlyReports = g.MeanBytes/n, g.Reports/n, g.EarlyReports/n
	return g
}
