package bench

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
)

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
