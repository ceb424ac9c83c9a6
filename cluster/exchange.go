package cluster

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/capsgate/capsgate/admission"
	"github.com/hashicorp/memberlist"
)

// ExchangeInterval is how often a node measures its demand, sends it to
// every member and recomputes its shares.
const ExchangeInterval = 100 * time.Millisecond

// staleAfter is when a peer's demand report counts as missing (10 missed
// exchanges): the peer keeps its floor only.
const staleAfter = time.Second

// demandMsg is a member's report on the wire, with its ledger head.
type demandMsg struct {
	Node     string `json:"n"`
	HeadSeq  uint64 `json:"ls,omitempty"`
	HeadHash string `json:"lh,omitempty"`
	HeadKey  string `json:"lk,omitempty"`
	Genesis  string `json:"lg,omitempty"`
	Report
}

// exchangeState is what StepExchange keeps between steps.
type exchangeState struct {
	next  time.Time // when the next exchange is due; zero: one interval from the first step
	early time.Time // when an early plan is due; zero: none
	// heard: a member's report called for an early plan (Planner.Heard)
	// since the last step.
	heard atomic.Bool
}

// Woken receives a signal when a member's report calls for an early plan:
// the caller of StepExchange steps it at once.
func (c *Cluster) Woken() <-chan struct{} { return c.wake }

// StepExchange plans this node's parts, applies them and sends its report
// to every member every ExchangeInterval, and between exchanges as soon as
// the planner allows when a member's report or one of this node's buckets
// calls for it (Planner.Heard, Planner.Starved). It is due again after
// StarvedCheck. The report goes out after the plan, with the token budgets
// just planned: they apply at the next exchange, after the others have
// them. Call it from one goroutine.
func (c *Cluster) StepExchange(now time.Time) time.Duration {
	if c.stopped() {
		return StarvedCheck
	}
	c.noteWall()
	ex := &c.ex
	if ex.next.IsZero() {
		ex.next = now.Add(ExchangeInterval)
	}
	if ex.heard.Swap(false) && ex.early.IsZero() {
		c.mu.Lock()
		ex.early = c.planner.EarlyAt(now)
		c.mu.Unlock()
	}
	switch {
	case !now.Before(ex.next):
		c.send(c.plan(now, true))
		ex.next = now.Add(ExchangeInterval)
		ex.early = time.Time{}
	case !ex.early.IsZero() && !now.Before(ex.early):
		c.send(c.plan(now, false))
		ex.early = time.Time{}
	case ex.early.IsZero() && c.starved():
		c.mu.Lock()
		ex.early = c.planner.EarlyAt(now)
		c.mu.Unlock()
	}
	return StarvedCheck
}

// starved reports whether one of this node's licensed buckets has spent
// half of what it was planned to hold (Planner.Starved). It runs every
// StarvedCheck. Of the licences it looks at those whose bucket the engine
// says was taken from (Engine.DrainSpent) since the last plan, or is not
// full since: a bucket full and untouched since the last plan only fills
// while nothing takes from it, and has spent nothing. A farm's 1,000 idle
// licences cost the check nothing, where it read each one's bucket every
// 10 ms. (That read also fired for a full bucket whose applied part waits
// below the part computed for it, lent being of the latter: an early plan
// then gains nothing until another member makes room, and its report
// calls for one then: Planner.Heard.) A closed or unlimited bucket is let
// go. Of the trunk keys it walks those the last plan named
// (watchStarved), a list each plan rebuilds in the same loop, never while
// starved reads it.
func (c *Cluster) starved() bool {
	clock := c.cfg.Engine.Clock()
	c.mu.Lock()
	plans, watch := c.plans, c.watch
	c.mu.Unlock()
	// spending is the exchange loop's own (starved and plan run there
	// only): the lock is taken again only to read what each plan lent, once
	// a plan, never for the walk (a spill and a member's report wait for
	// it).
	if c.spending == nil {
		c.spending = map[*admission.Service]spendingWatch{}
	}
	c.cfg.Engine.DrainSpent(func(s *admission.Service) {
		w := c.spending[s]
		w.spentAt = plans
		c.spending[s] = w
	})
	stale := c.stale[:0]
	for s, w := range c.spending {
		if !w.known || w.plan != plans {
			stale = append(stale, s)
		}
	}
	if len(stale) > 0 {
		c.mu.Lock()
		for _, s := range stale {
			w := c.spending[s]
			w.lent, w.watched = c.planner.Watched(s.Name())
			w.plan, w.known = plans, true
			c.spending[s] = w
		}
		c.mu.Unlock()
		clear(stale)
	}
	c.stale = stale
	for s, w := range c.spending {
		depth, avail := s.Bucket(clock)
		if depth <= 0 {
			// Closed (the licence expired or was removed: nothing takes
			// from it again) or unlimited: nothing to starve.
			delete(c.spending, s)
			continue
		}
		if w.watched && float64(2*avail) <= w.lent {
			return true
		}
		if w.spentAt < plans && avail >= depth {
			delete(c.spending, s)
		}
	}
	for _, w := range watch {
		if _, avail := w.bucket.Bucket(clock); float64(2*avail) <= w.lent {
			return true
		}
	}
	return false
}

// spendingWatch is a licence's bucket starved looks at: the plan it was
// last taken from after (spentAt), and what Planner.Watched said of it at
// plan (when known).
type spendingWatch struct {
	spentAt, plan uint64
	known         bool
	watched       bool
	lent          float64
}

// starvedWatch is a bucket starved watches and what the last plan lent it.
type starvedWatch struct {
	bucket interface {
		Bucket(admission.Clock) (int64, int64)
	}
	lent float64
}

// watchStarved lists the trunk keys' buckets starved watches until the
// next plan: those with traffic at this plan (an idle key's bucket cannot
// have been spent: a load new on one is planned at the next exchange, its
// refusals spilled meanwhile), each if Planner.Watched says it can starve.
// A plan moves on the licences' watches (see starved). Called with mu
// held.
func (c *Cluster) watchStarved() {
	c.plans++
	watch := c.watch[:0]
	for _, name := range c.planner.ActiveTrunks() {
		svc, key, _ := admission.SplitTrunk(name)
		if t := c.cfg.Engine.Trunk(svc, key); t == nil {
			continue
		} else if lent, ok := c.planner.Watched(name); ok {
			watch = append(watch, starvedWatch{bucket: t, lent: lent})
		}
	}
	c.watch = watch
}

// send sends this node's report to every member: as one UDP packet when
// it fits in one (a report is about 126 bytes per service with traffic
// and 70 per account charging tokens here: BenchmarkReportSize), over TCP
// otherwise. A packet larger than UDP allows is refused by the socket, and
// the exchange with a node holding hundreds of busy services stopped
// without a word. A TCP send runs beside the exchange, at most one at a
// time per member: one to a member that does not answer is dropped, not
// queued, and the next report supersedes it.
func (c *Cluster) send(r Report) {
	dm := demandMsg{Node: c.cfg.NodeName, Report: r}
	if c.cfg.LedgerHead != nil {
		dm.HeadSeq, dm.HeadHash = c.cfg.LedgerHead()
	}
	if c.cfg.LedgerIdentity != nil {
		dm.HeadKey, dm.Genesis = c.cfg.LedgerIdentity()
	}
	plain, _ := json.Marshal(dm)
	plain = append([]byte{msgDemand}, plain...)
	reportBytes.Update(float64(len(plain)))
	pk := &packing{plain: plain}
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.NodeName {
			continue
		}
		msg := c.packedFor(m, pk)
		if len(msg) <= maxReportPacket {
			if err := c.ml.SendBestEffort(m, msg); err != nil {
				reportErrors.Inc()
				continue
			}
			sent(demandSent, msg)
			continue
		}
		c.sendStream(m, msg)
	}
}

// maxReportPacket is the largest report sent as one UDP packet: a
// datagram holds 65,507 bytes, less memberlist's framing, label and
// encryption.
const maxReportPacket = 60 << 10

// sendStream sends a report too large for a packet to m over TCP, unless
// the last one to m is still on its way.
func (c *Cluster) sendStream(m *memberlist.Node, msg []byte) {
	c.mu.Lock()
	if c.streaming == nil {
		c.streaming = map[string]bool{}
	}
	busy := c.streaming[m.Name]
	c.streaming[m.Name] = true
	c.mu.Unlock()
	if busy {
		reportsSkipped.Inc()
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := c.ml.SendReliable(m, msg)
		c.mu.Lock()
		delete(c.streaming, m.Name)
		c.mu.Unlock()
		if err != nil {
			reportErrors.Inc()
			return
		}
		reportsStreamed.Inc()
		sent(demandSent, msg)
	}()
}

var (
	reportBytes     = metrics.NewPrometheusHistogramExt(`capsgate_cluster_report_bytes`, []float64{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20})
	reportErrors    = metrics.NewCounter(`capsgate_cluster_report_errors_total`)
	reportsStreamed = metrics.NewCounter(`capsgate_cluster_reports_streamed_total`)
	reportsSkipped  = metrics.NewCounter(`capsgate_cluster_reports_skipped_total`)
)

// plan steps the planner (an exchange, or an early plan) with the live
// members, the licences and the engine's counters, applies this node's
// parts and returns the report to send.
func (c *Cluster) plan(now time.Time, exchange bool) Report {
	names := c.liveNames()
	c.cfg.Shares.SetMembers(len(names))
	usage := c.usage.Read()
	c.mu.Lock()
	c.planner.refreshEntries = c.refreshBound()
	if c.licensed == nil {
		c.licensed = map[string]admission.Limits{}
	}
	licensed := c.licensed
	c.planner.LimitsChanged(c.cfg.Shares.SyncLicensed(licensed))
	var p Plan
	began := time.Now()
	if exchange {
		p = c.planner.Plan(now, names, licensed, usage)
	} else {
		p = c.planner.PlanNow(now, names, licensed, usage)
		earlyPlans.Inc()
	}
	c.watchStarved()
	c.mu.Unlock()
	planSeconds.UpdateDuration(began)
	plannedTotal.Add(p.Planned)
	c.spill.room.Store(true)
	for _, name := range p.Reclaimed {
		c.log.Warn("a failed member's part of every licence goes to the live members", "member", name,
			"after", c.cfg.Policy.ReclaimAfter)
	}
	if p.SideChanged {
		c.log.Warn("partition state changed", "to", p.Side.State, "live", p.Side.Live, "known", p.Side.Known,
			"policy", c.cfg.Policy.Policy.String())
	}
	sideFraction.Set(p.Side.Fraction)
	for service, sh := range p.Parts {
		if err := c.cfg.Shares.SetShare(service, sh); err != nil {
			c.log.Error("cannot apply the share", "service", service, "err", err)
		}
	}
	c.cfg.Shares.Planned()
	return p.Report
}

// earlyPlans counts the plans made between exchanges.
var earlyPlans = metrics.NewCounter(`capsgate_cluster_early_plans_total`)

// planSeconds is how long a plan takes (an exchange's or an early one),
// and plannedTotal counts the licences and trunk keys planned in all: a
// farm of many keys shows here what its busy (or unsettled) ones cost.
var (
	planSeconds  = metrics.NewPrometheusHistogramExt(`capsgate_cluster_plan_seconds`, []float64{1e-4, 1e-3, 5e-3, 0.02, 0.05, 0.1, 0.5})
	plannedTotal = metrics.NewCounter(`capsgate_cluster_planned_total`)
)

// sideFraction is the part of each licence this node's side enforces.
var sideFraction = metrics.NewGauge(`capsgate_cluster_side_fraction`, nil)
