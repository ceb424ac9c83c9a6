package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// `capsbench scale` is a scenario with a report: carrier-scale state on one node, beside Redis loaded by the same
// generator. For each entry count N, from a fresh data dir,
// redis-benchmark sends N/2 of a first command and N/2 of a second with
// random keys, while a clean connection sends PING every 50 ms and the
// server's RSS and entries held are sampled every 250 ms; then the server
// is killed with SIGKILL and started again on the same data, and the time
// to its first answer and to every entry back is measured.
//
// redis-benchmark stays the generator (not this package's Load): it is the
// one both capsgate and Redis are loaded with in the README's table, so a
// row's rate says nothing about which client was used.

// ScaleUsage is `capsbench scale`'s usage line.
const ScaleUsage = "capsbench scale [--entries 1000000,2000000] [--out DIR] [--redis=true] [--bin DIR]"

// The scenario's settings (the README's scale table comes from them).
const (
	scaleService  = "voice"
	scaleConns    = 50            // redis-benchmark -c
	scalePipeline = 16            // redis-benchmark -P
	scaleKeyRange = 1_000_000_000 // redis-benchmark -r: about 500 repeated keys in 2 M
	// maxScaleEntries is what the scenario's licence holds: 25 M
	// subscribers (the first phase) and 25 M sessions (the second).
	maxScaleEntries = 50_000_000
	scaleLicenceCap = maxScaleEntries // --sessions and --subscribers
	scaleCAPS       = 100_000_000     // far above the load: nothing is refused

	probeEvery  = 50 * time.Millisecond  // the clean client's PING
	sampleEvery = 250 * time.Millisecond // RSS and entries held
	// probeTimeout bounds one PING or one count during the load: the
	// worst stall the README reports is under a second.
	probeTimeout = 10 * time.Second
	// settleBeforeKill is the second between the load and kill -9:
	// capsgate's journal and Redis's AOF (fsync every second) reach the
	// disk, so "entries back" compares what a restart restores.
	settleBeforeKill = time.Second
	// restartTimeout bounds a restart's wait for its first answer, every
	// entry and /readyz: 2 M entries come back in about 3 s.
	restartTimeout = 120 * time.Second
	restartPoll    = 10 * time.Millisecond // the restart's PING poll
	// toolTimeout bounds capslicense, capsctl and redis-server --version.
	toolTimeout  = 30 * time.Second
	buildTimeout = 10 * time.Minute // go build ./cmd/... from a cold cache
)

// Scale target names, as scale.json has them.
const (
	ScaleCapsgate = "capsgate"
	ScaleRedisAOF = "redis-aof" // appendonly yes, appendfsync everysec
	ScaleRedis    = "redis"     // no persistence
)

// ScaleOptions is what `capsbench scale` was asked to do.
type ScaleOptions struct {
	// Entries are the runs' entry counts, each even: half are loaded by
	// each command.
	Entries []int
	// Out is the directory the report is written to.
	Out string
	// Redis runs redis-server beside capsgate, twice per entry count.
	Redis bool
	// Bin holds capsgate, capsctl and capslicense; "" builds them.
	Bin string
	// CommandLine is the command that asked for the run, for the report.
	CommandLine string
}

// DefaultScaleOptions are the flags' defaults; Redis is set by ParseScale.
func DefaultScaleOptions() ScaleOptions {
	return ScaleOptions{
		Entries: []int{1_000_000, 2_000_000}, // the README's 1 M + 1 M, and twice that
		Out:     filepath.Join("bench", "results", "scale"),
	}
}

// RedisInstalled reports whether redis-server can be found, for
// ParseScale's default.
func RedisInstalled() bool {
	_, err := redisPath()
	return err == nil
}

// ParseScale parses `capsbench scale`'s flags. --redis defaults to
// redisInstalled; asked for explicitly without it, it is an error. Errors
// are one line naming the flag; -h writes the usage to help.
func ParseScale(args []string, help io.Writer, redisInstalled bool) (ScaleOptions, error) {
	o := DefaultScaleOptions()
	o.Redis = redisInstalled
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is returned, once
	fs.Func("entries", "entry `counts`, comma-separated, each even and at most 50000000: one run each, "+
		"half loaded by each command (default 1000000,2000000)", func(s string) (err error) {
		o.Entries, err = parseEntries(s)
		return err
	})
	fs.StringVar(&o.Out, "out", o.Out, "`DIR` for scale.json, scale.md and the plots")
	fs.BoolVar(&o.Redis, "redis", o.Redis, "also run redis-server (AOF with fsync every second, and no persistence); "+
		"default: whether redis-server is installed")
	fs.StringVar(&o.Bin, "bin", "", "`DIR` holding capsgate, capsctl and capslicense (default: go build ./cmd/... into a temporary directory)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(help, "usage: "+ScaleUsage)
			fs.SetOutput(help)
			fs.PrintDefaults()
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	redisSet := false
	fs.Visit(func(f *flag.Flag) { redisSet = redisSet || f.Name == "redis" })
	if redisSet && o.Redis && !redisInstalled {
		return o, fmt.Errorf("--redis=true, but %w; or run with --redis=false", ErrNoRedis)
	}
	if o.Out == "" {
		return o, errors.New("--out must name a directory")
	}
	return o, nil
}

// CommandLine is argv as a shell would take it back, for a report to say
// what produced it: the program's base name, then the arguments, quoted
// where they hold more than letters, digits and -_.,=/:+.
func CommandLine(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	words := []string{filepath.Base(argv[0])}
	for _, a := range argv[1:] {
		plain := a != ""
		for _, c := range a {
			plain = plain && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.,=/:+", c))
		}
		if !plain {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

// parseEntries parses --entries: distinct positive even counts up to
// maxScaleEntries, comma-separated.
func parseEntries(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		n, err := strconv.Atoi(f)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%q is not a whole number: want entry counts, comma-separated", f)
		case n <= 0:
			return nil, fmt.Errorf("%d is not positive", n)
		case n%2 != 0:
			return nil, fmt.Errorf("%d is odd: half the entries are loaded by each command", n)
		case n > maxScaleEntries:
			return nil, fmt.Errorf("%d is above %d, what the scenario's licence holds", n, maxScaleEntries)
		case slices.Contains(out, n):
			return nil, fmt.Errorf("%d is given twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// ScaleReport is what `capsbench scale` measured: scale.json.
type ScaleReport struct {
	CommandLine string    `json:"command_line"`
	CPUs        int       `json:"cpus"`
	Started     time.Time `json:"started"`
	// RedisVersion is redis-server's (7.0.15); "" without Redis.
	RedisVersion string     `json:"redis_version,omitempty"`
	Entries      []int      `json:"entries"`
	Runs         []ScaleRun `json:"runs"`
}

// ScaleRun is one target at one entry count.
type ScaleRun struct {
	Target  string `json:"target"` // ScaleCapsgate, ScaleRedisAOF or ScaleRedis
	Label   string `json:"label"`  // its row in the table
	Entries int    `json:"entries"`
	// Persistent: a restart should bring back every entry held.
	Persistent bool         `json:"persistent"`
	Phases     []ScalePhase `json:"phases"`
	// RSSBefore and RSSAfter are the server's resident memory before and
	// after the load; Held the entries it then holds.
	RSSBefore     int64   `json:"rss_before_bytes"`
	RSSAfter      int64   `json:"rss_after_bytes"`
	Held          int64   `json:"held"`
	BytesPerEntry float64 `json:"bytes_per_entry"` // RSS growth / Held
	// Probe summarises Probes, the clean client's PINGs during the load.
	Probe   ProbeSummary  `json:"probe"`
	Probes  []ProbeSample `json:"probes"`
	Samples []ScaleSample `json:"samples"`
	Restart ScaleRestart  `json:"restart"`
}

// ScalePhase is one redis-benchmark run of the load.
type ScalePhase struct {
	Command  string  `json:"command"`
	Requests int     `json:"requests"`
	PerSec   float64 `json:"per_sec"` // as redis-benchmark reports it
	// StartS and Seconds are when the phase began (from the load's start)
	// and how long it took, measured here.
	StartS  float64 `json:"start_s"`
	Seconds float64 `json:"seconds"`
}

// ProbeSample is one PING of the clean client: when it was sent (seconds
// from the load's start) and how long its answer took.
type ProbeSample struct {
	AtS float64 `json:"at_s"`
	Ms  float64 `json:"ms"`
}

// ScaleSample is the server's RSS and entries held at AtS seconds from
// the load's start.
type ScaleSample struct {
	AtS  float64 `json:"at_s"`
	RSS  int64   `json:"rss_bytes"`
	Held int64   `json:"held"`
}

// ProbeSummary is what the PINGs during the load saw.
type ProbeSummary struct {
	Probes  int     `json:"probes"`
	P99Ms   float64 `json:"p99_ms"`
	WorstMs float64 `json:"worst_ms"`
	// LongestGapMs is the longest time between two answers: a stall
	// shows here even when it fell between two probes' sends.
	LongestGapMs float64 `json:"longest_gap_ms"`
}

// ScaleRestart is what came back after kill -9, timed from the start of
// the new process.
type ScaleRestart struct {
	FirstAnswerS float64 `json:"first_answer_s"` // to the first PONG
	// AllBackS is to every entry held back (0 for a target that keeps
	// none); Back is how many came back.
	AllBackS float64 `json:"all_back_s"`
	Back     int64   `json:"back"`
	// capsgate only: when GET /readyz first answered 200, and the gauges
	// capsgate_state_restore_seconds and capsgate_state_restored_sessions
	// + _subscribers afterwards.
	ReadyS         float64 `json:"ready_s,omitempty"`
	RestoreSeconds float64 `json:"restore_seconds,omitempty"`
	Restored       int64   `json:"restored,omitempty"`
	// Failure says what did not come back within restartTimeout; the
	// numbers above are then what was seen.
	Failure string `json:"failure,omitempty"`
}

// Err returns the runs' restart failures as one error, or nil.
func (r ScaleReport) Err() error {
	var errs []error
	for _, run := range r.Runs {
		if run.Restart.Failure != "" {
			errs = append(errs, fmt.Errorf("%s at %d entries: %s", run.Target, run.Entries, run.Restart.Failure))
		}
	}
	return errors.Join(errs...)
}

// RunScale runs the scenario for every entry count of o, capsgate then
// (with o.Redis) Redis with AOF and without persistence, and returns what
// was measured; log gets a line per run. An error means the scenario did
// not finish (a tool missing, a server that would not start, ctx ended); a
// restart that did not come back is in the report (ScaleReport.Err).
// Everything it starts is killed before it returns.
func RunScale(ctx context.Context, o ScaleOptions, log io.Writer) (ScaleReport, error) {
	rep := ScaleReport{CommandLine: o.CommandLine, CPUs: runtime.NumCPU(), Started: time.Now().UTC(), Entries: o.Entries}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return rep, errors.New("capsbench scale needs redis-benchmark on PATH, the generator of every run (Debian: apt-get install redis-tools)")
	}
	var redis string
	if o.Redis {
		var err error
		if redis, err = redisPath(); err != nil {
			return rep, err
		}
		out, err := runTool(ctx, toolTimeout, redis, "--version")
		if err != nil {
			return rep, err
		}
		rep.RedisVersion = redisVersion(string(out))
	}
	work, err := os.MkdirTemp("", "capsbench-scale-")
	if err != nil {
		return rep, fmt.Errorf("cannot make a work directory: %w", err)
	}
	defer os.RemoveAll(work)
	bin, err := scaleBinaries(ctx, o.Bin, filepath.Join(work, "bin"))
	if err != nil {
		return rep, err
	}
	for _, n := range o.Entries {
		servers := []func(dir string) (*scaleServer, error){
			func(dir string) (*scaleServer, error) { return newCapsgateServer(ctx, bin, dir) },
		}
		if o.Redis {
			for _, aof := range []bool{true, false} {
				servers = append(servers, func(dir string) (*scaleServer, error) {
					return newRedisServer(redis, rep.RedisVersion, dir, aof)
				})
			}
		}
		for _, newServer := range servers {
			dir, err := os.MkdirTemp(work, "run-")
			if err != nil {
				return rep, fmt.Errorf("cannot make a data directory: %w", err)
			}
			s, err := newServer(dir)
			if err != nil {
				return rep, err
			}
			run, err := s.run(ctx, n)
			if err != nil {
				return rep, fmt.Errorf("%s at %d entries: %w", s.name, n, err)
			}
			fmt.Fprintln(log, runLine(run))
			rep.Runs = append(rep.Runs, run)
			_ = os.RemoveAll(dir) // a 2 M-entry AOF is hundreds of MB
		}
	}
	return rep, nil
}

// runLine is a run in one line, for the log.
func runLine(r ScaleRun) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %d entries:", r.Target, r.Entries)
	for _, p := range r.Phases {
		fmt.Fprintf(&b, " %s %.0f/s;", strings.Fields(p.Command)[0], p.PerSec)
	}
	fmt.Fprintf(&b, " %.0f bytes an entry, %d held; PING p99 %.1f ms, worst %.0f ms, longest gap %.0f ms; restart: first answer %.2f s",
		r.BytesPerEntry, r.Held, r.Probe.P99Ms, r.Probe.WorstMs, r.Probe.LongestGapMs, r.Restart.FirstAnswerS)
	if r.Persistent {
		fmt.Fprintf(&b, ", all back %.2f s", r.Restart.AllBackS)
	}
	fmt.Fprintf(&b, ", %d of %d back", r.Restart.Back, r.Held)
	if r.Restart.Failure != "" {
		b.WriteString("; FAILED: " + r.Restart.Failure)
	}
	return b.String()
}

// run starts the server, loads it, restarts it and kills it.
func (s *scaleServer) run(ctx context.Context, entries int) (ScaleRun, error) {
	run := ScaleRun{Target: s.name, Label: s.label, Entries: entries, Persistent: s.persistent}
	if err := s.start(ctx); err != nil {
		return run, err
	}
	defer func() { s.proc.kill() }()
	if s.setup != nil {
		if err := s.setup(ctx); err != nil {
			return run, err
		}
	}
	if err := s.load(ctx, &run); err != nil {
		return run, err
	}
	if err := sleepCtx(ctx, settleBeforeKill); err != nil {
		return run, err
	}
	var err error
	run.Restart, err = s.restart(ctx, run.Held)
	return run, err
}

// sleepCtx sleeps d, or less if ctx ends (then its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
