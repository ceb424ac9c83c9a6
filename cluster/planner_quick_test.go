package cluster

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/quick"
	"time"
)

// TestPlannerProperties runs random farms of 2 to 12 planners (farm, the
// transcript tests' fake network and clock) through 200 exchanges of
// random load, joins, kills and graceful leaves, half of them on a rough
// network (reports lost, delayed, overtaking one another; partitions that
// heal), and checks after every exchange what the package doc promises
// there (plannerBounds): the CAPS applied never above the licence × the
// nodes, a fenced side applies nothing, a minority is fenced from
// ReclaimAfter/2 on, a session or subscriber part is not cut below what
// the node holds while the licence covers all. It logs the most the CAPS
// applied rose above the licence. A failing seed is shown with its
// schedule as a transcript, to replay in testdata/planner or to keep in
// plannerRegressions.
func TestPlannerProperties(t *testing.T) {
	var worst [2]plannerBounds // on a clean network, on a rough one
	checkSchedules(t, func(seed uint64) plannerBounds { return plannerBounds{seed: seed, rough: seed%2 == 0} }, worst[:])
	for i, net := range []string{"clean", "rough"} {
		w := worst[i]
		t.Logf("on a %s network the CAPS applied rose at most %.1f %% above the licence (seed %d, at %v), and stayed above it for at most %d exchanges in a row",
			net, 100*w.worst, w.worstSeed, w.worstAt, w.longest)
	}
}

// TestPlannerCAPSBound checks the doc's over-admission bound where it
// applies: every report delivered within the interval it was sent in (no
// loss, no delay, no partition), the CAPS applied on the running nodes sum
// to at most the licence after every exchange, and their parts of the
// farm's bucket depth to at most the whole.
func TestPlannerCAPSBound(t *testing.T) {
	checkSchedules(t, func(seed uint64) plannerBounds { return plannerBounds{seed: seed, strict: true} }, nil)
}

// plannerRegressions are seeds that failed: with a clean network
// (TestPlannerCAPSBound) or a rough one.
var plannerRegressions = []plannerBounds{
	// Eleven nodes whose parts fell at one exchange rise at the next, each
	// into the room the others' reports leave, all into the same room
	// (testdata/planner/concurrent_rise.txt): 5922.3 of 4881 CAPS at 800 ms.
	{seed: 13, strict: true},
	// A node restarted at 1.2 s applies an even part at once while the
	// other keeps its part (join_under_load.txt): 2104.6 of 1414 at 1.3 s.
	{seed: 12, strict: true},
	// A licence settled at n2 (its plan leaves it out) was read as parts
	// of nothing, where a node goes on applying what it applied: n2's 16
	// sessions were "cut" at 600 ms. The farm now carries a part a plan
	// leaves out, as a Cluster does.
	{seed: 16914440481589048824, rough: true},
}

func TestPlannerRegressions(t *testing.T) {
	for _, b := range plannerRegressions {
		if err := b.run(); err != nil {
			t.Errorf("%v\n%s", err, strings.Join(plannerSchedule(b.seed, b.rough), "\n"))
		}
	}
}

// checkSchedules runs the schedules of testing/quick's seeds with the
// checks mk sets, merging what they measured into worst (if any: clean
// networks first, rough ones second).
func checkSchedules(t *testing.T, mk func(seed uint64) plannerBounds, worst []plannerBounds) {
	t.Helper()
	count := 200
	if testing.Short() {
		count = 60
	}
	check := func(seed uint64) bool {
		b := mk(seed)
		err := b.run()
		if worst != nil && b.rough {
			worst[1].merge(b)
		} else if worst != nil {
			worst[0].merge(b)
		}
		if err != nil {
			t.Logf("%v\n%s", err, strings.Join(plannerSchedule(b.seed, b.rough), "\n"))
		}
		return err == nil
	}
	if err := quick.Check(check, &quick.Config{MaxCount: count}); err != nil {
		t.Fatal(err)
	}
}

// run replays the seed's schedule and checks the bounds after every
// exchange.
func (b *plannerBounds) run() error {
	_, err := replay(strings.Join(plannerSchedule(b.seed, b.rough), "\n"), b.check)
	if err != nil {
		return fmt.Errorf("seed %d (rough %v): %w", b.seed, b.rough, err)
	}
	return nil
}

// plannerSchedule draws a farm and 200 exchanges from seed, as a
// transcript. On a rough network reports are lost (up to 30 %) and
// delayed (up to 250 ms, so they overtake one another), and partitions
// come and heal; otherwise every report arrives within the interval it was
// sent in.
func plannerSchedule(seed uint64, rough bool) []string {
	r := rand.New(rand.NewPCG(seed, 0x706c616e))
	n := 2 + r.IntN(11)
	caps := 100 + r.IntN(4901)
	sessions, subs := 10+r.IntN(500), 10+r.IntN(5000)
	var up, down []string
	for i := range n {
		up = append(up, fmt.Sprintf("n%d", i+1))
	}
	out := []string{fmt.Sprintf("# seed %d, rough %v", seed, rough), "nodes " + strings.Join(up, " "),
		fmt.Sprintf("licence voice caps=%d sessions=%d subscribers=%d", caps, sessions, subs)}
	if rough {
		out = append(out, fmt.Sprintf("net loss=%.2f jitter=%dms seed=%d", 0.3*r.Float64(), r.IntN(251), seed))
	}
	pick := func(names []string) string { return names[r.IntN(len(names))] }
	// Each node's part of the load and of the holdings: random weights
	// (skewed: products of two uniforms), scaled so that the nodes up when
	// they are drawn offer 0 to 3 × the licence and would hold 0.5 to 1.5 ×
	// it.
	weights := func(total float64) []float64 {
		w := make([]float64, 12)
		var sum float64
		for i := range w {
			w[i] = r.Float64() * r.Float64()
			if slices.Contains(up, fmt.Sprintf("n%d", i+1)) {
				sum += w[i]
			}
		}
		for i := range w {
			w[i] *= total / max(sum, 1e-9)
		}
		return w
	}
	newLoad := func() []float64 { return weights(3 * float64(caps) * r.Float64()) }
	newHold := func() []float64 { return weights(0.5 + r.Float64()) }
	load, hold := newLoad(), newHold()
	index := func(name string) int {
		i, _ := strconv.Atoi(strings.TrimPrefix(name, "n"))
		return i - 1
	}
	offer := func(name string) string { return fmt.Sprintf("offer %s voice=%.0f", name, load[index(name)]) }
	seek := func(name string) string {
		h := hold[index(name)]
		return fmt.Sprintf("seek %s voice sessions=%.0f subscribers=%.0f", name, h*float64(sessions), h*float64(subs))
	}
	for _, name := range up {
		out = append(out, offer(name), seek(name))
	}
	var idle time.Duration
	partitioned := 0
	for range 200 {
		var step []string
		p := r.Float64()
		switch {
		case p < 0.05:
			load = newLoad()
			for _, name := range up {
				step = append(step, offer(name))
			}
		case p < 0.08:
			hold = newHold()
			for _, name := range up {
				step = append(step, seek(name))
			}
		case p < 0.10 && len(up) > 1 && partitioned == 0:
			i := r.IntN(len(up))
			verb := "leave " + up[i]
			if r.IntN(3) > 0 {
				verb = "kill " + up[i] + " detect=500ms-1500ms"
			}
			step = append(step, verb)
			down, up = append(down, up[i]), slices.Delete(up, i, i+1)
		case p < 0.12 && len(down) > 0 && partitioned == 0:
			i := r.IntN(len(down))
			step = append(step, "restart "+down[i])
			up, down = append(up, down[i]), slices.Delete(down, i, i+1)
		case p < 0.13 && len(up)+len(down) < 12 && partitioned == 0:
			name := fmt.Sprintf("n%d", len(up)+len(down)+1)
			step = append(step, "join "+name, offer(name), seek(name))
			up = append(up, name)
		case rough && p < 0.15 && len(up) > 1 && partitioned == 0:
			cut := slices.Clone(up)
			r.Shuffle(len(cut), func(i, j int) { cut[i], cut[j] = cut[j], cut[i] })
			k := 1 + r.IntN(len(cut)-1)
			step = append(step, "partition "+strings.Join(cut[:k], " ")+" | "+strings.Join(cut[k:], " ")+" detect=500ms-1500ms")
			partitioned = 1 + r.IntN(60)
		case rough && p < 0.18:
			step = append(step, fmt.Sprintf("lose next %d reports from %s", 1+r.IntN(3), pick(up)))
		case rough && p < 0.21:
			step = append(step, fmt.Sprintf("delay reports from %s by %dms to %s", pick(up), r.IntN(251), pick(up)))
		}
		if partitioned > 0 {
			if partitioned--; partitioned == 0 {
				step = append(step, "heal")
			}
		}
		if len(step) > 0 && idle > 0 {
			out = append(out, "advance "+idle.String())
			idle = 0
		}
		out = append(out, step...)
		idle += ExchangeInterval
	}
	return append(out, "advance "+idle.String())
}

// plannerBounds checks, after each exchange, the bounds the package doc
// states, and measures how far the CAPS applied went above the licence on
// a rough network, where the doc bounds the attempts admitted (a late
// report's rise for one interval) rather than the parts.
type plannerBounds struct {
	seed  uint64
	rough bool
	// strict checks that the CAPS applied sum to at most the licence (on a
	// clean network).
	strict bool
	// worst is the largest excess of the CAPS applied over the licence, as
	// a fraction of it; longest the most exchanges in a row above it.
	worst     float64
	worstSeed uint64
	worstAt   time.Duration
	streak    int
	longest   int
}

func (b *plannerBounds) merge(o plannerBounds) {
	if o.worst > b.worst {
		b.worst, b.worstSeed, b.worstAt = o.worst, o.seed, o.worstAt
	}
	b.longest = max(b.longest, o.longest)
}

func (b *plannerBounds) check(f *farm) error {
	if b.strict && (f.faults > 0 || f.side != nil) {
		return fmt.Errorf("at %v a report was lost or late on a clean network: the farm is wrong", f.now)
	}
	l := f.licences["voice"]
	up := f.running()
	sum, depth := f.capsSum("voice")
	switch excess := sum/l.CAPS - 1; {
	case excess <= 1e-9:
		b.streak = 0
	case b.strict:
		var parts []string
		for _, n := range up {
			parts = append(parts, fmt.Sprintf("%s %.1f→%.1f", n.name, n.prev.Parts["voice"].CAPS*l.CAPS, n.plan.Parts["voice"].CAPS*l.CAPS))
		}
		return fmt.Errorf("at %v the CAPS applied sum to %.3f, above the licence %g, every report delivered within the interval (%s)",
			f.now, sum, l.CAPS, strings.Join(parts, ", "))
	case sum > l.CAPS*float64(len(up))*(1+1e-9):
		return fmt.Errorf("at %v the CAPS applied sum to %.3f, above the licence %g × %d nodes", f.now, sum, l.CAPS, len(up))
	default:
		b.streak++
		b.longest = max(b.longest, b.streak)
		if excess > b.worst {
			b.worst, b.worstAt = excess, f.now
		}
	}
	if b.strict && depth > 1+1e-9 {
		return fmt.Errorf("at %v the parts of the farm's bucket depth applied sum to %.6f, above 1, every report delivered within the interval", f.now, depth)
	}
	for _, n := range up {
		part := n.plan.Parts["voice"]
		if n.plan.Side.State == SideFenced && (part.CAPS != 0 || part.Sessions != 0 || part.Subscribers != 0) {
			return fmt.Errorf("at %v %s is fenced but applies %+v", f.now, n.name, part)
		}
		if mustFence(f, n) && n.plan.Side.State != SideFenced {
			return fmt.Errorf("at %v %s sees %d of %v alive, a minority since %v, but its side is %s",
				f.now, n.name, len(n.live), n.failed, f.policy.ReclaimAfter/2, n.plan.Side.State)
		}
		// While this side's fraction of the licence covers what all hold as
		// this node knows it, each member counted for at least its floor
		// (Allocate), a part that covered what the node holds is not cut
		// below it. (A part below it — fenced, or a new planner's even part —
		// rises only into room the others report.)
		frac, h, prev := n.plan.Side.Fraction, n.held["voice"], n.prev.Parts["voice"]
		cut := func(held func(Held) int64, part, prev float64, licensed int64) bool {
			side := frac * float64(licensed)
			var seen float64
			for name := range n.live {
				other := n.heard[name].Held["voice"]
				if name == n.name {
					other = h
				}
				seen += max(float64(held(other)), side*FloorFraction/float64(len(n.live)))
			}
			mine := float64(held(h))
			return seen <= side && prev*float64(licensed) >= mine && part*float64(licensed) < mine-1e-9
		}
		if cut(func(h Held) int64 { return h.Sessions }, part.Sessions, prev.Sessions, l.Sessions) ||
			cut(func(h Held) int64 { return h.Subscribers }, part.Subscribers, prev.Subscribers, l.Subscribers) {
			return fmt.Errorf("at %v %s holds %+v of %d sessions and %d subscribers (side %.3f), but its parts are %.2f and %.2f",
				f.now, n.name, h, l.Sessions, l.Subscribers, frac, part.Sessions*float64(l.Sessions), part.Subscribers*float64(l.Subscribers))
		}
	}
	return nil
}

// mustFence reports whether the split policy fences a node: of the members
// it knows (alive, or seen to fail and not reclaimed), those alive are a
// minority (of two halves, the one without the first name), and the first
// failure it saw is ReclaimAfter/2 old.
func mustFence(f *farm, n *farmNode) bool {
	if len(n.failed) == 0 || f.policy.Policy != Split {
		return false
	}
	first := slices.Min(slices.Collect(maps.Values(n.failed)))
	live, failed := slices.Collect(maps.Keys(n.live)), slices.Collect(maps.Keys(n.failed))
	minority := 2*len(live) < len(live)+len(failed) || 2*len(live) == len(live)+len(failed) && slices.Min(failed) < slices.Min(live)
	return minority && f.now-first >= f.policy.ReclaimAfter/2
}
