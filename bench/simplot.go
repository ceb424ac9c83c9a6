package bench

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/capsgate/capsgate/cluster/sim"
)

// Layout of SimSVG.
const (
	simPlotW, simPlotH = 960, 680
	simPlotX0          = 70.0  // left edge of the panels
	simPlotWidth       = 660.0 // their width; the legend is right of them
	simPlotLegendX     = simPlotX0 + simPlotWidth + 25
	// simPlotNodes is how many nodes are drawn each alone; past that
	// the smallest are drawn together as "others".
	simPlotNodes = 10
	// simPlotPoints bounds the points of a line: longer runs are averaged
	// over several steps a point.
	simPlotPoints = 1200
)

var simPlotColors = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

// plotLine is one line of a panel: a value per point.
type plotLine struct {
	name, color string
	dashed      bool
	values      []float64
}

// plotPanel is one chart: time across, a rate up.
type plotPanel struct {
	d           *svgDoc
	top, height float64
	tmax, vmax  float64
}

func (p plotPanel) x(t float64) float64 { return simPlotX0 + t/p.tmax*simPlotWidth }
func (p plotPanel) y(v float64) float64 { return p.top + p.height - v/p.vmax*p.height }

// axes draws the panel's title, axes, ticks and grid.
func (p plotPanel) axes(title string) {
	bottom := p.top + p.height
	p.d.text(simPlotX0, p.top-12, "start", title)
	for v, step := 0.0, niceStep(p.vmax); v <= p.vmax; v += step {
		p.d.line(simPlotX0, p.y(v), simPlotX0+simPlotWidth, p.y(v), `stroke="#e5e5e5"`)
		p.d.text(simPlotX0-5, p.y(v)+4, "end", formatFloat(v))
	}
	for t, step := 0.0, niceStep(p.tmax); t <= p.tmax; t += step {
		p.d.line(p.x(t), bottom, p.x(t), bottom+4, `stroke="black"`)
		p.d.text(p.x(t), bottom+17, "middle", formatFloat(t))
	}
	p.d.line(simPlotX0, bottom, simPlotX0+simPlotWidth, bottom, `stroke="black"`)
	p.d.line(simPlotX0, p.top, simPlotX0, bottom, `stroke="black"`)
	p.d.text(simPlotX0+simPlotWidth, bottom+32, "end", "time (s)")
}

// draw draws lines, each a path, over the points at instants ts (seconds),
// and the legend of those named, from y down.
func (p plotPanel) draw(ts []float64, lines []plotLine, y float64) {
	xs := make([]float64, len(ts))
	for i, t := range ts {
		xs[i] = p.x(t)
	}
	for _, l := range lines {
		ys := make([]float64, len(l.values))
		for i, v := range l.values {
			ys[i] = p.y(min(v, p.vmax))
		}
		p.d.path(xs, ys, lineStyle(l))
		if l.name != "" {
			p.d.line(simPlotLegendX, y-4, simPlotLegendX+24, y-4, lineStyle(l))
			p.d.text(simPlotLegendX+30, y, "start", l.name)
			y += 16
		}
	}
}

func lineStyle(l plotLine) string {
	s := fmt.Sprintf(`stroke="%s" stroke-width="1.2"`, l.color)
	if l.dashed {
		s += ` stroke-dasharray="5 3"`
	}
	return s
}

// niceStep is a tick step of 1, 2 or 5 × a power of ten giving at most
// about six ticks up to hi.
func niceStep(hi float64) float64 {
	raw := hi / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// simPlotGroups splits a run's nodes into the groups drawn: each node
// alone up to simPlotNodes, else the ones that admitted most alone (in
// the order of the farm) and the rest together.
func simPlotGroups(series []sim.NodeSeries) [][]int {
	idx := seq(len(series))
	if len(series) <= simPlotNodes {
		groups := make([][]int, len(idx))
		for i := range idx {
			groups[i] = idx[i : i+1]
		}
		return groups
	}
	sum := func(i int) (n int64) {
		for _, v := range series[i].Admitted {
			n += v
		}
		return n
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(sum(b), sum(a)) })
	alone, rest := idx[:simPlotNodes-1], idx[simPlotNodes-1:]
	slices.Sort(alone)
	groups := make([][]int, 0, simPlotNodes)
	for i := range alone {
		groups = append(groups, alone[i:i+1])
	}
	return append(groups, rest)
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

// peak is the largest value of lines.
func peak(lines []plotLine) float64 {
	var m float64
	for _, l := range lines {
		m = max(m, slices.Max(l.values))
	}
	return m
}

// plotValues sums value over nodes per step and averages the sums over
// each point's per steps.
func plotValues(series []sim.NodeSeries, nodes []int, steps, per int, value func(s sim.NodeSeries, k int) float64) []float64 {
	out := make([]float64, (steps+per-1)/per)
	for _, i := range nodes {
		for k := range steps {
			out[k/per] += value(series[i], k)
		}
	}
	for p := range out {
		out[p] /= float64(min(per, steps-p*per))
	}
	return out
}

func admittedPerSecond(s sim.NodeSeries, k int) float64 {
	return float64(s.Admitted[k]) / sim.Step.Seconds()
}
func enforcedCAPS(s sim.NodeSeries, k int) float64 { return s.Limit[k] }

// SimSVG plots r. Above, per node, the CAPS it enforced (dashed) and what
// it admitted, per second (solid), at most simPlotNodes lines of each;
// below, the farm's admitted per second and the CAPS its nodes enforced
// together against the licence, with the reference's admitted beside
// them. Each line is one path; each point is a sim.Step, or the mean of
// several in runs longer than simPlotPoints steps.
func SimSVG(r SimRun) string {
	f, sc := r.Farm, r.Farm.Scenario
	steps := int((sc.Duration + sim.Step - 1) / sim.Step)
	per := (steps + simPlotPoints - 1) / simPlotPoints
	ts := make([]float64, (steps+per-1)/per)
	for i := range ts { // the middle of each point's steps
		ts[i] = (time.Duration(i*per)*sim.Step + time.Duration(min(per, steps-i*per))*sim.Step/2).Seconds()
	}
	var nodes []plotLine
	for g, group := range simPlotGroups(f.Series) {
		name, color := f.Series[group[0]].Name, simPlotColors[g%len(simPlotColors)]
		if len(group) > 1 {
			name, color = fmt.Sprintf("others (%d nodes)", len(group)), "#999999"
		}
		nodes = append(nodes,
			plotLine{name: name, color: color, values: plotValues(f.Series, group, steps, per, admittedPerSecond)},
			plotLine{color: color, dashed: true, values: plotValues(f.Series, group, steps, per, enforcedCAPS)})
	}
	all := seq(len(f.Series))
	farm := []plotLine{ // the farm's admitted last, on top
		{name: "reference admitted/s", color: "#98df8a", values: plotValues(r.Reference.Series, []int{0}, steps, per, admittedPerSecond)},
		{name: fmt.Sprintf("licence %g CAPS", sc.CAPS), color: "#d62728", dashed: true, values: slices.Repeat([]float64{sc.CAPS}, len(ts))},
		{name: "farm CAPS enforced", color: "black", dashed: true, values: plotValues(f.Series, all, steps, per, enforcedCAPS)},
		{name: "farm admitted/s", color: "black", values: plotValues(f.Series, all, steps, per, admittedPerSecond)},
	}

	d := newSVG(simPlotW, simPlotH)
	d.text(simPlotW/2, 22, "middle", fmt.Sprintf("%d nodes, licence %g CAPS, %s arrivals, offered %s, seed %d",
		sc.Nodes, sc.CAPS, sc.Arrivals, loadName(sc), sc.Seed))
	top := plotPanel{d: d, top: 60, height: 250, tmax: sc.Duration.Seconds(), vmax: max(peak(nodes)*1.1, 1)}
	top.axes(fmt.Sprintf("per node, per %v: admitted per second (solid), CAPS enforced (dashed)", sim.Step))
	top.draw(ts, nodes, top.top)
	bottom := plotPanel{d: d, top: 380, height: 250, tmax: top.tmax, vmax: peak(farm) * 1.1}
	bottom.axes(fmt.Sprintf("the farm, per %v, against the licence", sim.Step))
	bottom.draw(ts, farm, bottom.top)
	return d.close()
}
