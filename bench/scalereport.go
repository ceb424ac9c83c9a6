package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Names of WriteScale's files in its directory.
const (
	ScaleJSONFile       = "scale.json"
	ScaleMarkdownFile   = "scale.md"
	ScaleMemorySVGFile  = "scale-memory.svg"
	ScaleLatencySVGFile = "scale-latency.svg"
	ScaleRestartSVGFile = "scale-restart.svg"
)

// WriteScale writes rep to dir: scale.json, scale.md and the three plots.
func WriteScale(rep ScaleReport, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cannot make --out %s: %w", dir, err)
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	for name, text := range map[string]string{
		ScaleJSONFile:       string(js) + "\n",
		ScaleMarkdownFile:   ScaleMarkdown(rep),
		ScaleMemorySVGFile:  scaleMemorySVG(rep),
		ScaleLatencySVGFile: scaleLatencySVG(rep),
		ScaleRestartSVGFile: scaleRestartSVG(rep),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("cannot write the scale report: %w", err)
		}
	}
	return nil
}

// ScaleMarkdown is the report: how it was produced, the table
// (a row per target and entry count), capsgate's restore, and the
// plots.
func ScaleMarkdown(rep ScaleReport) string {
	var b strings.Builder
	b.WriteString("# capsbench scale\n\n")
	fmt.Fprintf(&b, "Produced by `%s` on a machine with %d cores, %s UTC.\n\n", rep.CommandLine, rep.CPUs, rep.Started.Format("2006-01-02 15:04"))
	fmt.Fprintf(&b, "For each entry count N, from a fresh data dir: `redis-benchmark -c %d -P %d -r %d -n N/2` sends N/2 of the "+
		"first command and then N/2 of the second, with random keys (the few repeats are why a server can hold a little "+
		"less than N), while a separate connection sends `PING` every %d ms and records each answer's latency; the server's "+
		"RSS (VmRSS) and the entries it holds (capsgate: `QUOTA %s` sessions_used + subscribers_used; Redis: `DBSIZE`) "+
		"are read every %d ms. %g s after the load the server is killed with `kill -9` and started again on the same data; "+
		"the restart is timed from the start of the new process to its first `PONG` and to every entry back.\n\n",
		scaleConns, scalePipeline, scaleKeyRange, probeEvery.Milliseconds(), scaleService, sampleEvery.Milliseconds(), settleBeforeKill.Seconds())
	b.WriteString(ScaleTable(rep))
	b.WriteString(restoreTable(rep))
	var failed []string
	for _, r := range rep.Runs {
		if r.Restart.Failure != "" {
			failed = append(failed, fmt.Sprintf("- %s at %s entries: %s\n", r.Target, commas(int64(r.Entries)), r.Restart.Failure))
		}
	}
	if len(failed) > 0 {
		b.WriteString("\n**Restarts that did not come back:**\n\n" + strings.Join(failed, ""))
	}
	b.WriteString("\n![RSS against entries held during the load](" + ScaleMemorySVGFile + ")\n\n")
	b.WriteString("![PING latency during the load](" + ScaleLatencySVGFile + ")\n\n")
	b.WriteString("![kill -9 to first answer against entries](" + ScaleRestartSVGFile + ")\n")
	return b.String()
}

// ScaleTable is the results table, a row per run.
func ScaleTable(rep ScaleReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %d cores | entries | first phase | second phase | bytes per entry (RSS growth) | `PING` p99 / worst during the load "+
		"| longest gap between answers | `kill -9` to first answer | to all back | entries back |\n", rep.CPUs)
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Runs {
		rates := [2]string{"–", "–"}
		for i, p := range r.Phases[:min(2, len(r.Phases))] {
			rates[i] = commas(int64(math.Round(p.PerSec))) + "/s"
		}
		allBack := "–" // nothing is kept to come back
		if r.Persistent {
			allBack = fmt.Sprintf("%.2f s", r.Restart.AllBackS)
		}
		if r.Restart.Failure != "" {
			allBack = "**not within " + restartTimeout.String() + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.0f | %.1f / %.0f ms | %.0f ms | %.2f s | %s | %s of %s |\n",
			r.Label, commas(int64(r.Entries)), rates[0], rates[1], r.BytesPerEntry, r.Probe.P99Ms, r.Probe.WorstMs,
			r.Probe.LongestGapMs, r.Restart.FirstAnswerS, allBack, commas(r.Restart.Back), commas(r.Held))
	}
	return b.String()
}

// restoreTable is capsgate's own view of each restart: when /readyz said
// ready and what its restore gauges say.
func restoreTable(rep ScaleReport) string {
	var b strings.Builder
	for _, r := range rep.Runs {
		if r.Target != ScaleCapsgate {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\ncapsgate after each restart, from its admin API:\n\n" +
				"| entries | `/readyz` ready after | `capsgate_state_restore_seconds` | restored (sessions + subscribers gauges) |\n" +
				"|---:|---:|---:|---:|\n")
		}
		fmt.Fprintf(&b, "| %s | %.2f s | %.3f s | %s |\n", commas(int64(r.Entries)), r.Restart.ReadyS, r.Restart.RestoreSeconds, commas(r.Restart.Restored))
	}
	return b.String()
}

// commas writes n with a comma every three digits (1,998,947).
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
