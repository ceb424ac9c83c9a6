package node

import (
	"fmt"
	"io"
	"strconv"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
)

func init() {
	// # HELP / # TYPE lines, so Prometheus and promtool know each type.
	metrics.ExposeMetadata(true)
}

// writeServiceMetrics writes the per-service series. Services come and go
// with licences, so they are written from the engine's counters at scrape
// time rather than registered as fixed metrics. -1 means unlimited.
func (n *Node) writeServiceMetrics(w io.Writer) {
	services := n.eng.Services()
	counter := func(name string, v func(admission.Stats) uint64, stats []admission.Stats) {
		metrics.WriteMetadataIfNeeded(w, name, "counter")
		for _, st := range stats {
			fmt.Fprintf(w, "%s{service=%q} %d\n", name, st.Name, v(st))
		}
	}
	gauge := func(name string, v func(admission.Stats) float64, stats []admission.Stats) {
		metrics.WriteMetadataIfNeeded(w, name, "gauge")
		for _, st := range stats {
			fmt.Fprintf(w, "%s{service=%q} %s\n", name, st.Name, strconv.FormatFloat(v(st), 'f', -1, 64))
		}
	}
	stats := make([]admission.Stats, len(services))
	for i, s := range services {
		stats[i] = s.Stats()
	}
	const adm = "capsgate_admissions_total"
	metrics.WriteMetadataIfNeeded(w, adm, "counter")
	for _, st := range stats {
		for r, c := range st.Admissions {
			fmt.Fprintf(w, "%s{service=%q,reason=%q} %d\n", adm, st.Name, admission.Reason(r).String(), c)
		}
	}
	unknown := n.eng.UnknownServiceAdmissions()
	metrics.WriteMetadataIfNeeded(w, "capsgate_unknown_service_admissions_total", "counter")
	for _, r := range []admission.Reason{admission.UNLICENSED, admission.OVERLOAD} {
		fmt.Fprintf(w, "capsgate_unknown_service_admissions_total{reason=%q} %d\n", r.String(), unknown[r])
	}
	counter("capsgate_emergency_admissions_total", func(s admission.Stats) uint64 { return s.Emergency }, stats)
	counter("capsgate_high_priority_admissions_total", func(s admission.Stats) uint64 { return s.High }, stats)
	counter("capsgate_tokens_consumed_total", func(s admission.Stats) uint64 { return uint64(s.TokensUsed) }, stats)
	counter("capsgate_tokens_overage_total", func(s admission.Stats) uint64 { return uint64(s.Overage) }, stats)
	gauge("capsgate_licensed_caps", func(s admission.Stats) float64 {
		if !s.Limits.Licensed {
			return 0
		}
		if s.Limits.LicensedCAPS != 0 {
			return s.Limits.LicensedCAPS
		}
		return s.Limits.CAPS
	}, stats)
	gauge("capsgate_caps_share", func(s admission.Stats) float64 { return s.Limits.CAPS }, stats)
	gauge("capsgate_used_caps", func(s admission.Stats) float64 { return s.UsedCAPS }, stats)
	gauge("capsgate_licensed_sessions", func(s admission.Stats) float64 { return float64(s.Limits.Sessions) }, stats)
	gauge("capsgate_sessions", func(s admission.Stats) float64 { return float64(s.Sessions) }, stats)
	gauge("capsgate_emergency_sessions", func(s admission.Stats) float64 { return float64(s.EmergencySessions) }, stats)
	gauge("capsgate_licensed_subscribers", func(s admission.Stats) float64 { return float64(s.Limits.Subscribers) }, stats)
	gauge("capsgate_subscribers", func(s admission.Stats) float64 { return float64(s.Subscribers) }, stats)
	gauge("capsgate_tokens_left", func(s admission.Stats) float64 { return float64(s.TokensLeft) }, stats)
	states := map[string]int{"alive": 0, "suspect": 0, "dead": 0}
	for _, m := range n.cluster.Members() {
		states[m.State]++
	}
	metrics.WriteMetadataIfNeeded(w, "capsgate_cluster_members", "gauge")
	for _, st := range []string{"alive", "suspect", "dead"} {
		fmt.Fprintf(w, "capsgate_cluster_members{state=%q} %d\n", st, states[st])
	}
	gauge("capsgate_service_licensed", func(s admission.Stats) float64 {
		if s.Limits.Licensed {
			return 1
		}
		return 0
	}, stats)
}

// meteringErrors counts failed token reservations and ledger writes (a
// full or failing disk); an alert should fire on any increase.
var meteringErrors = metrics.NewCounter(`capsgate_metering_errors_total`)

// What the background check of the ledger's earlier segments found since
// start (verifyLedgerHistory).
var (
	ledgerHistoryRecords = metrics.NewCounter(`capsgate_ledger_history_verified_records_total`)
	ledgerHistoryChecked = metrics.NewGauge(`capsgate_ledger_history_checked`, nil)
	ledgerHistoryBroken  = metrics.NewGauge(`capsgate_ledger_history_broken`, nil)
)
