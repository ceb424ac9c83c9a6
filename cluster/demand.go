package cluster

import (
	"math"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// demandMeter turns the engine's counters into each service's demand:
// attempts per second offered to the licence (admitted or refused by it;
// not UNLICENSED, not OVERLOAD), estimated by a rate meter per series
// (see rateMeter). The rate at which a node charges each token pool is
// measured the same way.
type demandMeter struct {
	series map[string]*serviceMeters
	// times are the instants of the last len(times) measures (a ring,
	// next the oldest): a service left out of the reads since its last
	// sample (UsageReader leaves the quiet ones out) resumes as if it had
	// been read at each of them (rateMeter.resume).
	times [resumeTimes]float64
	next  int
	// lastDemand, lastRates and lastHeld size the next measure's maps as
	// the last one's were.
	lastDemand, lastRates, lastHeld int
}

// serviceMeters are one service's series: the attempts offered to its
// licence and the tokens charged to its pool here.
type serviceMeters struct {
	offered, tokens rateMeter
	owed            int64 // as last measured (owedOf)
}

// owedOf is what a bucket of depth with avail attempts left owes, as
// measured: what it owes when that is nothing, or when it moved by
// owedStep of the depth or more from what was measured before (was);
// else what was. A bucket far below its rate owes the few attempts taken
// since the engine's clock last ticked, a different few at each
// measure: each was a change of what the member holds, reported to every
// member, and planned by each (the depth parts lend by debt), at every
// report of a farm's 1,000 busy licences. A debt that matters moves by
// more; one measured up to a step low is repaid a little later.
func owedOf(was, depth, avail int64) int64 {
	owed := max(depth-avail, 0)
	step := max(depth/owedStep, 1)
	if owed == 0 || owed-was >= step || was-owed >= step {
		return owed
	}
	return was
}

// owedStep: a bucket's debt is measured anew when it moves by a 64th of
// the bucket's depth.
const owedStep = 64

type sample struct {
	t float64 // seconds, on the meter's own scale
	n uint64
}

func newDemandMeter() *demandMeter {
	return &demandMeter{series: map[string]*serviceMeters{}}
}

// measure updates every service's demand from this node's counters at t
// seconds (any monotonic scale), and returns it with the rate each token
// pool is charged here and what each service holds here (the accounts'
// pools are the account book's).
func (m *demandMeter) measure(u Usage, t float64) (demand, tokenRate map[string]float64, held map[string]Held) {
	demand, tokenRate, held = make(map[string]float64, m.lastDemand), make(map[string]float64, m.lastRates), make(map[string]Held, m.lastHeld)
	for _, s := range u {
		sm := m.series[s.Name]
		resumed := sm != nil && s.Resumed
		if sm == nil {
			sm = &serviceMeters{}
			m.series[s.Name] = sm
		}
		if s.Carried {
			// Left out as quiet but for the tokens it charged this
			// period: what it holds, as when last read; no sample (its
			// meters resume as for a service left out).
			held[s.Name] = Held{Tokens: s.PoolUsed}
			continue
		}
		sm.owed = owedOf(sm.owed, s.Depth, s.Avail)
		if owed := sm.owed; s.Sessions > 0 || s.Subscribers > 0 || s.PoolUsed > 0 || owed > 0 {
			held[s.Name] = Held{Sessions: s.Sessions, Subscribers: s.Subscribers, Tokens: s.PoolUsed, Owed: owed}
		}
		if resumed {
			// Left out of the reads since its last: its counters did not
			// move until the last plan. (A series missing for another
			// reason, a trunk key unread while without limits, may have
			// counted meanwhile: its next sample spans the gap.)
			sm.offered.resume(&m.times, m.next)
			sm.tokens.resume(&m.times, m.next)
		}
		if d := sm.offered.push(sample{t: t, n: s.Offered}); d >= 0.01 {
			demand[s.Name] = d
		}
		if r := sm.tokens.push(sample{t: t, n: uint64(max(s.PoolUsed, 0))}); r >= 0.01 {
			tokenRate[s.Name] = r
		}
	}
	m.lastDemand, m.lastRates, m.lastHeld = len(demand), len(tokenRate), len(held)
	m.times[m.next], m.next = t, (m.next+1)%resumeTimes
	return demand, tokenRate, held
}

// UsageReader reads this node's counters from the engine, of the
// accounts' pools only those that changed since its last read (the
// planner keeps the rest: see accountBook), so that a read costs what
// moved, not the 100,000 accounts a farm may hold. Of the services it
// leaves out those that have been quiet for serviceQuiet: their counters
// have not moved since (Service.Fingerprint, no pool pending) and they
// hold and owe nothing, so that all a measure would make of them is
// nothing (demandMeter.measure takes the gap as such) but the tokens one
// charged this period (a licence with tokens, used once): such a service
// is carried, its last PoolUsed repeated (ServiceUsage.Carried), not
// read. A farm's 1,000 idle licences cost a read a fingerprint each.
type UsageReader struct {
	eng     *admission.Engine
	watch   admission.PoolWatch
	watched bool
	buf     []admission.PoolState
	// recent are the trunk keys that moved within trunkQuiet, by when
	// they last did (engine clock): a key is read while it moves, holds
	// sessions or owes attempts, and for trunkQuiet after, so that its
	// demand's meter sees the load go; the others are not read.
	recent map[*admission.Trunk]int64
	// svcs are the engine's services at the last read, and seen what the
	// reader saw of each (same order).
	svcs []*admission.Service
	seen []seenService
	// u is the last read's, filled again by the next (the exchange reads
	// 1,000 services ten times a second).
	u Usage
}

// seenService is what a UsageReader saw of a service: its fingerprint,
// whether it held, charged and owed nothing, since when (engine clock) it
// has been so with that fingerprint, and whether the last read left it
// out.
type seenService struct {
	mark    uint64
	idle    bool
	quietAt int64
	skipped bool
	pool    int64 // its PoolUsed when last read
}

// trunkQuiet is how long a trunk key that stopped moving is still read:
// longer than the demand meter takes to see a load end (rateWindow, and
// the sample across its edge). serviceQuiet is the same for a service:
// once it has passed, the service's meters hold nothing but samples of
// nothing, and demand nothing.
const (
	trunkQuiet   = 5 * time.Second
	serviceQuiet = trunkQuiet
)

// NewUsageReader takes one of the engine's pool watches; when none is
// left it reads every pool and service each time, as ReadUsage does.
func NewUsageReader(eng *admission.Engine) *UsageReader {
	w, err := eng.WatchPools()
	return &UsageReader{eng: eng, watch: w, watched: err == nil, recent: map[*admission.Trunk]int64{}}
}

// Read returns the counters now, valid until the next Read (its storage
// is reused). Not safe for concurrent use.
func (r *UsageReader) Read() Usage {
	if !r.watched {
		return ReadUsage(r.eng)
	}
	clear(r.u) // no account names held until filled again
	u, now, clock := r.u[:0], r.eng.Now(), r.eng.Clock()
	r.follow(r.eng.Services())
	for i, s := range r.svcs {
		seen := &r.seen[i]
		mark := s.Fingerprint()
		if mark == seen.mark && seen.idle && now-seen.quietAt >= int64(serviceQuiet) && !s.PoolsPending(r.watch) {
			seen.skipped = true
			if seen.pool > 0 {
				u = append(u, ServiceUsage{Name: s.Name(), PoolUsed: seen.pool, Carried: true})
			}
			continue
		}
		r.buf = s.ChangedPools(r.watch, r.buf[:0])
		su := readService(s, clock, r.buf)
		su.Resumed, seen.skipped = seen.skipped, false
		idle := su.Sessions == 0 && su.Subscribers == 0 && su.Depth <= su.Avail && len(su.Accounts) == 0
		if mark != seen.mark || !idle || now < seen.quietAt {
			seen.quietAt = now
		}
		seen.mark, seen.idle, seen.pool = mark, idle, su.PoolUsed
		u = append(u, su)
	}
	clear(r.buf[:cap(r.buf)]) // no account names held
	r.u = readTrunks(u, clock, now, r.movingTrunks)
	return r.u
}

// follow lines seen up with the engine's services (a new slice when one
// is added; services are never removed): a service not seen before is
// read at once.
func (r *UsageReader) follow(svcs []*admission.Service) {
	if len(svcs) == len(r.svcs) && (len(svcs) == 0 || &svcs[0] == &r.svcs[0]) {
		return
	}
	was := make(map[*admission.Service]seenService, len(r.svcs))
	for i, s := range r.svcs {
		was[s] = r.seen[i]
	}
	r.svcs, r.seen = svcs, make([]seenService, len(svcs))
	for i, s := range svcs {
		r.seen[i] = was[s] // zero: not idle, read
	}
}

// movingTrunks calls f for the trunk keys with limits to read at now:
// those that moved since the last read, and those that moved within
// trunkQuiet or hold sessions or owe attempts (see recent). It visits
// what moves, never every key.
func (r *UsageReader) movingTrunks(now int64, f func(*admission.Trunk)) {
	r.eng.DrainMoved(func(t *admission.Trunk) { r.recent[t] = now })
	for t, at := range r.recent {
		if depth, avail := t.Bucket(r.eng.Clock()); now-at > int64(trunkQuiet) && t.OpenSessions() == 0 && avail >= depth {
			delete(r.recent, t) // read once more: its meter sees it quiet
		}
		if t.Limited() {
			f(t)
		}
	}
}

// ReadUsage reads this node's counters from the engine: every service,
// every account's pool and every trunk key with limits.
func ReadUsage(eng *admission.Engine) Usage {
	services := eng.Services()
	now := eng.Now()
	u := make(Usage, 0, len(services))
	for _, s := range services {
		u = append(u, readService(s, eng.Clock(), s.Pools()))
	}
	return readTrunks(u, eng.Clock(), now, func(_ int64, f func(*admission.Trunk)) {
		eng.EachTrunk(func(t *admission.Trunk) {
			if t.Limited() {
				f(t)
			}
		})
	})
}

// readService reads a service's counters, its bucket at the instant clock
// tells once it is read (see Service.Bucket), with the accounts' pools
// of pools (the service's own among them is left out).
func readService(s *admission.Service, clock admission.Clock, pools []admission.PoolState) ServiceUsage {
	st := s.Stats()
	// An attempt spilled to another member counts where it arrived.
	su := ServiceUsage{Name: s.Name(), Offered: st.Offered() + st.SpilledOut - st.SpilledIn,
		Sessions: st.Sessions, Subscribers: st.Subscribers, PoolUsed: st.PoolUsed}
	su.Depth, su.Avail = s.Bucket(clock)
	for _, p := range pools {
		if p.Account != "" {
			su.Accounts = append(su.Accounts, AccountUsage{Account: p.Account, Size: p.Size, Used: p.Used})
		}
	}
	return su
}

// readTrunks appends to u the counters of the trunk keys with limits
// trunks hands out: they are planned as licences are.
func readTrunks(u Usage, clock admission.Clock, now int64, trunks func(now int64, f func(*admission.Trunk))) Usage {
	trunks(now, func(t *admission.Trunk) {
		st := t.Stats()
		su := ServiceUsage{Name: st.Name, Offered: st.Offered() + st.SpilledOut - st.SpilledIn, Sessions: st.Sessions}
		su.Depth, su.Avail = t.Bucket(clock)
		u = append(u, su)
	})
	return u
}

// poolKey names an account's token pool in reports and budgets ("/" is not
// in the service and account alphabet); a service's own pool is named by
// the service.
func poolKey(service, account string) string { return service + "/" + account }

// Rate meter settings. A rate is measured over the samples since it last
// changed, over at most rateWindow: a Poisson stream's rate over 3 s is
// known to within 1/sqrt(3 × rate), 2 % at 800 attempts per second, where
// one 100 ms sample would be off by 11 %.
//
// A rise is seen when the last 200 to 500 ms hold more attempts than the
// rate before them predicts, by riseZ standard deviations (Poisson: the
// root of the count) and minChange attempts more, or the last 50 ms more
// than jumpRatio times it (a proxy stalled for up to 200 ms sends at most
// five times: the stall's worth and its own); a fall when they hold
// fewer by fallZ deviations and minChange, and less than fallRatio of it,
// over at least 250 ms. The meter then forgets what came before. So a load
// that arrives on an idle node counts after 50 ms, one that grows after
// 200 ms and one that leaves after 250 ms, while
// a lull of Poisson arrivals changes nothing (a 4-sigma dip comes once in
// 30,000 samples), nor does a proxy that stalls for up to 200 ms and then
// sends its backlog at once (200 ms hold the stall and the backlog; 250 ms
// keep a fifth of the attempts). minChange keeps the few attempts of a
// nearly idle node from reading as a change.
const (
	rateWindow  = 3.0 // seconds
	rateSamples = 64  // at most, when plans come faster than exchanges
	riseZ       = 3
	fallZ       = 4
	minChange   = 3
	fallRatio   = 0.2
	jumpSpan    = 0.05 // seconds
	jumpRatio   = 6
	riseSpan    = 0.2
	fallSpan    = 0.25
	maxSpan     = 0.5
	// quietExpect: no attempt at all over fallSpan or more, where the rate
	// before predicts this many, is a fall, at any span (Poisson: e^-10.4,
	// the chance of the 4-sigma test). A node at 40 CAPS that falls silent
	// is seen after 260 ms and one at 18 after 580, where the 4-sigma
	// test, which needs more than 22 attempts expected, never sees them
	// fall. The price: a proxy that stalls 200 ms in front of a node at
	// 35-50 CAPS, and sends nothing for 50-100 ms more by chance (a few
	// stalls in a hundred), reads as a fall; its part comes back when the
	// backlog arrives (the jump test, 50 ms).
	quietExpect = 10.4
	// settleSpan is the least span of the rate after a fall (see fellAt).
	settleSpan = 0.1
)

// rateMeter estimates the rate of a counter sampled at each exchange.
type rateMeter struct {
	started bool
	last    sample
	// dt and dn are the samples' spans and counts, oldest first.
	dt, dn [rateSamples]float64
	k      int
}

// push adds the counter's value at an instant and returns the rate.
func (m *rateMeter) push(cur sample) float64 {
	span, ok := m.add(cur)
	if !ok {
		return m.rate(0)
	}
	if m.rate(0) == 0 {
		// Nothing counted in the window (an idle service, most of a farm's
		// 1,000): no test in detect can see a change, and the rate is 0.
		// detect costs a push the square of the samples held.
		return 0
	}
	return m.detect(span)
}

// resumeTimes is how many measures' instants a demand meter keeps for
// resume: one more than the samples a meter holds, which are the newest
// within rateWindow, at most rateSamples, whatever came before them; so
// the last resumeTimes instants leave a meter holding what it would had
// it been pushed at every one since its last sample, however long ago.
const resumeTimes = rateSamples + 1

// resume pushes the counter's last value, unmoved, at each instant of
// times (a ring, from next on) after its last sample: what the meter would
// have been pushed had it been read at each measure since. (Of a gap
// longer than the ring, the one sample up to its first instant is dropped
// by the last.)
func (m *rateMeter) resume(times *[resumeTimes]float64, next int) {
	if !m.started {
		return
	}
	for i := range resumeTimes {
		if t := times[(next+i)%resumeTimes]; t > m.last.t {
			m.push(sample{t: t, n: m.last.n})
		}
	}
}

// add records the counter's value at an instant as a sample, forgetting
// those older than rateWindow, and returns the span of the samples held
// and whether it did (not the first value, nor one out of order).
func (m *rateMeter) add(cur sample) (span float64, ok bool) {
	if !m.started || cur.t <= m.last.t {
		if !m.started {
			m.started, m.last = true, cur
		}
		return 0, false
	}
	dt, dn := cur.t-m.last.t, 0.0
	if cur.n >= m.last.n {
		dn = float64(cur.n - m.last.n)
	}
	m.last = cur
	if m.k == rateSamples {
		m.drop(1)
	}
	m.dt[m.k], m.dn[m.k] = dt, dn
	m.k++
	for i := range m.k {
		span += m.dt[i]
	}
	for m.k > 1 && span-m.dt[0] >= rateWindow {
		span -= m.dt[0]
		m.drop(1)
	}
	return span, true
}

// detect looks for a rise or a fall in the newest samples (spanning
// span), forgets what came before one, and returns the rate.
func (m *rateMeter) detect(span float64) float64 {
	var rt, rn float64
	for j := 1; j < m.k && (rt < maxSpan || rn == 0); j++ {
		rt += m.dt[m.k-j]
		rn += m.dn[m.k-j]
		if span-rt < riseSpan {
			break
		}
		expect := m.rate(j) * rt
		sd := math.Sqrt(max(expect, 1))
		rose := rt >= riseSpan && rn > expect+riseZ*sd+minChange ||
			rt >= jumpSpan && rn > jumpRatio*expect+riseZ*sd+minChange
		fell := rt >= fallSpan && rn < expect-fallZ*sd-minChange && rn < fallRatio*expect ||
			rt >= fallSpan && rn == 0 && expect >= quietExpect
		if rose {
			m.drop(m.k - j)
			break
		}
		if fell {
			m.drop(m.k - m.fellAt(j))
			break
		}
	}
	return m.rate(0)
}

// fellAt returns how many of the newest samples follow the fall seen in
// the newest j: the split of the samples held into an older and a newer
// rate, each constant, that the counts make likeliest (Poisson), the newer
// part at least fallSpan long. A load that left 60 ms into a 100 ms sample
// so leaves no trace of its 60 ms in the rate after the fall.
func (m *rateMeter) fellAt(j int) int {
	var tAll, nAll float64
	for i := range m.k {
		tAll += m.dt[i]
		nAll += m.dn[i]
	}
	best, bestLL := j, math.Inf(-1)
	var t, n float64
	for s := 1; s <= j; s++ {
		t += m.dt[m.k-s]
		n += m.dn[m.k-s]
		if t < settleSpan {
			continue
		}
		if ll := poissonLL(n, t) + poissonLL(nAll-n, tAll-t); ll > bestLL {
			best, bestLL = s, ll
		}
	}
	return best
}

// poissonLL is the log-likelihood of n events in t at their own rate, less
// the terms that do not depend on the rate.
func poissonLL(n, t float64) float64 {
	if n <= 0 || t <= 0 {
		return 0
	}
	return n*math.Log(n/t) - n
}

// drop forgets the n oldest samples.
func (m *rateMeter) drop(n int) {
	copy(m.dt[:], m.dt[n:m.k])
	copy(m.dn[:], m.dn[n:m.k])
	m.k -= n
}

// rate is the rate over the samples held but the last skip of them.
func (m *rateMeter) rate(skip int) float64 {
	var t, n float64
	for i := range m.k - skip {
		t += m.dt[i]
		n += m.dn[i]
	}
	if t <= 0 {
		return 0
	}
	return n / t
}

// Held is what a node holds of a service's counted limits: open sessions,
// registered subscribers, and the tokens it has charged to the service's
// pool.
type Held struct {
	Sessions    int64 `json:"s,omitempty"`
	Subscribers int64 `json:"u,omitempty"`
	Tokens      int64 `json:"t,omitempty"`
	// Owed is what the node's CAPS bucket owes: its depth less the
	// attempts it would admit at once, when it reported.
	Owed int64 `json:"o,omitempty"`
	// Budget is what the node may charge the pool in all: the others
	// reserve it (see tokenBudget).
	Budget int64 `json:"b,omitempty"`
}
