package bench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// WriteReport writes dir/report.md (the results table, the targets met or
// missed and, under each missed one, the top entries of the CPU profiles
// taken during its capsgate run, found in profileDir) and dir/compare.svg
// (throughput bars and latency percentiles).
func WriteReport(c Comparison, dir, profileDir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cannot make the report directory: %w", err)
	}
	var b strings.Builder
	s := c.Settings
	fmt.Fprintf(&b, "# capsbench compare\n\n")
	fmt.Fprintf(&b, "Each target for %gs per mode, with the same client (admission/client on netpoll) and the load generator on "+
		"the same machine, in rounds of about a second that take the targets in turn (all of them see the same moments of "+
		"the machine): throughput = closed loop, %d connections × %d pipelined; latency = open loop, %.0f requests/s over %d "+
		"connections, no pipelining.\n\n", s.Seconds, s.ThroughputConns, s.Pipeline, s.Rate, s.Conns)
	if c.LoadStart != "" {
		fmt.Fprintf(&b, "Machine: %d CPUs; load average (1, 5, 15 min) %s before the runs, %s after.\n\n", c.CPUs, c.LoadStart, c.LoadEnd)
	}
	if st := c.Stalls; st != nil {
		fmt.Fprintf(&b, "Machine stalls (`capsbench stalls --seconds %g`, before the runs): a goroutine spinning on each of %d CPUs "+
			"for %.1fs lost %.2f%% of its time in pauses longer than %v — %d pauses over 250 µs, %d over 1 ms, the longest %.0f µs "+
			"(counted over all of them). A pause is its thread not running: the kernel, another process, the Go runtime or, "+
			"on a virtual machine, the hypervisor. A server or generator thread paused with a request in flight delays it "+
			"as long.\n\n",
			c.Settings.StallSeconds, st.CPUs, st.Seconds, st.StalledFraction*100, StallMinimum, st.Over250us, st.Over1ms, st.MaxUs)
	}
	b.WriteString("Open-loop latency is measured per request from its intended send time (start + j/rate; request j on " +
		"connection j mod conns) to when the generator has parsed its reply, so it includes the generator's own lateness " +
		"in sending (the send-lag column: p99 of how late each write began), both loopback paths, the server, and the " +
		"client's wake-up; a stall counts for every request it delays (no coordinated omission). " +
		"Throughput rows give the round trip of a pipelined batch. The CPU column is what the server's process and the " +
		"generator used during the run, in cores (CPU seconds per second) of the machine's CPUs, which they share.\n\n")
	b.WriteString("| target | mode | ops/s | p50 µs | p99 µs | p99.9 µs | max µs | send lag p99 µs | admitted | CPU: server + generator |\n" +
		"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range c.Results {
		lag := ""
		if r.Mode == ModeLatency {
			lag = fmt.Sprintf("%.1f", r.SendLagP99us)
		}
		cpu := "–" // not measured (no /proc, or an older JSON)
		if r.ServerCPU > 0 || r.GeneratorCPU > 0 {
			cpu = fmt.Sprintf("%.2f + %.2f", r.ServerCPU, r.GeneratorCPU)
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %.1f | %.1f | %.1f | %.1f | %s | %.3f | %s |\n",
			r.Name, r.Mode, r.OpsPerSec, r.P50us, r.P99us, r.P999us, r.MaxUs, lag, r.AdmittedFraction, cpu)
	}
	if len(c.Sweep) > 0 {
		b.WriteString(sweepTable(c))
	}
	b.WriteString("\n## Targets\n\n| target | measured | |\n|---|---|---|\n")
	verdicts := c.Verdicts()
	for _, v := range verdicts {
		mark := "met"
		if !v.Met {
			mark = "**missed**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", v.What, v.Measured, mark)
	}
	b.WriteString("\n![throughput and latency](compare.svg)\n")
	shown := map[string]bool{} // a mode's profiles, once
	said := map[string]bool{}  // a mode's context, once
	for _, v := range verdicts {
		if v.Met {
			continue
		}
		fmt.Fprintf(&b, "\n## Missed: %s\n\n", v.What)
		r, _ := c.Find(NameCapsgate, v.Mode)
		if v.Mode == ModeLatency && !said[v.Mode] {
			said[v.Mode] = true
			b.WriteString(latencyContext(c))
		}
		if r.ServerProfile == "" && r.GeneratorProfile == "" {
			fmt.Fprintf(&b, "No CPU profile was taken during the capsgate %s run: `capsbench compare --json FILE --profiles %s` "+
				"takes them, beside FILE (by default only of the latency run: a profiled run is a few per cent slower).\n", v.Mode, v.Mode)
			continue
		}
		if shown[v.Mode] {
			fmt.Fprintf(&b, "The profiles of the capsgate %s run are above.\n", v.Mode)
			continue
		}
		shown[v.Mode] = true
		fmt.Fprintf(&b, "CPU profiles taken during the first round of the capsgate %s run, top %d by own time "+
			"(`go tool pprof -top -nodecount=%d FILE`):\n", v.Mode, profileTopN, profileTopN)
		for _, f := range []struct{ file, what string }{
			{r.ServerProfile, "the capsgate node (its admin API's `/debug/pprof/profile`)"},
			{r.GeneratorProfile, "the load generator, capsbench itself"},
		} {
			if f.file == "" {
				continue
			}
			top, _ := ProfileTop(filepath.Join(profileDir, f.file), profileTopN)
			fmt.Fprintf(&b, "\n`%s`, %s:\n\n```\n%s\n```\n", f.file, f.what, top)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("cannot write the report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "compare.svg"), []byte(SVG(c)), 0o644); err != nil {
		return fmt.Errorf("cannot write the plot: %w", err)
	}
	return nil
}

// sweepTable is the open loop's latency against load: a row per rate
// (the comparison's own and the sweep's), p50 / p99 / p99.9 per target.
func sweepTable(c Comparison) string {
	rows := map[float64]map[string]Row{}
	var rates []float64
	var names []string
	add := func(r Row) {
		if rows[r.Rate] == nil {
			rows[r.Rate] = map[string]Row{}
			rates = append(rates, r.Rate)
		}
		if !slices.Contains(names, r.Name) {
			names = append(names, r.Name)
		}
		rows[r.Rate][r.Name] = r
	}
	for _, r := range c.Sweep {
		add(r)
	}
	for _, r := range c.Results {
		if r.Mode == ModeLatency && r.Rate > 0 {
			add(r)
		}
	}
	slices.Sort(rates)
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Open-loop latency against load\n\nThe same open loop (%d connections, no pipelining) at other rates: "+
		"p50 / p99 / p99.9 in µs.\n\n| requests/s |", c.Settings.Conns)
	for _, n := range names {
		fmt.Fprintf(&b, " %s |", n)
	}
	b.WriteString("\n|---:|" + strings.Repeat("---:|", len(names)) + "\n")
	for _, rate := range rates {
		fmt.Fprintf(&b, "| %.0f |", rate)
		for _, n := range names {
			if r, ok := rows[rate][n]; ok {
				fmt.Fprintf(&b, " %.0f / %.0f / %.0f |", r.P50us, r.P99us, r.P999us)
			} else {
				b.WriteString(" |")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// latencyContext sets capsgate's open-loop latency beside what bounds it
// on this machine, from the same comparison: the limit server's latency
// (the transport with no decision), the CPU both processes used, and the
// machine's own stalls. Only what was measured is said.
func latencyContext(c Comparison) string {
	cg, ok := c.Find(NameCapsgate, ModeLatency)
	if !ok {
		return ""
	}
	var b strings.Builder
	if li, ok := c.Find(NameLimit, ModeLatency); ok && li.P99us > 0 && li.P999us > 0 {
		missed := ""
		if li.P99us > TargetP99us || li.P999us > TargetP999us {
			missed = ", so it misses the target too"
		}
		fmt.Fprintf(&b, "The limit server, which answers every command with a fixed reply and decides nothing, measured p99 %.0f µs "+
			"and p99.9 %.0f µs at the same rate in this comparison%s; capsgate's are %.2f× and %.2f× of those.",
			li.P99us, li.P999us, missed, cg.P99us/li.P99us, cg.P999us/li.P999us)
	}
	if cg.ServerCPU > 0 && cg.GeneratorCPU > 0 && c.CPUs > 0 && cg.OpsPerSec > 0 {
		busy := cg.ServerCPU + cg.GeneratorCPU
		fmt.Fprintf(&b, " During capsgate's run the node used %.2f cores and the generator %.2f, %.0f%% of the %d CPUs "+
			"(%.1f µs and %.1f µs of CPU per request).", cg.ServerCPU, cg.GeneratorCPU, busy/float64(c.CPUs)*100, c.CPUs,
			cg.ServerCPU/cg.OpsPerSec*1e6, cg.GeneratorCPU/cg.OpsPerSec*1e6)
	}
	var low *Row
	for i, r := range c.Sweep {
		if r.Name == NameCapsgate && r.Rate < c.Settings.Rate && (low == nil || r.Rate < low.Rate) {
			low = &c.Sweep[i]
		}
	}
	if low != nil {
		fmt.Fprintf(&b, " At %.0f requests/s, %.0f%% of that load, capsgate's p99 was %.0f µs and p99.9 %.0f µs (the table above).",
			low.Rate, low.Rate/c.Settings.Rate*100, low.P99us, low.P999us)
	}
	if st := c.Stalls; st != nil && st.Over250us > 0 {
		fmt.Fprintf(&b, " Before the runs, spinning goroutines saw %d pauses over 250 µs and %d over 1 ms in %.1fs "+
			"(longest %.0f µs, see above).", st.Over250us, st.Over1ms, st.Seconds, st.MaxUs)
	}
	if b.Len() == 0 {
		return ""
	}
	return strings.TrimSpace(b.String()) + "\n\n"
}

// profileTopN is how many entries of a profile the report shows.
const profileTopN = 15

// SVG draws the comparison: on the left a bar per target's throughput, on
// the right its open-loop p50, p99 and p99.9 side by side (log scale).
func SVG(c Comparison) string {
	const (
		w, h         = 900, 360
		top, bottom  = 50, 300
		leftX, rghtX = 60, 500
		panelW       = 360
	)
	colors := map[string]string{NameCapsgate: "#2b7bb9", NameRedisLua: "#d9534f", NameLimit: "#7f7f7f"}
	d := newSVG(w, h)
	d.text(leftX+panelW/2, 25, "middle", "pipelined throughput (ops/s)")
	d.text(rghtX+panelW/2, 25, "middle", fmt.Sprintf("open-loop latency at %.0f/s (µs, log scale)", c.Settings.Rate))
	axis := func(x0 float64) {
		d.line(x0, bottom, x0+panelW, bottom, `stroke="black"`)
		d.line(x0, top, x0, bottom, `stroke="black"`)
	}
	axis(leftX)
	axis(rghtX)

	var tp, lat []Row
	maxOps := 0.0
	for _, r := range c.Results {
		if r.Mode == ModeThroughput {
			tp = append(tp, r)
			maxOps = max(maxOps, r.OpsPerSec)
		} else {
			lat = append(lat, r)
		}
	}
	if len(tp) > 0 && maxOps > 0 {
		slot := float64(panelW) / float64(len(tp))
		for i, r := range tp {
			bh := r.OpsPerSec / maxOps * (bottom - top - 20)
			x := leftX + slot*float64(i) + slot*0.2
			d.rect(x, bottom-bh, slot*0.6, bh, fmt.Sprintf(`fill="%s"`, colors[r.Name]))
			d.text(x+slot*0.3, bottom-bh-5, "middle", humanOps(r.OpsPerSec))
			d.text(x+slot*0.3, bottom+18, "middle", r.Name)
		}
	}
	if len(lat) > 0 {
		// log10 scale from 10 µs to the largest p99.9 (at least 1 ms).
		hi := 1000.0
		for _, r := range lat {
			hi = max(hi, r.P999us)
		}
		lo := 10.0
		y := func(us float64) float64 {
			us = min(max(us, lo), hi)
			return bottom - (log10(us)-log10(lo))/(log10(hi)-log10(lo))*(bottom-top-20)
		}
		for _, tick := range []float64{10, 100, 1000, 10000, 100000} {
			if tick > hi {
				break
			}
			d.line(rghtX, y(tick), rghtX+panelW, y(tick), `stroke="#ddd"`)
			d.text(rghtX-4, y(tick)+4, "end", fmt.Sprintf("%g", tick))
		}
		target := y(TargetP99us)
		d.line(rghtX, target, rghtX+panelW, target, `stroke="#2b7bb9" stroke-dasharray="4 3"`)
		d.text(rghtX+panelW-2, target-4, "end", "p99 target 250 µs")
		slot := float64(panelW) / float64(len(lat))
		for i, r := range lat {
			for j, v := range []float64{r.P50us, r.P99us, r.P999us} {
				x := rghtX + slot*float64(i) + slot*0.15 + float64(j)*slot*0.24
				d.rect(x, y(v), slot*0.2, bottom-y(v), fmt.Sprintf(`fill="%s" fill-opacity="%.2f"`, colors[r.Name], 1-0.3*float64(j)))
			}
			d.text(rghtX+slot*float64(i)+slot*0.5, bottom+18, "middle", r.Name)
		}
		d.text(rghtX+panelW/2, bottom+40, "middle", "bars: p50, p99, p99.9")
	}
	return d.close()
}

func humanOps(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.0fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

func log10(v float64) float64 { return math.Log10(v) }
