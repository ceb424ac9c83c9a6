package cluster

import (
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/sat"
)

// Planner decides this node's part of every licence from what it knows of
// the farm. It is a pure state machine: members' reports, joins, leaves and
// failures are fed in as they happen (Heard, Joined, Gone), and Plan is
// stepped once per exchange with the instant, the live members, the
// licences and this node's own counters. It takes no lock, reads no clock,
// does no I/O and logs nothing; every instant is passed in. Cluster feeds it
// from memberlist and the engine, under its mutex, and applies the Plan; the
// transcript tests (testdata/planner) and the farm simulator (cluster/sim)
// drive it with a fake network and clock.
type Planner struct {
	self   string
	policy PolicyConfig
	burst  float64   // admission.burst in seconds: the licence's depth
	start  time.Time // the first instant Plan saw: the demand meter's zero
	began  bool

	peers map[string]*view // every other member ever heard of
	meter *demandMeter
	side  Side
	// local is this node's last report, sent at localAt; prior the one
	// before it.
	local, prior Report
	localAt      time.Time
	// applied are this node's parts as applied (and reported); budget this
	// node's token budgets as planned.
	applied map[string]Share
	budget  map[string]int64
	// svcs is what a plan keeps of each service it planned, for the next.
	svcs map[string]*svcState
	// lastParts sizes the next plan's parts (see plan); active, stirred
	// and charged are the plan's own, kept for the next (scratchMap).
	lastParts                int
	active, stirred, charged map[string]bool
	// lastPlan is when this node last planned; early counts the early
	// plans it may still make (refilled at earlyRate) as of earlyAt.
	lastPlan, earlyAt time.Time
	early             float64
	// seq numbers the reports sent; heldSent and appliedSent are what
	// they told the others (deltas are made from them); sendWhole asks
	// for the next report whole (a member joined).
	seq     uint64
	book    *accountBook
	scratch []*acctEntry
	// lastNames and lastFraction are the members and side fraction of the
	// last exchange: when they change, every account is planned again.
	lastNames    []string
	lastFraction float64
	heldSent     wireState[Held]
	appliedSent  wireState[Share]
	sendWhole    bool
	// held is the map each report's services are gathered into before a
	// delta is made of it (cleared and filled again at every report: a
	// thousand token budgets were 4 MB a second of garbage); a whole
	// report carries a copy.
	held map[string]Held
	// refreshEntries bounds the entries a delta refreshes (see
	// refreshStretch); refreshEntries unless a test sets fewer, or the
	// cluster more (a member of an earlier release expects every entry in
	// deltaRefresh reports). stretch is the last report's refresh stretch.
	refreshEntries int
	stretch        uint64
	// planEpoch moves on when the members or the side fraction change, and
	// with it every service is planned again (a settled part is of one
	// epoch: see settledPart).
	planEpoch uint64
	planNames []string
	planFrac  float64
	// appliedMoved are the services whose applied parts moved since the
	// last report (its delta is made from them).
	appliedMoved []string
	// unsettled are the services the last plan planned and did not
	// settle (nil: plan every one); licensedID is the licences' map it
	// planned them from (another map: plan every one).
	unsettled  map[string]bool
	licensedID unsafe.Pointer
	// changedLimits name the licences (and keys) whose limits changed in
	// a map the caller keeps (LimitsChanged); changedAll: every one may
	// have.
	changedLimits []string
	changedAll    bool
	// heldMoved are the services whose Held entry in a member's report
	// changed since the last plan.
	heldMoved map[string]bool
	// heard is Heard's scratch: what a report may change, as it was.
	heard map[string]heardBefore
	// activeTrunks are the trunk keys some member was active on at the
	// last plan (ActiveTrunks).
	activeTrunks []string
}

// svcState is what the planner keeps of one service (a licence or a key)
// from one plan to the next, reached by one lookup: a plan of 1,000 busy
// licences looked each up in eight maps by name, a fifth of its time.
type svcState struct {
	// computed are this node's parts as computed at the last exchange (a
	// token budget applies one exchange late), when hasComputed.
	computed    Share
	hasComputed bool
	// wanted are this node's CAPS and depth parts as last computed, before
	// the rise cap: a part applied below them waits for room.
	wanted Share
	// saturated: its demand took all the side's licence at the last plan
	// (nothing to gain from planning again early). wants is what the
	// members wanted of its CAPS at the last plan (Allocate: demand and
	// debt, at least the floor, summed) and half half the side's licence;
	// limit is the licence's CAPS.
	saturated          bool
	wants, half, limit float64
	// weight is this node's part of its CAPS at the last plan, and lent
	// the attempts its bucket was planned to hold then (lent and its
	// reserve); watched: they were planned (a CAPS limit, this node live).
	// whole is the licence's depth then (admission.WholeDepth).
	weight, lent, whole float64
	watched             bool
	// since is when this node first planned it (see riseCap).
	since time.Time
	// shares is every member's CAPS share, as last computed, in the order
	// of planNames (nil: none).
	shares []float64
	// settled is what it settled on, when isSettled: a plan would leave
	// its parts as they are (see settledPart).
	settled   settledPart
	isSettled bool
}

// ActiveTrunks returns the trunk keys (admission.TrunkName) some member
// demanded at the last plan, or whose holding (sessions, attempts owed)
// moved here or at another member; the caller must not keep the slice
// past the next plan.
func (p *Planner) ActiveTrunks() []string { return p.activeTrunks }

// settledPart is what a quiet service's parts were planned from when a
// plan left them as they were: no member demands it, what this node
// holds and owes of it did not move since its last two reports, nor what
// the others hold of it (their reports' Held) since the plan before, and
// the parts it applies are those it computes. The next plan with the same members, side and limits
// would compute the same parts and apply them whatever the others report
// (a part that does not rise does not wait for room), so it is not
// planned again until one of these moves: a farm's 100,000 idle trunk
// keys cost an exchange nothing. A service with a limited token pool
// settles too when, besides, no member charges its pool or an account's
// (no token rate anywhere), no account of it is left to plan (the book's
// dirty ones, which include those whose budget still moves), its budget
// came out the same at two exchanges in a row and its accounts' applied
// budgets did not move: its budgets would come out the same again. Its
// pool and allocations are in the settled part. A farm of 1,000 licences
// with token pools planned each of them at every plan: a fifth of an idle
// member's CPU with 100,000 accounts.
type settledPart struct {
	epoch                 uint64
	caps, licensedCAPS    float64
	sessions, subscribers int64
	burst                 int64
	tokens, allocated     int64
}

func settledOf(epoch uint64, l admission.Limits, allocated int64) settledPart {
	return settledPart{epoch: epoch, caps: l.CAPS, licensedCAPS: l.LicensedCAPS, sessions: l.Sessions, subscribers: l.Subscribers, burst: l.Burst,
		tokens: l.Tokens, allocated: allocated}
}

// Early plans (PlanNow) come at least earlyGap after any plan and at most
// earlyRate a second after a burst of earlyBurst: a node whose buckets run
// low or whose peers move gets its part within milliseconds instead of one
// to two exchanges, while reports sent in all stay within three times what
// the exchange alone sends.
const (
	earlyGap   = 10 * time.Millisecond
	earlyRate  = 20.0
	earlyBurst = 5.0
)

// RepayIn is how soon a node's bucket in debt asks to be repaid.
const RepayIn = time.Second

// StarvedCheck is how often a node asks Starved of its buckets between
// exchanges.
const StarvedCheck = 10 * time.Millisecond

// EarlyAt returns the first instant from now at which an early plan may run.
func (p *Planner) EarlyAt(now time.Time) time.Time {
	at := p.lastPlan.Add(earlyGap)
	if at.Before(now) {
		at = now
	}
	if tok := p.earlyTokens(at); tok < 1 {
		at = at.Add(time.Duration((1 - tok) / earlyRate * float64(time.Second)))
	}
	return at
}

func (p *Planner) earlyTokens(at time.Time) float64 {
	if p.earlyAt.IsZero() {
		return earlyBurst
	}
	return min(earlyBurst, p.early+max(at.Sub(p.earlyAt).Seconds(), 0)*earlyRate)
}

// view is what this node knows of another member.
type view struct {
	report Report
	// owned: report's Held and Applied are this view's own (a delta may
	// be merged into them); wholeSeq is the sender's last whole report,
	// lastSeq its last report; namedHeld and namedApplied, the report
	// that last named each entry since wholeSeq.
	owned                   bool
	wholeSeq, lastSeq       uint64
	namedHeld, namedApplied map[string]uint64
	// services is report.Held but for the accounts' pools (the
	// licences' and trunk keys' entries), kept beside it by take: a plan
	// looks up each busy licence in every member's report, and among a
	// farm's 100,000 accounts (101,000 entries, megabytes a member) each
	// lookup missed the cache — a fifth of planning 1,000 busy licences
	// (BenchmarkExchangeWithServices).
	services map[string]Held
	// stretch is the largest refresh stretch the sender said since its
	// last whole report (at least 1): an entry it has not named for
	// deltaExpire × stretch reports is forgotten.
	stretch uint64
	heard   time.Time // when its last report arrived
	// promised is, per service, the room of its CAPS and of its depth
	// that this node's plans left to this member since its last report
	// (roomFor): not this node's to take on a later plan until then.
	// Without it, a node that planned again before another's rise was
	// reported (an early plan, then its exchange) took its part of the
	// other's room a second time: 10 members under a load rising to twice
	// the licence summed parts of up to 1,001.94 of 1,000 for a moment, 5
	// of 80 seeded runs above 1,000.1 (sim.TestPartsInForceWhateverTheSeed).
	// Kept by member, it outlives a change of the members (a member that
	// leaves frees its part at once: the room promised to another is not
	// freed with it); a report clears it.
	promised map[string][2]float64
	// joinedAt is when it last joined: a report heard before is stale.
	joinedAt time.Time
	dead     bool
	left     bool // it left gracefully: its part is free at once
	// reclaimed: declared dead long enough that its part went to the live.
	reclaimed bool
	deadAt    time.Time
	// spilled counts, per service, the attempts this node sent it to
	// decide since its last report (SpillTo).
	spilled map[string]int64
}

// Report is what a node tells every member at each exchange: per service,
// its demand (attempts per second offered to the licence), the rate at
// which it charges each token pool, what it holds (sessions, subscribers,
// tokens charged and its token budget) and the parts it applies.
//
// Seq numbers a member's reports from 1 as it sends them; a Delta report
// carries only part of Held and Applied (see deltaAbove), to be merged
// into what the receiver holds of the sender.
type Report struct {
	Demand    map[string]float64 `json:"d"`
	TokenRate map[string]float64 `json:"r,omitempty"`
	Held      map[string]Held    `json:"h,omitempty"`
	Applied   map[string]Share   `json:"a,omitempty"`
	Seq       uint64             `json:"q,omitempty"`
	Delta     bool               `json:"p,omitempty"`
	// Stretch is the sender's refresh stretch (refreshStretch), when above
	// 1: a delta refreshes each entry once in deltaRefresh × Stretch
	// reports.
	Stretch uint64 `json:"k,omitempty"`
}

// Bounds of what a member's report may say (Report.bound): far beyond
// any real figure, and low enough that no product of them with a licence
// overflows to an infinity (and from there to NaN).
const (
	maxReportRate = 1e12 // attempts or tokens a second
	maxReportPart = 1e6  // a part of a licence (a fraction, or -1)
)

// bound keeps a member's report within what a member can say, whatever
// it sent (a bug, another release): rates and parts finite and not below
// 0 (a part may be -1, none), holdings and debts not below 0. A demand of
// 1e306 made a share +Inf and the plans NaN, which fails open; a negative
// debt lent this node the licence's whole depth; a negative budget
// inflated the pool left. Only a figure out of bounds is written.
func (r *Report) bound() {
	for k, d := range r.Demand {
		if b := boundRate(d); b != d {
			r.Demand[k] = b
		}
	}
	for k, d := range r.TokenRate {
		if b := boundRate(d); b != d {
			r.TokenRate[k] = b
		}
	}
	for k, h := range r.Held {
		if h.Sessions < 0 || h.Subscribers < 0 || h.Tokens < 0 || h.Owed < 0 || h.Budget < 0 {
			h.Sessions, h.Subscribers, h.Tokens, h.Owed, h.Budget = max(h.Sessions, 0), max(h.Subscribers, 0), max(h.Tokens, 0), max(h.Owed, 0), max(h.Budget, 0)
			r.Held[k] = h
		}
	}
	for k, a := range r.Applied {
		b := a
		b.CAPS, b.Sessions, b.Subscribers, b.Depth = boundPart(a.CAPS), boundPart(a.Sessions), boundPart(a.Subscribers), boundPart(a.Depth)
		if b.CAPS != a.CAPS || b.Sessions != a.Sessions || b.Subscribers != a.Subscribers || b.Depth != a.Depth {
			r.Applied[k] = b
		}
	}
}

func boundRate(x float64) float64 {
	if !(x > 0) { // NaN too
		return 0
	}
	return min(x, maxReportRate)
}

func boundPart(x float64) float64 {
	if x == -1 {
		return -1
	}
	if !(x > 0) {
		return 0
	}
	return min(x, maxReportPart)
}

// Usage is this node's counters at one instant, as the engine tells them.
type Usage []ServiceUsage

// ServiceUsage is one service's counters on this node.
type ServiceUsage struct {
	Name string
	// Offered counts the attempts that reached the licence checks: admitted
	// or refused by a licence limit (not UNLICENSED, not OVERLOAD).
	Offered     uint64
	Sessions    int64
	Subscribers int64
	// PoolUsed is what this node has charged to the service's unallocated
	// pool this period.
	PoolUsed int64
	// Depth is the depth of the service's CAPS bucket here and Avail the
	// attempts it would admit at once (both -1: unlimited).
	Depth, Avail int64
	// Accounts are the accounts' allocations: their size and what this
	// node has charged to each.
	Accounts []AccountUsage
	// Resumed: the reads before this one left the service out as quiet
	// (UsageReader), its counters unmoved until the last of them: its
	// meters resume as if it had been read at every plan since.
	Resumed bool
	// Carried: this read left the service out as quiet but for the tokens
	// it charged this period, which PoolUsed repeats from its last read
	// (the other counters are not given): it holds them, and its meters
	// take no sample, as for a service left out.
	Carried bool
}

// AccountUsage is one account's allocation as this node sees it.
type AccountUsage struct {
	Account string
	Size    int64
	Used    int64
}

// Plan is what one exchange decided.
type Plan struct {
	// Parts are this node's parts of each licensed service, to apply.
	Parts map[string]Share
	// Report goes to every member.
	Report Report
	// Side is this node's side of the cluster; SideChanged says it differs
	// from the previous plan's.
	Side        Side
	SideChanged bool
	// Reclaimed names the failed members whose part went to the live ones
	// at this exchange.
	Reclaimed []string
	// Planned counts the licences and keys planned (the others had
	// settled and nothing moved on them).
	Planned int
}

// NewPlanner returns the planner of node self under a partition policy,
// for engines whose CAPS buckets are burst deep (admission.burst).
func NewPlanner(self string, policy PolicyConfig, burst time.Duration) *Planner {
	return &Planner{self: self, policy: policy, burst: burst.Seconds(), peers: map[string]*view{}, meter: newDemandMeter(), sendWhole: true, book: newAccountBook(), refreshEntries: refreshEntries,
		heldSent: wireState[Held]{eq: sameHeld}, appliedSent: wireState[Share]{eq: sameApplied},
		side:    Side{State: SideWhole, Fraction: 1, Live: 1, Known: 1},
		applied: map[string]Share{}, budget: map[string]int64{}, svcs: map[string]*svcState{}, heldMoved: map[string]bool{}}
}

func (p *Planner) peer(name string) *view {
	v := p.peers[name]
	if v == nil {
		v = &view{}
		p.peers[name] = v
	}
	return v
}

// Heard takes a member's report, arrived at now. It returns whether the
// report calls for this node to plan again before its next exchange
// (PlanNow): the sender made room this node is waiting for (a part of it
// fell while this node's part is held below what it computed), its demand
// moved by a tenth or more, or its bucket owes half its depth or more —
// in each case unless the service's demand already takes the whole
// licence, where planning early gains nothing.
func (p *Planner) Heard(now time.Time, from string, r Report) bool {
	if from == p.self || from == "" {
		return false
	}
	r.bound()
	v := p.peer(from)
	if r.Delta && r.Seq <= v.lastSeq {
		return false // an older report, arrived late
	}
	// What the report may change, for the tests below: every service
	// this node plans is checked against what the sender said before.
	// Only what the report names (a delta: what changed) or what the
	// sender named before it (a demand that ended) can have moved: a
	// farm's 100,000 idle trunk keys are not looked at per report.
	if p.heard == nil {
		p.heard = make(map[string]heardBefore, len(r.Applied)+len(r.Demand))
	}
	old := p.heard
	defer func() {
		if len(old) > heardKeep {
			p.heard = nil // a whole report of a large farm's: not kept at that size
		} else {
			clear(old)
		}
	}()
	note := func(service string) {
		if _, done := old[service]; done {
			return // named twice (a demand in this report and the last)
		}
		if st := p.svcs[service]; st != nil {
			old[service] = heardBefore{st, v.report.Applied[service], v.report.Demand[service], v.services[service].Owed}
		}
	}
	for service := range r.Applied {
		note(service)
	}
	for service := range r.Demand {
		note(service)
	}
	for service := range r.Held {
		note(service)
	}
	for service := range v.report.Demand {
		note(service)
	}
	if !r.Delta {
		for service := range v.report.Applied {
			note(service)
		}
		for service := range v.services { // no account is planned as a service
			note(service)
		}
	}
	v.take(r, func(key string) {
		if isAccountKey(key) {
			p.book.markKey(key)
		} else {
			p.heldMoved[key] = true
		}
	})
	v.heard, v.spilled = now, nil
	urgent := false
	for service, prev := range old {
		st := prev.st
		w := st.wanted
		a, ok := v.report.Applied[service]
		if !ok {
			continue
		}
		// A depth part waiting for room gains nothing from it while this
		// node's bucket is full (it owed nothing when last measured): its
		// own starved check plans early once it spends. Depth parts move
		// with every member's debt, a few attempts at a time.
		mine := p.applied[service]
		if (a.CAPS < prev.applied.CAPS && w.CAPS > mine.CAPS+1e-9) || (a.Depth < prev.applied.Depth && w.Depth > mine.Depth+1e-9 && p.local.Held[service].Owed > 0) {
			return true
		}
		if st.saturated {
			continue
		}
		// A demand that moved by a tenth, unless what the members want,
		// with the rise, stays within half the licence: every part is
		// then at least 1.9 times what its member wants (Allocate), and
		// the next exchange moves the parts soon enough. A farm far below
		// its licences, where each of 1,000 busy services moves by a tenth
		// in some report by chance, so does not plan at every report.
		// So does a member that wants more than the part it applies (a
		// member that joined: none), and rises heard since the last plan
		// add up.
		d, od := v.report.Demand[service], prev.demand
		owes := v.services[service].Owed
		if math.Abs(d-od) >= max(0.1*od, 1) && (st.wants+max(d-od, 0) > st.half || d+float64(owes)/RepayIn.Seconds() > a.CAPS*st.limit) {
			urgent = true
		}
		st.wants += max(d-od, 0)
		// Its bucket owes more: this node would lend it a token or more,
		// and it owes a quarter of its depth part or more. A bucket that
		// owes less is far from dry before the next exchange, and plans
		// early itself once it has spent half of what it was lent
		// (Starved); a farm far below its licences, where buckets owe a
		// few attempts at every report, so does not plan at every one.
		if owed := float64(owes - prev.owed); owed*st.weight >= 1 && float64(owes) >= a.Depth*st.whole/4 {
			urgent = true
		}
	}
	return urgent
}

// heardBefore is what a member's report said of a service before the
// next one (Heard).
type heardBefore struct {
	st      *svcState
	applied Share
	demand  float64
	owed    int64
}

// heardKeep bounds the services Heard's scratch keeps room for between
// reports: a farm's busy licences, not every key of a whole report.
const heardKeep = 4096

// take makes a report what this view holds of its sender: a whole one
// replaces it, a delta is merged into it. moved is told every Held entry
// that changed.
func (v *view) take(r Report, moved func(key string)) {
	// A report sent after the last one taken clears what was promised to
	// its sender (a whole report sent before a delta taken may arrive
	// after it: it says nothing of a rise since). A map that grew past
	// promisedKeep entries (every key of a farm planned again after a
	// member left) is let go rather than kept at that size.
	if r.Seq > v.lastSeq || v.lastSeq == 0 {
		if len(v.promised) > promisedKeep {
			v.promised = nil
		}
		clear(v.promised)
	}
	v.lastSeq = r.Seq
	if !r.Delta {
		services := make(map[string]Held, len(v.services))
		for k, h := range r.Held {
			if v.report.Held[k] != h {
				moved(k)
			}
			if !isAccountKey(k) {
				services[k] = h
			}
		}
		for k := range v.report.Held {
			if _, ok := r.Held[k]; !ok {
				moved(k)
			}
		}
		v.report, v.owned, v.wholeSeq, v.namedHeld, v.namedApplied = r, false, r.Seq, nil, nil
		v.stretch = min(max(r.Stretch, 1), maxStretch)
		v.services = services
		return
	}
	v.stretch = max(v.stretch, min(r.Stretch, maxStretch), 1)
	if !v.owned {
		// The whole report may be shared with other receivers (the
		// simulator's); merge into copies.
		v.report.Held, v.report.Applied = maps.Clone(v.report.Held), maps.Clone(v.report.Applied)
		if v.report.Held == nil {
			v.report.Held = map[string]Held{}
		}
		if v.report.Applied == nil {
			v.report.Applied = map[string]Share{}
		}
		v.owned, v.namedHeld, v.namedApplied = true, map[string]uint64{}, map[string]uint64{}
	}
	v.report.Demand, v.report.TokenRate = r.Demand, r.TokenRate
	merge(v.report.Held, r.Held, v.namedHeld, r.Seq, sameHeld, moved)
	merge(v.report.Applied, r.Applied, v.namedApplied, r.Seq, sameApplied, func(string) {})
	if v.services == nil {
		v.services = map[string]Held{}
	}
	for k := range r.Held {
		if isAccountKey(k) {
			continue
		}
		if h, ok := v.report.Held[k]; ok {
			v.services[k] = h
		} else {
			delete(v.services, k)
		}
	}
	if after := deltaExpire * v.stretch; r.Seq%deltaRefresh == 0 && r.Seq > after {
		expire(v.report.Held, v.namedHeld, v.wholeSeq, r.Seq-after, func(k string) {
			if !isAccountKey(k) {
				delete(v.services, k) // expire forgets every key it names
			}
			moved(k)
		})
		expire(v.report.Applied, v.namedApplied, v.wholeSeq, r.Seq-after, func(string) {})
	}
}

// held returns what the member last reported holding of key (a licence,
// a trunk key or an account's pool).
func (v *view) held(key string) Held {
	if isAccountKey(key) {
		return v.report.Held[key]
	}
	return v.services[key]
}

// Starved reports whether this node's bucket for service, with avail
// attempts left, has spent half of what the last plan left in it while
// the licence is not all taken: a moment to plan again before the next
// exchange (PlanNow).
func (p *Planner) Starved(service string, avail int64) bool {
	lent, watched := p.Watched(service)
	return watched && float64(2*avail) <= lent
}

// Watched returns what the last plan left in this node's bucket for
// service, and whether Starved can hold for it until the next plan (it was
// planned, and its licence is not all taken).
func (p *Planner) Watched(service string) (lent float64, watched bool) {
	st := p.svcs[service]
	if st == nil {
		return 0, false
	}
	return st.lent, st.watched && !st.saturated
}

// Joined records that a member joined (or came back) at now: what it
// reported before counts no more. It returns whether the member was gone,
// and since when.
func (p *Planner) Joined(now time.Time, name string) (back bool, since time.Time) {
	if name == p.self {
		return false, time.Time{}
	}
	v := p.peer(name)
	back, since = v.dead, v.deadAt
	// It knows nothing of what this node sent before; and it may have
	// restarted, numbering its reports from 1 again.
	p.sendWhole, v.lastSeq, p.book.allDirty = true, 0, true
	v.dead, v.left, v.reclaimed, v.joinedAt = false, false, false, now
	return back, since
}

// Gone records that a member left at now: gracefully (its part is free at
// once) or not (a failure: it keeps its part until reclaimed).
func (p *Planner) Gone(now time.Time, name string, graceful bool) {
	v, ok := p.peers[name]
	if !ok {
		return
	}
	v.dead, v.left, v.deadAt = true, graceful, now
	v.promised = nil // not live: nothing is promised to it (roomFor)
	p.book.allDirty = true
}

// promisedKeep bounds the promises a view keeps its map's room for.
const promisedKeep = 1024

// SendWhole makes the next report whole: a member missed the whole ones.
func (p *Planner) SendWhole() { p.sendWhole = true }

// Known reports whether name was ever heard of, and whether it is gone.
func (p *Planner) Known(name string) (known, gone bool) {
	v, ok := p.peers[name]
	return ok, ok && v.dead
}

// Plan measures this node's demand from its counters at now and decides its
// part of every licensed service among the live members (this node among
// them, sorted or not), in name order so that every node computes the same
// vectors from the same reports: CAPS by demand, sessions and subscribers
// by what each node holds (so a node never gets less than it holds while
// the licence covers everyone, and the spare is split), tokens by the rate
// each node charges them. While members it knew are unreachable, the
// partition policy decides how much of each licence the live side splits
// (decideSide). licensed must not change while a plan reads it; a change
// of any limit is either another map, by which the planner knows to plan
// every service again, or the same map changed between plans with
// LimitsChanged naming what changed (Shares.SyncLicensed, as the
// cluster's exchange keeps it).
func (p *Planner) Plan(now time.Time, live []string, licensed map[string]admission.Limits, u Usage) Plan {
	return p.plan(now, live, licensed, u, true)
}

// LimitsChanged tells the next plan which licences' (and keys') limits
// changed in a map that stays the same (Shares.SyncLicensed), or that all
// may have: only those are planned again, beside the busy and unsettled
// ones, where another map makes the plan look at every one.
func (p *Planner) LimitsChanged(names []string, all bool) {
	p.changedLimits = append(p.changedLimits, names...)
	p.changedAll = p.changedAll || all
}

// PlanNow is Plan between two exchanges, when Heard or Starved says so:
// CAPS, depth, sessions and subscribers are planned again; token budgets,
// which must be reported one exchange before they apply, stay as they
// are until the next Plan.
func (p *Planner) PlanNow(now time.Time, live []string, licensed map[string]admission.Limits, u Usage) Plan {
	return p.plan(now, live, licensed, u, false)
}

func (p *Planner) plan(now time.Time, live []string, licensed map[string]admission.Limits, u Usage, exchange bool) Plan {
	if !p.began {
		p.start, p.began = now, true
	}
	if !exchange {
		p.early, p.earlyAt = max(p.earlyTokens(now)-1, 0), now
	}
	p.lastPlan = now
	names := slices.Clone(live)
	slices.Sort(names)
	names = slices.Compact(names)
	// This node plans its CAPS and depth from the demand and debt it last
	// reported, as the others do: every node then computes the same parts
	// from the same vectors, and parts computed alike sum to the licence.
	// What it measures now goes into the report it sends after this plan,
	// and counts from its next one (early, when the others react).
	// A report sent less than ReportSettle ago may not have reached the
	// others yet: of it and the one before, this node plans its own part
	// from the one that asks less (per service), so that it never counts
	// itself as rising where a member that planned on the report before
	// does not (both would take the same room).
	sent, older := p.local, p.local
	if now.Sub(p.localAt) < ReportSettle {
		older = p.prior
	}
	t := now.Sub(p.start).Seconds()
	demand, rate, held := p.meter.measure(u, t)
	p.book.update(u, t, rate)
	p.prior, p.local, p.localAt = p.local, Report{Demand: demand, TokenRate: rate, Held: held}, now

	var failed []failure
	for name, v := range p.peers {
		if v.dead && !v.left && !v.reclaimed && !slices.Contains(names, name) {
			failed = append(failed, failure{name: name, at: v.deadAt})
		}
	}
	slices.SortFunc(failed, func(a, b failure) int { return strings.Compare(a.name, b.name) })
	side, reclaim := decideSide(now, p.policy, names, failed)
	for _, name := range reclaim {
		p.peers[name].reclaimed = true
		p.book.allDirty = true
	}
	// A plan's parts are sized as the last plan's were: growing them from
	// nothing, a thousand busy services at every plan, was a tenth of a
	// plan's time.
	out := Plan{Side: side, SideChanged: side.State != p.side.State, Reclaimed: reclaim, Parts: make(map[string]Share, p.lastParts)}
	p.side = side

	if exchange {
		p.markAccounts(names, side.Fraction)
	}
	self := slices.Index(names, p.self)
	if !slices.Equal(names, p.planNames) || side.Fraction != p.planFrac {
		p.planEpoch++
		p.planNames, p.planFrac = names, side.Fraction
		for _, st := range p.svcs { // every service is planned again
			st.isSettled, st.shares = false, nil
		}
		p.unsettled = nil
	}
	// The services some member demands, or whose holding (sessions,
	// subscribers, tokens charged, attempts owed) moved here, measured now
	// against the last two reports, or at another member (heldMoved). A
	// service held the same as before plans the same, and may settle: a
	// farm's 1,000 services that had charged tokens this period were
	// planned at every plan, each one's pool held at what it had charged.
	// Of them, stirred are those whose holding moved: a service only
	// demanded plans the same as before, and may settle, while every
	// member's demand stays under its floor (underFloor).
	p.active, p.stirred, p.charged = scratchMap(p.active), scratchMap(p.stirred), scratchMap(p.charged)
	active, stirred := p.active, p.stirred
	for _, m := range []map[string]float64{sent.Demand, older.Demand, demand} {
		for k := range m {
			active[k] = true
		}
	}
	for _, m := range []map[string]Held{held, sent.Held, older.Held} {
		for k := range m {
			if h := held[k]; h != sent.Held[k] || h != older.Held[k] {
				active[k] = true
				stirred[k] = true
			}
		}
	}
	for _, v := range p.peers {
		for k := range v.report.Demand {
			active[k] = true
		}
	}
	// What the others hold moved (a service they hold the same as before
	// plans the same: it may settle).
	for k := range p.heldMoved {
		active[k] = true
		stirred[k] = true
	}
	clear(p.heldMoved)
	p.activeTrunks = p.activeTrunks[:0]
	for k := range active {
		if _, _, trunk := admission.SplitTrunk(k); trunk {
			p.activeTrunks = append(p.activeTrunks, k)
		}
	}
	// The services whose pool, or one of whose accounts' pools, some
	// member charges (a token rate: only what moves is reported).
	charged := p.charged
	for _, m := range []map[string]float64{sent.TokenRate, older.TokenRate, rate} {
		markCharged(charged, m)
	}
	for _, v := range p.peers {
		markCharged(charged, v.report.TokenRate)
	}
	// poolMoves: a limited pool's budgets may come out otherwise than when
	// it settled.
	poolMoves := func(service string, l admission.Limits) bool {
		return p.budgeted(service, l) && (charged[service] || p.book.allDirty || len(p.book.dirty[service]) > 0)
	}
	unsettled := make(map[string]bool, len(p.unsettled))
	planOne := func(service string, l admission.Limits) {
		st := p.svcs[service]
		if st == nil {
			st = &svcState{since: now}
			p.svcs[service] = st
		}
		quiet := !active[service] || !stirred[service] && p.underFloor(service, l, names, side.Fraction, sent, older, demand, held)
		if st.isSettled {
			if quiet && st.settled == settledOf(p.planEpoch, l, p.book.allocated[service]) && !poolMoves(service, l) {
				// What the members want is the floors' sum, as a plan
				// would compute it: Heard adds the rises it hears to it
				// until the next plan, and rises under the floor that
				// never end in a plan would pile up past half the
				// licence and call for an early plan at every report.
				st.wants = max(side.Fraction*l.CAPS*FloorFraction, 0)
				return
			}
			st.isSettled = false
		}
		out.Planned++
		caps := make([]float64, len(names))
		sessions := make([]float64, len(names))
		subs := make([]float64, len(names))
		var owed float64                    // what the live members' buckets owe
		owes := make([]float64, len(names)) // what each owes
		for i, n := range names {
			var d float64
			var h Held
			if n == p.self {
				d, h = sent.Demand[service], held[service]
				h.Owed = sent.Held[service].Owed
				if od, oo := older.Demand[service], older.Held[service].Owed; od+float64(oo)/RepayIn.Seconds() < d+float64(h.Owed)/RepayIn.Seconds() {
					d, h.Owed = od, oo
				}
			} else if v := p.peers[n]; v != nil {
				// A stale report's demand is dropped, but what a live member
				// holds is kept until it is declared dead: its sessions do
				// not end because a report was lost.
				h = v.services[service]
				if p.fresh(now, v) {
					d = v.report.Demand[service]
				}
			}
			// A bucket in debt asks for its debt back within RepayIn, beside
			// its demand: what a demand measured too low took is returned.
			caps[i], sessions[i], subs[i] = d+float64(h.Owed)/RepayIn.Seconds(), float64(h.Sessions), float64(h.Subscribers)
			owed += float64(h.Owed)
			owes[i] = float64(h.Owed)
		}
		var offered float64
		for _, d := range caps {
			offered += d
		}
		st.saturated = offered >= side.Fraction*l.CAPS
		st.wants, st.half, st.limit = wants(side.Fraction*l.CAPS, caps), side.Fraction*l.CAPS/2, l.CAPS
		sh := Share{CAPS: -1, Sessions: -1, Subscribers: -1}
		// Every member's CAPS and depth parts as computed here: a rise
		// shares the room with the others' (see roomFor).
		var capsParts, depthParts []float64
		freshCAPS := -1.0 // this node's CAPS part on what it measured now
		if l.CAPS > 0 {
			// Share reads st.shares under the cluster's lock, as plans are
			// made (a map by name, filled at every plan, was an eighth of
			// planning 1,000 busy licences).
			shares := Allocate(side.Fraction*l.CAPS, caps)
			st.shares = shares
			capsParts, depthParts = make([]float64, len(names)), make([]float64, len(names))
			for i := range names {
				capsParts[i] = shares[i] / l.CAPS
				depthParts[i], _ = p.depth(l, side.Fraction, capsParts[i]/side.Fraction, owes[i], owed)
			}
			if self >= 0 {
				sh.CAPS, sh.Depth = capsParts[self], depthParts[self]
				// What this node's part would be with what it measured now:
				// it falls no lower than that (falling less is always safe;
				// rising takes the part all compute alike). A load that
				// reaches every node at once so does not cut each node's
				// part on the demand it reported before the load came.
				now := held[service].Owed
				caps[self] = demand[service] + float64(now)/RepayIn.Seconds()
				freshCAPS = Allocate(side.Fraction*l.CAPS, caps)[self] / l.CAPS
				st.weight, st.whole = sh.CAPS/side.Fraction, float64(admission.WholeDepth(l, p.burst))
				_, lent := p.depth(l, side.Fraction, st.weight, owes[self], owed)
				st.lent, st.watched = lent+float64(admission.Reserve(sh.CAPS*l.CAPS)), true
			}
		}
		if l.CAPS <= 0 {
			st.shares = nil
		}
		if l.Sessions > 0 && self >= 0 {
			sh.Sessions = AllocateHeld(side.Fraction*float64(l.Sessions), sessions)[self] / float64(l.Sessions)
		}
		if l.Subscribers > 0 && self >= 0 {
			sh.Subscribers = AllocateHeld(side.Fraction*float64(l.Subscribers), subs)[self] / float64(l.Subscribers)
		}
		prevApplied := p.applied[service]
		if !exchange {
			// No budget moves between exchanges.
			sh.TokensShared, sh.TokensBudget = prevApplied.TokensShared, prevApplied.TokensBudget
		} else if p.budgeted(service, l) && self >= 0 && p.clustered() {
			sh.TokensShared = true
			sh.TokensBudget, sh.AccountBudgets = p.budgets(now, service, l.Tokens, names, side.Fraction, !st.hasComputed || !st.computed.TokensShared)
		}
		// A fall applies at once. A rise goes no further than what the
		// other live members' own reports leave free (riseCap): a member
		// whose fall has not been reported yet, whose report is stale, or
		// that has not reported since it (re)joined keeps what it may
		// hold, so nodes whose views differ for a moment (a member just
		// joined, a partition healing on one side first, failures seen at
		// different times) never claim the same part twice.
		prev, ok := p.applied[service]
		cp := p.riseCap(service, names, side.Fraction, now, st.since)
		if !ok && len(names) > 0 {
			// A licence new here starts from an even part, not from
			// nothing, as far as the others' reports leave room for it: on
			// every node of a farm that just got it, an even part; on a node
			// that joins a farm already holding it, nothing, and it rises as
			// the others make room.
			even := side.Fraction / float64(len(names))
			prev = Share{CAPS: min(even, cp.CAPS), Sessions: min(even, cp.Sessions), Subscribers: min(even, cp.Subscribers),
				Depth: min(even, cp.Depth)}
		}
		// CAPS and depth rise by no more than this node's part of the room
		// the others leave: nodes that rise at once, each on reports that
		// do not show the others' rises yet, take no more than the room
		// between them (their parts sum to the side's fraction).
		if capsParts != nil && self >= 0 {
			cp.CAPS = p.roomFor(service, 0, names, prev.CAPS, cp.CAPS, capsParts, func(a Share) float64 { return whole(a.CAPS) })
			cp.Depth = p.roomFor(service, 1, names, prev.Depth, cp.Depth, depthParts, func(a Share) float64 { return a.Depth })
		}
		if l.CAPS > 0 && self >= 0 && sh.CAPS < prev.CAPS {
			sh.CAPS = max(sh.CAPS, min(prev.CAPS, freshCAPS))
		}
		if l.CAPS > 0 && sh.Depth < prev.Depth {
			// A fall of the depth gives away no more than the bucket holds
			// now: what it owes stays covered, so the fall lends attempts
			// that were free rather than borrowing from its future.
			whole := float64(admission.WholeDepth(l, p.burst))
			owes := float64(held[service].Owed - admission.Reserve(sh.CAPS*l.CAPS))
			sh.Depth = max(sh.Depth, min(prev.Depth, owes/whole))
		}
		applied := Share{CAPS: rise(sh.CAPS, prev.CAPS, cp.CAPS), Depth: rise(sh.Depth, prev.Depth, cp.Depth), Sessions: rise(sh.Sessions, prev.Sessions, cp.Sessions),
			Subscribers: rise(sh.Subscribers, prev.Subscribers, cp.Subscribers), TokensShared: sh.TokensShared, TokensBudget: sh.TokensBudget,
			AccountBudgets: sh.AccountBudgets}
		st.wanted = Share{CAPS: sh.CAPS, Depth: sh.Depth}
		// A token budget is reported one exchange before it applies (the
		// accounts' budgets: see accountBook.settle).
		oldComputed, computed := st.computed, st.hasComputed
		if exchange && computed && oldComputed.TokensShared {
			applied.TokensBudget = min(sh.TokensBudget, oldComputed.TokensBudget)
		}
		if exchange {
			st.computed, st.hasComputed = sh, true
		}
		quietPool := !p.budgeted(service, l) ||
			exchange && computed && !poolMoves(service, l) && len(sh.AccountBudgets) == 0 &&
				sh.TokensBudget == oldComputed.TokensBudget && applied.TokensBudget == prevApplied.TokensBudget
		if quiet && quietPool && ok && sameApplied(prev, applied) && nearlyApplied(applied, sh) {
			st.settled, st.isSettled = settledOf(p.planEpoch, l, p.book.allocated[service]), true
		} else {
			unsettled[service] = true
		}
		if old, had := p.applied[service]; !had || !sameApplied(old, applied) {
			p.appliedMoved = append(p.appliedMoved, service)
		}
		p.applied[service] = applied
		out.Parts[service] = applied
	}
	// Every licence when the licences are another map than at the last
	// plan (a licence or a key's limits changed), LimitsChanged said all
	// may have, or the members or side changed; else only those some
	// member is active on, those that did not settle, those whose limits
	// LimitsChanged named and the pools that may move (poolMoves): a
	// farm's idle trunk keys cost nothing here, nor do the keys not set
	// when others are, nor idle pools.
	if id := reflect.ValueOf(licensed).UnsafePointer(); id != p.licensedID || p.unsettled == nil || p.changedAll {
		p.licensedID = id
		for service, l := range licensed {
			planOne(service, l)
		}
	} else {
		// The settled pools some member charges or whose accounts are to
		// plan (every limited pool when the book says all may move).
		pools := map[string]bool{}
		for service := range charged {
			pools[service] = true
		}
		for service := range p.book.dirty {
			pools[service] = true
		}
		if p.book.allDirty {
			for service, l := range licensed {
				if p.budgeted(service, l) {
					pools[service] = true
				}
			}
		}
		slices.Sort(p.changedLimits)
		for _, service := range slices.Compact(p.changedLimits) {
			if l, ok := licensed[service]; ok && !active[service] && !p.unsettled[service] && !pools[service] {
				planOne(service, l)
			}
		}
		for service := range pools {
			if l, ok := licensed[service]; ok && !active[service] && !p.unsettled[service] {
				planOne(service, l)
			}
		}
		for service := range active {
			if l, ok := licensed[service]; ok {
				planOne(service, l)
			}
		}
		for service := range p.unsettled {
			if l, ok := licensed[service]; ok && !active[service] {
				planOne(service, l)
			}
		}
	}
	p.unsettled = unsettled
	p.lastParts = len(out.Parts)
	p.changedLimits, p.changedAll = p.changedLimits[:0], false
	if exchange {
		p.book.allDirty = false
	}
	out.Report = p.report()
	return out
}

// scratchMap returns m cleared for a plan to fill again, or a new map of
// m's size when m held more than scratchKeep keys (or none when nil): a
// map made at every plan, a thousand busy services in it, was a twelfth of
// a quiet member's plan, and one kept at the size of a plan of every key
// of a large farm would cost that size to clear at every plan after (a
// map's clear costs what it has room for).
func scratchMap(m map[string]bool) map[string]bool {
	if m == nil || len(m) > scratchKeep {
		return make(map[string]bool, len(m))
	}
	clear(m)
	return m
}

// scratchKeep bounds the keys a scratch map of the plan's keeps room for
// between plans.
const scratchKeep = heardKeep

// underFloor reports whether every live member's demand of a CAPS-limited
// service, its debt to repay within RepayIn added, is at most the floor
// that Allocate gives each member whatever it demands: this node's as it
// reported it in its last two reports and as it measures it now, the
// others' as their reports say. Every CAPS and depth part then comes out
// as the floor makes it, and a demand that moves under the floor moves no
// part: a farm's 1,000 busy licences, each far below what it licenses,
// settle as idle ones do (the demands move by chance at every report, and
// each member planned all 1,000 at every plan to compute the same parts).
// What a member holds or owes moving is not under this test (stirred).
func (p *Planner) underFloor(service string, l admission.Limits, names []string, fraction float64, sent, older Report,
	demand map[string]float64, held map[string]Held) bool {
	if l.CAPS <= 0 || len(names) == 0 {
		return false
	}
	floor := fraction * l.CAPS * FloorFraction / float64(len(names))
	asks := func(d float64, owed int64) bool { return d+float64(owed)/RepayIn.Seconds() > floor }
	if asks(sent.Demand[service], sent.Held[service].Owed) || asks(older.Demand[service], older.Held[service].Owed) ||
		asks(demand[service], held[service].Owed) {
		return false
	}
	for _, n := range names {
		if v := p.peers[n]; n != p.self && v != nil && asks(v.report.Demand[service], v.services[service].Owed) {
			return false
		}
	}
	return true
}

// budgeted reports whether a service's tokens are shared as budgets in a
// farm: a limited pool's, and the accounts' allocations of any pool (an
// account allocated 300 tokens of a pay-per-use licence's unlimited pool
// may spend 300 in the farm, not 300 on each member).
func (p *Planner) budgeted(service string, l admission.Limits) bool {
	return l.Tokens != admission.Unlimited || len(p.book.byService[service]) > 0
}

// markCharged marks in charged the service of each pool key of rates.
func markCharged(charged map[string]bool, rates map[string]float64) {
	for key := range rates {
		service, _, _ := strings.Cut(key, "/")
		charged[service] = true
	}
}

// markAccounts makes dirty the accounts whose budget may move at this
// exchange beyond those the book already knows of: every one when the
// members or the side changed, and those a member charges.
func (p *Planner) markAccounts(names []string, fraction float64) {
	if !slices.Equal(names, p.lastNames) || fraction != p.lastFraction {
		p.book.allDirty = true
		p.lastNames, p.lastFraction = names, fraction
	}
	for _, v := range p.peers {
		for key := range v.report.TokenRate {
			if isAccountKey(key) {
				p.book.markKey(key)
			}
		}
	}
}

// roomFor bounds a rise of this node's part (from prev, capped at cp by
// what the others' reports leave free) to its share of that room among
// the members that rise into it, in proportion to how far each is below
// its part (parts, in name order, as computed here from the vectors every
// member computes from; of another member, below what it last reported it
// applies). Members that rise at once, each on reports that do not show
// the others' rises yet, so take no more than the room between them. The
// room a plan leaves to each other member below its part (whenever there
// is room, whether or not this node rises) is promised to it, up to what
// it lacks, until its next report (view.promised, dim 0 for the CAPS, 1 for
// the depth): a later plan on the same reports counts neither it nor the
// part of that member's deficit it covers. A member that stops reporting
// keeps its promise until it reports or is declared dead: at most what it
// lacked, held back meanwhile.
func (p *Planner) roomFor(service string, dim int, live []string, prev, cp float64, parts []float64, of func(Share) float64) float64 {
	room := cp - prev
	if room <= 0 {
		return cp
	}
	// all sums what each member still lacks of its part, less the room
	// already promised to it.
	var mine, all float64
	for i, n := range live {
		if n == p.self {
			mine = max(parts[i]-prev, 0)
			all += mine
		} else if v := p.peers[n]; v != nil {
			promised := v.promised[service][dim]
			room -= promised
			all += max(parts[i]-of(v.report.Applied[service])-promised, 0)
		}
	}
	if room <= 0 || all <= 0 {
		return prev
	}
	for i, n := range live {
		v := p.peers[n]
		if n == p.self || v == nil {
			continue
		}
		pr := v.promised[service]
		lacks := max(parts[i]-of(v.report.Applied[service]), 0)
		if want := max(lacks-pr[dim], 0); want > 0 {
			if v.promised == nil {
				v.promised = map[string][2]float64{}
			}
			pr[dim] = min(pr[dim]+room*want/all, lacks)
			v.promised[service] = pr
		}
	}
	return prev + room*mine/all
}

// depth plans this node's part of the farm's bucket depth D (the depth
// of a bucket at the licence's whole rate; fraction of it on this side of
// a partition): what its own bucket owes now, plus its weight (its part of
// the side's CAPS) of what the side's buckets hold, D less what they owe
// as last reported. The depth follows the attempts: a node whose bucket
// emptied gets its debt back once others with full buckets have lent
// theirs, so the farm's buckets hold together what one bucket at the
// licence would (see the package doc).
// It returns the part, and the attempts it leaves in this node's bucket.
func (p *Planner) depth(l admission.Limits, fraction, weight, own, owed float64) (part, lent float64) {
	whole := float64(admission.WholeDepth(l, p.burst))
	if whole <= 0 || fraction <= 0 {
		return 0, 0
	}
	lent = weight * max(fraction*whole-owed, 0)
	return min((own+lent)/whole, fraction), lent
}

// report is what this node sends after a plan: its measured vectors, its
// token budgets just planned (they apply at the next exchange, after the
// others have them) and the parts it applies; whole or as a delta (see
// deltaAbove).
func (p *Planner) report() Report {
	p.seq++
	r := p.servicesReport(p.held)
	p.held = r.Held
	r.Seq = p.seq
	moved := p.appliedMoved
	p.appliedMoved = p.appliedMoved[:0]
	entries := len(r.Held) + len(p.applied) + len(p.book.byKey)
	whole := p.sendWhole || entries <= deltaAbove
	// The stretch only grows between whole reports: entries that come and
	// go (a service's sessions) would otherwise have it flip between s and
	// s+1 from cycle to cycle, and an entry due only when both agree would
	// go unnamed past the receiver's deltaExpire × s+1.
	// Falling to 1 is safe too: every entry is then named within
	// deltaRefresh reports, and a receiver keeps the larger stretch.
	if stretch := refreshStretch(entries, p.refreshEntries); whole || stretch == 1 {
		p.stretch = stretch
	} else {
		p.stretch = max(p.stretch, stretch)
	}
	if p.stretch > 1 {
		r.Stretch = p.stretch
	}
	if whole {
		p.sendWhole = false
		r.Held, r.Applied = maps.Clone(r.Held), maps.Clone(p.applied)
		p.heldSent.record(r.Held, r.Seq)
		p.appliedSent.record(r.Applied, r.Seq)
		p.book.report(r.Held, r.Seq, true, 1)
		return r
	}
	stretch := max(p.stretch, 1)
	r.Delta = true
	r.Held, r.Applied = p.heldSent.delta(r.Held, r.Seq, stretch), p.appliedSent.deltaOf(p.applied, moved, r.Seq, stretch)
	p.book.report(r.Held, r.Seq, false, stretch)
	return r
}

// servicesReport is everything the others should know of this node now
// but the accounts' pools and the parts applied (report adds those), its
// Held gathered into held (cleared first; nil: a new map).
func (p *Planner) servicesReport(held map[string]Held) Report {
	if held == nil {
		held = make(map[string]Held, len(p.local.Held)+len(p.budget))
	}
	clear(held)
	r := Report{Demand: p.local.Demand, TokenRate: p.local.TokenRate, Held: held}
	for key, h := range p.local.Held {
		r.Held[key] = h
	}
	for key, b := range p.budget {
		h := r.Held[key]
		h.Budget = b
		r.Held[key] = h
	}
	return r
}

// fresh reports whether a member's last report is recent enough for its
// demand to count (staleAfter).
func (p *Planner) fresh(now time.Time, v *view) bool {
	return !v.heard.IsZero() && now.Sub(v.heard) < staleAfter
}

// riseCap returns, per dimension, the part of a service's licence that the
// other live members' reports leave to this node: fraction less what each
// applies, a member with no report since it (re)joined counting as holding
// everything. A member whose reports do not name a licence this node has
// planned for less than newLicence counts as holding an even part of it:
// the licence has not reached it yet, and it starts from an even part
// when it does, so another member that rose into that part meanwhile
// would leave it short (a farm just licensed, one member registering at
// once: the others' parts came up less than what moved to them).
func (p *Planner) riseCap(service string, live []string, fraction float64, now, since time.Time) Share {
	var others Share
	even := fraction / float64(len(live))
	for _, n := range live {
		if n == p.self {
			continue
		}
		v := p.peers[n]
		if v == nil || v.heard.IsZero() || !v.heard.After(v.joinedAt) {
			return Share{}
		}
		a, named := v.report.Applied[service]
		if !named && now.Sub(since) < newLicence {
			a = Share{CAPS: even, Depth: even, Sessions: even, Subscribers: even}
		}
		others.CAPS += whole(a.CAPS)
		others.Depth += a.Depth
		others.Sessions += whole(a.Sessions)
		others.Subscribers += whole(a.Subscribers)
	}
	return Share{CAPS: max(fraction-others.CAPS, 0), Depth: max(fraction-others.Depth, 0), Sessions: max(fraction-others.Sessions, 0),
		Subscribers: max(fraction-others.Subscribers, 0)}
}

// newLicence is how long a licence counts as on its way to the members
// whose reports do not name it yet (riseCap): about twenty exchanges, well
// past what a licence takes to reach every member of a healthy farm.
const newLicence = 2 * time.Second

// whole reads a reported part: negative means the whole licence.
func whole(f float64) float64 {
	if f < 0 {
		return 1
	}
	return f
}

// rise applies a computed part: a fall at once, a rise up to the cap (but
// never below what is applied now). Negative parts mean the whole licence
// (not shared) and pass through.
func rise(computed, prev, cp float64) float64 {
	if computed < 0 || computed <= prev {
		return computed
	}
	return min(computed, max(prev, cp))
}

// clustered reports whether this node has ever seen another member: from
// then on its token pools are shared.
func (p *Planner) clustered() bool { return len(p.peers) > 0 }

// budgets plans this node's budgets of a service's pool and of its
// accounts' allocations: the budget of its pool, and the budgets of the
// accounts the engine must apply (those that moved; see accountBook).
// first: the pool was not shared at the exchange before.
func (p *Planner) budgets(now time.Time, service string, licensed int64, names []string, fraction float64, first bool) (int64, map[string]int64) {
	parts := &budgetParts{p: p, now: now, names: names, self: slices.Index(names, p.self), fraction: fraction, rates: make([]float64, len(names))}
	changed := map[string]int64{}
	p.scratch = p.book.take(service, p.book.allDirty, p.scratch[:0])
	for _, e := range p.scratch {
		next := p.tokenBudget(e.key, e.size, parts, max(e.used, 0), e.budget, e.planned)
		if applied, give := p.book.settle(e, next, first); give {
			changed[e.account] = applied
		}
	}
	clear(p.scratch)
	cur, planned := p.budget[service]
	next := p.tokenBudget(service, max(licensed-p.book.allocated[service], 0), parts, p.local.Held[service].Tokens, cur, planned)
	p.budget[service] = next
	return next, changed
}

// budgetParts gives this node's part of what is left of a pool
// (budgetHorizon), from the rate each member of names charges it.
type budgetParts struct {
	p        *Planner
	now      time.Time
	names    []string
	self     int
	fraction float64
	rates    []float64 // scratch
}

// of returns this node's fraction of left, what is left of key's pool.
func (b *budgetParts) of(key string, left int64) float64 {
	if left <= 0 || b.self < 0 {
		return 0
	}
	for i, n := range b.names {
		b.rates[i] = 0
		if n == b.p.self {
			b.rates[i] = b.p.local.TokenRate[key]
		} else if v := b.p.peers[n]; v != nil && b.p.fresh(b.now, v) {
			b.rates[i] = v.report.TokenRate[key]
		}
		b.rates[i] *= budgetHorizon.Seconds()
	}
	return AllocateHeld(b.fraction*float64(left), b.rates)[b.self] / float64(left)
}

// budgetHorizon is how far ahead token budgets plan: of what is left of
// a pool, each member's part covers what it would charge in this time at
// its rate, and what is left beyond that is split evenly (the least a
// member gets, idle or not, is FloorFraction/n of it). A pool with more
// left than the members charge in this time so keeps a budget on every
// member for a load that moves to it; a pool running out is split by the
// rates, so that no member strands what another needs.
const budgetHorizon = time.Second

// tokenBudget plans this node's budget for a token pool: how much it may
// have charged the pool in all, from what it charged (used) and its
// budget as last planned (cur; planned false: never). Budgets are escrow:
// each member reports its budget and the others hold it reserved, so that
// while reports arrive within an exchange interval the budgets never add
// up to more than the pool (see the package doc). parts gives this node's
// fraction of what is left (budgetHorizon).
func (p *Planner) tokenBudget(key string, pool int64, parts *budgetParts, used, cur int64, planned bool) int64 {
	if !planned {
		cur = used
	}
	spent, reserved := used, max(cur, used)
	for _, v := range p.peers {
		h := v.held(key)
		spent = sat.Add(spent, h.Tokens)
		switch {
		case v.left || v.reclaimed:
			// Gone: what it charged stays charged, its budget is free.
			reserved = sat.Add(reserved, h.Tokens)
		default:
			// Alive, or failed but maybe only cut off: it may still be
			// charging up to its budget.
			reserved = sat.Add(reserved, max(h.Budget, h.Tokens))
		}
	}
	left := max(pool-spent, 0)
	pt := parts.of(key, left)
	target := sat.Add(used, sat.PartOf(pt, left))
	free := pool - reserved
	next := target
	if target > cur {
		// A rise takes no more than this node's part of what no member
		// has reserved.
		next = min(target, sat.Add(cur, sat.PartOf(pt, max(free, 0))))
	}
	next = max(next, used)
	if planned && next != cur && cur > used && absDiff(next, cur) <= (cur-used)/budgetSlack {
		// A move within a budgetSlack-th of the room left is not made:
		// under load the members' rates, and so every busy pool's budget,
		// move a little at every exchange, and each move is a change that
		// every report must carry (see deltaAbove). Keeping the budget is
		// safe either way: the others hold it reserved as reported, and a
		// rise not taken only leaves room to them. As the room runs out,
		// every move is made.
		return cur
	}
	return next
}

// budgetSlack: a budget moves only by more than this fraction of the room
// it leaves (see tokenBudget).
const budgetSlack = 16

// absDiff is |a − b| without overflow.
func absDiff(a, b int64) int64 {
	if a > b {
		return sat.Sub(a, b)
	}
	return sat.Sub(b, a)
}

// Side returns the side as last planned.
func (p *Planner) Side() Side { return p.side }

// Local returns this node's last report.
func (p *Planner) Local() Report { return p.local }

// Demand returns a member's last reported demand (this node's own for self).
func (p *Planner) Demand(name string) map[string]float64 {
	if name == p.self {
		return p.local.Demand
	}
	if v := p.peers[name]; v != nil {
		return v.report.Demand
	}
	return nil
}

// Held returns what a member last reported holding, by service and pool
// (this node's own for self).
func (p *Planner) Held(name string) map[string]Held {
	if name == p.self {
		return p.local.Held
	}
	if v := p.peers[name]; v != nil {
		return v.report.Held
	}
	return nil
}

// Share returns a member's CAPS share of service as last computed, and
// whether there is one.
func (p *Planner) Share(service, member string) (float64, bool) {
	st := p.svcs[service]
	if st == nil {
		return 0, false
	}
	if i := slices.Index(p.planNames, member); i >= 0 && i < len(st.shares) {
		return st.shares[i], true
	}
	return 0, false
}

// GoneMember is a member that left or failed, as GET /v1/cluster shows it.
type GoneMember struct {
	Name      string
	At        time.Time
	Left      bool
	Reclaimed bool
}

// GoneMembers returns the members that left or failed, by name.
func (p *Planner) GoneMembers() []GoneMember {
	var out []GoneMember
	for name, v := range p.peers {
		if v.dead {
			out = append(out, GoneMember{Name: name, At: v.deadAt, Left: v.left, Reclaimed: v.reclaimed})
		}
	}
	slices.SortFunc(out, func(a, b GoneMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// SpillTo names the member that should decide an attempt this node's
// bucket for service refused, and whether there is one: the live member
// whose bucket, by its last fresh report, holds the most attempts now
// (what its depth held less what it owed, refilled since at what its
// part leaves over its demand, less what this node spilled to it since),
// at least one. A farm so lends what its buckets hold at decision time, as one
// bucket would, where the next plan would come too late for this attempt.
// Each call counts one attempt spilled to the member named.
func (p *Planner) SpillTo(now time.Time, service string, licence float64) (string, bool) {
	if !(licence > 0) {
		return "", false
	}
	whole := float64(admission.Depth(licence, p.burst))
	var best *view
	bestName, most := "", 0.0
	for name, v := range p.peers {
		if v.dead || !p.fresh(now, v) {
			continue
		}
		a, ok := v.report.Applied[service]
		if !ok || a.CAPS < 0 {
			continue
		}
		rate := a.CAPS * licence
		depth := math.Floor(min(a.Depth, 1)*whole+1e-6) + float64(admission.Reserve(rate))
		spare := (rate - v.report.Demand[service]) * now.Sub(v.heard).Seconds()
		held := min(depth-float64(v.services[service].Owed)-float64(v.spilled[service])+spare, depth)
		if held >= 1 && (held > most || held == most && name < bestName) {
			best, bestName, most = v, name, held
		}
	}
	if best == nil {
		return "", false
	}
	if best.spilled == nil {
		best.spilled = map[string]int64{}
	}
	best.spilled[service]++
	return bestName, true
}

// SpillRefused records that member name refused an attempt spilled to it
// for service: its bucket is taken as empty until its next report.
func (p *Planner) SpillRefused(service, name string) {
	v := p.peers[name]
	if v == nil {
		return
	}
	if v.spilled == nil {
		v.spilled = map[string]int64{}
	}
	v.spilled[service] = math.MaxInt32
}

// ReportSettle is how long a report of this node's may take to reach the
// others (far beyond a LAN's delays): within it, this node plans its own
// part from the lower of its last two reports (see plan).
const ReportSettle = 5 * time.Millisecond

// SpillTries bounds the members one refused attempt is spilled to, one
// after the other: a member that refuses (its bucket emptied since its
// report) is taken as empty, and the next with the most room is asked.
const SpillTries = 3
