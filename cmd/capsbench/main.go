// Command capsbench is capsgate's load generator and side-by-side
// benchmark; the logic is in package bench.
//
//	capsbench throughput --addr A [--conns C] [--pipeline P] [--seconds N] [--cmd "ADMIT bench"] [--cpuprofile FILE]
//	capsbench latency    --addr A [--rate R] [--conns C] [--seconds N] [--cmd "ADMIT bench"] [--cpuprofile FILE]
//	capsbench cluster    [--nodes N] [--skew 70,20,10 (even unless N is 3)] [--caps L] [--rate R] [--seconds S] [--arrivals paced|poisson|stalling] [--seed N]
//	capsbench compare    [--seconds N] [--json FILE] [--profiles latency] [--rate R] [--conns C] [--pipeline P] [--throughput-conns C] [--targets capsgate,redis-lua,limit] [--sweep 5000,10000,25000] [--stall-seconds N]
//	capsbench report     --json FILE --out DIR
//	capsbench stalls     [--seconds N]
//	capsbench scale      [--entries 1000000,2000000] [--out DIR] [--redis=true] [--bin DIR]
//	capsbench sim        [--nodes N] [--caps L] [--seconds S] [--seed N] [--arrivals paced|poisson|bursty|stalling] [--load F | --ramp-to F] [--skew 70,20,10|even|tail] [--shift-at D] [--flash-at D --flash-for D --flash-factor F] [--prelude D --prelude-load F] [--delay D --jitter D --loss F] [--services N] [--accounts N] [--scenario FILE] [--svg FILE] [--json] [--quiet]
//	capsbench sim        --table
//	capsbench serve-limit --addr HOST:PORT [--loops N]
//
// SIGINT or SIGTERM ends any of them early: a load stops, compare,
// cluster and scale stop what they started, serve-limit stops serving and
// exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/bench"
	"github.com/capsgate/capsgate/bench/openloop"
)

const usage = `usage: capsbench COMMAND [flags]
  throughput  closed loop against --addr: pipelined, prints ops/s
  latency     open loop at --rate against --addr: p50, p99, p99.9, max from intended send times
  cluster     N capsgate nodes, skewed load, admitted/s vs licensed
  compare     capsgate vs redis-server+Lua vs the transport limit; --json FILE
  report      report.md and compare.svg from a compare JSON
  stalls      the machine's own pauses: a thread spinning on every CPU, gaps in its clock
  scale       one capsgate node, then redis-server, loaded to --entries by redis-benchmark: memory, PING during the load, kill -9 and restart; scale.md, scale.json and plots in --out
  sim         a simulated farm (real planner and buckets, simulated network and clock) against one node, and the gossip bytes per node; --table: the accuracy table
  serve-limit the do-nothing server of compare (capsgate's RESP server deciding nothing), on its own: --addr HOST:PORT
run "capsbench COMMAND -h" for its flags`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "throughput", "latency":
		err = load(ctx, cmd, args)
	case "cluster":
		err = cluster(ctx, args)
	case "compare":
		err = compare(ctx, args)
	case "report":
		err = report(args)
	case "stalls":
		err = stalls(ctx, args)
	case "scale":
		err = scale(ctx, args)
	case "sim":
		err = simulate(args)
	case bench.LimitServerArg:
		code := bench.ServeLimitMain(ctx, args)
		cancel()
		os.Exit(code)
	case "-h", "--help", "help":
		fmt.Println(usage)
		return
	default:
		err = fmt.Errorf("unknown command %q\n%s", cmd, usage)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capsbench "+cmd+":", err)
		os.Exit(1)
	}
}

func load(ctx context.Context, mode string, args []string) error {
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:6390", "RESP address (host:port)")
	conns := fs.Int("conns", 50, "connections")
	pipeline := fs.Int("pipeline", 64, "commands per round trip (throughput)")
	rate := fs.Float64("rate", 50000, "requests per second over all connections (latency)")
	seconds := fs.Float64("seconds", 5, "duration")
	requests := fs.Int64("requests", 0, "stop after this many requests (0: only --seconds)")
	cmdLine := fs.String("cmd", "ADMIT bench", "command sent for every request (space-separated words)")
	cpuprofile := fs.String("cpuprofile", "", "write the load generator's own CPU profile of the run to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		stop, err := bench.StartCPUProfile(*cpuprofile)
		if err != nil {
			return err
		}
		defer stop()
	}
	l := bench.Load{Addr: *addr, Frame: client.AppendCommand(nil, strings.Fields(*cmdLine)...), Conns: *conns,
		Pipeline: *pipeline, Rate: *rate, Duration: time.Duration(*seconds * float64(time.Second)),
		MaxRequests: *requests, Progress: bench.NewBar(os.Stderr).Func(mode)}
	var res bench.Result
	var err error
	if mode == "throughput" {
		res, err = bench.Throughput(ctx, l)
	} else {
		res, err = bench.Latency(ctx, l)
	}
	bench.NewBar(os.Stderr).Done()
	if err != nil {
		return err
	}
	h := &res.Latency
	fmt.Printf("%d requests in %.2fs: %.0f ops/s; admitted %d, error replies %d\n",
		res.Requests, res.Elapsed.Seconds(), res.OpsPerSec, res.Admitted, res.ErrorReplies)
	what := "round trip of a pipelined batch"
	if mode == "latency" {
		what = "from intended send time"
		fmt.Printf("send lag (write began after the intended time): p50 %v  p99 %v  max %v\n",
			res.SendLag.Quantile(0.5).Round(time.Microsecond), res.SendLag.Quantile(0.99).Round(time.Microsecond),
			res.SendLag.Max().Round(time.Microsecond))
	}
	fmt.Printf("latency (%s): p50 %v  p99 %v  p99.9 %v  max %v\n", what,
		h.Quantile(0.5).Round(time.Microsecond), h.Quantile(0.99).Round(time.Microsecond),
		h.Quantile(0.999).Round(time.Microsecond), h.Max().Round(time.Microsecond))
	if res.LastError != "" {
		fmt.Printf("last error reply: %s\n", res.LastError)
	}
	return nil
}

func cluster(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "capsgate nodes")
	skew := fs.String("skew", "70,20,10", "load weight per node, comma-separated (unset with --nodes other than 3: even)")
	caps := fs.Int64("caps", 1000, "licensed CAPS")
	rate := fs.Float64("rate", 2000, "offered ADMITs per second over all nodes")
	seconds := fs.Float64("seconds", 10, "duration")
	arrivals := fs.String("arrivals", "poisson", "when each node's connection sends: paced (the same count every 10 ms), "+
		"poisson (a seeded Poisson count every 10 ms: real traffic is not paced) or stalling (poisson from a proxy that "+
		"stalls 50-200 ms about every 2 s, then sends its backlog at once)")
	seed := fs.Uint64("seed", 1, "seed of the poisson and stalling arrivals: the same seed repeats the same arrivals")
	if err := fs.Parse(args); err != nil {
		return err
	}
	model, err := openloop.ParseArrivalModel(*arrivals)
	if err != nil {
		return fmt.Errorf("bad --arrivals: %w", err)
	}
	skewSet := false
	fs.Visit(func(f *flag.Flag) { skewSet = skewSet || f.Name == "skew" })
	var weights []float64 // nil: even
	if skewSet || *nodes == 3 {
		for _, w := range strings.Split(*skew, ",") {
			v, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
			if err != nil {
				return fmt.Errorf("bad --skew %q: %w", *skew, err)
			}
			weights = append(weights, v)
		}
	}
	return bench.RunCluster(ctx, bench.ClusterRun{Nodes: *nodes, Skew: weights, CAPS: *caps, Rate: *rate,
		Duration: time.Duration(*seconds * float64(time.Second)),
		Arrivals: openloop.Arrivals{Model: model, Seed: *seed}}, os.Stdout)
}

func compare(ctx context.Context, args []string) error {
	s := bench.DefaultSettings()
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.Float64Var(&s.Seconds, "seconds", s.Seconds, "seconds per target and mode")
	jsonPath := fs.String("json", "", "write the results to this file")
	fs.Float64Var(&s.Rate, "rate", s.Rate, "open-loop requests per second")
	fs.IntVar(&s.Conns, "conns", s.Conns, "open-loop connections")
	fs.IntVar(&s.Pipeline, "pipeline", s.Pipeline, "closed-loop commands per round trip")
	fs.IntVar(&s.ThroughputConns, "throughput-conns", s.ThroughputConns, "closed-loop connections")
	fs.Float64Var(&s.StallSeconds, "stall-seconds", s.StallSeconds, "seconds to measure the machine's own pauses before the runs (see capsbench stalls; 0: not at all)")
	targets := fs.String("targets", strings.Join(s.Targets, ","), "targets to run, in order")
	sweep := fs.String("sweep", joinRates(s.SweepRates), "further open-loop rates run against every target, comma-separated (\"\" for none): latency against load")
	profiles := fs.String("profiles", strings.Join(s.ProfileModes, ","), "with --json: the capsgate runs (latency, throughput; "+
		"\"\" for none) to take CPU profiles of, saved beside the JSON (capsgate-MODE.pprof from the node's admin API, "+
		"capsbench-MODE.pprof of this generator); a profiled run is a few per cent slower")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s.Targets = strings.Split(*targets, ",")
	var err error
	if s.SweepRates, err = bench.ParseRates(*sweep, s.Rate); err != nil {
		return fmt.Errorf("bad --sweep: %w", err)
	}
	s.ProfileModes = nil
	for _, m := range strings.Split(*profiles, ",") {
		switch m = strings.TrimSpace(m); m {
		case "":
		case bench.ModeLatency, bench.ModeThroughput:
			s.ProfileModes = append(s.ProfileModes, m)
		default:
			return fmt.Errorf("bad --profiles %q: want latency, throughput or both, comma-separated", *profiles)
		}
	}
	if len(s.ProfileModes) > 0 && *jsonPath != "" {
		s.ProfileDir = filepath.Dir(*jsonPath)
	}
	cmp, err := bench.Compare(ctx, s, os.Stderr, bench.NewBar(os.Stderr))
	if err != nil {
		return err
	}
	cmp.WriteTable(os.Stdout)
	if *jsonPath != "" {
		return cmp.WriteJSON(*jsonPath)
	}
	return nil
}

// joinRates formats rates for a flag's default.
func joinRates(rates []float64) string {
	f := make([]string, len(rates))
	for i, r := range rates {
		f[i] = strconv.FormatFloat(r, 'f', -1, 64)
	}
	return strings.Join(f, ",")
}

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	jsonPath := fs.String("json", "", "a compare JSON")
	out := fs.String("out", "", "directory for report.md and compare.svg")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *jsonPath == "" || *out == "" {
		return errors.New("want --json FILE and --out DIR")
	}
	cmp, err := bench.ReadComparison(*jsonPath)
	if err != nil {
		return err
	}
	if err := bench.WriteReport(cmp, *out, filepath.Dir(*jsonPath)); err != nil {
		return err
	}
	fmt.Printf("wrote %s/report.md and %s/compare.svg\n", *out, *out)
	return nil
}

func stalls(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stalls", flag.ContinueOnError)
	seconds := fs.Float64("seconds", 5, "how long to spin (every CPU is kept busy meanwhile)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !(*seconds > 0 && *seconds <= 3600) {
		return fmt.Errorf("--seconds must be above 0 and at most 3600, got %v", *seconds)
	}
	st := bench.MeasureStalls(ctx, time.Duration(*seconds*float64(time.Second)))
	fmt.Printf("%d CPUs spinning for %.1fs: %.2f%% of the time lost in pauses > %v; pauses > 100 µs: %d, > 250 µs: %d, > 1 ms: %d; longest %.0f µs\n",
		st.CPUs, st.Seconds, st.StalledFraction*100, bench.StallMinimum, st.Over100us, st.Over250us, st.Over1ms, st.MaxUs)
	return nil
}

func scale(ctx context.Context, args []string) error {
	o, err := bench.ParseScale(args, os.Stderr, bench.RedisInstalled())
	if err != nil {
		return err
	}
	o.CommandLine = bench.CommandLine(append([]string{"capsbench"}, os.Args[1:]...)) // whatever the binary is called
	rep, err := bench.RunScale(ctx, o, os.Stderr)
	if err != nil {
		return err
	}
	if err := bench.WriteScale(rep, o.Out); err != nil {
		return err
	}
	fmt.Print(bench.ScaleTable(rep))
	fmt.Printf("\nwrote %s, %s and the plots to %s\n", bench.ScaleMarkdownFile, bench.ScaleJSONFile, o.Out)
	return rep.Err()
}

func simulate(args []string) error {
	o, err := bench.ParseSim(args, os.Stderr)
	if err != nil {
		return err
	}
	if o.Table {
		start := time.Now()
		runs, err := bench.RunSims(bench.SimTable(), runtime.GOMAXPROCS(0))
		if err != nil {
			return err
		}
		bench.WriteSimTable(os.Stdout, runs)
		fmt.Printf("\n%d scenarios, each beside its reference, in %.1fs on %d goroutines\n",
			len(runs), time.Since(start).Seconds(), runtime.GOMAXPROCS(0))
		return nil
	}
	run, err := bench.RunSim(o.Scenario)
	if err != nil {
		return err
	}
	if o.SVG != "" {
		if err := os.WriteFile(o.SVG, []byte(bench.SimSVG(run)), 0o644); err != nil {
			return fmt.Errorf("cannot write --svg: %w", err)
		}
	}
	if o.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(run)
	}
	bench.WriteSim(os.Stdout, run, o.Quiet)
	return nil
}
