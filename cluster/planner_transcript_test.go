package cluster

import (
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsgate/capsgate/admission"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/planner/*.txt with the output the planner gives now")

// TestPlannerTranscripts replays every transcript in testdata/planner: a
// small farm of Planners, one per node, in process, over a fake network and
// clock (farm). Each line is a step (farm.do lists them); a print is
// followed by "----", the output expected and a blank line. With -rewrite
// the files are written again with the output the planner gives now, for
// review when the share policy changes.
func TestPlannerTranscripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "planner", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in testdata/planner: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := replay(string(b), nil)
			if err != nil {
				t.Fatalf("%s:%v", file, err)
			}
			if *rewrite {
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != string(b) {
				t.Errorf("%s: the planner's output differs (go test ./cluster -run TestPlannerTranscripts -rewrite, then review the diff):\n%s",
					file, lineDiff(string(b), got))
			}
		})
	}
}

// replay runs a transcript on a new farm and returns it with every print's
// expected output replaced by the actual one. check, if not nil, is called
// after every exchange.
func replay(text string, check func(*farm) error) (string, error) {
	f := newFarm()
	f.check = check
	var out strings.Builder
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		out.WriteString(line + "\n")
		cmd := strings.TrimSpace(line)
		if cmd == "" || strings.HasPrefix(cmd, "#") {
			continue
		}
		got, err := f.do(cmd)
		if err != nil {
			return out.String(), fmt.Errorf("%d: %s: %w", i+1, cmd, err)
		}
		if got == nil {
			continue // a step that prints nothing
		}
		// Skip the expected output: "----", lines, a blank line.
		if i+1 < len(lines) && lines[i+1] == "----" {
			for i += 2; i < len(lines) && lines[i] != ""; i++ {
			}
		} else if i+1 < len(lines) && lines[i+1] == "" {
			i++
		}
		out.WriteString("----\n" + strings.Join(got, "\n") + "\n\n")
	}
	return strings.TrimSuffix(out.String(), "\n") + "\n", nil
}

// lineDiff shows the first lines where two texts differ.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			return fmt.Sprintf("line %d\nwant: %s\n got: %s", i+1, a, b)
		}
	}
	return ""
}

// farmEpoch is the fake clock's zero.
var farmEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// farm is a few Planners over a fake network and clock. Every node plans
// at each ExchangeInterval boundary, in name order, then its report is sent
// to every member it sees alive; a report sent without delay arrives right
// after all nodes planned at that boundary. Membership changes reach each
// node as memberlist would tell it: a graceful leave at once, a failure (a
// kill, the far side of a partition) after a detection delay.
type farm struct {
	now      time.Duration // since farmEpoch
	policy   PolicyConfig
	licences map[string]admission.Limits
	nodes    []*farmNode // in name order
	flights  []flight    // in order of arrival
	// side is each node's side of a partition; nil: none.
	side map[string]int
	// The network: each report is lost with probability loss and delayed
	// by a random part of jitter (so reports can overtake one another).
	loss, jitter float64
	rng          *rand.Rand
	// faults counts the reports lost (by the network, a lose step or a
	// partition) or delayed by an exchange interval or more.
	faults int
	// most is each service's largest sum of the CAPS applied on the
	// running nodes since the last print.
	most  map[string]float64
	check func(*farm) error
}

type farmNode struct {
	name    string
	planner *Planner
	up      bool
	live    map[string]bool // the members it sees alive, itself among them
	// offer is the attempts per second offered per service; offered their
	// count since the node started.
	offer, offered map[string]float64
	// held is what it holds per service; seek what it would hold: it
	// admits sessions and subscribers up to seek within its parts.
	held, seek map[string]Held
	plan, prev Plan // its last plan and the one before
	planned    time.Duration
	heard      map[string]Report // each member's last report to arrive here
	// failed are the members it saw fail and not yet back or reclaimed,
	// with when it saw them fail (the property tests' reference side).
	failed map[string]time.Duration
	// lose counts the next reports lost, to everyone ("") or one member;
	// delay delays its reports, to everyone ("") or one member.
	lose  map[string]int
	delay map[string]time.Duration
}

// flight is a report on its way, or (report nil) the news that member
// from failed, on its way to node to.
type flight struct {
	at       time.Duration
	from, to string
	report   *Report
}

func newFarm() *farm {
	return &farm{policy: PolicyConfig{Policy: Split, ReclaimAfter: 3 * time.Second},
		licences: map[string]admission.Limits{}, most: map[string]float64{}, rng: rand.New(rand.NewPCG(1, 0))}
}

func (f *farm) node(name string) (*farmNode, error) {
	for _, n := range f.nodes {
		if n.name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %s", name)
}

func (f *farm) running() []*farmNode {
	var out []*farmNode
	for _, n := range f.nodes {
		if n.up {
			out = append(out, n)
		}
	}
	return out
}

// reachable reports whether a report can go from a to b now.
func (f *farm) reachable(a, b *farmNode) bool {
	return a.up && b.up && (f.side == nil || f.side[a.name] == f.side[b.name])
}

func (f *farm) services() []string {
	var out []string
	for s := range f.licences {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// do runs one step of a transcript:
//
//	nodes n1 n2 n3                       planners all joined to each other now
//	licence voice caps=1000 sessions=100 subscribers=1000   (absent: unlimited)
//	offer n1 voice=630                   attempts per second from now on
//	hold n1 voice sessions=10 subscribers=5   what it holds, from now on
//	seek n1 voice sessions=10            what it would hold, admitted within its part
//	advance 100ms                        every node plans at each boundary passed
//	net loss=0.1 jitter=250ms seed=7     every report, from now on
//	lose next report from n1 [to n2]     (or: lose next 3 reports ...)
//	delay reports from n1 by 250ms [to n2]
//	kill n3 [detect=1s]                  the others see it fail after detect
//	leave n3                             graceful: the others know at once
//	restart n3 / join n4                 (re)joins the running members
//	partition n1 | n2 n3 [detect=1s]     each side sees the other fail after detect
//	heal
//	print                                parts applied, side, sums
//	spill n1 voice count=60              whom n1 asks to decide 60 attempts its bucket refused
//
// A detect of the form 500ms-1.5s is drawn for each observer from the
// network's seed.
func (f *farm) do(cmd string) ([]string, error) {
	w := strings.Fields(cmd)
	args, kv := positional(w[1:])
	switch w[0] {
	case "nodes":
		if len(f.nodes) > 0 || len(args) == 0 {
			return nil, fmt.Errorf("nodes comes once, first, with the names")
		}
		for _, name := range args {
			f.nodes = append(f.nodes, &farmNode{name: name})
		}
		slices.SortFunc(f.nodes, func(a, b *farmNode) int { return strings.Compare(a.name, b.name) })
		for _, n := range f.nodes {
			f.start(n)
		}
	case "licence":
		return nil, f.setLicence(args, kv)
	case "offer":
		n, err := f.one(args)
		if err != nil {
			return nil, err
		}
		for service, v := range kv {
			r, err := strconv.ParseFloat(v, 64)
			if err != nil || r < 0 {
				return nil, fmt.Errorf("offer %s=%q: want attempts per second ≥ 0", service, v)
			}
			n.offer[service] = r
		}
	case "hold", "seek":
		if len(args) != 2 {
			return nil, fmt.Errorf("want %s <node> <service> sessions=N subscribers=N", w[0])
		}
		n, err := f.node(args[0])
		if err != nil {
			return nil, err
		}
		h := n.seek[args[1]]
		if h.Sessions, err = intArg(kv, "sessions", h.Sessions); err != nil {
			return nil, err
		}
		if h.Subscribers, err = intArg(kv, "subscribers", h.Subscribers); err != nil {
			return nil, err
		}
		n.seek[args[1]] = h
		if w[0] == "hold" {
			n.held[args[1]] = h
		}
	case "advance":
		d, err := durationArg(args)
		if err != nil {
			return nil, err
		}
		return nil, f.advance(d)
	case "net":
		return nil, f.setNet(kv)
	case "lose", "delay":
		return nil, f.impair(w)
	case "kill", "leave", "restart", "join":
		return nil, f.member(w[0], args, kv)
	case "partition":
		return nil, f.partition(args, kv)
	case "heal":
		f.heal()
	case "print":
		return f.print(), nil
	case "spill":
		return f.spill(args, kv)
	default:
		return nil, fmt.Errorf("unknown step %q", w[0])
	}
	return nil, nil
}

// positional splits a step's words into plain ones and key=value ones.
func positional(words []string) ([]string, map[string]string) {
	var args []string
	kv := map[string]string{}
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok {
			kv[k] = v
		} else {
			args = append(args, w)
		}
	}
	return args, kv
}

func intArg(kv map[string]string, key string, def int64) (int64, error) {
	v, ok := kv[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s=%q: want a whole number ≥ 0", key, v)
	}
	return n, nil
}

func durationArg(args []string) (time.Duration, error) {
	if len(args) != 1 {
		return 0, fmt.Errorf("want one duration")
	}
	d, err := time.ParseDuration(args[0])
	if err != nil || d < 0 {
		return 0, fmt.Errorf("want a duration ≥ 0: %q", args[0])
	}
	return d, nil
}

func (f *farm) one(args []string) (*farmNode, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("want one node")
	}
	return f.node(args[0])
}

func (f *farm) setLicence(args []string, kv map[string]string) error {
	if len(args) != 1 {
		return fmt.Errorf("want licence <service> caps=N sessions=N subscribers=N")
	}
	l := admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited, State: "active"}
	if v, ok := kv["caps"]; ok {
		c, err := strconv.ParseFloat(v, 64)
		if err != nil || !(c > 0) {
			return fmt.Errorf("caps=%q: want a number above 0", v)
		}
		l.CAPS = c
	}
	for key, to := range map[string]*int64{"sessions": &l.Sessions, "subscribers": &l.Subscribers} {
		v, err := intArg(kv, key, admission.Unlimited)
		if err != nil {
			return err
		}
		*to = v
	}
	f.licences = maps.Clone(f.licences) // another map: Plan takes a map as unchanging
	f.licences[args[0]] = l
	return nil
}

func (f *farm) setNet(kv map[string]string) error {
	for key, v := range kv {
		var err error
		switch key {
		case "loss":
			f.loss, err = strconv.ParseFloat(v, 64)
		case "jitter":
			var d time.Duration
			d, err = time.ParseDuration(v)
			f.jitter = float64(d)
		case "seed":
			var s uint64
			s, err = strconv.ParseUint(v, 10, 64)
			f.rng = rand.New(rand.NewPCG(s, 0))
		default:
			err = fmt.Errorf("unknown")
		}
		if err != nil {
			return fmt.Errorf("net %s=%q: %v", key, v, err)
		}
	}
	return nil
}

// impair reads "lose next [N] report(s) from A [to B]" and
// "delay reports from A by D [to B]".
func (f *farm) impair(w []string) error {
	var count int64 = 1
	rest := w[1:]
	if w[0] == "lose" && len(rest) > 0 && rest[0] == "next" {
		rest = rest[1:]
		if len(rest) > 0 {
			if c, err := strconv.ParseInt(rest[0], 10, 64); err == nil {
				count, rest = c, rest[1:]
			}
		}
	}
	if len(rest) < 3 || !strings.HasPrefix(rest[0], "report") || rest[1] != "from" {
		return fmt.Errorf("want lose next [N] report(s) from A [to B], or delay reports from A by D [to B]")
	}
	n, err := f.node(rest[2])
	if err != nil {
		return err
	}
	rest = rest[3:]
	var by time.Duration
	if w[0] == "delay" {
		if len(rest) < 2 || rest[0] != "by" {
			return fmt.Errorf("want delay reports from A by D [to B]")
		}
		if by, err = durationArg(rest[1:2]); err != nil {
			return err
		}
		rest = rest[2:]
	}
	to := ""
	if len(rest) == 2 && rest[0] == "to" {
		if _, err := f.node(rest[1]); err != nil {
			return err
		}
		to, rest = rest[1], nil
	}
	if len(rest) > 0 {
		return fmt.Errorf("unexpected %q", strings.Join(rest, " "))
	}
	if w[0] == "lose" {
		n.lose[to] += int(count)
	} else {
		n.delay[to] = by
	}
	return nil
}

// detector reads detect=D or detect=D1-D2 (default 1 s): each observer's
// delay before it sees a member fail.
func (f *farm) detector(kv map[string]string) (func() time.Duration, error) {
	v, ok := kv["detect"]
	if !ok {
		v = "1s"
	}
	lo, hi, ranged := strings.Cut(v, "-")
	a, err := time.ParseDuration(lo)
	b := a
	if err == nil && ranged {
		b, err = time.ParseDuration(hi)
	}
	if err != nil || a < 0 || b < a {
		return nil, fmt.Errorf("detect=%q: want D or D1-D2", v)
	}
	return func() time.Duration {
		if b == a {
			return a
		}
		return a + time.Duration(f.rng.Int64N(int64(b-a)+1))
	}, nil
}

func (f *farm) member(verb string, args []string, kv map[string]string) error {
	if len(args) != 1 {
		return fmt.Errorf("want %s <node>", verb)
	}
	n, err := f.node(args[0])
	switch verb {
	case "join":
		if err == nil {
			return fmt.Errorf("%s exists: restart it", args[0])
		}
		n = &farmNode{name: args[0]}
		f.nodes = append(f.nodes, n)
		slices.SortFunc(f.nodes, func(a, b *farmNode) int { return strings.Compare(a.name, b.name) })
	case "restart":
		if err != nil || n.up {
			return fmt.Errorf("%s is not a stopped node", args[0])
		}
	default:
		if err != nil || !n.up {
			return fmt.Errorf("%s is not running", args[0])
		}
	}
	switch verb {
	case "join", "restart":
		if f.side != nil {
			return fmt.Errorf("heal first: a node starts on no side of a partition")
		}
		f.start(n)
	case "kill":
		detect, err := f.detector(kv)
		if err != nil {
			return err
		}
		n.up = false
		for _, o := range f.running() {
			if o.live[n.name] {
				f.send(flight{at: f.now + detect(), from: n.name, to: o.name})
			}
		}
	case "leave":
		n.up = false
		for _, o := range f.running() {
			if o.live[n.name] && (f.side == nil || f.side[o.name] == f.side[n.name]) {
				o.planner.Gone(farmEpoch.Add(f.now), n.name, true)
				delete(o.live, n.name)
			}
		}
	}
	return nil
}

// start (re)starts a node with a new planner: it and the running members
// join each other now. Its counters start again; what it holds is kept
// (restored from its journal), and so is the load offered to it.
func (f *farm) start(n *farmNode) {
	n.planner, n.up, n.plan, n.prev = NewPlanner(n.name, f.policy, admission.DefaultConfig().Burst), true, Plan{}, Plan{}
	n.live, n.heard, n.failed = map[string]bool{n.name: true}, map[string]Report{}, map[string]time.Duration{}
	n.offered, n.lose, n.delay = map[string]float64{}, map[string]int{}, map[string]time.Duration{}
	if n.offer == nil {
		n.offer, n.held, n.seek = map[string]float64{}, map[string]Held{}, map[string]Held{}
	}
	n.planned = f.now
	// Its old incarnation's failure, on its way to the others, is news no more.
	f.flights = slices.DeleteFunc(f.flights, func(fl flight) bool { return fl.report == nil && (fl.from == n.name || fl.to == n.name) })
	now := farmEpoch.Add(f.now)
	for _, o := range f.running() {
		if o != n {
			n.planner.Joined(now, o.name)
			o.planner.Joined(now, n.name)
			n.live[o.name], o.live[n.name] = true, true
			delete(o.failed, n.name)
		}
	}
}

// partition cuts the running nodes into sides: "n1 | n2 n3". Each node sees
// the running members across the cut fail after detect.
func (f *farm) partition(args []string, kv map[string]string) error {
	if f.side != nil {
		return fmt.Errorf("heal first")
	}
	detect, err := f.detector(kv)
	if err != nil {
		return err
	}
	side := map[string]int{}
	k := 0
	for _, a := range args {
		if a == "|" {
			k++
			continue
		}
		if n, err := f.node(a); err != nil || !n.up {
			return fmt.Errorf("%s is not running", a)
		}
		side[a] = k
	}
	if k == 0 || len(side) != len(f.running()) {
		return fmt.Errorf("want every running node on a side: a | b c")
	}
	f.side = side
	for _, o := range f.running() {
		for _, x := range f.running() {
			if side[o.name] != side[x.name] && o.live[x.name] {
				f.send(flight{at: f.now + detect(), from: x.name, to: o.name})
			}
		}
	}
	return nil
}

// heal ends a partition: the failures not yet seen across it are news no
// more, and the running nodes that saw each other fail join again now.
func (f *farm) heal() {
	f.side = nil
	f.flights = slices.DeleteFunc(f.flights, func(fl flight) bool {
		from, _ := f.node(fl.from)
		return fl.report == nil && from.up
	})
	now := farmEpoch.Add(f.now)
	for _, o := range f.running() {
		for _, x := range f.running() {
			if !o.live[x.name] {
				o.planner.Joined(now, x.name)
				o.live[x.name] = true
				delete(o.failed, x.name)
			}
		}
	}
}

// send puts a flight on its way: it lands after every flight due at or
// before it.
func (f *farm) send(fl flight) {
	i, _ := slices.BinarySearchFunc(f.flights, fl.at, func(o flight, at time.Duration) int {
		if o.at <= at {
			return -1
		}
		return 1
	})
	f.flights = slices.Insert(f.flights, i, fl)
}

// deliver lands the flights due before until (or at it, if at).
func (f *farm) deliver(until time.Duration, at bool) {
	for len(f.flights) > 0 && (f.flights[0].at < until || at && f.flights[0].at == until) {
		fl := f.flights[0]
		f.flights = f.flights[1:]
		to, _ := f.node(fl.to)
		from, _ := f.node(fl.from)
		when := farmEpoch.Add(fl.at)
		switch {
		case !to.up:
		case fl.report != nil && f.side != nil && f.side[from.name] != f.side[to.name]:
			f.faults++
		case fl.report != nil:
			to.planner.Heard(when, fl.from, *fl.report)
			to.heard[fl.from] = *fl.report
		case to.live[fl.from]:
			to.planner.Gone(when, fl.from, false)
			delete(to.live, fl.from)
			to.failed[fl.from] = fl.at
		}
	}
}

// advance moves the clock on by d: every running node plans at each
// exchange boundary passed.
func (f *farm) advance(d time.Duration) error {
	end := f.now + d
	for b := (f.now/ExchangeInterval + 1) * ExchangeInterval; b <= end; b += ExchangeInterval {
		f.deliver(b, false)
		f.now = b
		if err := f.exchange(); err != nil {
			return fmt.Errorf("at %v: %w", f.now, err)
		}
		f.deliver(b, true)
	}
	f.deliver(end, true)
	f.now = end
	return nil
}

// exchange has every running node plan, in name order, then send its
// report to every member it sees alive.
func (f *farm) exchange() error {
	up := f.running()
	now := farmEpoch.Add(f.now)
	for _, n := range up {
		var u Usage
		for _, s := range f.services() {
			n.offered[s] += n.offer[s] * (f.now - n.planned).Seconds()
			n.held[s] = admit(n.held[s], n.seek[s], n.plan.Parts[s], f.licences[s])
			h := n.held[s]
			u = append(u, ServiceUsage{Name: s, Offered: uint64(n.offered[s]), Sessions: h.Sessions, Subscribers: h.Subscribers})
		}
		var live []string
		for name := range n.live {
			live = append(live, name)
		}
		n.prev, n.plan, n.planned = n.plan, n.planner.Plan(now, live, f.licences, u), f.now
		// A plan leaves out what it did not plan (a settled licence): the
		// node applies what it applied before, as a Cluster does.
		for s, sh := range n.prev.Parts {
			if _, ok := n.plan.Parts[s]; !ok {
				n.plan.Parts[s] = sh
			}
		}
		for _, name := range n.plan.Reclaimed {
			delete(n.failed, name)
		}
	}
	for _, n := range up {
		report := n.plan.Report
		all := n.lose[""] > 0
		if all {
			n.lose[""]--
		}
		for _, o := range f.nodes {
			if o == n || !n.live[o.name] {
				continue
			}
			lost := all || n.lose[o.name] > 0 || f.loss > 0 && f.rng.Float64() < f.loss
			if n.lose[o.name] > 0 {
				n.lose[o.name]--
			}
			delay := n.delay[""] + n.delay[o.name]
			if f.jitter > 0 {
				delay += time.Duration(f.rng.Float64() * f.jitter)
			}
			switch {
			case !o.up:
			case lost || !f.reachable(n, o):
				f.faults++
			default:
				if delay >= ExchangeInterval {
					f.faults++
				}
				f.send(flight{at: f.now + delay, from: n.name, to: o.name, report: &report})
			}
		}
	}
	for _, s := range f.services() {
		sum, _ := f.capsSum(s)
		f.most[s] = max(f.most[s], sum)
	}
	if f.check != nil {
		return f.check(f)
	}
	return nil
}

// admit is what a node holds after an exchange interval: it releases down
// to seek at once and admits up to seek within its parts of the licence.
func admit(h, seek Held, part Share, l admission.Limits) Held {
	grow := func(cur, want int64, part float64, licensed int64) int64 {
		if want <= cur || licensed < 0 {
			return want
		}
		return max(cur, min(want, limit(part, licensed)))
	}
	h.Sessions = grow(h.Sessions, seek.Sessions, part.Sessions, l.Sessions)
	h.Subscribers = grow(h.Subscribers, seek.Subscribers, part.Subscribers, l.Subscribers)
	return h
}

// capsSum is the sum of a service's CAPS applied on the running nodes,
// and of their parts of the farm's bucket depth.
func (f *farm) capsSum(service string) (caps, depth float64) {
	l := f.licences[service]
	for _, n := range f.running() {
		if p, ok := n.plan.Parts[service]; ok && l.CAPS > 0 {
			caps += whole(p.CAPS) * l.CAPS
			depth += p.Depth
		}
	}
	return caps, depth
}

// print shows every node's parts applied (CAPS in attempts per second,
// sessions and subscribers as limits, what it holds in brackets), its side
// and its measured demand, then each service's sums over the running
// nodes against the licence.
// spill asks a node's planner whom to send count refused attempts to, one
// after the other, as it would between two reports, and says how many went
// to each member (the members' buckets, unmodelled here, count as full).
func (f *farm) spill(args []string, kv map[string]string) ([]string, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("want spill <node> <service> count=N")
	}
	n, err := f.node(args[0])
	if err != nil {
		return nil, err
	}
	count, err := intArg(kv, "count", 1)
	if err != nil || count < 1 {
		return nil, fmt.Errorf("spill count=%q: want a count ≥ 1", kv["count"])
	}
	l := f.licences[args[1]]
	got := map[string]int{}
	var none int64
	for range count {
		if to, ok := n.planner.SpillTo(farmEpoch.Add(f.now), args[1], l.CAPS); ok {
			got[to]++
		} else {
			none++
		}
	}
	line := fmt.Sprintf("%s spills %d of %s:", n.name, count, args[1])
	for _, m := range f.nodes {
		if got[m.name] > 0 {
			line += fmt.Sprintf(" %s %d", m.name, got[m.name])
		}
	}
	return []string{line + fmt.Sprintf(", refused %d", none)}, nil
}

func (f *farm) print() []string {
	out := []string{"at " + f.now.String()}
	for _, n := range f.nodes {
		if !n.up {
			out = append(out, n.name+" down")
			continue
		}
		side := n.plan.Side.State
		if side == SidePart {
			side += fmt.Sprintf(" %d/%d", n.plan.Side.Live, n.plan.Side.Known)
		}
		for _, s := range f.services() {
			p, ok := n.plan.Parts[s]
			if !ok {
				out = append(out, fmt.Sprintf("%s %s: %s not planned yet", n.name, side, s))
				continue
			}
			l, h := f.licences[s], n.held[s]
			line := fmt.Sprintf("%s %s: %s", n.name, side, s)
			if l.CAPS > 0 {
				line += fmt.Sprintf(" caps=%.1f depth=%.3f", p.CAPS*l.CAPS, p.Depth)
			}
			line += fmt.Sprintf(" demand=%.1f", n.plan.Report.Demand[s])
			line += limitText("sessions", p.Sessions, l.Sessions, h.Sessions)
			line += limitText("subscribers", p.Subscribers, l.Subscribers, h.Subscribers)
			out = append(out, line)
		}
	}
	for _, s := range f.services() {
		l := f.licences[s]
		if l.CAPS > 0 {
			sum, depth := f.capsSum(s)
			out = append(out, fmt.Sprintf("%s caps %.1f of %g (most %.1f since the last print), depth %.3f of 1", s, sum, l.CAPS, max(f.most[s], sum), depth))
			f.most[s] = sum
		}
		var sessions, subscribers int64
		for _, n := range f.running() {
			p := n.plan.Parts[s]
			sessions += limit(p.Sessions, l.Sessions)
			subscribers += limit(p.Subscribers, l.Subscribers)
		}
		if l.Sessions >= 0 {
			out = append(out, fmt.Sprintf("%s sessions %d of %d", s, sessions, l.Sessions))
		}
		if l.Subscribers >= 0 {
			out = append(out, fmt.Sprintf("%s subscribers %d of %d", s, subscribers, l.Subscribers))
		}
	}
	return out
}

// limit is a session or subscriber limit as the engine applies a part of
// it (Shares.SetShare rounds down).
func limit(part float64, licensed int64) int64 {
	return int64(math.Floor(whole(part) * float64(licensed)))
}

// limitText shows a session or subscriber limit and what the node holds.
func limitText(name string, part float64, licensed, held int64) string {
	if licensed < 0 {
		return ""
	}
	return fmt.Sprintf(" %s=%d(%d)", name, limit(part, licensed), held)
}
