package resp

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// decisionBounds are the upper bounds, in nanoseconds, of the
// capsgate_decision_seconds histogram's buckets: 1 µs to 10 ms.
var decisionBounds = [...]int64{1e3, 2.5e3, 5e3, 10e3, 25e3, 50e3, 100e3, 250e3, 500e3, 1e6, 2.5e6, 10e6}

// latencyHist is a Prometheus-style histogram owned by one event loop. Each
// loop has its own, so observing is a few uncontended atomic adds and no
// lock; the exposition sums them all into one series.
type latencyHist struct {
	counts [len(decisionBounds) + 1]atomic.Uint64 // the last one is +Inf
	sumNs  atomic.Uint64
}

// observe records n commands that took ns nanoseconds each.
func (h *latencyHist) observe(ns int64, n uint64) {
	if ns < 0 {
		ns = 0
	}
	i := 0
	for i < len(decisionBounds) && ns > decisionBounds[i] {
		i++
	}
	h.counts[i].Add(n)
	h.sumNs.Add(uint64(ns) * n)
}

var hists struct {
	sync.Mutex // guards all
	all        []*latencyHist
}

func newLatencyHist() *latencyHist {
	h := &latencyHist{}
	hists.Lock()
	hists.all = append(hists.all, h)
	hists.Unlock()
	return h
}

func init() { metrics.RegisterMetricsWriter(writeDecisionHistogram) }

// writeDecisionHistogram writes capsgate_decision_seconds in the Prometheus
// text format (cumulative le buckets, _sum, _count).
func writeDecisionHistogram(w io.Writer) {
	var counts [len(decisionBounds) + 1]uint64
	var sum uint64
	hists.Lock()
	for _, h := range hists.all {
		for i := range counts {
			counts[i] += h.counts[i].Load()
		}
		sum += h.sumNs.Load()
	}
	hists.Unlock()
	const name = "capsgate_decision_seconds"
	metrics.WriteMetadataIfNeeded(w, name, "histogram")
	var cum uint64
	for i, b := range decisionBounds {
		cum += counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%g\"} %d\n", name, float64(b)/1e9, cum)
	}
	cum += counts[len(decisionBounds)]
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n", name, cum)
	fmt.Fprintf(w, "%s_sum %s\n", name, formatFloat(float64(sum)/1e9))
	fmt.Fprintf(w, "%s_count %d\n", name, cum)
}

func formatFloat(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%g", v)
}
