package bench

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/sim"
)

// Every numeric flag at 0, 1, its largest value and past it; other values
// and flags refused in one line naming the flag.
func TestParseSimFlags(t *testing.T) {
	f := func(args, wantErr string) {
		t.Helper()
		_, err := ParseSim(strings.Fields(args), io.Discard)
		if wantErr == "" {
			require.NoError(t, err, args)
			return
		}
		require.EqualError(t, err, wantErr, args)
	}
	f("", "")
	f("--nodes 0", `invalid value "0" for flag -nodes: want a whole number from 1 to 1000`)
	f("--nodes 1", "")
	f("--nodes 1000", "")
	f("--nodes 1001", `invalid value "1001" for flag -nodes: want a whole number from 1 to 1000`)
	f("--nodes 2.5", `invalid value "2.5" for flag -nodes: want a whole number from 1 to 1000`)
	f("--caps 0", `invalid value "0" for flag -caps: want a number from 1 to 1e+06`)
	f("--caps 1", "")
	f("--caps 1e6", "")
	f("--caps 1000001", `invalid value "1000001" for flag -caps: want a number from 1 to 1e+06`)
	f("--caps NaN", `invalid value "NaN" for flag -caps: want a number from 1 to 1e+06`)
	f("--seconds 0", `invalid value "0" for flag -seconds: want a number of seconds from 1 to 3600`)
	f("--seconds 1", "--prelude 1s is not within the run (--seconds 1)")
	f("--seconds 1 --prelude 0", "")
	f("--seconds 3600", "")
	f("--seconds 3600.5", `invalid value "3600.5" for flag -seconds: want a number of seconds from 1 to 3600`)
	f("--seed 0", "")
	f("--seed 1", "")
	f("--seed 18446744073709551615", "")
	f("--seed 18446744073709551616", `invalid value "18446744073709551616" for flag -seed: want a whole number from 0 to 2^64-1`)
	for _, name := range []string{"load", "ramp-to", "prelude-load"} {
		f("--"+name+" 0", "")
		f("--"+name+" 1", "")
		f("--"+name+" 100", "")
		f("--"+name+" 100.5", `invalid value "100.5" for flag -`+name+`: want a number from 0 to 100`)
		f("--"+name+" -0.1", `invalid value "-0.1" for flag -`+name+`: want a number from 0 to 100`)
	}
	f("--loss 0", "")
	f("--loss 1", "")
	f("--loss 1.01", `invalid value "1.01" for flag -loss: want a number from 0 to 1`)
	f("--flash-at 1s --flash-for 1s --flash-factor 0", "")
	f("--flash-at 1s --flash-for 1s --flash-factor 1", "")
	f("--flash-at 1s --flash-for 1s --flash-factor 1000", "")
	f("--flash-at 1s --flash-for 1s --flash-factor 1001", `invalid value "1001" for flag -flash-factor: want a number from 0 to 1000`)
	f("--flash-at 1s --flash-for 0 --flash-factor 2", "--flash-at wants --flash-for above 0")
	f("--flash-at 1s --flash-for 1h --flash-factor 2", "")
	f("--flash-at 1s --flash-for 1h0m0.001s --flash-factor 2", `invalid value "1h0m0.001s" for flag -flash-for: want a duration from 0 to 1h0m0s, such as 250ms`)
	f("--flash-at 1s --flash-for 1s", "--flash-at wants --flash-factor")
	f("--flash-for 1s", "--flash-for and --flash-factor apply only with --flash-at above 0")
	for _, name := range []string{"delay", "jitter"} {
		f("--"+name+" 0", "")
		f("--"+name+" 1ns", "")
		f("--"+name+" 1s", "")
		f("--"+name+" 1.001s", `invalid value "1.001s" for flag -`+name+`: want a duration from 0 to 1s, such as 250ms`)
		f("--"+name+" -1ms", `invalid value "-1ms" for flag -`+name+`: want a duration from 0 to 1s, such as 250ms`)
		f("--"+name+" 1", `invalid value "1" for flag -`+name+`: want a duration from 0 to 1s, such as 250ms`)
	}
	// Instants: 0 (none), 1 ns, the run's last instant, its end.
	for _, name := range []string{"shift-at", "flash-at", "prelude"} {
		flash := ""
		if name == "flash-at" {
			flash = " --flash-for 1s --flash-factor 2"
		}
		f("--"+name+" 0", "")
		f("--"+name+" 1ns"+flash, "")
		f("--"+name+" 59.999999999s"+flash, "")
		f("--"+name+" 60s"+flash, "--"+name+" 1m0s is not within the run (--seconds 60)")
	}
	f("--prelude 0 --prelude-load 2", "--prelude-load applies only with --prelude above 0")
	f("--load 0.5 --ramp-to 1", "--load and --ramp-to both set the offered load: give one")
	f("--arrivals steady", `invalid value "steady" for flag -arrivals: unknown arrivals "steady": want paced, poisson, bursty or stalling`)
	f("--skew tail --nodes 30", "")
	f("--skew even", "")
	f("--skew 1,2", "--skew has 2 weights for --nodes 3")
	f("--skew 1,x,2", `invalid value "1,x,2" for flag -skew: want weights ≥ 0, comma-separated, or even or tail; "x" is not one`)
	f("--skew 0,0,0", `invalid value "0,0,0" for flag -skew: the weights sum to 0`)
	f("--skew 1,-1,2", `invalid value "1,-1,2" for flag -skew: want weights ≥ 0, comma-separated, or even or tail; "-1" is not one`)
	f("--frobnicate 1", "flag provided but not defined: -frobnicate")
	f("--nodes 3 extra", `unexpected argument "extra"`)
	f("--table", "")
	f("--table --nodes 3", "--table runs a fixed set of scenarios and takes no other flag")
}

// The settings land in the scenario; --skew tail is resolved for the
// nodes given after it.
func TestParseSimScenario(t *testing.T) {
	o, err := ParseSim(strings.Fields("--skew tail --nodes 4 --caps 500 --seconds 30 --seed 9 --arrivals bursty --ramp-to 1.5 "+
		"--shift-at 10s --flash-at 5s --flash-for 2s --flash-factor 3 --prelude 2s --prelude-load 2 --delay 1ms --jitter 2ms --loss 0.1 "+
		"--svg out.svg --json --quiet"), io.Discard)
	require.NoError(t, err)
	require.Equal(t, SimOptions{Scenario: sim.Scenario{Nodes: 4, CAPS: 500, Duration: 30 * time.Second, Seed: 9, Arrivals: sim.Bursty,
		Skew: sim.TailSkew(4), ShiftAt: 10 * time.Second, Ramp: true, RampTo: 1.5,
		FlashAt: 5 * time.Second, FlashFor: 2 * time.Second, FlashFactor: 3, Prelude: 2 * time.Second, PreludeLoad: 2,
		Net: sim.Net{Delay: time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 0.1}}, SVG: "out.svg", JSON: true, Quiet: true}, o)
}

// -h prints the usage and every flag and returns flag.ErrHelp.
func TestParseSimHelp(t *testing.T) {
	var b strings.Builder
	_, err := ParseSim([]string{"-h"}, &b)
	require.True(t, errors.Is(err, flag.ErrHelp))
	require.Contains(t, b.String(), "usage: "+SimUsage)
	for _, p := range simParams {
		require.Contains(t, b.String(), "-"+p.name+" ")
	}
}

// The header's command line repeats the run: parsed, it gives the same
// scenario (the table's, the default).
func TestSimArgsRepeat(t *testing.T) {
	for _, sc := range append(SimTable(), DefaultSimScenario()) {
		args := strings.Fields(SimArgs(sc))
		require.Equal(t, []string{"capsbench", "sim"}, args[:2])
		o, err := ParseSim(args[2:], io.Discard)
		require.NoError(t, err, SimArgs(sc))
		require.Equal(t, sc, o.Scenario, SimArgs(sc))
	}
}

func TestScenarioFile(t *testing.T) {
	dir := t.TempDir()
	write := func(text string) string {
		t.Helper()
		path := filepath.Join(dir, "scenario.txt")
		require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
		return path
	}
	f := func(text, flags string, want func(*sim.Scenario), wantErr string) {
		t.Helper()
		path := write(text)
		o, err := ParseSim(append(strings.Fields(flags), "--scenario", path), io.Discard)
		if wantErr != "" {
			require.EqualError(t, err, strings.ReplaceAll(wantErr, "FILE", path))
			return
		}
		require.NoError(t, err)
		sc := DefaultSimScenario()
		want(&sc)
		require.Equal(t, sc, o.Scenario)
	}
	f("# a comment\n\nnodes 10   # ten\n\tskew tail\nload 0.5\n", "",
		func(sc *sim.Scenario) { sc.Nodes, sc.Skew, sc.Load = 10, sim.TailSkew(10), 0.5 }, "")
	f("nodes 10\nskew tail\nload 0.5\n", "--nodes 4 --load 0.7",
		func(sc *sim.Scenario) { sc.Nodes, sc.Skew, sc.Load = 4, sim.TailSkew(4), 0.7 }, "")
	f("", "", func(*sim.Scenario) {}, "")
	f("nodes 2\nsvg out.svg\n", "", nil, "FILE:2: unknown key \"svg\": want a scenario setting ("+paramNames()+")")
	f("--nodes 2\n", "", nil, "FILE:1: unknown key \"--nodes\": want a scenario setting ("+paramNames()+")")
	f("nodes\n", "", nil, "FILE:1: want `nodes VALUE`")
	f("nodes 2 3\n", "", nil, "FILE:1: want `nodes VALUE`")
	f("nodes 2\nnodes 3\n", "", nil, "FILE:2: nodes given twice")
	f("nodes 2\nnodes 3\n", "--nodes 4", nil, "FILE:2: nodes given twice")
	f("\n\ncaps 0\n", "", nil, `FILE:3: invalid value "0" for caps: want a number from 1 to 1e+06`)
	f("load 0.5\n", "--ramp-to 1", nil, "--load and --ramp-to both set the offered load: give one")
	f("skew 1,2\n", "", nil, "--skew has 2 weights for --nodes 3")

	// Bounded before it is read: 64 KiB of comments is a file, a byte more is not.
	f("#"+strings.Repeat("x", maxScenarioFile-2)+"\n", "", func(*sim.Scenario) {}, "")
	f("#"+strings.Repeat("x", maxScenarioFile-1)+"\n", "", nil, "cannot read --scenario: FILE: file too large (65537 bytes; the limit is 64 KiB)")
	_, err := ParseSim([]string{"--scenario", "/dev/zero"}, io.Discard)
	require.EqualError(t, err, "cannot read --scenario: /dev/zero: not a regular file (a character device)")
	_, err = ParseSim([]string{"--scenario", filepath.Join(dir, "missing")}, io.Discard)
	require.ErrorContains(t, err, "cannot read --scenario: open ")
}
