package node

import (
	"bufio"
	"bytes"
	"io"
	"strings"
)

// metricHelp is the # HELP text of each of capsgate's metric families.
// The metrics library writes an empty one; Prometheus' linter (promtool
// check metrics) wants a text.
var metricHelp = map[string]string{
	"capsgate_admissions_total":                      "ADMIT decisions of normal and high priority, by service and reason.",
	"capsgate_emergency_admissions_total":            "Emergency attempts admitted, by service.",
	"capsgate_high_priority_admissions_total":        "PRIORITY high attempts admitted, by service.",
	"capsgate_unknown_service_admissions_total":      "ADMITs for services no licence ever named, by reason.",
	"capsgate_decision_seconds":                      "Time per command from bytes in to bytes out.",
	"capsgate_licensed_caps":                         "The cluster's licensed call attempts per second, by service (-1: unlimited).",
	"capsgate_caps_share":                            "This node's share of the licensed CAPS, by service.",
	"capsgate_used_caps":                             "Attempts admitted per second on this node over the last second, by service.",
	"capsgate_licensed_sessions":                     "Licensed concurrent sessions, by service (-1: unlimited).",
	"capsgate_sessions":                              "Open sessions on this node that count against the licence, by service.",
	"capsgate_emergency_sessions":                    "Open emergency sessions on this node, by service.",
	"capsgate_licensed_subscribers":                  "Licensed registered subscribers, by service (-1: unlimited).",
	"capsgate_subscribers":                           "Registered subscribers on this node, by service.",
	"capsgate_tokens_left":                           "Tokens left in the service's pool on this node (-1: unlimited).",
	"capsgate_tokens_consumed_total":                 "Tokens charged on this node, by service.",
	"capsgate_tokens_overage_total":                  "Tokens charged beyond a pool on this node, by service.",
	"capsgate_service_licensed":                      "1 when a valid licence covers the service, else 0.",
	"capsgate_resp_connections":                      "Open RESP client connections.",
	"capsgate_license_state":                         "1 for each licence's current state.",
	"capsgate_license_expiry_seconds":                "Seconds until each licence's not_after (negative in grace).",
	"capsgate_clock_rollback":                        "1 when the wall clock is behind the licence clock's high-water mark.",
	"capsgate_clock_behind_seconds":                  "How far the wall clock is behind the high-water mark.",
	"capsgate_cluster_members":                       "Cluster members by state.",
	"capsgate_cluster_side_fraction":                 "Part of each licence this node's side of a partition enforces.",
	"capsgate_gossip_messages_total":                 "Cluster messages of capsgate's own, by kind and direction.",
	"capsgate_gossip_bytes_total":                    "Bytes of capsgate's own cluster messages, by direction.",
	"capsgate_gossip_forward_dropped_total":          "Forwarded operations that could not be queued or sent.",
	"capsgate_cluster_gossip_rejected_total":         "Gossip packets and streams memberlist refused or could not handle (each an error or warning naming its sender).",
	"capsgate_cluster_gossip_log_dropped_total":      "Memberlist log lines not written: past 10 a second of one kind.",
	"capsgate_license_convergence_seconds":           "From a licence's load on one node to its arrival on another.",
	"capsgate_subscriber_claims_total":               "Subscribers let go here for a later registration on another member.",
	"capsgate_consume_id_conflicts_total":            "CONSUME IDs charged on two members before either heard of the other.",
	"capsgate_metering_errors_total":                 "Failed token reservations or ledger writes (a full or failing disk).",
	"capsgate_ledger_history_verified_records_total": "Records of the ledger's earlier segments verified since start, in the background (a start checks each earlier segment's first and last record).",
	"capsgate_ledger_history_checked":                "1 once every earlier segment of the ledger was verified since start, without a break.",
	"capsgate_ledger_history_broken":                 "1 when the background check found a break in an earlier segment of the ledger (the log names file, line and seq).",
	"capsgate_state_flush_duration_seconds":          "Time to write and fsync one batch of the session journal.",
	"capsgate_state_journal_written_bytes_total":     "Bytes written to the session journal.",
	"capsgate_state_journal_changes_total":           "Session and registration changes written to the journal.",
	"capsgate_state_snapshots_total":                 "Session journal snapshots written.",
	"capsgate_state_log_overflows_total":             "Change logs that overflowed between two journal flushes.",
	"capsgate_state_errors_total":                    "Failed session journal writes.",
}

// lintDropped are Go runtime and process series of the metrics library
// whose names break Prometheus' naming rules (a counter without _total, a
// gauge with it); left out so the exposition passes promtool's linter.
var lintDropped = map[string]bool{
	"go_cgo_calls_count": true, "go_cpu_count": true, "go_gc_forced_count": true,
	"process_io_read_bytes_total": true, "process_io_read_syscalls_total": true,
	"process_io_storage_read_bytes_total": true, "process_io_storage_written_bytes_total": true,
	"process_io_write_syscalls_total": true, "process_io_written_bytes_total": true,
}

// writeLinted copies a Prometheus text exposition, giving every family a
// help text and leaving out lintDropped.
func writeLinted(w io.Writer, in []byte) error {
	bw := bufio.NewWriter(w)
	for len(in) > 0 {
		line := in
		if i := bytes.IndexByte(in, '\n'); i >= 0 {
			line, in = in[:i], in[i+1:]
		} else {
			in = nil
		}
		name := familyOf(line)
		if lintDropped[name] {
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok && len(bytes.TrimSpace(bytes.TrimPrefix(rest, []byte(name)))) == 0 {
			bw.WriteString("# HELP " + name + " " + helpOf(name) + "\n")
			continue
		}
		bw.Write(line)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// familyOf is the metric name a line is about: that of a # HELP or # TYPE
// line, or of a sample.
func familyOf(line []byte) string {
	if rest, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok {
		line = rest
	} else if rest, ok := bytes.CutPrefix(line, []byte("# TYPE ")); ok {
		line = rest
	} else if len(line) > 0 && line[0] == '#' {
		return ""
	}
	if i := bytes.IndexAny(line, "{ "); i >= 0 {
		line = line[:i]
	}
	return string(line)
}

// helpOf is a family's help text: capsgate's own, or one made of its name
// for the Go runtime's and the process's.
func helpOf(name string) string {
	if h, ok := metricHelp[name]; ok {
		return h
	}
	switch {
	case strings.HasPrefix(name, "go_"):
		return "Go runtime: " + strings.ReplaceAll(strings.TrimPrefix(name, "go_"), "_", " ") + "."
	case strings.HasPrefix(name, "process_"):
		return "Process: " + strings.ReplaceAll(strings.TrimPrefix(name, "process_"), "_", " ") + "."
	}
	return strings.ReplaceAll(name, "_", " ") + "."
}
