package bench

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/sim"
)

// SimRun is a simulated farm's run beside its reference: one node holding
// the whole licence, offered the same arrivals (sim.Scenario.Reference).
type SimRun struct {
	Farm, Reference sim.Result
	// StatedBurst is cluster.MaxBurst for the farm: the most its nodes'
	// bucket depths may sum to, as package cluster states it.
	StatedBurst float64
	Targets     []SimTarget
	// Memberlist is memberlist's own traffic per node, estimated for the
	// farm (its reports are counted in Farm.Gossip).
	Memberlist cluster.MemberlistTraffic
}

// licenceBytes is the size of one licence document as a node loads it
// and spreads it by push-pull (licensing/testdata/golden.license).
const licenceBytes = 1097

// simMemberlist estimates memberlist's own traffic per node of sc's farm:
// every node holds a licence per service and the accounts' allocations.
func simMemberlist(sc sim.Scenario) cluster.MemberlistTraffic {
	ns := max(sc.Services, 1)
	return cluster.EstimateMemberlist(cluster.MemberlistLoad{Members: sc.Nodes, NameLen: len(sim.NodeName(sc.Nodes - 1)),
		Licences: ns, LicenceBytes: licenceBytes, Accounts: ns * sc.Accounts})
}

// SimTarget is one accuracy target checked on a run.
type SimTarget struct {
	// Name is the target's short name, for the table.
	Name, What, Measured string
	Met                  bool
}

// The accuracy targets.
const (
	simTargetLoad      = 0.95  // refusals are counted against a target up to this load
	simTargetRefused   = 0.001 // at most this fraction refused below the licence…
	simTargetVsRef     = 2     // …and at most this many times the reference's
	simTarget10sFactor = 1.01  // over 10 s: this × the licence, and the burst
	simTargetConverge  = 500 * time.Millisecond
)

// RunSim runs sc and its reference.
func RunSim(sc sim.Scenario) (SimRun, error) {
	runs, err := RunSims([]sim.Scenario{sc}, 2)
	if err != nil {
		return SimRun{}, err
	}
	return runs[0], nil
}

// RunSims runs each scenario and its reference on procs goroutines and
// returns the runs in the scenarios' order. A run is determined by its
// scenario, whatever runs beside it.
func RunSims(scs []sim.Scenario, procs int) ([]SimRun, error) {
	for i, sc := range scs {
		if err := CheckSim(sc); err != nil {
			return nil, fmt.Errorf("scenario %d: %w", i+1, err)
		}
	}
	// Job j is scenario j/2, its reference when j is odd; the largest
	// farms first, so that the small ones fill in around them.
	results := make([]sim.Result, 2*len(scs))
	errs := make([]error, len(results))
	order := seq(len(results))
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scs[b/2].Nodes, scs[a/2].Nodes) })
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range max(min(procs, len(order)), 1) {
		wg.Go(func() {
			for j := range jobs {
				sc := scs[j/2]
				sc.Reference = j%2 == 1
				results[j], errs[j] = sim.Run(sc)
			}
		})
	}
	for _, j := range order {
		jobs <- j
	}
	close(jobs)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	runs := make([]SimRun, len(scs))
	for i, sc := range scs {
		ns := float64(max(sc.Services, 1))
		r := SimRun{Farm: results[2*i], Reference: results[2*i+1],
			StatedBurst: ns * cluster.MaxBurst(sc.CAPS/ns, sc.Nodes, simBurst(sc)), Memberlist: simMemberlist(sc)}
		r.Targets = simTargets(r)
		runs[i] = r
	}
	return runs, nil
}

// simBurst is the engine's admission.burst in sc.
func simBurst(sc sim.Scenario) time.Duration {
	return cmp.Or(sc.Burst, admission.DefaultConfig().Burst)
}

// peakBelow is the highest load, as a fraction of the licence, at which sc
// offers no more than the licence (a ramp offers every load up to its end).
func peakBelow(sc sim.Scenario) float64 {
	var peak float64
	level := func(l float64, ramp bool) {
		switch {
		case l <= 1:
			peak = max(peak, l)
		case ramp:
			peak = 1
		}
	}
	base := sc.Load
	if sc.Ramp {
		base = sc.RampTo
	}
	level(base, sc.Ramp)
	if sc.FlashAt > 0 {
		level(base*sc.FlashFactor, sc.Ramp)
	}
	if sc.Prelude > 0 {
		level(sc.PreludeLoad, false)
	}
	return peak
}

// simTargets checks the accuracy targets that apply to r: refusals below
// the licence only for paced or Poisson arrivals that stay put, at a load
// no higher than simTargetLoad (bursty and stalling arrivals offer more
// than the licence in their bunches, and a moving load is judged by its
// convergence), convergence only after a shift.
func simTargets(r SimRun) []SimTarget {
	f, ref, sc := r.Farm, r.Reference, r.Farm.Scenario
	var t []SimTarget
	steady := (sc.Arrivals == sim.Poisson || sc.Arrivals == sim.Paced) && sc.ShiftAt == 0
	if steady && f.OfferedBelow > 0 && peakBelow(sc) <= simTargetLoad {
		ff, rf := f.RefusedBelowFraction(), ref.RefusedBelowFraction()
		t = append(t, SimTarget{Name: "refused",
			What:     fmt.Sprintf("refused below the licence ≤ %g %%", simTargetRefused*100),
			Measured: fmt.Sprintf("%.3f %%", ff*100), Met: ff <= simTargetRefused},
			SimTarget{Name: "× one node",
				What:     fmt.Sprintf("refused below the licence ≤ %g × what one node holding the licence refuses", float64(simTargetVsRef)),
				Measured: fmt.Sprintf("%.3f %% against %.3f %%", ff*100, rf*100), Met: ff <= simTargetVsRef*rf})
	}
	w10, w1 := bound10s(f), bound1s(f)
	t = append(t,
		SimTarget{Name: "10 s", What: fmt.Sprintf("worst 10 s admitted ≤ %g × licence × 10 s + burst", simTarget10sFactor),
			Measured: fmt.Sprintf("%d ≤ %.0f", f.Worst10s, w10), Met: float64(f.Worst10s) <= w10},
		SimTarget{Name: "1 s", What: "worst 1 s admitted ≤ licence × 1 s + burst",
			Measured: fmt.Sprintf("%d ≤ %.0f", f.Worst1s, w1), Met: float64(f.Worst1s) <= w1},
		SimTarget{Name: "burst", What: "burst ≤ the stated bound (cluster.MaxBurst)",
			Measured: fmt.Sprintf("%d ≤ %.1f", f.Burst, r.StatedBurst), Met: float64(f.Burst) <= r.StatedBurst})
	if sc.ShiftAt > 0 {
		t = append(t, SimTarget{Name: "converge", What: fmt.Sprintf("the node the load moved to enforces its whole demand ≤ %v after the shift", simTargetConverge),
			Measured: coveredName(f.Covered), Met: f.Covered >= 0 && f.Covered <= simTargetConverge})
	}
	return t
}

// bound1s and bound10s are what r may admit over any 1 s and any 10 s:
// the licence (over 10 s, simTarget10sFactor × it) and the burst r saw.
func bound1s(r sim.Result) float64 { return r.Scenario.CAPS + float64(r.Burst) }
func bound10s(r sim.Result) float64 {
	return simTarget10sFactor*r.Scenario.CAPS*10 + float64(r.Burst)
}

// coveredName and convergeName name a sim.Result's Covered and Converge.
func coveredName(d time.Duration) string { return durationName(d, "not in the run", "at once") }
func convergeName(d time.Duration) string {
	return durationName(d, "still refusing in the last second", "0 (none refused)")
}

// durationName names d, with never for a negative one and zero for 0.
func durationName(d time.Duration, never, zero string) string {
	switch {
	case d < 0:
		return never
	case d == 0:
		return zero
	}
	return d.Round(time.Millisecond).String()
}

// WriteSim writes r as text: the command line that repeats it, the farm
// against its reference per 1 s and per 10 s (unless quiet), the summary
// and the targets.
func WriteSim(w io.Writer, r SimRun, quiet bool) {
	f, ref, sc := r.Farm, r.Reference, r.Farm.Scenario
	fmt.Fprintln(w, SimArgs(sc))
	fmt.Fprintf(w, "%d nodes share a licence of %g CAPS; the reference is one node holding it all, offered the same arrivals.\n",
		sc.Nodes, sc.CAPS)
	if !quiet {
		writeSimWindows(w, time.Second, f, ref)
		writeSimWindows(w, 10*time.Second, f, ref)
	}
	row := func(what, farm, refer, note string) {
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("%-34s %-18s %-18s %s", what, farm, refer, note), " "))
	}
	pct := func(r sim.Result) string {
		return fmt.Sprintf("%d (%.3f %%)", r.RefusedBelow, 100*r.RefusedBelowFraction())
	}
	both := func(what string, v func(sim.Result) string, note string) { row(what, v(f), v(ref), note) }
	fmt.Fprintln(w)
	row("summary", "farm", "reference", "")
	both("offered", func(r sim.Result) string { return fmt.Sprint(r.Offered) }, "")
	both("admitted", func(r sim.Result) string { return fmt.Sprint(r.Admitted) }, "")
	both("refused below the licence", pct, fmt.Sprintf("of %d offered at or below it", f.OfferedBelow))
	bound := fmt.Sprintf("cluster.MaxBurst(%g, %d, %v)", sc.CAPS, sc.Nodes, simBurst(sc))
	if sc.Services > 1 {
		bound = fmt.Sprintf("%d × cluster.MaxBurst(%g, %d, %v)", sc.Services, sc.CAPS/float64(sc.Services), sc.Nodes, simBurst(sc))
	}
	both("burst (bucket depths summed)", func(r sim.Result) string { return fmt.Sprint(r.Burst) },
		fmt.Sprintf("stated bound %s = %.1f", bound, r.StatedBurst))
	both("worst 1 s admitted", func(r sim.Result) string {
		return fmt.Sprintf("%d / %.0f", r.Worst1s, bound1s(r))
	}, "against licence × 1 s + burst")
	both("worst 10 s admitted", func(r sim.Result) string {
		return fmt.Sprintf("%d / %.0f", r.Worst10s, bound10s(r))
	}, fmt.Sprintf("against %g × licence × 10 s + burst", simTarget10sFactor))
	both("most CAPS enforced at once", func(r sim.Result) string { return fmt.Sprintf("%.1f", r.MaxCAPS) }, "")
	both("spilled to another member", func(r sim.Result) string { return fmt.Sprint(r.Spilled) },
		fmt.Sprintf("admitted there: %d", f.SpilledAdmitted))
	if sc.ShiftAt > 0 {
		both(fmt.Sprintf("whole demand enforced after the shift at %v", sc.ShiftAt), func(r sim.Result) string { return coveredName(r.Covered) }, "")
		both("last refusal after the shift", func(r sim.Result) string { return convergeName(r.Converge) }, "")
	}
	fmt.Fprintln(w, "targets")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "  %-7s %s: %s\n", metName(t.Met), t.What, t.Measured)
	}
	writeSimGossip(w, r)
}

// writeSimGossip writes what each node of the farm sent per second: its
// reports, counted as the cluster puts them on the wire, and memberlist's
// own traffic, estimated.
func writeSimGossip(w io.Writer, r SimRun) {
	g, m := r.Farm.GossipRate(), r.Memberlist
	fmt.Fprintln(w, "gossip per node (reports as sent: cluster.ReportWireSize, each to the nodes − 1 others)")
	fmt.Fprintf(w, "  %-28s %.1f/s (%.1f/s of them early plans)\n", "reports sent", g.Reports, g.EarlyReports)
	fmt.Fprintf(w, "  %-28s mean %.0f B/s, max %.0f B/s; largest report %d B\n", "report bytes", g.MeanBytes, g.MaxBytes, g.Largest)
	fmt.Fprintf(w, "  %-28s %.0f B/s = %s\n", "memberlist (estimated)", m.Total(), m.Formula())
	fmt.Fprintf(w, "  %-28s mean %.0f B/s\n", "reports + memberlist", g.MeanBytes+m.Total())
}

func metName(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

// writeSimWindows writes a row per window of width: offered, then the
// farm's and the reference's admitted, admitted against the licence, and
// refused below the licence.
func writeSimWindows(w io.Writer, width time.Duration, farm, ref sim.Result) {
	fmt.Fprintf(w, "\n%-8s %9s | farm: %8s %6s %9s | reference: %8s %6s %9s\n",
		"per "+width.String(), "offered", "admitted", "adm/L", "refused<L", "admitted", "adm/L", "refused<L")
	rw := ref.Windows(width)
	for i, f := range farm.Windows(width) {
		r, licence := rw[i], farm.Scenario.CAPS*f.Length.Seconds()
		fmt.Fprintf(w, "%-8s %9d | %14d %6.3f %9d | %19d %6.3f %9d\n", formatFloat(f.Start.Seconds())+"s", f.Offered,
			f.Admitted, float64(f.Admitted)/licence, f.RefusedBelow, r.Admitted, float64(r.Admitted)/licence, r.RefusedBelow)
	}
}

// SimTable is the set of scenarios of the README's accuracy table, at
// 60 s each with the default prelude and network.
func SimTable() []sim.Scenario {
	skew3 := []float64{70, 20, 10}
	skew10 := []float64{40, 20, 10, 10, 5, 5, 4, 3, 2, 1}
	s := func(nodes int, skew []float64, caps float64, arrivals string, load float64) sim.Scenario {
		sc := DefaultSimScenario()
		sc.Nodes, sc.Skew, sc.CAPS, sc.Arrivals, sc.Load = nodes, skew, caps, arrivals, load
		return sc
	}
	flash := s(3, skew3, 1000, sim.Poisson, 0.5)
	flash.FlashAt, flash.FlashFor, flash.FlashFactor = 20*time.Second, 2*time.Second, 10
	ramp := s(3, skew3, 1000, sim.Poisson, 0)
	ramp.Ramp, ramp.RampTo = true, 1.5
	shift3, shift10 := s(3, skew3, 1000, sim.Poisson, 0.9), s(10, skew10, 1000, sim.Poisson, 0.9)
	shift3.ShiftAt, shift10.ShiftAt = 20*time.Second, 20*time.Second
	return []sim.Scenario{
		s(3, skew3, 1000, sim.Poisson, 0.95),
		s(10, skew10, 1000, sim.Poisson, 0.95),
		s(30, sim.TailSkew(30), 1000, sim.Poisson, 0.95),
		s(100, sim.TailSkew(100), 1000, sim.Poisson, 0.95),
		s(30, nil, 10000, sim.Poisson, 0.95),
		s(30, sim.TailSkew(30), 10000, sim.Poisson, 0.95),
		s(100, nil, 10000, sim.Poisson, 0.95),
		s(100, sim.TailSkew(100), 10000, sim.Poisson, 0.95),
		s(3, skew3, 1000, sim.Paced, 0.95),
		s(3, skew3, 1000, sim.Bursty, 0.95),
		s(3, skew3, 1000, sim.Stalling, 0.95),
		s(10, skew10, 1000, sim.Paced, 0.95),
		s(10, skew10, 1000, sim.Bursty, 0.95),
		s(10, skew10, 1000, sim.Stalling, 0.95),
		s(3, skew3, 1000, sim.Poisson, 2),
		s(10, skew10, 1000, sim.Poisson, 2),
		flash,
		ramp,
		shift3,
		shift10,
	}
}

// loadName says what load sc offers, for the table.
func loadName(sc sim.Scenario) string {
	s := fmt.Sprintf("%.4g %%", sc.Load*100)
	if sc.Ramp {
		s = fmt.Sprintf("0 → %.4g %%", sc.RampTo*100)
	}
	if sc.FlashAt > 0 {
		s += fmt.Sprintf(", %g× for %v at %v", sc.FlashFactor, sc.FlashFor, sc.FlashAt)
	}
	if sc.ShiftAt > 0 {
		s += fmt.Sprintf(", all moves at %v", sc.ShiftAt)
	}
	return s
}

// WriteSimTable writes runs as the accuracy table, in Markdown: a row per
// run, its targets met or the ones missed.
func WriteSimTable(w io.Writer, runs []SimRun) {
	fmt.Fprintln(w, "| nodes | licence | skew | arrivals | offered | refused below the licence: farm / reference | "+
		"worst 1 s / licence + burst | worst 10 s / 1.01 × licence + burst | burst / stated | converge | targets |")
	fmt.Fprintln(w, "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|")
	for _, r := range runs {
		f, ref, sc := r.Farm, r.Reference, r.Farm.Scenario
		refused := "–"
		if f.OfferedBelow > 0 {
			refused = fmt.Sprintf("%.3f %% / %.3f %%", 100*f.RefusedBelowFraction(), 100*ref.RefusedBelowFraction())
		}
		converge := "–"
		if sc.ShiftAt > 0 {
			converge = coveredName(f.Covered) + " (last refusal " + convergeName(f.Converge) + ")"
		}
		var missed []string
		for _, t := range r.Targets {
			if !t.Met {
				missed = append(missed, t.Name)
			}
		}
		verdict := "met"
		if len(missed) > 0 {
			verdict = "**missed**: " + strings.Join(missed, ", ")
		}
		fmt.Fprintf(w, "| %d | %g | %s | %s | %s | %s | %d / %.0f | %d / %.0f | %d / %.1f | %s | %s |\n",
			sc.Nodes, sc.CAPS, skewName(sc), sc.Arrivals, loadName(sc), refused,
			f.Worst1s, bound1s(f), f.Worst10s, bound10s(f),
			f.Burst, r.StatedBurst, converge, verdict)
	}
}
