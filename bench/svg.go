package bench

import (
	"fmt"
	"html"
	"strings"
)

// svgDoc builds a self-contained SVG drawing on a white background. Text
// is escaped; attrs are written as given (stroke="…" fill="…").
type svgDoc struct {
	b strings.Builder
}

func newSVG(w, h int) *svgDoc {
	d := &svgDoc{}
	fmt.Fprintf(&d.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&d.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return d
}

func (d *svgDoc) text(x, y float64, anchor, s string) {
	fmt.Fprintf(&d.b, `<text x="%.1f" y="%.1f" text-anchor="%s">%s</text>`+"\n", x, y, anchor, html.EscapeString(s))
}

func (d *svgDoc) line(x1, y1, x2, y2 float64, attrs string) {
	fmt.Fprintf(&d.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" %s/>`+"\n", x1, y1, x2, y2, attrs)
}

func (d *svgDoc) rect(x, y, w, h float64, attrs string) {
	fmt.Fprintf(&d.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" %s/>`+"\n", x, y, w, h, attrs)
}

// path draws a polyline through (xs[i], ys[i]).
func (d *svgDoc) path(xs, ys []float64, attrs string) {
	d.b.WriteString(`<path fill="none" d="`)
	for i := range xs {
		op := 'L'
		if i == 0 {
			op = 'M'
		}
		fmt.Fprintf(&d.b, "%c%.1f %.1f", op, xs[i], ys[i])
	}
	fmt.Fprintf(&d.b, `" %s/>`+"\n", attrs)
}

// close ends the drawing and returns it.
func (d *svgDoc) close() string {
	d.b.WriteString("</svg>\n")
	return d.b.String()
}
