package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
)

// Settings are a comparison's load settings, the same for every target.
type Settings struct {
	Seconds float64 `json:"seconds"`
	// ThroughputConns and Pipeline shape the closed loop.
	ThroughputConns int `json:"throughput_conns"`
	Pipeline        int `json:"pipeline"`
	// Rate over Conns shapes the open loop (no pipelining).
	Rate  float64 `json:"rate"`
	Conns int     `json:"conns"`
	// Targets are the names run, in order.
	Targets []string `json:"targets"`
	// SweepRates are further open-loop rates run against every target,
	// for Comparison.Sweep.
	SweepRates []float64 `json:"sweep_rates,omitempty"`
	// StallSeconds is how long MeasureStalls runs before the targets
	// (0: not at all).
	StallSeconds float64 `json:"stall_seconds,omitempty"`
	// ProfileDir, when not "", receives CPU profiles of the capsgate runs
	// in ProfileModes: the node's (capsgate-MODE.pprof, from its admin
	// API) and the load generator's own (capsbench-MODE.pprof). Only
	// capsgate is profiled, so a profiled throughput run would be a few
	// per cent slower against the others: DefaultSettings profile the
	// latency run only.
	ProfileDir   string   `json:"-"`
	ProfileModes []string `json:"-"`
}

// DefaultSettings are `capsbench compare`'s defaults: the open
// loop (50,000/s over 50 connections) and a closed loop deep enough that
// the client is not what limits a fast server on a small machine.
func DefaultSettings() Settings {
	return Settings{Seconds: 5, ThroughputConns: 8, Pipeline: 64, Rate: 50000, Conns: 50, StallSeconds: 5,
		SweepRates: []float64{5000, 10000, 25000},
		Targets:    []string{NameCapsgate, NameRedisLua, NameLimit}, ProfileModes: []string{ModeLatency}}
}

// check rejects settings Compare cannot run.
func (s *Settings) check() error {
	switch {
	case !(s.Seconds > 0 && s.Seconds <= 3600):
		return fmt.Errorf("--seconds must be above 0 and at most 3600, got %v", s.Seconds)
	case !(s.StallSeconds >= 0 && s.StallSeconds <= 3600):
		return fmt.Errorf("--stall-seconds must be between 0 and 3600, got %v", s.StallSeconds)
	case !validRate(s.Rate):
		return fmt.Errorf("--rate must be above 0 and at most %.0f, got %v", maxRate, s.Rate)
	}
	for _, r := range s.SweepRates {
		if !validRate(r) {
			return fmt.Errorf("--sweep rates must be above 0 and at most %.0f, got %v", maxRate, r)
		}
	}
	return nil
}

// ParseRates parses a comma-separated list of open-loop rates (requests
// per second) for Settings.SweepRates: blanks are skipped, and a rate
// given twice, or equal to main (the comparison's own rate), is run
// once.
func ParseRates(list string, main float64) ([]float64, error) {
	var rates []float64
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		r, err := strconv.ParseFloat(f, 64)
		if err != nil || !validRate(r) {
			return nil, fmt.Errorf("bad rate %q: want requests per second above 0 and at most %.0f", f, maxRate)
		}
		if r != main && !slices.Contains(rates, r) {
			rates = append(rates, r)
		}
	}
	return rates, nil
}

// Row is one result of the comparison's JSON.
type Row struct {
	Name string `json:"name"`
	Mode string `json:"mode"` // throughput | latency
	// Rate is the open loop's requests per second (latency rows).
	Rate      float64 `json:"rate,omitempty"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	P999us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
	Requests  int64   `json:"requests"`
	// AdmittedFraction is the share of replies that admitted;
	// ErrorReplies counts RESP errors (0 in a sound run).
	AdmittedFraction float64 `json:"admitted_fraction"`
	ErrorReplies     int64   `json:"error_replies"`
	// SendLagUs is how late the open loop's pacer woke at worst, and
	// SendLagP99us the 99th percentile of how late each request's write
	// began after its intended time (both are counted into the
	// latencies: the part of them that is the generator's).
	SendLagUs    float64 `json:"send_lag_us,omitempty"`
	SendLagP99us float64 `json:"send_lag_p99_us,omitempty"`
	// ServerCPU and GeneratorCPU are the CPU the server's process and
	// the load generator used during the run, in cores (CPU seconds per
	// second; of CPUs in all): on one machine they share the CPUs.
	ServerCPU    float64 `json:"server_cpu,omitempty"`
	GeneratorCPU float64 `json:"generator_cpu,omitempty"`
	// ServerProfile and GeneratorProfile name the CPU profiles taken
	// during the run (files beside the JSON), when there are.
	ServerProfile    string `json:"server_profile,omitempty"`
	GeneratorProfile string `json:"generator_profile,omitempty"`
}

// Comparison is the JSON `capsbench compare --json` writes.
type Comparison struct {
	Settings Settings `json:"settings"`
	Results  []Row    `json:"results"`
	// CPUs and the load averages (/proc/loadavg's first three fields)
	// before and after the runs say how quiet the machine was.
	CPUs      int    `json:"cpus,omitempty"`
	LoadStart string `json:"load_average_start,omitempty"`
	LoadEnd   string `json:"load_average_end,omitempty"`
	// Sweep holds the open loop at Settings.SweepRates, per target:
	// latency against load.
	Sweep []Row `json:"latency_sweep,omitempty"`
	// Stalls are the machine's own pauses, measured before the runs
	// (Settings.StallSeconds; nil when not measured).
	Stalls *Stalls `json:"machine_stalls,omitempty"`
}

// Modes of a Row.
const (
	ModeThroughput = "throughput"
	ModeLatency    = "latency"
)

func row(name, mode string, r Result) Row {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	row := Row{Name: name, Mode: mode, OpsPerSec: r.OpsPerSec, Requests: r.Requests,
		P50us: us(r.Latency.Quantile(0.5)), P99us: us(r.Latency.Quantile(0.99)),
		P999us: us(r.Latency.Quantile(0.999)), MaxUs: us(r.Latency.Max()),
		ErrorReplies: r.ErrorReplies, SendLagUs: us(r.MaxSendLag)}
	if r.SendLag.Count() > 0 {
		row.SendLagP99us = us(r.SendLag.Quantile(0.99))
	}
	if r.Requests > 0 {
		row.AdmittedFraction = float64(r.Admitted) / float64(r.Requests)
	}
	return row
}

// Compare measures the machine's pauses, starts every target (each in a
// temporary directory), runs the closed loop, the open loop and the
// sweep's open loops against them, each in interleaved rounds (inRounds),
// all with the same client and settings, stops them, and returns every
// result. log gets a line per result; bar, when not nil, draws
// progress.
func Compare(ctx context.Context, s Settings, log io.Writer, bar *Bar) (Comparison, error) {
	if err := s.check(); err != nil {
		return Comparison{}, err
	}
	cmp := Comparison{Settings: s, CPUs: runtime.NumCPU(), LoadStart: loadAverage()}
	if s.StallSeconds > 0 {
		stop := bar.Timed("machine stalls", time.Duration(s.StallSeconds*float64(time.Second)))
		st := MeasureStalls(ctx, time.Duration(s.StallSeconds*float64(time.Second)))
		stop()
		if err := ctx.Err(); err != nil {
			return cmp, err
		}
		cmp.Stalls = &st
		fmt.Fprintf(log, "machine stalls: %d CPUs spinning %.1fs lost %.2f%% in pauses > %v; %d > 250 µs, %d > 1 ms, longest %.0f µs\n",
			st.CPUs, st.Seconds, st.StalledFraction*100, StallMinimum, st.Over250us, st.Over1ms, st.MaxUs)
	}
	var targets []*Target
	defer func() {
		for _, t := range targets {
			_ = t.Stop()
		}
	}()
	for _, name := range s.Targets {
		t, err := startTarget(name)
		if err != nil {
			return cmp, fmt.Errorf("cannot start %s: %w", name, err)
		}
		targets = append(targets, t)
	}
	rows, err := inRounds(ctx, s, targets, ModeThroughput, 0, true, log, bar)
	if err != nil {
		return cmp, err
	}
	lat, err := inRounds(ctx, s, targets, ModeLatency, s.Rate, true, log, bar)
	if err != nil {
		return cmp, err
	}
	for i := range targets {
		cmp.Results = append(cmp.Results, rows[i], lat[i])
	}
	for _, rate := range s.SweepRates {
		rows, err := inRounds(ctx, s, targets, ModeLatency, rate, false, log, bar)
		if err != nil {
			return cmp, err
		}
		cmp.Sweep = append(cmp.Sweep, rows...)
	}
	cmp.LoadEnd = loadAverage()
	return cmp, nil
}

// inRounds runs one mode (the open loop at rate) against every target
// for Settings.Seconds, in rounds of about a second that take the targets
// in turn, so that a change in what else the machine does weighs on all
// of them alike: their ratios come from the same moments. It returns a
// row per target. With profile, the CPU profiles Settings ask for of the
// mode are taken during capsgate's first round.
func inRounds(ctx context.Context, s Settings, targets []*Target, mode string, rate float64, profile bool, log io.Writer, bar *Bar) ([]Row, error) {
	rounds := max(1, int(math.Round(s.Seconds)))
	slice := time.Duration(s.Seconds * float64(time.Second) / float64(rounds))
	label := mode
	if mode == ModeLatency && !profile {
		label += fmt.Sprintf(" %.0f/s", rate)
	}
	results := make([]Result, len(targets))
	meters := make([]*cpuMeter, len(targets))
	profiled := make([][2]string, len(targets)) // server, generator profile names
	for i, t := range targets {
		meters[i] = newCPUMeter(t.pid)
	}
	for round := range rounds {
		for i, t := range targets {
			l := Load{Addr: t.Addr, Frame: t.Frame, Duration: slice, MaxRequests: int64(5e6 * slice.Seconds())}
			l.Progress = bar.Func(fmt.Sprintf("%s %s %d/%d", t.Name, label, round+1, rounds))
			var prof *profiles
			if profile && round == 0 && s.ProfileDir != "" && t.AdminAddr != "" && slices.Contains(s.ProfileModes, mode) {
				prof = startProfiles(ctx, t, mode, slice, s.ProfileDir)
			}
			var res Result
			var err error
			meters[i].start()
			if mode == ModeThroughput {
				l.Conns, l.Pipeline = s.ThroughputConns, s.Pipeline
				res, err = Throughput(ctx, l)
			} else {
				l.Conns, l.Rate = s.Conns, rate
				res, err = Latency(ctx, l)
			}
			meters[i].stop()
			bar.Done()
			if prof != nil {
				profiled[i][0], profiled[i][1] = prof.wait(log)
			}
			if err == nil && res.Requests == 0 {
				err = errors.New("no request was answered")
			}
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", t.Name, label, err)
			}
			results[i].add(&res)
		}
	}
	rows := make([]Row, len(targets))
	for i, t := range targets {
		r := row(t.Name, mode, results[i])
		r.Rate = rate
		r.ServerCPU, r.GeneratorCPU = meters[i].cores()
		r.ServerProfile, r.GeneratorProfile = profiled[i][0], profiled[i][1]
		logRow(log, t.Name, label, r)
		rows[i] = r
	}
	return rows, nil
}

// logRow prints one result line.
func logRow(log io.Writer, name, label string, r Row) {
	fmt.Fprintf(log, "%-9s %-16s %12.0f ops/s  p50 %7.1f µs  p99 %8.1f µs  p99.9 %8.1f µs  admitted %.3f  errors %d  cpu %.2f+%.2f\n",
		name, label, r.OpsPerSec, r.P50us, r.P99us, r.P999us, r.AdmittedFraction, r.ErrorReplies, r.ServerCPU, r.GeneratorCPU)
}

// profiles are the CPU profiles being taken during one run.
type profiles struct {
	server, generator       string // file names in dir
	dir                     string
	serverErr, generatorErr error
	stopGenerator           func() error
	fetched                 chan struct{}
}

// startProfiles starts fetching t's CPU profile for the run's duration
// (whole seconds, at least 1) and this process's own.
func startProfiles(ctx context.Context, t *Target, mode string, d time.Duration, dir string) *profiles {
	p := &profiles{server: t.Name + "-" + mode + ".pprof", generator: "capsbench-" + mode + ".pprof",
		dir: dir, fetched: make(chan struct{})}
	go func() {
		defer close(p.fetched)
		p.serverErr = FetchProfile(ctx, t.AdminAddr, t.AdminToken, max(1, int(d.Seconds())), filepath.Join(dir, p.server))
	}()
	p.stopGenerator, p.generatorErr = StartCPUProfile(filepath.Join(dir, p.generator))
	return p
}

// wait ends the generator's profile, waits for the server's, and returns
// the names of those that were written; it logs why one was not.
func (p *profiles) wait(log io.Writer) (server, generator string) {
	if p.generatorErr == nil {
		p.generatorErr = p.stopGenerator()
	}
	<-p.fetched
	if p.serverErr == nil {
		server = p.server
	} else {
		fmt.Fprintf(log, "warning: no %s: %v\n", p.server, p.serverErr)
	}
	if p.generatorErr == nil {
		generator = p.generator
	} else {
		fmt.Fprintf(log, "warning: no %s: %v\n", p.generator, p.generatorErr)
	}
	return server, generator
}

// loadAverage returns /proc/loadavg's 1, 5 and 15 minute load averages,
// or "" where there is none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// startTarget starts the named target.
func startTarget(name string) (*Target, error) {
	switch name {
	case NameCapsgate, NameRedisLua:
		dir, err := os.MkdirTemp("", "capsbench-"+name+"-")
		if err != nil {
			return nil, err
		}
		start := StartCapsgate
		if name == NameRedisLua {
			start = StartRedisLua
		}
		t, err := start(dir)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		stop := t.stop
		t.stop = func() error { err := stop(); _ = os.RemoveAll(dir); return err }
		return t, nil
	case NameLimit:
		return StartLimit()
	}
	return nil, fmt.Errorf("no target %q: want %s, %s or %s", name, NameCapsgate, NameRedisLua, NameLimit)
}

// Find returns the result for name and mode.
func (c *Comparison) Find(name, mode string) (Row, bool) {
	for _, r := range c.Results {
		if r.Name == name && r.Mode == mode {
			return r, true
		}
	}
	return Row{}, false
}

// Targets of the issue, checked by Verdicts.
const (
	TargetOverRedis = 10.0   // pipelined capsgate ≥ 10 × redis-lua
	TargetOverLimit = 0.8    // pipelined capsgate ≥ 0.8 × limit
	TargetP99us     = 250.0  // open loop p99 ≤ 250 µs
	TargetP999us    = 1000.0 // open loop p99.9 ≤ 1 ms
)

// Verdict is one target, met or missed, and the capsgate run it is about.
type Verdict struct {
	What     string
	Measured string
	Met      bool
	Mode     string
}

// Verdicts checks the targets against the comparison; a target
// whose results are missing is left out.
func (c *Comparison) Verdicts() []Verdict {
	var v []Verdict
	cg, ok := c.Find(NameCapsgate, ModeThroughput)
	if rl, ok2 := c.Find(NameRedisLua, ModeThroughput); ok && ok2 && rl.OpsPerSec > 0 {
		x := cg.OpsPerSec / rl.OpsPerSec
		v = append(v, Verdict{"pipelined capsgate ≥ 10× redis-lua", fmt.Sprintf("%.2f×", x), x >= TargetOverRedis, ModeThroughput})
	}
	if li, ok2 := c.Find(NameLimit, ModeThroughput); ok && ok2 && li.OpsPerSec > 0 {
		x := cg.OpsPerSec / li.OpsPerSec
		v = append(v, Verdict{"pipelined capsgate ≥ 0.8× limit", fmt.Sprintf("%.2f×", x), x >= TargetOverLimit, ModeThroughput})
	}
	if lat, ok := c.Find(NameCapsgate, ModeLatency); ok {
		open := fmt.Sprintf("capsgate open loop %.0f/s over %d conns", c.Settings.Rate, c.Settings.Conns)
		v = append(v,
			Verdict{open + ": p99 ≤ 250 µs", fmt.Sprintf("p99 %.0f µs", lat.P99us), lat.P99us <= TargetP99us, ModeLatency},
			Verdict{open + ": p99.9 ≤ 1 ms", fmt.Sprintf("p99.9 %.0f µs", lat.P999us), lat.P999us <= TargetP999us, ModeLatency})
	}
	return v
}

// WriteTable prints the results and the ratios as a plain-text table.
func (c *Comparison) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "%-10s %-10s %14s %10s %10s %10s %10s\n", "target", "mode", "ops/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs")
	for _, r := range c.Results {
		fmt.Fprintf(w, "%-10s %-10s %14.0f %10.1f %10.1f %10.1f %10.1f\n", r.Name, r.Mode, r.OpsPerSec, r.P50us, r.P99us, r.P999us, r.MaxUs)
	}
	for _, r := range c.Sweep {
		fmt.Fprintf(w, "%-10s %-10s %14.0f %10.1f %10.1f %10.1f %10.1f  (open loop at %.0f/s)\n", r.Name, r.Mode, r.OpsPerSec, r.P50us, r.P99us, r.P999us, r.MaxUs, r.Rate)
	}
	cg, ok := c.Find(NameCapsgate, ModeThroughput)
	for _, other := range []string{NameRedisLua, NameLimit} {
		if o, ok2 := c.Find(other, ModeThroughput); ok && ok2 && o.OpsPerSec > 0 {
			fmt.Fprintf(w, "throughput capsgate/%s: %.2f\n", other, cg.OpsPerSec/o.OpsPerSec)
		}
	}
	for _, v := range c.Verdicts() {
		mark := "met"
		if !v.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "target %-62s %-12s %s\n", v.What, v.Measured, mark)
	}
}

// WriteJSON writes the comparison to path.
func (c *Comparison) WriteJSON(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write the results: %w", err)
	}
	return nil
}

// maxComparisonFile bounds a results file ReadComparison reads: one is a
// few KiB.
const maxComparisonFile = 16 << 20

// ReadComparison reads a file WriteJSON wrote.
func ReadComparison(path string) (Comparison, error) {
	var c Comparison
	b, err := bounded.ReadFile(path, maxComparisonFile)
	if err != nil {
		return c, fmt.Errorf("cannot read the results: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("cannot read the results in %s: %w", path, err)
	}
	return c, nil
}

// Bar draws a one-line progress bar on a terminal; a nil Bar draws
// nothing.
type Bar struct{ w io.Writer }

// NewBar returns a Bar on f when f is a terminal, else nil.
func NewBar(f *os.File) *Bar {
	if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		return &Bar{w: f}
	}
	return nil
}

// Func returns a progress callback for a run labelled label.
func (b *Bar) Func(label string) func(float64) {
	if b == nil {
		return nil
	}
	return func(done float64) {
		const width = 30
		n := int(done * width)
		fmt.Fprintf(b.w, "\r%-22s [%s%s] %3.0f%%", label, strings.Repeat("=", n), strings.Repeat(" ", width-n), done*100)
	}
}

// Done ends the bar's line.
func (b *Bar) Done() {
	if b != nil {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

// Timed draws a bar for a task of known duration d until the returned
// stop is called.
func (b *Bar) Timed(label string, d time.Duration) (stop func()) {
	end := progress(b.Func(label), d)
	return func() { end(); b.Done() }
}
