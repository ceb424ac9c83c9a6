package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/admission/loopback"
	"github.com/capsgate/capsgate/cluster/farm"
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

// scaleBinaries returns the commands in dir, or builds them into tmp
// (`go build -o tmp/ ./cmd/...` of this module) when dir is "".
func scaleBinaries(ctx context.Context, dir, tmp string) (farm.Binaries, error) {
	if dir != "" {
		b, err := farm.BinariesIn(dir)
		if err != nil {
			return b, fmt.Errorf("bad --bin: %w", err)
		}
		return b, nil
	}
	if _, err := runTool(ctx, buildTimeout, "go", "build", "-o", tmp+string(filepath.Separator), modulePath+"/cmd/..."); err != nil {
		return farm.Binaries{}, fmt.Errorf("%w (run capsbench scale inside the capsgate module, or give --bin DIR)", err)
	}
	return farm.BinariesIn(tmp)
}

// modulePath is the module whose commands scaleBinaries builds.
const modulePath = "github.com/capsgate/capsgate"

// runTool runs a short command to its end within timeout and returns its
// output; the error names the command and ends with what it printed.
func runTool(ctx context.Context, timeout time.Duration, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	cmd.WaitDelay = time.Second // a child that keeps the pipes open
	err := farm.StartTied(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return nil, fmt.Errorf("cannot run %s: %w: %s", strings.Join(argv, " "), err, lastLine(stderr.String()+out.String()))
	}
	return out.Bytes(), nil
}

// redisVersion is the version in `redis-server --version`'s output
// ("Redis server v=7.0.15 sha=..."), or "" if it has none.
func redisVersion(out string) string {
	for f := range strings.FieldsSeq(out) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return v
		}
	}
	return ""
}

// scaleServer is one target on its data dir: started, loaded, killed and
// started again with the same command line.
type scaleServer struct {
	name, label string
	// phases are redis-benchmark's two commands (words split on spaces);
	// __rand_int__ is its random key.
	phases     [2]string
	persistent bool
	argv       []string
	addr       string // RESP, host:port
	admin      string // capsgate's admin API; "" for Redis
	logPath    string
	// count returns the entries the server holds.
	count func(ctx context.Context, c *client.Conn) (int64, error)
	// setup runs after the first start (capsgate: the licence).
	setup func(ctx context.Context) error
	proc  *scaleProc
}

// newCapsgateServer prepares a node in dir: a vendor key
// (capslicense keygen), a gossip key, an admin token, a licence for
// scaleService loaded after the start with `capsctl license add`.
func newCapsgateServer(ctx context.Context, bin farm.Binaries, dir string) (*scaleServer, error) {
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return nil, fmt.Errorf("cannot make the key directory: %w", err)
	}
	if _, err := runTool(ctx, toolTimeout, bin.Capslicense, "keygen", "--out", keys); err != nil {
		return nil, err
	}
	gossip, token := make([]byte, 32), make([]byte, 16)
	_, _ = rand.Read(gossip)
	_, _ = rand.Read(token)
	gossipFile, tokenFile := filepath.Join(keys, "gossip.key"), filepath.Join(keys, "admin.token")
	if err := os.WriteFile(gossipFile, []byte(base64.StdEncoding.EncodeToString(gossip)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the gossip key: %w", err)
	}
	if err := os.WriteFile(tokenFile, []byte(hex.EncodeToString(token)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the admin token: %w", err)
	}
	caps := strconv.Itoa(scaleCAPS)
	lic, err := runTool(ctx, toolTimeout, bin.Capslicense, "issue", "--key", filepath.Join(keys, "vendor.key"),
		"--service", scaleService, "--caps", caps, "--sessions", strconv.Itoa(scaleLicenceCap),
		"--subscribers", strconv.Itoa(scaleLicenceCap), "--cluster", "scale", "--id", "S1")
	if err != nil {
		return nil, err
	}
	licFile := filepath.Join(dir, "s.lic")
	if err := os.WriteFile(licFile, lic, 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the licence: %w", err)
	}
	addrs, err := loopback.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	s := &scaleServer{
		name: ScaleCapsgate, label: "capsgate (`REGISTER`, then `ADMIT ... CALL`; journal)",
		phases:     [2]string{"REGISTER " + scaleService + " sub:__rand_int__ TTL 3600", "ADMIT " + scaleService + " CALL call:__rand_int__"},
		persistent: true, addr: addrs[0], admin: addrs[1], logPath: filepath.Join(dir, "capsgate.log"),
		argv: []string{bin.Capsgate, "--node-name", "n1", "--cluster-id", "scale", "--data-dir", filepath.Join(dir, "data"),
			"--resp-addr", addrs[0], "--admin-addr", addrs[1], "--gossip-addr", addrs[2], "--gossip-key-file", gossipFile,
			"--admin-token-file", tokenFile, "--vendor-key", filepath.Join(keys, "vendor.pub")},
		count: capsgateHeld,
	}
	s.setup = func(ctx context.Context) error {
		_, err := runTool(ctx, toolTimeout, bin.Capsctl, "--addr", "http://"+s.admin, "--token-file", tokenFile, "license", "add", licFile)
		return err
	}
	return s, nil
}

// newRedisServer prepares redis-server in dir: no
// snapshots, and an append-only file synced every second (aof) or no
// persistence at all.
func newRedisServer(path, version, dir string, aof bool) (*scaleServer, error) {
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addrs[0])
	s := &scaleServer{
		name: ScaleRedisAOF, label: fmt.Sprintf("Redis %s (`SET ... EX`, twice; AOF, fsync every second)", version),
		phases: [2]string{"SET sub:__rand_int__ v EX 3600", "SET call:__rand_int__ v EX 3600"}, persistent: true,
		addr: addrs[0], logPath: filepath.Join(dir, "redis.log"), count: redisHeld,
		argv: []string{path, "--port", port, "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--daemonize", "no",
			"--appendonly", "yes", "--appendfsync", "everysec"},
	}
	if !aof {
		s.name, s.persistent = ScaleRedis, false
		s.label = fmt.Sprintf("Redis %s (`SET ... EX`, twice; no persistence)", version)
		s.argv = append(s.argv[:len(s.argv)-4], "--appendonly", "no")
	}
	return s, nil
}

// capsgateHeld is QUOTA's sessions_used + subscribers_used.
func capsgateHeld(ctx context.Context, c *client.Conn) (int64, error) {
	q, err := c.Quota(ctx, scaleService)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, k := range []string{"sessions_used", "subscribers_used"} {
		v, err := strconv.ParseInt(q[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("QUOTA %s answered %s %q", scaleService, k, q[k])
		}
		n += v
	}
	return n, nil
}

// redisHeld is DBSIZE.
func redisHeld(ctx context.Context, c *client.Conn) (int64, error) {
	r, err := c.Do(ctx, []byte("DBSIZE"))
	if err != nil {
		return 0, err
	}
	if r.Kind != client.Integer {
		return 0, fmt.Errorf("DBSIZE answered %s", r.String())
	}
	return r.Int, nil
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

// start starts the process and waits until it answers PING.
func (s *scaleServer) start(ctx context.Context) error {
	p, err := startScaleProc(s.argv, s.logPath)
	if err != nil {
		return err
	}
	s.proc = p
	deadline := time.Now().Add(startTimeout)
	for pingOnce(s.addr) != nil {
		if err := s.alive(ctx); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("%s does not answer PING on %s within %v: %s", s.name, s.addr, startTimeout, logTail(s.logPath))
		}
		if err := sleepCtx(ctx, restartPoll); err != nil {
			return err
		}
	}
	return nil
}

// alive returns an error once ctx has ended or the process has exited.
func (s *scaleServer) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.proc.exited() {
		return fmt.Errorf("%s exited: %s", s.name, logTail(s.logPath))
	}
	return nil
}

// load runs the two phases with redis-benchmark while the clean client
// probes and the sampler samples, and records them in run with the RSS
// growth and the entries held afterwards.
func (s *scaleServer) load(ctx context.Context, run *ScaleRun) error {
	c, err := dialScale(ctx, s.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	pid := s.proc.cmd.Process.Pid
	if run.RSSBefore, err = readRSS(pid); err != nil {
		return err
	}
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var probeErr, sampleErr error
	wg.Go(func() { run.Probes, probeErr = probe(ctx, stop, s.addr, start) })
	wg.Go(func() { run.Samples, sampleErr = sample(ctx, stop, pid, c, s.count, start) })
	loadErr := s.phasesRun(ctx, run, start)
	close(stop)
	wg.Wait()
	if err := errors.Join(loadErr, probeErr, sampleErr); err != nil {
		return err
	}
	if run.RSSAfter, err = readRSS(pid); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if run.Held, err = s.count(cctx, c); err != nil {
		return fmt.Errorf("cannot count the entries %s holds: %w", s.name, err)
	}
	run.Samples = append(run.Samples, ScaleSample{AtS: time.Since(start).Seconds(), RSS: run.RSSAfter, Held: run.Held})
	run.BytesPerEntry = float64(run.RSSAfter-run.RSSBefore) / float64(max(run.Held, 1))
	run.Probe = summarizeProbes(run.Probes)
	return nil
}

// phasesRun runs redis-benchmark for each phase, half the entries each.
func (s *scaleServer) phasesRun(ctx context.Context, run *ScaleRun, start time.Time) error {
	for _, command := range s.phases {
		began := time.Now()
		rate, err := redisBenchmark(ctx, s.addr, run.Entries/2, strings.Fields(command))
		if err != nil {
			if e := s.alive(ctx); e != nil {
				err = fmt.Errorf("%w; %w", err, e)
			}
			return err
		}
		run.Phases = append(run.Phases, ScalePhase{Command: command, Requests: run.Entries / 2, PerSec: rate,
			StartS: began.Sub(start).Seconds(), Seconds: time.Since(began).Seconds()})
	}
	return nil
}

// restart kills the server with SIGKILL, starts it again on the same data
// and waits, polling every restartPoll, for its first PONG, for held
// entries back (a persistent target) and for capsgate's /readyz. What has
// not come back after restartTimeout is the result's Failure.
func (s *scaleServer) restart(ctx context.Context, held int64) (ScaleRestart, error) {
	var r ScaleRestart
	s.proc.kill()
	t0 := time.Now()
	p, err := startScaleProc(s.argv, s.logPath)
	if err != nil {
		return r, err
	}
	s.proc = p
	answered, back, ready := false, false, s.admin == ""
	var c *client.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	hc := &http.Client{Timeout: time.Second}
	for !answered || !back || !ready {
		if err := s.alive(ctx); err != nil {
			return r, fmt.Errorf("during the restart: %w", err)
		}
		if !answered && pingOnce(s.addr) == nil {
			answered, r.FirstAnswerS = true, time.Since(t0).Seconds()
		}
		if answered && !back {
			c, back = s.countBack(ctx, c, held, &r)
			if back && s.persistent {
				r.AllBackS = time.Since(t0).Seconds()
			}
		}
		if !ready && httpStatus(hc, "http://"+s.admin+"/readyz") == http.StatusOK {
			ready, r.ReadyS = true, time.Since(t0).Seconds()
		}
		if time.Since(t0) > restartTimeout {
			r.Failure = notBack(answered, back, ready, r.Back, held)
			return r, nil
		}
		if err := sleepCtx(ctx, restartPoll); err != nil {
			return r, err
		}
	}
	if s.admin != "" {
		if err := restoreGauges(hc, "http://"+s.admin+"/metrics", &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// countBack counts the entries on c (dialled again if it is nil or
// broken) into r.Back and reports whether they are all back: held of
// them, or any number for a target without persistence.
func (s *scaleServer) countBack(ctx context.Context, c *client.Conn, held int64, r *ScaleRestart) (*client.Conn, bool) {
	if c == nil || c.Err() != nil {
		if c != nil {
			c.Close()
		}
		var err error
		if c, err = dialScale(ctx, s.addr); err != nil {
			return nil, false
		}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	n, err := s.count(cctx, c)
	if err != nil {
		return c, false // not ready to count (no licence yet, loading): look again
	}
	r.Back = n
	return c, !s.persistent || n >= held
}

// notBack says what a restart did not bring back within restartTimeout.
func notBack(answered, back, ready bool, got, held int64) string {
	var what []string
	if !answered {
		what = append(what, "no PONG")
	}
	if answered && !back {
		what = append(what, fmt.Sprintf("%d of %d entries back", got, held))
	}
	if !ready {
		what = append(what, "/readyz not ready")
	}
	return fmt.Sprintf("%s after %v", strings.Join(what, ", "), restartTimeout)
}

// restoreGauges reads capsgate_state_restore_seconds and the restored
// sessions and subscribers from capsgate's /metrics into r.
func restoreGauges(hc *http.Client, url string, r *ScaleRestart) error {
	resp, err := hc.Get(url)
	if err != nil {
		return fmt.Errorf("cannot read the restore gauges: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("cannot read the restore gauges: %w", err)
	}
	text := string(b)
	v, ok := metricValue(text, "capsgate_state_restore_seconds")
	if !ok {
		return fmt.Errorf("no capsgate_state_restore_seconds in %s", url)
	}
	r.RestoreSeconds = v
	sessions, _ := metricValue(text, "capsgate_state_restored_sessions")
	subscribers, _ := metricValue(text, "capsgate_state_restored_subscribers")
	r.Restored = int64(sessions + subscribers)
	return nil
}

// metricValue is the value of the unlabelled sample name in a Prometheus
// text exposition.
func metricValue(text, name string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// httpStatus is GET url's status code, 0 if there is no answer.
func httpStatus(hc *http.Client, url string) int {
	resp, err := hc.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode
}

// scaleProc is one process of a server; its output goes to a log file.
type scaleProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited
}

// startScaleProc starts argv, appending its output to logPath. The
// process is tied to this one (farm.StartTied): it gets SIGKILL if
// capsbench dies without killing it.
func startScaleProc(argv []string, logPath string) (*scaleProc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the server log: %w", err)
	}
	defer f.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := farm.StartTied(cmd); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", argv[0], err)
	}
	p := &scaleProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL and waits for the process to exit; it is safe to
// call twice.
func (p *scaleProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *scaleProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of a server's log, for an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	return "log: " + lastLines(string(b), 5)
}

// lastLines is the last n lines of s, joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// redisBenchmark runs redis-benchmark against addr — 50
// connections, 16 pipelined, n requests of command with random keys — and
// returns the requests per second it reports. It is bounded by a time that
// allows 10,000 requests per second.
func redisBenchmark(ctx context.Context, addr string, n int, command []string) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	args := append([]string{"-h", host, "-p", port, "-c", strconv.Itoa(scaleConns), "-P", strconv.Itoa(scalePipeline),
		"-n", strconv.Itoa(n), "-r", strconv.Itoa(scaleKeyRange), "-q"}, command...)
	timeout := time.Minute + time.Duration(n)*100*time.Microsecond
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "redis-benchmark", args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	cmd.WaitDelay = time.Second
	err := farm.StartTied(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	what := "redis-benchmark " + strings.Join(command, " ")
	if ctx.Err() != nil {
		return 0, fmt.Errorf("%s: %w (bound %v)", what, ctx.Err(), timeout)
	}
	all := out.String() + stderr.String()
	if i := strings.Index(all, "Error from server"); i >= 0 {
		return 0, fmt.Errorf("%s: %s", what, strings.TrimSpace(firstLine(all[i:])))
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", what, err, lastLine(strings.ReplaceAll(all, "\r", "\n")))
	}
	rate, err := benchmarkRate(out.String())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return rate, nil
}

// benchmarkRate is the requests per second of redis-benchmark -q's
// output: its last "COMMAND: R requests per second, ..." (the lines
// before, ended by \r, are its progress).
func benchmarkRate(out string) (float64, error) {
	i := strings.LastIndex(out, " requests per second")
	if i < 0 {
		return 0, fmt.Errorf("no \"requests per second\" in its output %q", lastLine(strings.ReplaceAll(out, "\r", "\n")))
	}
	f := strings.Fields(out[:i])
	if len(f) == 0 {
		return 0, fmt.Errorf("no rate before \"requests per second\" in %q", out)
	}
	v, err := strconv.ParseFloat(f[len(f)-1], 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("cannot read the rate %q of its output", f[len(f)-1])
	}
	return v, nil
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// probe sends PING on a connection of its own every probeEvery until stop
// is closed, and returns when each was sent (from start) and how long its
// answer took. A PING in flight when stop closes is waited for, so a
// stall at the end of the load counts. No answer within probeTimeout, or
// a broken connection, is an error.
func probe(ctx context.Context, stop <-chan struct{}, addr string, start time.Time) ([]ProbeSample, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, fmt.Errorf("the PING probe cannot connect: %w", err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	var out []ProbeSample
	next := time.Now()
	for {
		sent := time.Now()
		_ = conn.SetDeadline(sent.Add(probeTimeout))
		if err := ping(conn, r); err != nil {
			return out, fmt.Errorf("the PING probe, %.1f s into the load: %w", sent.Sub(start).Seconds(), err)
		}
		out = append(out, ProbeSample{AtS: sent.Sub(start).Seconds(), Ms: float64(time.Since(sent)) / 1e6})
		if next = next.Add(probeEvery); next.Before(time.Now()) {
			next = time.Now() // after a late answer, the next at once
		}
		select {
		case <-stop:
			return out, nil
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(time.Until(next)):
		}
	}
}

// pingOnce sends PING on a new connection and wants PONG within a second.
func pingOnce(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	return ping(conn, bufio.NewReader(conn))
}

// ping sends PING on conn and wants +PONG (Redis answers -LOADING while it
// reads its AOF).
func ping(conn net.Conn, r *bufio.Reader) error {
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// sample reads pid's RSS and the entries held (count on c) now and every
// sampleEvery until stop is closed.
func sample(ctx context.Context, stop <-chan struct{}, pid int, c *client.Conn,
	count func(context.Context, *client.Conn) (int64, error), start time.Time) ([]ScaleSample, error) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	var out []ScaleSample
	for {
		at := time.Since(start).Seconds()
		rss, err := readRSS(pid)
		if err != nil {
			return out, err
		}
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		held, err := count(cctx, c)
		cancel()
		if err != nil {
			return out, fmt.Errorf("cannot count the entries held, %.1f s into the load: %w", at, err)
		}
		out = append(out, ScaleSample{AtS: at, RSS: rss, Held: held})
		select {
		case <-stop:
			return out, nil
		case <-ctx.Done():
			return out, ctx.Err()
		case <-tick.C:
		}
	}
}

// dialScale connects the client used to count entries.
func dialScale(ctx context.Context, addr string) (*client.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return client.Dial(dctx, addr)
}

// readRSS is pid's resident memory in bytes, from /proc/PID/status.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read the server's RSS: %w", err)
	}
	return parseVmRSS(string(b))
}

// parseVmRSS reads the VmRSS line ("VmRSS:	  12345 kB") of a
// /proc/PID/status.
func parseVmRSS(status string) (int64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10, nil
				}
			}
			return 0, fmt.Errorf("cannot read the RSS in %q", line)
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
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

// summarizeProbes is the p99 (the sorted latencies' element
// at 0.99 × (n-1)), the worst, and the longest time between two answers.
func summarizeProbes(ps []ProbeSample) ProbeSummary {
	s := ProbeSummary{Probes: len(ps)}
	if len(ps) == 0 {
		return s
	}
	lat := make([]float64, len(ps))
	for i, p := range ps {
		lat[i] = p.Ms
		if i > 0 {
			gap := (p.AtS*1e3 + p.Ms) - (ps[i-1].AtS*1e3 + ps[i-1].Ms)
			s.LongestGapMs = max(s.LongestGapMs, gap)
		}
	}
	slices.Sort(lat)
	s.P99Ms = lat[int(0.99*float64(len(lat)-1))]
	s.WorstMs = lat[len(lat)-1]
	return s
}

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

// scaleColors are the targets' colours in the plots (compare.svg's for
// capsgate).
var scaleColors = map[string]string{ScaleCapsgate: "#2b7bb9", ScaleRedisAOF: "#d9534f", ScaleRedis: "#7f7f7f"}

// scaleLegend names a target in the plots.
func scaleLegend(target string) string {
	switch target {
	case ScaleRedisAOF:
		return "Redis, AOF everysec"
	case ScaleRedis:
		return "Redis, no persistence"
	}
	return target
}

// largestRuns are the runs at the largest entry count, one per target in
// the report's order: the load plots show those (a smaller run's curve is
// the start of a larger one's).
func largestRuns(rep ScaleReport) []ScaleRun {
	most := 0
	for _, r := range rep.Runs {
		most = max(most, r.Entries)
	}
	var out []ScaleRun
	for _, r := range rep.Runs {
		if r.Entries == most {
			out = append(out, r)
		}
	}
	return out
}

// scaleMemorySVG plots each target's RSS (MB) against the entries it held
// during the load, from the samples of its largest run.
func scaleMemorySVG(rep ScaleReport) string {
	runs := largestRuns(rep)
	var lines []xyLine
	for _, r := range runs {
		l := xyLine{name: scaleLegend(r.Target), color: scaleColors[r.Target]}
		for _, s := range r.Samples {
			l.xs, l.ys = append(l.xs, float64(s.Held)), append(l.ys, float64(s.RSS)/1e6)
		}
		lines = append(lines, l)
	}
	return xyPlot(fmt.Sprintf("RSS against entries held during the load (%s-entry runs)", commas(int64(entriesOf(runs)))),
		"entries held", "RSS (MB)", lines)
}

// scaleLatencySVG plots each target's PING latency over the load of its
// largest run.
func scaleLatencySVG(rep ScaleReport) string {
	runs := largestRuns(rep)
	var lines []xyLine
	for _, r := range runs {
		l := xyLine{name: scaleLegend(r.Target), color: scaleColors[r.Target]}
		for _, p := range r.Probes {
			l.xs, l.ys = append(l.xs, p.AtS), append(l.ys, p.Ms)
		}
		lines = append(lines, l)
	}
	return xyPlot(fmt.Sprintf("PING every %d ms during the load (%s-entry runs)", probeEvery.Milliseconds(), commas(int64(entriesOf(runs)))),
		"seconds from the start of the load", "PING latency (ms)", lines)
}

// scaleRestartSVG plots each target's kill -9 to first answer against the
// entry counts run.
func scaleRestartSVG(rep ScaleReport) string {
	var lines []xyLine
	at := map[string]int{} // target → its line
	for _, r := range rep.Runs {
		i, ok := at[r.Target]
		if !ok {
			i, at[r.Target] = len(lines), len(lines)
			lines = append(lines, xyLine{name: scaleLegend(r.Target), color: scaleColors[r.Target], marks: true})
		}
		lines[i].xs, lines[i].ys = append(lines[i].xs, float64(r.Entries)), append(lines[i].ys, r.Restart.FirstAnswerS)
	}
	for i := range lines { // in the order of the entries
		l := &lines[i]
		idx := seq(len(l.xs))
		slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(l.xs[a], l.xs[b]) })
		xs, ys := slices.Clone(l.xs), slices.Clone(l.ys)
		for j, k := range idx {
			l.xs[j], l.ys[j] = xs[k], ys[k]
		}
	}
	return xyPlot("kill -9 to first answer after a restart", "entries", "seconds", lines)
}

func entriesOf(runs []ScaleRun) int {
	if len(runs) == 0 {
		return 0
	}
	return runs[0].Entries
}

// xyLine is one target's series in a scale plot.
type xyLine struct {
	name, color string
	xs, ys      []float64
	marks       bool // a square at each point
}

// Layout of xyPlot: simplot's panel, one of them.
const (
	xyPlotW, xyPlotH = 960, 420
	xyPlotTop        = 60.0
	xyPlotHeight     = 290.0
)

// xyPlot draws lines, each one path, on linear axes from 0 to a little
// above their largest x and y, with the title above and the legend right
// of the panel.
func xyPlot(title, xLabel, yLabel string, lines []xyLine) string {
	xmax, ymax := 0.0, 0.0
	for _, l := range lines {
		for i := range l.xs {
			xmax, ymax = max(xmax, l.xs[i]), max(ymax, l.ys[i])
		}
	}
	xmax, ymax = niceMax(xmax), niceMax(ymax)
	bottom := xyPlotTop + xyPlotHeight
	x := func(v float64) float64 { return simPlotX0 + v/xmax*simPlotWidth }
	y := func(v float64) float64 { return bottom - v/ymax*xyPlotHeight }

	d := newSVG(xyPlotW, xyPlotH)
	d.text(xyPlotW/2, 22, "middle", title)
	d.text(simPlotX0, xyPlotTop-12, "start", yLabel)
	step := niceStep(ymax)
	for i := 0; float64(i)*step <= ymax*(1+1e-9); i++ {
		v := float64(i) * step
		d.line(simPlotX0, y(v), simPlotX0+simPlotWidth, y(v), `stroke="#e5e5e5"`)
		d.text(simPlotX0-5, y(v)+4, "end", tickLabel(v))
	}
	step = niceStep(xmax)
	for i := 0; float64(i)*step <= xmax*(1+1e-9); i++ {
		v := float64(i) * step
		d.line(x(v), bottom, x(v), bottom+4, `stroke="black"`)
		d.text(x(v), bottom+17, "middle", tickLabel(v))
	}
	d.line(simPlotX0, bottom, simPlotX0+simPlotWidth, bottom, `stroke="black"`)
	d.line(simPlotX0, xyPlotTop, simPlotX0, bottom, `stroke="black"`)
	d.text(simPlotX0+simPlotWidth, bottom+34, "end", xLabel)
	legendY := xyPlotTop
	for _, l := range lines {
		px, py := make([]float64, len(l.xs)), make([]float64, len(l.ys))
		for i := range l.xs {
			px[i], py[i] = x(l.xs[i]), y(l.ys[i])
		}
		style := lineStyle(plotLine{color: l.color})
		d.path(px, py, style)
		if l.marks {
			for i := range px {
				d.rect(px[i]-3, py[i]-3, 6, 6, fmt.Sprintf(`fill="%s"`, l.color))
			}
		}
		d.line(simPlotLegendX, legendY-4, simPlotLegendX+24, legendY-4, style)
		d.text(simPlotLegendX+30, legendY, "start", l.name)
		legendY += 16
	}
	return d.close()
}

// niceMax is a little above v (at least 1e-9, so that an empty plot has
// axes): 5% more, up to the next tick.
func niceMax(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	v *= 1.05
	step := niceStep(v)
	return math.Ceil(v/step) * step
}

// tickLabel writes an axis value short: 1.5M, 250k, 0.3.
func tickLabel(v float64) string {
	v = math.Round(v*1e9) / 1e9
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
