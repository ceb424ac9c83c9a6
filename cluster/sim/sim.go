// Package sim is a deterministic simulator of a capsgate farm: N nodes, each
// with the real share planner (cluster.Planner), the real limits layer
// (cluster.Shares) and the real decision engine (admission.Engine, its GCRA
// buckets), joined by a simulated network (delay, loss, partitions) and
// driven by simulated traffic (paced, Poisson, bursty, a stalling proxy; a
// load that moves, ramps or flashes) on a simulated clock. A scenario and
// its seed determine every event, so a run repeats exactly.
//
// Time advances in steps of one millisecond. Within a step each node first
// decides the attempts that arrive in it, each at its own nanosecond, then
// the step's network and exchange events run in time order. Each node
// plans every cluster.ExchangeInterval, at a phase of its own.
//
// sim.go is over 600 lines on purpose: it is one deterministic event loop
// (network, clocks, traffic and the real planner, limits and buckets of
// every node), and splitting it would scatter the order of events that
// makes a seeded run repeat exactly.
package sim

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// Service is the service a scenario licenses (the first, when it licenses
// several: ServiceName).
const Service = "voice"

// NodeName names a scenario's i-th node (from 0): n001, n002…
func NodeName(i int) string { return fmt.Sprintf("n%03d", i+1) }

// ServiceName names a scenario's k-th service (from 0): Service, then
// voice2, voice3…
func ServiceName(k int) string {
	if k == 0 {
		return Service
	}
	return fmt.Sprintf("%s%d", Service, k+1)
}

// Scenario describes one run.
type Scenario struct {
	Nodes int
	// CAPS is the licence.
	CAPS float64
	// Duration of the run (simulated).
	Duration time.Duration
	Seed     uint64
	// Arrivals is the traffic model (Paced, Poisson, Bursty, Stalling).
	Arrivals string
	// Load is the offered rate over all nodes as a fraction of CAPS.
	Load float64
	// Skew weighs the load per node; nil spreads it evenly.
	Skew []float64
	// ShiftAt > 0 moves all load to the node that had the least at that
	// instant (the last one of equal weights).
	ShiftAt time.Duration
	// Ramp raises the offered load from 0 at the start to RampTo × CAPS at
	// the end, instead of Load.
	Ramp   bool
	RampTo float64
	// FlashAt > 0 multiplies the load by FlashFactor for FlashFor.
	FlashAt     time.Duration
	FlashFor    time.Duration
	FlashFactor float64
	// Prelude > 0 offers PreludeLoad × CAPS for that long before the
	// scenario's own load (the real-process tests offer twice the licence
	// for 10 s and then measure below it).
	Prelude     time.Duration
	PreludeLoad float64
	// Net is the network between nodes.
	Net Net
	// Burst is the engine's admission.burst (0: its default).
	Burst time.Duration
	// Reference: one node holds the whole licence and every source's
	// attempts go to it — what the farm is measured against.
	Reference bool
	// Services is how many services are licensed (0 or 1: Service alone):
	// CAPS is split evenly between them, and each attempt goes to one of
	// them at random, so each is offered Load × its licence.
	Services int
	// Accounts is how many accounts each service allocates its token pool
	// to (0: none, the pool unlimited): each attempt is charged
	// TokensPerAttempt to one of them at random, and the farm shares each
	// allocation as it shares a licence (token budgets in its reports).
	Accounts int
}

// services is how many services sc licenses.
func (sc *Scenario) services() int { return max(sc.Services, 1) }

// Net models the network that carries the exchange's reports.
type Net struct {
	// Delay is the least one-way delay; Jitter the mean of an exponential
	// added to it.
	Delay, Jitter time.Duration
	// Loss is the fraction of reports lost.
	Loss float64
}

// LAN is a loopback or LAN network: 100 µs plus 200 µs of jitter on
// average, nothing lost.
var LAN = Net{Delay: 100 * time.Microsecond, Jitter: 200 * time.Microsecond}

// checkEvery is how often a node looks at its buckets between plans
// (Planner.Starved), as the real node does.
const checkEvery = cluster.StarvedCheck

// Step is the width of one series sample.
const Step = 100 * time.Millisecond

// Result is what a run measured.
type Result struct {
	Scenario Scenario
	// Offered, Admitted and Refused count attempts over the whole run and
	// all nodes (Refused: by the licence: its CAPS, or its tokens where
	// accounts charge them).
	Offered, Admitted, Refused int64
	// Burst is the farm's depth: the most the nodes' bucket depths summed
	// to at any instant of the run (attempts).
	Burst int64
	// Spilled counts the attempts sent to another member to decide
	// (cluster.Planner.SpillTo; a second member asked counts again), and
	// SpilledAdmitted those it admitted.
	Spilled, SpilledAdmitted int64
	// MaxCAPS is the most the CAPS the nodes enforced summed to at any
	// instant (the licence, but for a rise made on a stale report).
	MaxCAPS float64
	// OfferedBelow and RefusedBelow count the attempts that arrived while
	// the scenario offered no more than the licence, and those refused.
	OfferedBelow, RefusedBelow int64
	// Worst1s and Worst10s are the most attempts admitted in any window of
	// 1 s and 10 s (sliding in 10 ms steps; a run shorter than 10 s has
	// Worst10s over its whole length).
	Worst1s, Worst10s int64
	// Covered is, after a shift, how long until the CAPS the node the load
	// moved to enforces first covered the load now offered to it (at its
	// plans' instants; -1: not in the run). Converge is how long
	// until it refused nothing more (0: no refusal after the shift; -1: it
	// still refused in the run's last second): its bucket, emptied while
	// its part rose, refills at the licence's headroom.
	Covered, Converge time.Duration
	// Series holds, per node, per Step: offered, admitted, and the CAPS the
	// node enforced at the end of the step.
	Series []NodeSeries
	// Gossip is, per node, the reports it sent.
	Gossip []NodeGossip
}

// NodeGossip counts the reports one node sent to the other members: one
// after every plan (Plan at each exchange, PlanNow early), each to every
// other member, counted as the cluster puts it on the wire
// (cluster.ReportWireSize, with a ledger head and identity as a node with
// its usage ledger sends them: ledgerHead).
type NodeGossip struct {
	Name string
	// Reports counts the reports sent (one per plan), Early those of early
	// plans among them.
	Reports, Early int64
	// Bytes sums each report's size times the members it went to.
	Bytes int64
	// Largest is the largest report's size.
	Largest int
}

// ledgerHead is the ledger head and identity a node sends with its
// reports, as the node's ledger gives them: a sequence number of
// seven digits, a SHA-256 head hash and genesis hash in hex, an Ed25519
// key in base64.
func ledgerHead(node string) ledger.Witness {
	return ledger.Witness{Node: node, Seq: 1_000_000, Hash: strings.Repeat("0123456789abcdef", 4),
		Key: strings.Repeat("A", 43) + "=", Genesis: strings.Repeat("fedcba9876543210", 4)}
}

// NodeSeries is one node's samples, one per Step.
type NodeSeries struct {
	Name     string
	Offered  []int64
	Admitted []int64
	Limit    []float64
	// RefusedBelow counts the step's refusals counted in Result.RefusedBelow.
	RefusedBelow []int64
}

// RefusedBelowFraction is RefusedBelow / OfferedBelow.
func (r Result) RefusedBelowFraction() float64 {
	if r.OfferedBelow == 0 {
		return 0
	}
	return float64(r.RefusedBelow) / float64(r.OfferedBelow)
}

// RefusedFraction is Refused / Offered.
func (r Result) RefusedFraction() float64 {
	if r.Offered == 0 {
		return 0
	}
	return float64(r.Refused) / float64(r.Offered)
}

func (sc *Scenario) validate() error {
	switch {
	case sc.Nodes < 1 || sc.Nodes > 1000:
		return fmt.Errorf("cannot simulate %d nodes: want 1 to 1000", sc.Nodes)
	case !(sc.CAPS > 0) || math.IsInf(sc.CAPS, 0):
		return fmt.Errorf("cannot simulate a licence of %v CAPS: want a finite number above 0", sc.CAPS)
	case sc.Duration < time.Second || sc.Duration > time.Hour:
		return fmt.Errorf("cannot simulate %v: want 1 s to 1 h", sc.Duration)
	case sc.Skew != nil && len(sc.Skew) != sc.Nodes:
		return fmt.Errorf("cannot simulate: %d weights for %d nodes", len(sc.Skew), sc.Nodes)
	case sc.Services < 0 || sc.Services > 10000:
		return fmt.Errorf("cannot simulate %d services: want 0 to 10000", sc.Services)
	case sc.Accounts < 0 || sc.Accounts > 100000 || sc.services()*sc.Accounts > 1_000_000:
		return fmt.Errorf("cannot simulate %d accounts per service: want 0 to 100000, and at most 1000000 in all", sc.Accounts)
	case sc.Prelude < 0 || sc.Prelude >= sc.Duration || sc.ShiftAt < 0 || sc.FlashAt < 0 || sc.FlashFor < 0:
		return fmt.Errorf("cannot simulate: the prelude, shift and flash instants must be ≥ 0 and the prelude shorter than the run")
	case !(sc.Load >= 0) || sc.Load > 100, !(sc.PreludeLoad >= 0) || sc.PreludeLoad > 100, !(sc.RampTo >= 0) || sc.RampTo > 100, !(sc.FlashFactor >= 0) || sc.FlashFactor > 1000:
		return fmt.Errorf("cannot simulate: load, prelude load and ramp factors must be between 0 and 100, the flash factor between 0 and 1000")
	case !(sc.Net.Loss >= 0) || sc.Net.Loss > 1 || sc.Net.Delay < 0 || sc.Net.Jitter < 0:
		return fmt.Errorf("cannot simulate: network loss must be 0..1 and delays ≥ 0")
	}
	if _, err := ParseArrivals(sc.Arrivals); err != nil {
		return err
	}
	var sum float64
	for _, w := range sc.Skew {
		if !(w >= 0) || math.IsInf(w, 0) {
			return fmt.Errorf("cannot simulate: weight %v is not a finite number ≥ 0", w)
		}
		sum += w
	}
	if sc.Skew != nil && sum == 0 {
		return fmt.Errorf("cannot simulate: the weights sum to 0")
	}
	return nil
}

// node is one simulated capsgate node.
type node struct {
	name    string
	planner *cluster.Planner
	engine  *admission.Engine
	usage   *cluster.UsageReader
	shares  *cluster.Shares
	phase   int64 // its exchange's offset in the interval
	// counted per 10 ms bin and per Step
	admittedBins []int64
	series       NodeSeries
	lastRefusal  int64
	// early is when an early plan is due, or -1.
	early int64
}

// event is a report in flight, an exchange or an early plan due.
type event struct {
	at    int64
	seq   uint64 // ties broken in order of scheduling
	to    int    // receiving node, or the node to plan
	from  string
	rep   *cluster.Report // nil: a plan
	early bool            // an early plan (PlanNow), not an exchange
}

type events []event

func (e events) Len() int { return len(e) }
func (e events) Less(i, j int) bool {
	if e[i].at != e[j].at {
		return e[i].at < e[j].at
	}
	return e[i].seq < e[j].seq
}
func (e events) Swap(i, j int) { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)   { *e = append(*e, x.(event)) }
func (e *events) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

// spill is an attempt refused by one node's bucket and sent to another.
type spill struct {
	at, sent  int64 // decided there at (a round trip later), sent at
	from, to  int
	below     bool
	tries     int // members asked before this one
	svc, acct int // its service and account (-1: none)
}

// observe, when set (by a test), sees every report a node sends, as it
// leaves the node.
var observe func(node int, r cluster.Report)

// accountTokens is each account's allocation when a scenario has accounts.
const accountTokens = 1_000_000_000

// epoch is the wall-clock instant of the simulation's zero, for the
// planner's timestamps.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Run simulates sc.
func Run(sc Scenario) (Result, error) {
	if err := sc.validate(); err != nil {
		return Result{}, err
	}
	clk := admission.NewFakeClock()
	base := clk.Now() // engine instants are base + simulated nanoseconds
	netRng := rand.New(rand.NewPCG(sc.Seed, 0))
	interval := int64(cluster.ExchangeInterval)
	end := int64(sc.Duration)
	bins := int(end/int64(10*time.Millisecond)) + 1
	steps := int(end/int64(Step)) + 1

	names := make([]string, sc.Nodes)
	for i := range names {
		names[i] = NodeName(i)
	}
	ns := sc.services()
	svcs, svcB := make([]string, ns), make([][]byte, ns)
	for k := range svcs {
		svcs[k] = ServiceName(k)
		svcB[k] = []byte(svcs[k])
	}
	perCAPS := sc.CAPS / float64(ns)
	licence := admission.Limits{Licensed: true, CAPS: perCAPS, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited, State: "active"}
	var accts [][]byte
	if sc.Accounts > 0 {
		// The whole pool allocated, far more than a run charges.
		licence.Tokens, licence.TokensPerAttempt = accountTokens*int64(sc.Accounts), 1
		for a := range sc.Accounts {
			accts = append(accts, fmt.Appendf(nil, "acct-%05d", a+1))
		}
	}
	account := func(a int) []byte {
		if a < 0 {
			return nil
		}
		return accts[a]
	}
	licensed := map[string]admission.Limits{}
	for _, s := range svcs {
		licensed[s] = licence
	}
	members := sc.Nodes
	if sc.Reference {
		members, names = 1, names[:1]
	}
	nodes := make([]*node, members)
	srcs := make([]*source, sc.Nodes)
	for i := range srcs {
		srcs[i] = newSource(sc.Arrivals, sc.Seed, i)
	}
	// picks choose each attempt's service and account, on streams of
	// their own (none with one service and no account: the arrivals and
	// the network draw as they did before services and accounts).
	var picks []*rand.Rand
	if ns > 1 || len(accts) > 0 {
		picks = make([]*rand.Rand, sc.Nodes)
		for i := range picks {
			picks[i] = rand.New(rand.NewPCG(sc.Seed, uint64(i)+1<<32))
		}
	}
	var q events
	var seq uint64
	push := func(e event) {
		seq++
		e.seq = seq
		heap.Push(&q, e)
	}
	depths := make([]int64, members) // each node's bucket depth, and their sum
	var depthSum int64
	caps := make([]float64, members) // each node's CAPS, and their sum
	var capsSum float64
	for i, name := range names {
		eng := admission.NewEngine(admission.Config{Clock: clk, Burst: sc.Burst})
		sh := cluster.NewShares(eng)
		sh.SetMembers(members) // as a node's cluster does at every exchange
		var first float64
		for _, s := range svcs {
			if err := sh.SetLimits(s, licence); err != nil {
				return Result{}, err
			}
			for _, a := range accts {
				if err := eng.SetAccount(s, string(a), accountTokens, admission.Overage{}); err != nil {
					return Result{}, err
				}
			}
			first += eng.Service(s).Stats().Limits.CAPS
		}
		n := &node{name: name, planner: cluster.NewPlanner(name, cluster.PolicyConfig{ReclaimAfter: 3 * time.Second}, eng.Config().Burst),
			engine: eng, usage: cluster.NewUsageReader(eng), shares: sh, phase: netRng.Int64N(interval),
			admittedBins: make([]int64, bins), lastRefusal: -1, early: -1,
			series: NodeSeries{Name: name, Offered: make([]int64, steps), Admitted: make([]int64, steps), Limit: append([]float64{first}, slices.Repeat([]float64{-1}, steps-1)...), RefusedBelow: make([]int64, steps)}}
		// A formed farm that has exchanged reports before the licence came.
		for _, other := range names {
			n.planner.Joined(epoch.Add(-time.Second), other)
			n.planner.Heard(epoch, other, cluster.Report{})
		}
		nodes[i] = n
		push(event{at: n.phase, to: i})
	}

	weights := sc.Skew
	if weights == nil {
		weights = slices.Repeat([]float64{1}, sc.Nodes)
	}
	var wsum float64
	for _, w := range weights {
		wsum += w
	}
	// The node the load moves to at ShiftAt: the one with the least weight.
	target := sc.Nodes - 1
	for i, w := range weights {
		if w < weights[target] {
			target = i
		}
	}
	total := func(t int64) float64 {
		if t < int64(sc.Prelude) {
			return sc.PreludeLoad * sc.CAPS
		}
		r := sc.Load * sc.CAPS
		if sc.Ramp {
			r = sc.RampTo * sc.CAPS * float64(t) / float64(end)
		}
		if sc.FlashAt > 0 && t >= int64(sc.FlashAt) && t < int64(sc.FlashAt+sc.FlashFor) {
			r *= sc.FlashFactor
		}
		return r
	}
	// The instants at which the offered rates change at once; a ramp
	// changes them all the time, so its rate is taken again every 10 ms.
	var changes []int64
	for _, at := range []time.Duration{sc.Prelude, sc.ShiftAt, sc.FlashAt, sc.FlashAt + sc.FlashFor} {
		if at > 0 {
			changes = append(changes, int64(at))
		}
	}
	nextChange := func(t int64) int64 {
		next := end
		if sc.Ramp {
			next = t + int64(10*time.Millisecond)
		}
		for _, c := range changes {
			if c > t {
				next = min(next, c)
			}
		}
		return next
	}
	for _, src := range srcs {
		src.change = nextChange
	}
	rates := make([]func(int64) float64, sc.Nodes)
	for i := range srcs {
		rates[i] = func(t int64) float64 {
			if sc.ShiftAt > 0 && t >= int64(sc.ShiftAt) {
				if i == target {
					return total(t)
				}
				return 0
			}
			return total(t) * weights[i] / wsum
		}
	}

	gossip := make([]NodeGossip, members)
	heads := make([]ledger.Witness, members)
	for i, name := range names {
		gossip[i].Name, heads[i] = name, ledgerHead(name)
	}
	covered := int64(-1) // the first plan after a shift at which the load's new node covered it
	// planEarly schedules an early plan of node i from instant t, as soon
	// as its planner allows, unless one is due already.
	planEarly := func(i int, t int64) {
		n := nodes[i]
		if n.early >= 0 {
			return
		}
		n.early = max(int64(n.planner.EarlyAt(epoch.Add(time.Duration(t))).Sub(epoch)), t)
		push(event{at: n.early, to: i, early: true})
	}
	var res Result
	res.Scenario = sc
	step := int64(time.Millisecond)
	arrivals := slices.Repeat([]int64{-1}, sc.Nodes)
	// spills are attempts a node's bucket refused, on their way to the
	// member it asked to decide them instead.
	var spills []spill
	oneWay := func() int64 {
		d := int64(sc.Net.Delay)
		if sc.Net.Jitter > 0 {
			d += int64(netRng.ExpFloat64() * float64(sc.Net.Jitter))
		}
		return max(d, 1)
	}
	index := map[string]int{}
	for i, name := range names {
		index[name] = i
	}
	for t := int64(0); t < end; t += step {
		stepEnd := min(t+step, end)
		slices.SortFunc(spills, func(a, b spill) int { return cmp.Compare(a.at, b.at) })
		k := 0
		var again []spill // refused, on their way to the next member
		for ; k < len(spills) && spills[k].at < stepEnd; k++ {
			sp := spills[k]
			n, from := nodes[sp.to], nodes[sp.from]
			d := n.engine.AdmitSpilled(base+sp.at, svcB[sp.svc], nil, account(sp.acct), admission.Normal)
			res.Spilled++
			if d.Reason == admission.OK {
				from.engine.SpilledOut(svcB[sp.svc], nil)
				res.SpilledAdmitted++
				res.Admitted++
				res.Refused--
				if sp.below {
					res.RefusedBelow--
					from.series.RefusedBelow[sp.sent/int64(Step)]--
				}
				n.admittedBins[sp.at/int64(10*time.Millisecond)]++
				from.series.Admitted[sp.sent/int64(Step)]++
			} else {
				// The refusal reaches the node a one-way delay later; it asks
				// the next member with room, if any, as the node does.
				back := sp.at + oneWay()
				from.planner.SpillRefused(svcs[sp.svc], n.name)
				if sp.tries+1 < cluster.SpillTries {
					if to, ok := from.planner.SpillTo(epoch.Add(time.Duration(back)), svcs[sp.svc], perCAPS); ok {
						again = append(again, spill{at: back + oneWay(), sent: sp.sent, from: sp.from, to: index[to], below: sp.below,
							tries: sp.tries + 1, svc: sp.svc, acct: sp.acct})
						continue
					}
				}
				from.engine.Refused(svcB[sp.svc], nil, admission.CAPS)
				from.lastRefusal = max(from.lastRefusal, sp.sent)
			}
		}
		spills = append(spills[k:], again...)
		for i, src := range srcs {
			n := nodes[min(i, members-1)]
			if arrivals[i] < 0 {
				arrivals[i] = src.next(end, rates[i])
			}
			for arrivals[i] < stepEnd {
				at := arrivals[i]
				k, acct := 0, -1
				if picks != nil {
					k = picks[i].IntN(ns)
					if len(accts) > 0 {
						acct = picks[i].IntN(len(accts))
					}
				}
				d := n.engine.AdmitSpillable(base+at, svcB[k], nil, account(acct), admission.Normal)
				below := total(at) <= sc.CAPS
				res.Offered++
				n.series.Offered[at/int64(Step)]++
				if below {
					res.OfferedBelow++
				}
				if d.Reason == admission.OK {
					res.Admitted++
					n.admittedBins[at/int64(10*time.Millisecond)]++
					n.series.Admitted[at/int64(Step)]++
				} else {
					res.Refused++
					if below {
						res.RefusedBelow++
						n.series.RefusedBelow[at/int64(Step)]++
					}
					if d.Reason != admission.CAPS {
						n.lastRefusal = at // tokens: counted by the engine, not spilled
					} else if to, ok := n.planner.SpillTo(epoch.Add(time.Duration(at)), svcs[k], perCAPS); ok && members > 1 {
						spills = append(spills, spill{at: at + oneWay(), sent: at, from: min(i, members-1), to: index[to], below: below,
							svc: k, acct: acct})
					} else {
						n.engine.Refused(svcB[k], nil, admission.CAPS) // as the node counts it
						n.lastRefusal = at
					}
				}
				arrivals[i] = src.next(end, rates[i])
			}
		}
		for i, n := range nodes {
			if stepEnd%int64(checkEvery) != 0 || n.early >= 0 {
				continue
			}
			for _, s := range svcs {
				if _, avail := n.engine.Service(s).Bucket(admission.At(base + stepEnd)); n.planner.Starved(s, avail) {
					planEarly(i, stepEnd)
					break
				}
			}
		}
		for q.Len() > 0 && q[0].at < stepEnd {
			e := heap.Pop(&q).(event)
			now := epoch.Add(time.Duration(e.at))
			n := nodes[e.to]
			if e.rep != nil {
				if n.planner.Heard(now, e.from, *e.rep) {
					planEarly(e.to, e.at)
				}
				continue
			}
			clk.Set(base + e.at)
			u := n.usage.Read()
			var p cluster.Plan
			if e.early {
				n.early = -1
				p = n.planner.PlanNow(now, names, licensed, u)
			} else {
				p = n.planner.Plan(now, names, licensed, u)
			}
			for _, s := range svcs {
				if sh, ok := p.Parts[s]; ok {
					if err := n.shares.SetShare(s, sh); err != nil {
						return Result{}, err
					}
				}
			}
			rep := p.Report
			if observe != nil {
				observe(e.to, rep)
			}
			g := &gossip[e.to]
			size := cluster.ReportWireSize(heads[e.to], rep)
			g.Reports++
			if e.early {
				g.Early++
			}
			g.Bytes += int64(size) * int64(members-1)
			g.Largest = max(g.Largest, size)
			for j := range nodes {
				if j == e.to || (sc.Net.Loss > 0 && netRng.Float64() < sc.Net.Loss) {
					continue
				}
				delay := int64(sc.Net.Delay)
				if sc.Net.Jitter > 0 {
					delay += int64(netRng.ExpFloat64() * float64(sc.Net.Jitter))
				}
				push(event{at: e.at + max(delay, 1), to: j, from: n.name, rep: &rep})
			}
			if !e.early {
				push(event{at: e.at + interval, to: e.to})
			}
			// The node's bucket depths and CAPS, over its services.
			var depth int64
			var enforced float64
			for _, s := range svcs {
				st := n.engine.Service(s).Stats()
				depth += st.Burst
				enforced += st.Limits.CAPS
			}
			if sc.ShiftAt > 0 && covered < 0 && e.to == min(target, members-1) && e.at >= int64(sc.ShiftAt) && enforced >= total(e.at) {
				covered = e.at
			}
			if k := e.at / int64(Step); k < int64(steps) {
				n.series.Limit[k] = enforced
			}
			depthSum += depth - depths[e.to]
			depths[e.to] = depth
			res.Burst = max(res.Burst, depthSum)
			capsSum += enforced - caps[e.to]
			caps[e.to] = enforced
			res.MaxCAPS = max(res.MaxCAPS, capsSum)
		}
	}
	for _, n := range nodes {
		// Carry the enforced limit over steps without an exchange.
		for k := 1; k < steps; k++ {
			if n.series.Limit[k] < 0 {
				n.series.Limit[k] = n.series.Limit[k-1]
			}
		}
		res.Series = append(res.Series, n.series)
	}
	farm := make([]int64, bins)
	for _, n := range nodes {
		for b, k := range n.admittedBins {
			farm[b] += k
		}
	}
	res.Gossip = gossip
	res.Worst1s = worstWindow(farm, 100)
	res.Worst10s = worstWindow(farm, 1000)
	if sc.ShiftAt > 0 {
		res.Covered = -1
		if covered >= 0 {
			res.Covered = time.Duration(covered - int64(sc.ShiftAt))
		}
		switch last := nodes[min(target, members-1)].lastRefusal; {
		case last < int64(sc.ShiftAt):
			res.Converge = 0
		case last >= end-int64(time.Second):
			res.Converge = -1
		default:
			res.Converge = time.Duration(last - int64(sc.ShiftAt))
		}
	}
	return res, nil
}

// worstWindow is the largest sum of w consecutive bins (all of them when
// there are fewer).
func worstWindow(bins []int64, w int) int64 {
	var sum, best int64
	for i, k := range bins {
		sum += k
		if i >= w {
			sum -= bins[i-w]
		}
		best = max(best, sum)
	}
	return best
}
