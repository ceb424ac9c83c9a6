package bench

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/sim"
)

// shortSim is a few seconds of a small farm that refuses below the licence
// (a stalling proxy at 99 %) and moves its load.
func shortSim() sim.Scenario {
	sc := DefaultSimScenario()
	sc.Duration, sc.CAPS, sc.Arrivals, sc.Load, sc.Skew, sc.ShiftAt = 12500*time.Millisecond, 300, sim.Stalling, 0.99, []float64{70, 20, 10}, 6*time.Second
	return sc
}

// The windows printed per 1 s and per 10 s sum, column by column, to the
// runs' totals.
func TestSimWindowsSumToTotals(t *testing.T) {
	r, err := RunSim(shortSim())
	require.NoError(t, err)
	require.Positive(t, r.Farm.RefusedBelow)
	var b strings.Builder
	WriteSim(&b, r, false)
	want := []int64{r.Farm.Offered, r.Farm.Admitted, r.Farm.RefusedBelow, r.Reference.Admitted, r.Reference.RefusedBelow}
	for _, width := range []string{"per 1s", "per 10s"} {
		sums := make([]int64, len(want))
		rows := 0
		_, table, ok := strings.Cut(b.String(), "\n"+width+" ")
		require.True(t, ok, width)
		for _, line := range strings.Split(table, "\n")[1:] {
			if line == "" {
				break
			}
			rows++
			f := strings.Fields(strings.ReplaceAll(line, "|", " "))
			for i, col := range []int{1, 2, 4, 5, 7} {
				v, err := strconv.ParseInt(f[col], 10, 64)
				require.NoError(t, err, line)
				sums[i] += v
			}
		}
		require.Equal(t, want, sums, width)
		require.Equal(t, map[string]int{"per 1s": 13, "per 10s": 2}[width], rows, width)
	}
	var quiet strings.Builder
	WriteSim(&quiet, r, true)
	require.NotContains(t, quiet.String(), "per 1s")
	require.Contains(t, quiet.String(), "\nsummary ")
}

// A scenario and its seed determine the output, whatever runs beside it.
func TestSimRepeats(t *testing.T) {
	text := func(r SimRun) string {
		var b strings.Builder
		WriteSim(&b, r, false)
		return b.String()
	}
	a, err := RunSim(shortSim())
	require.NoError(t, err)
	other := shortSim()
	other.Seed = 2
	runs, err := RunSims([]sim.Scenario{other, shortSim(), other}, 3)
	require.NoError(t, err)
	require.Equal(t, a, runs[1])
	require.Equal(t, text(a), text(runs[1]))
	require.Equal(t, runs[0], runs[2])
	require.NotEqual(t, a.Farm.Admitted, runs[0].Farm.Admitted, "another seed, another run")
	require.Equal(t, []string{"capsbench sim --nodes 3 --caps 300 --seconds 12.5 --seed 1 --arrivals stalling --load 0.99 " +
		"--skew 70,20,10 --shift-at 6s --prelude 1s --prelude-load 0 --delay 100µs --jitter 200µs --loss 0"},
		strings.SplitN(text(a), "\n", 2)[:1])
	// The arrivals and the one node's bucket, not the planner's policy.
	require.Equal(t, []int64{3392, 3392, 3327, 65}, []int64{a.Farm.Offered, a.Reference.Offered, a.Reference.Admitted, a.Reference.RefusedBelow})

	_, err = RunSims([]sim.Scenario{shortSim(), {}}, 2)
	require.EqualError(t, err, "scenario 2: cannot simulate 0 nodes: want 1 to 1000")
}

// The plot is well-formed XML with a path per line drawn: the CAPS
// enforced and the admitted per node (ten at most, the rest as others),
// and the farm's four.
func TestSimSVG(t *testing.T) {
	f := func(nodes int, wantPaths int, wantLegend ...string) {
		t.Helper()
		sc := DefaultSimScenario()
		sc.Nodes, sc.Duration, sc.Skew = nodes, 3*time.Second, sim.TailSkew(nodes)
		r, err := RunSim(sc)
		require.NoError(t, err)
		svg := SimSVG(r)
		d := xml.NewDecoder(strings.NewReader(svg))
		paths, texts := 0, []string{}
		inText := false
		for {
			tok, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err)
			switch e := tok.(type) {
			case xml.StartElement:
				paths += map[bool]int{true: 1}[e.Name.Local == "path"]
				inText = e.Name.Local == "text"
			case xml.CharData:
				if inText {
					texts = append(texts, string(e))
				}
			case xml.EndElement:
				inText = false
			}
		}
		require.Equal(t, wantPaths, paths)
		for _, l := range wantLegend {
			require.Contains(t, texts, l)
		}
	}
	f(1, 2+4, "n001", "farm admitted/s", "licence 1000 CAPS")
	f(3, 6+4, "n001", "n002", "n003", "reference admitted/s")
	f(12, 20+4, "n001", "others (3 nodes)")
}

// A long run is drawn with at most simPlotPoints points a line.
func TestSimSVGLongRun(t *testing.T) {
	r := SimRun{Farm: sim.Result{Scenario: sim.Scenario{Nodes: 1, CAPS: 10, Duration: time.Hour}},
		Reference: sim.Result{Scenario: sim.Scenario{Nodes: 1, CAPS: 10, Duration: time.Hour}}}
	steps := int(time.Hour/sim.Step) + 1
	series := sim.NodeSeries{Name: "n001", Offered: make([]int64, steps), Admitted: make([]int64, steps),
		Limit: slices.Repeat([]float64{10}, steps), RefusedBelow: make([]int64, steps)}
	r.Farm.Series, r.Reference.Series = []sim.NodeSeries{series}, []sim.NodeSeries{series}
	svg := SimSVG(r)
	for _, p := range strings.Split(svg, "<path")[1:] {
		require.LessOrEqual(t, strings.Count(p, "L")+1, simPlotPoints)
	}
}

func TestPeakBelow(t *testing.T) {
	f := func(change func(*sim.Scenario), want float64) {
		t.Helper()
		sc := DefaultSimScenario()
		change(&sc)
		require.InDelta(t, want, peakBelow(sc), 1e-12)
	}
	f(func(*sim.Scenario) {}, 0.95)
	f(func(sc *sim.Scenario) { sc.Load = 2 }, 0) // the prelude's idle second
	f(func(sc *sim.Scenario) { sc.Load, sc.Prelude = 2, 0 }, 0)
	f(func(sc *sim.Scenario) { sc.Load, sc.FlashAt, sc.FlashFactor = 0.5, time.Second, 10 }, 0.5)
	f(func(sc *sim.Scenario) { sc.Load, sc.FlashAt, sc.FlashFactor = 0.5, time.Second, 1.9 }, 0.95)
	f(func(sc *sim.Scenario) { sc.Ramp, sc.RampTo = true, 1.5 }, 1)
	f(func(sc *sim.Scenario) { sc.Ramp, sc.RampTo = true, 0.8 }, 0.8)
	f(func(sc *sim.Scenario) { sc.Load, sc.PreludeLoad = 0.5, 0.97 }, 0.97)
	f(func(sc *sim.Scenario) { sc.Load, sc.PreludeLoad = 0.5, 2 }, 0.5)
}

func TestSimTargets(t *testing.T) {
	base := func() SimRun {
		sc := DefaultSimScenario()
		return SimRun{StatedBurst: 176.5,
			Farm:      sim.Result{Scenario: sc, OfferedBelow: 100000, RefusedBelow: 0, Burst: 170, Worst1s: 1170, Worst10s: 10270},
			Reference: sim.Result{Scenario: sc, OfferedBelow: 100000, RefusedBelow: 0, Burst: 100, Worst1s: 1000, Worst10s: 9500}}
	}
	f := func(change func(*SimRun), want string) {
		t.Helper()
		r := base()
		change(&r)
		var got []string
		for _, tg := range simTargets(r) {
			got = append(got, tg.Name+" "+metName(tg.Met)+": "+tg.Measured)
		}
		require.Equal(t, want, strings.Join(got, "; "))
	}
	const rest = "10 s met: 10270 ≤ 10270; 1 s met: 1170 ≤ 1170; burst met: 170 ≤ 176.5"
	f(func(*SimRun) {}, "refused met: 0.000 %; × one node met: 0.000 % against 0.000 %; "+rest)
	f(func(r *SimRun) { r.Farm.RefusedBelow, r.Reference.RefusedBelow = 100, 50 },
		"refused met: 0.100 %; × one node met: 0.100 % against 0.050 %; "+rest)
	f(func(r *SimRun) { r.Farm.RefusedBelow, r.Reference.RefusedBelow = 101, 60 },
		"refused MISSED: 0.101 %; × one node met: 0.101 % against 0.060 %; "+rest)
	f(func(r *SimRun) { r.Farm.RefusedBelow, r.Reference.RefusedBelow = 21, 10 },
		"refused met: 0.021 %; × one node MISSED: 0.021 % against 0.010 %; "+rest)
	f(func(r *SimRun) { r.Farm.Worst1s, r.Farm.Worst10s, r.Farm.Burst = 1171, 10271, 177 },
		"refused met: 0.000 %; × one node met: 0.000 % against 0.000 %; 10 s met: 10271 ≤ 10277; 1 s met: 1171 ≤ 1177; burst MISSED: 177 ≤ 176.5")
	f(func(r *SimRun) { r.Farm.Worst1s, r.Farm.Worst10s = 1171, 10271 },
		"refused met: 0.000 %; × one node met: 0.000 % against 0.000 %; 10 s MISSED: 10271 ≤ 10270; 1 s MISSED: 1171 ≤ 1170; burst met: 170 ≤ 176.5")
	f(func(r *SimRun) { r.Farm.Scenario.Load = 0.96 }, rest)
	f(func(r *SimRun) { r.Farm.OfferedBelow = 0 }, rest)
	// Bursty and stalling arrivals and a moving load: their refusals are
	// not judged.
	f(func(r *SimRun) { r.Farm.Scenario.Arrivals, r.Farm.RefusedBelow = sim.Bursty, 5000 }, rest)
	f(func(r *SimRun) { r.Farm.Scenario.Arrivals, r.Farm.RefusedBelow = sim.Stalling, 5000 }, rest)
	f(func(r *SimRun) { r.Farm.Scenario.ShiftAt, r.Farm.Covered = time.Second, 500*time.Millisecond },
		rest+"; converge met: 500ms")
	f(func(r *SimRun) { r.Farm.Scenario.ShiftAt, r.Farm.Covered = time.Second, 501*time.Millisecond },
		rest+"; converge MISSED: 501ms")
	f(func(r *SimRun) { r.Farm.Scenario.ShiftAt, r.Farm.Covered = time.Second, -1 },
		rest+"; converge MISSED: not in the run")
	f(func(r *SimRun) {
		r.Farm.Scenario.ShiftAt, r.Farm.Covered, r.Farm.Converge = time.Second, 0, 900*time.Millisecond
	},
		rest+"; converge met: at once")
}

func TestWriteSimTable(t *testing.T) {
	row := func(sc sim.Scenario, refused, refRefused int64, converge time.Duration) SimRun {
		r := SimRun{StatedBurst: 176.5,
			Farm: sim.Result{Scenario: sc, OfferedBelow: 1000, RefusedBelow: refused, Burst: 170, Worst1s: 1100, Worst10s: 9900,
				Covered: converge / 2, Converge: converge},
			Reference: sim.Result{Scenario: sc, OfferedBelow: 1000, RefusedBelow: refRefused}}
		r.Targets = simTargets(r)
		return r
	}
	steady := DefaultSimScenario()
	steady.Nodes, steady.Skew = 3, []float64{70, 20, 10}
	moving := steady
	moving.ShiftAt, moving.Load = 20*time.Second, 0.9
	var b strings.Builder
	// A moving load is judged by its convergence, not its refusals; a
	// steady one by both refusal targets.
	WriteSimTable(&b, []SimRun{row(moving, 2, 1, 120*time.Millisecond), row(steady, 2, 1, 0), row(steady, 3, 1, 0)})
	lines := strings.Split(b.String(), "\n")
	require.Len(t, lines, 6)
	require.Equal(t, strings.Count(lines[0], "|"), strings.Count(lines[1], "|"))
	require.Equal(t, strings.Count(lines[0], "|"), strings.Count(lines[2], "|"))
	require.Equal(t, "| 3 | 1000 | 70,20,10 | poisson | 90 %, all moves at 20s | 0.200 % / 0.100 % | 1100 / 1170 | 9900 / 10270 | 170 / 176.5 | 60ms (last refusal 120ms) | met |", lines[2])
	require.Equal(t, "| 3 | 1000 | 70,20,10 | poisson | 95 % | 0.200 % / 0.100 % | 1100 / 1170 | 9900 / 10270 | 170 / 176.5 | – | **missed**: refused |", lines[3])
	require.Equal(t, "| 3 | 1000 | 70,20,10 | poisson | 95 % | 0.300 % / 0.100 % | 1100 / 1170 | 9900 / 10270 | 170 / 176.5 | – | **missed**: refused, × one node |", lines[4])
}

// The table's scenarios all pass the checks the flags pass, and the small
// ones run (the 30- and 100-node ones take seconds to a minute).
func TestSimTable(t *testing.T) {
	var small []sim.Scenario
	for _, sc := range SimTable() {
		require.NoError(t, CheckSim(sc), SimArgs(sc))
		if sc.Nodes <= 10 {
			small = append(small, sc)
		}
	}
	require.Len(t, SimTable(), 20)
	if testing.Short() {
		t.Skip("runs the table's small scenarios")
	}
	runs, err := RunSims(small, 4)
	require.NoError(t, err)
	var b strings.Builder
	WriteSimTable(&b, runs)
	require.Len(t, strings.Split(strings.TrimSpace(b.String()), "\n"), 2+len(small))
}

// --services and --accounts: their bounds, their total bound, and the
// command line that repeats them.
func TestSimServicesAccountsFlags(t *testing.T) {
	f := func(args, wantErr string) {
		t.Helper()
		o, err := ParseSim(strings.Fields(args), io.Discard)
		if wantErr != "" {
			require.EqualError(t, err, wantErr, args)
			return
		}
		require.NoError(t, err, args)
		again, err := ParseSim(strings.Fields(SimArgs(o.Scenario))[2:], io.Discard)
		require.NoError(t, err)
		require.Equal(t, o.Scenario, again.Scenario, SimArgs(o.Scenario))
	}
	f("--services 0", `invalid value "0" for flag -services: want a whole number from 1 to 10000`)
	f("--services 2", "")
	f("--services 10000", "")
	f("--services 10001", `invalid value "10001" for flag -services: want a whole number from 1 to 10000`)
	f("--accounts -1", `invalid value "-1" for flag -accounts: want a whole number from 0 to 100000`)
	f("--accounts 1", "")
	f("--accounts 100000", "")
	f("--accounts 100001", `invalid value "100001" for flag -accounts: want a whole number from 0 to 100000`)
	f("--services 10 --accounts 100000", "")
	f("--services 11 --accounts 100000", "--services 11 × --accounts 100000: want at most 1000000 accounts in all")
	f("--services 10 --accounts 1000", "")
	o, err := ParseSim(strings.Fields("--services 10 --accounts 1000"), io.Discard)
	require.NoError(t, err)
	require.True(t, strings.HasSuffix(SimArgs(o.Scenario), " --services 10 --accounts 1000"), SimArgs(o.Scenario))
	require.NotContains(t, SimArgs(DefaultSimScenario()), "services")
}

// The run's text ends with what each node sent per second: its reports,
// as the farm counted them, and memberlist's own traffic, estimated.
func TestWriteSimGossip(t *testing.T) {
	sc := DefaultSimScenario()
	sc.Duration, sc.Services, sc.Accounts = 3*time.Second, 2, 3
	r, err := RunSim(sc)
	require.NoError(t, err)
	g := r.Farm.GossipRate()
	require.Positive(t, g.MeanBytes)
	require.Zero(t, r.Reference.GossipRate().MeanBytes, "one node sends no report")
	require.Equal(t, simMemberlist(sc), r.Memberlist)
	require.Positive(t, r.Memberlist.Total())
	var b strings.Builder
	WriteSim(&b, r, true)
	_, gossip, ok := strings.Cut(b.String(), "\ngossip per node ")
	require.True(t, ok, b.String())
	require.Contains(t, gossip, fmt.Sprintf("mean %.0f B/s, max %.0f B/s; largest report %d B\n", g.MeanBytes, g.MaxBytes, g.Largest))
	require.Contains(t, gossip, fmt.Sprintf("%.0f B/s = %s\n", r.Memberlist.Total(), r.Memberlist.Formula()))
	require.Contains(t, gossip, fmt.Sprintf("mean %.0f B/s\n", g.MeanBytes+r.Memberlist.Total()))
	// The burst bound is one licence's per service.
	require.Contains(t, b.String(), "stated bound 2 × cluster.MaxBurst(500, 3, ")
}
