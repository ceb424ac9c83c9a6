package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/cluster/sim"
)

// SimUsage is `capsbench sim`'s usage line.
const SimUsage = "capsbench sim [--nodes N] [--caps L] [--seconds S] [--seed N] [--arrivals paced|poisson|bursty|stalling] " +
	"[--load F | --ramp-to F] [--skew 70,20,10|even|tail] [--shift-at D] [--flash-at D --flash-for D --flash-factor F] " +
	"[--prelude D --prelude-load F] [--delay D --jitter D --loss F] [--services N] [--accounts N] [--scenario FILE] [--svg FILE] [--json] [--quiet] | capsbench sim --table"

// SimOptions is what `capsbench sim` was asked to do.
type SimOptions struct {
	Scenario sim.Scenario
	// Table runs SimTable instead of Scenario.
	Table bool
	// JSON prints the run as JSON instead of text; Quiet prints only the
	// scenario and the summary.
	JSON, Quiet bool
	// SVG, if set, is the file to write the plot to.
	SVG string
}

// DefaultSimScenario is the scenario `capsbench sim` runs when no flag
// changes it.
func DefaultSimScenario() sim.Scenario {
	return sim.Scenario{
		Nodes:    3,
		CAPS:     1000,
		Duration: time.Minute, // six 10 s windows
		Seed:     1,
		Arrivals: sim.Poisson, // SIP arrivals at best; paced is the easy case
		Load:     0.95,        // the accuracy target's load
		// 1 s at 0: the farm holds the licence idle before the load
		// comes, as a real farm does.
		Prelude: time.Second,
		Net:     sim.LAN,
	}
}

// maxScenarioFile bounds a scenario file, checked before it is read.
const maxScenarioFile = 64 << 10

// Bounds of the settings sim.Validate leaves open: each simulated attempt
// and each report in flight costs memory and time.
const (
	maxSimCAPS  = 1e6
	maxSimDelay = time.Second
	maxSimAt    = time.Hour // the longest run sim.Run takes
	maxSimPools = 1_000_000 // accounts over all services: each is in every report
)

// simArgs is a scenario being put together from flags and a file.
type simArgs struct {
	sc   sim.Scenario
	tail bool            // --skew tail: resolved once --nodes is known
	set  map[string]bool // the settings given, by name
}

// simParam is one setting of a scenario: a flag of `capsbench sim` and a
// key of its scenario file.
type simParam struct {
	name, usage string
	// set parses s into a.
	set func(a *simArgs, s string) error
	// get formats sc's setting as set parses it; "" where it does not
	// apply to sc.
	get func(sc sim.Scenario) string
}

// simParams are the scenario's settings, in the order SimArgs prints them.
var simParams = []simParam{
	{name: "nodes", usage: "`N` nodes in the farm (1 to 1000)",
		set: func(a *simArgs, s string) error {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 || v > 1000 {
				return errors.New("want a whole number from 1 to 1000")
			}
			a.sc.Nodes = v
			return nil
		},
		get: func(sc sim.Scenario) string { return strconv.Itoa(sc.Nodes) }},
	floatParam("caps", "a licence of `L` CAPS (1 to 1e6)", 1, maxSimCAPS, func(sc *sim.Scenario) *float64 { return &sc.CAPS }, nil),
	{name: "seconds", usage: "run `S` seconds (1 to 3600), the prelude included",
		set: func(a *simArgs, s string) error {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || !(v >= 1 && v <= maxSimAt.Seconds()) {
				return fmt.Errorf("want a number of seconds from 1 to %g", maxSimAt.Seconds())
			}
			a.sc.Duration = time.Duration(math.Round(v * float64(time.Second)))
			return nil
		},
		get: func(sc sim.Scenario) string { return formatFloat(sc.Duration.Seconds()) }},
	{name: "seed", usage: "`N` seeds the arrivals and the network: the same seed repeats the same run",
		set: func(a *simArgs, s string) error {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return errors.New("want a whole number from 0 to 2^64-1")
			}
			a.sc.Seed = v
			return nil
		},
		get: func(sc sim.Scenario) string { return strconv.FormatUint(sc.Seed, 10) }},
	{name: "arrivals", usage: "`MODEL` of the traffic: paced (evenly spaced), poisson, bursty (poisson in 100 ms on-off bunches) " +
		"or stalling (poisson through a proxy that stalls 50-200 ms about every 2 s)",
		set: func(a *simArgs, s string) (err error) {
			a.sc.Arrivals, err = sim.ParseArrivals(s)
			return err
		},
		get: func(sc sim.Scenario) string { return sc.Arrivals }},
	floatParam("load", "offer `F` × the licence over all nodes (0 to 100)", 0, 100,
		func(sc *sim.Scenario) *float64 { return &sc.Load }, func(sc sim.Scenario) bool { return !sc.Ramp }),
	{name: "ramp-to", usage: "ramp the offered load from 0 to `F` × the licence over the run (0 to 100), instead of --load",
		set: func(a *simArgs, s string) error {
			v, err := parseFloat(s, 0, 100)
			if err != nil {
				return err
			}
			a.sc.Ramp, a.sc.RampTo, a.sc.Load = true, v, 0 // --load does not apply
			return nil
		},
		get: func(sc sim.Scenario) string { return formatIf(sc.Ramp, sc.RampTo) }},
	{name: "skew", usage: "`WEIGHTS` of the load per node: comma-separated, even, or tail (one node 90 %, the others share 10 %)",
		set: func(a *simArgs, s string) error {
			a.sc.Skew, a.tail = nil, false
			switch s {
			case "even":
				return nil
			case "tail":
				a.tail = true
				return nil
			}
			var sum float64
			for w := range strings.SplitSeq(s, ",") {
				v, err := strconv.ParseFloat(strings.TrimSpace(w), 64)
				if err != nil || !(v >= 0) || math.IsInf(v, 0) {
					return fmt.Errorf("want weights ≥ 0, comma-separated, or even or tail; %q is not one", w)
				}
				sum += v
				a.sc.Skew = append(a.sc.Skew, v)
			}
			if sum == 0 {
				return errors.New("the weights sum to 0")
			}
			return nil
		},
		get: skewName},
	durationParam("shift-at", "move all load to the node with the least at instant `D` (0: never)", maxSimAt,
		func(sc *sim.Scenario) *time.Duration { return &sc.ShiftAt }, func(sc sim.Scenario) bool { return sc.ShiftAt > 0 }),
	durationParam("flash-at", "a flash crowd starts at instant `D` (0: none)", maxSimAt,
		func(sc *sim.Scenario) *time.Duration { return &sc.FlashAt }, flashing),
	durationParam("flash-for", "the flash crowd lasts `D`", maxSimAt,
		func(sc *sim.Scenario) *time.Duration { return &sc.FlashFor }, flashing),
	floatParam("flash-factor", "the flash crowd multiplies the load by `F` (0 to 1000)", 0, 1000,
		func(sc *sim.Scenario) *float64 { return &sc.FlashFactor }, flashing),
	durationParam("prelude", "a load for `D` before the scenario's own, from the run's start (0: none)", maxSimAt,
		func(sc *sim.Scenario) *time.Duration { return &sc.Prelude }, nil),
	floatParam("prelude-load", "the prelude offers `F` × the licence (0 to 100)", 0, 100,
		func(sc *sim.Scenario) *float64 { return &sc.PreludeLoad }, func(sc sim.Scenario) bool { return sc.Prelude > 0 }),
	durationParam("delay", "`D` of least one-way network delay between nodes (0 to 1s)", maxSimDelay,
		func(sc *sim.Scenario) *time.Duration { return &sc.Net.Delay }, nil),
	durationParam("jitter", "`D` of mean exponential delay added to --delay (0 to 1s)", maxSimDelay,
		func(sc *sim.Scenario) *time.Duration { return &sc.Net.Jitter }, nil),
	floatParam("loss", "lose `F` of the nodes' reports (0 to 1)", 0, 1,
		func(sc *sim.Scenario) *float64 { return &sc.Net.Loss }, nil),
	intParam("services", "license `N` services (1 to 10000), --caps split evenly between them, each attempt to one at random",
		1, 10000, func(sc *sim.Scenario) *int { return &sc.Services }),
	intParam("accounts", "allocate each service's token pool to `N` accounts (0 to 100000; 1000000 over all services), "+
		"each attempt charging one token to one at random", 0, 100000, func(sc *sim.Scenario) *int { return &sc.Accounts }),
}

// intParam is a setting of a whole number from lo to hi, left out of
// SimArgs at lo or below (what a scenario without it does).
func intParam(name, usage string, lo, hi int, field func(*sim.Scenario) *int) simParam {
	return simParam{name: name, usage: usage,
		set: func(a *simArgs, s string) error {
			v, err := strconv.Atoi(s)
			if err != nil || v < lo || v > hi {
				return fmt.Errorf("want a whole number from %d to %d", lo, hi)
			}
			*field(&a.sc) = v
			return nil
		},
		get: func(sc sim.Scenario) string {
			if v := *field(&sc); v > lo {
				return strconv.Itoa(v)
			}
			return ""
		}}
}

func flashing(sc sim.Scenario) bool { return sc.FlashAt > 0 }

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// formatIf formats v if the setting applies, else "".
func formatIf(applies bool, v float64) string {
	if !applies {
		return ""
	}
	return formatFloat(v)
}

func parseFloat(s string, lo, hi float64) (float64, error) {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !(v >= lo && v <= hi) {
		return 0, fmt.Errorf("want a number from %g to %g", lo, hi)
	}
	return v, nil
}

// floatParam is a setting of a number from lo to hi; applies (nil:
// always) says whether it applies to a scenario.
func floatParam(name, usage string, lo, hi float64, field func(*sim.Scenario) *float64, applies func(sim.Scenario) bool) simParam {
	return simParam{name: name, usage: usage,
		set: func(a *simArgs, s string) error {
			v, err := parseFloat(s, lo, hi)
			if err != nil {
				return err
			}
			*field(&a.sc) = v
			return nil
		},
		get: func(sc sim.Scenario) string { return formatIf(applies == nil || applies(sc), *field(&sc)) }}
}

// durationParam is a setting of a duration from 0 to hi, as
// time.ParseDuration reads it.
func durationParam(name, usage string, hi time.Duration, field func(*sim.Scenario) *time.Duration, applies func(sim.Scenario) bool) simParam {
	return simParam{name: name, usage: usage,
		set: func(a *simArgs, s string) error {
			v, err := time.ParseDuration(s)
			if err != nil || v < 0 || v > hi {
				return fmt.Errorf("want a duration from 0 to %v, such as 250ms", hi)
			}
			*field(&a.sc) = v
			return nil
		},
		get: func(sc sim.Scenario) string {
			if applies != nil && !applies(sc) {
				return ""
			}
			return field(&sc).String()
		}}
}

// skewName is how SimArgs and the table name a scenario's weights: even,
// tail (sim.TailSkew) or the weights.
func skewName(sc sim.Scenario) string {
	switch {
	case sc.Skew == nil:
		return "even"
	case sc.Nodes > 1 && slices.Equal(sc.Skew, sim.TailSkew(sc.Nodes)):
		return "tail"
	}
	w := make([]string, len(sc.Skew))
	for i, v := range sc.Skew {
		w[i] = formatFloat(v)
	}
	return strings.Join(w, ",")
}

// SimArgs is the command line that repeats sc.
func SimArgs(sc sim.Scenario) string {
	var b strings.Builder
	b.WriteString("capsbench sim")
	for _, p := range simParams {
		if v := p.get(sc); v != "" {
			fmt.Fprintf(&b, " --%s %s", p.name, v)
		}
	}
	return b.String()
}

// paramValue is a simParam as a flag.Value.
type paramValue struct {
	p simParam
	a *simArgs
}

func (v paramValue) String() string {
	if v.a == nil { // the flag package's zero value
		return ""
	}
	return v.p.get(v.a.sc)
}

func (v paramValue) Set(s string) error { return v.a.apply(v.p, s) }

func (a *simArgs) apply(p simParam, s string) error {
	if err := p.set(a, s); err != nil {
		return err
	}
	a.set[p.name] = true
	return nil
}

// ParseSim parses `capsbench sim`'s arguments: the flags and the scenario
// file --scenario names, whose settings the flags override. Every error is
// one line naming the flag or key to fix. -h writes the usage to help and
// returns flag.ErrHelp.
func ParseSim(args []string, help io.Writer) (SimOptions, error) {
	a := &simArgs{sc: DefaultSimScenario(), set: map[string]bool{}}
	var o SimOptions
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error is returned, once
	for _, p := range simParams {
		fs.Var(paramValue{p, a}, p.name, p.usage)
	}
	file := fs.String("scenario", "", "read settings from `FILE`: a line each, key and value, keys named as these flags, # comments; flags override it")
	fs.BoolVar(&o.Table, "table", false, "run the accuracy table's scenarios and print it in Markdown (no other flag)")
	fs.BoolVar(&o.JSON, "json", false, "print the run as JSON")
	fs.BoolVar(&o.Quiet, "quiet", false, "print only the scenario and the summary, not the windows")
	fs.StringVar(&o.SVG, "svg", "", "write a plot of licensed against admitted CAPS, per node and for the farm, to `FILE`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(help, "usage: "+SimUsage)
			fs.SetOutput(help)
			fs.PrintDefaults()
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.Table {
		n := 0
		fs.Visit(func(*flag.Flag) { n++ })
		if n > 1 {
			return o, errors.New("--table runs a fixed set of scenarios and takes no other flag")
		}
		return o, nil
	}
	if *file != "" {
		if err := a.readFile(*file); err != nil {
			return o, err
		}
	}
	var err error
	o.Scenario, err = a.scenario()
	return o, err
}

// readFile applies the settings of a scenario file that the command line
// left unset.
func (a *simArgs) readFile(path string) error {
	b, err := bounded.ReadFile(path, maxScenarioFile)
	if err != nil {
		return fmt.Errorf("cannot read --scenario: %w", err)
	}
	return a.parseFile(path, string(b))
}

func (a *simArgs) parseFile(path, text string) error {
	flags := maps.Clone(a.set)
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		at := fmt.Sprintf("%s:%d", path, i+1)
		j := slices.IndexFunc(simParams, func(p simParam) bool { return p.name == f[0] })
		switch {
		case j < 0:
			return fmt.Errorf("%s: unknown key %q: want a scenario setting (%s)", at, f[0], paramNames())
		case len(f) != 2:
			return fmt.Errorf("%s: want `%s VALUE`", at, f[0])
		case seen[f[0]]:
			return fmt.Errorf("%s: %s given twice", at, f[0])
		}
		seen[f[0]] = true
		if flags[f[0]] {
			continue // the command line overrides the file
		}
		if err := a.apply(simParams[j], f[1]); err != nil {
			return fmt.Errorf("%s: invalid value %q for %s: %w", at, f[1], f[0], err)
		}
	}
	return nil
}

func paramNames() string {
	n := make([]string, len(simParams))
	for i, p := range simParams {
		n[i] = p.name
	}
	return strings.Join(n, ", ")
}

// scenario checks what the settings given say together and returns the
// scenario.
func (a *simArgs) scenario() (sim.Scenario, error) {
	sc := a.sc
	if a.tail {
		sc.Skew = sim.TailSkew(sc.Nodes)
	}
	switch {
	case a.set["load"] && a.set["ramp-to"]:
		return sc, errors.New("--load and --ramp-to both set the offered load: give one")
	case sc.FlashAt == 0 && (a.set["flash-for"] || a.set["flash-factor"]):
		return sc, errors.New("--flash-for and --flash-factor apply only with --flash-at above 0")
	case sc.FlashAt > 0 && !a.set["flash-factor"]:
		return sc, errors.New("--flash-at wants --flash-factor")
	case sc.Prelude == 0 && a.set["prelude-load"]:
		return sc, errors.New("--prelude-load applies only with --prelude above 0")
	}
	return sc, CheckSim(sc)
}

// CheckSim is sim.Scenario.Validate with what it leaves to the caller,
// each error naming the `capsbench sim` flag that fixes it.
func CheckSim(sc sim.Scenario) error {
	for _, at := range []struct {
		name string
		d    time.Duration
	}{{"prelude", sc.Prelude}, {"shift-at", sc.ShiftAt}, {"flash-at", sc.FlashAt}} {
		if at.d >= sc.Duration && sc.Duration > 0 {
			return fmt.Errorf("--%s %v is not within the run (--seconds %g)", at.name, at.d, sc.Duration.Seconds())
		}
	}
	switch {
	case sc.FlashAt > 0 && sc.FlashFor <= 0:
		return errors.New("--flash-at wants --flash-for above 0")
	case sc.Skew != nil && len(sc.Skew) != sc.Nodes:
		return fmt.Errorf("--skew has %d weights for --nodes %d", len(sc.Skew), sc.Nodes)
	case sc.CAPS > maxSimCAPS:
		return fmt.Errorf("--caps %g: want at most %g", sc.CAPS, maxSimCAPS)
	case sc.Net.Delay > maxSimDelay || sc.Net.Jitter > maxSimDelay:
		return fmt.Errorf("--delay and --jitter: want at most %v", maxSimDelay)
	case max(sc.Services, 1)*sc.Accounts > maxSimPools:
		return fmt.Errorf("--services %d × --accounts %d: want at most %d accounts in all", max(sc.Services, 1), sc.Accounts, maxSimPools)
	}
	return sc.Validate()
}
