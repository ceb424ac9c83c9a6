// Package meter turns the engine's counters into usage records: every
// interval (ledger.interval), per service and per account, the attempts,
// admissions, rejections by reason, emergency calls, peaks and tokens of
// the interval, appended to the node's signed ledger. It also keeps token
// charges durable (Reserver).
//
// The meter runs off the event loops: Sample every SampleEvery for the
// peaks, Flush at each interval's end. The engine's counters only grow, so
// an interval's usage is the difference of two snapshots; after a restart
// the first interval also carries the tokens charged since the last
// record before the crash (see Reserver).
//
// # Token charges and kill -9
//
// A pool charges only under a reservation written (fsync'd) to the token
// state in data_dir: a snapshot (tokens.snap) and a log of what changed
// since (tokens.log), where a step appends only the pools it moved and an
// allocation only itself (see tokenlog.go). A charge of any size the pool can take is made on
// its first try: when what is left of the reservation is short of it, the
// charge records what it needs, wakes the reserver and waits for its next
// write (at most MaxWait; not at all while writes fail, and is then
// refused OVERLOAD). Each reservation R covers the pool's charges C, every
// charge waiting for it W, and a lookahead L for the charges to come:
//
//	R = min(C + W + L, max(ceiling, C + W))
//	L = max(F, BlockSeconds × r, D)
//
// where F is MinBlock, or a sixteenth of a pool that may charge less than
// 16 blocks in a period, its overage included (at least MinSmallBlock: a block ahead of an account of 900 tokens
// covered it whole, and every kill -9 emptied it); r is the pool's charge rate, measured over at least 100 ms and
// halving per measure when it falls, without the charges that waited; D
// is 0 unless charges used up the previous lookahead L' (one had to
// wait), then min(2 × L', 2 × (tokens charged since the previous
// reservation + W)), for up to 100 ms; the ceiling is the pool's size
// and the overage its policy allows, for its period. The reserver writes
// the next reservation when less than L/2 is left or a charge waits.
//
// After kill -9 a pool counts as charged R, its last reservation written.
// Never an under-count: every acknowledged charge was made under R.
// Over-count R - A, A the acknowledged charges, is at most L of R plus
// the charges made or waiting for R that were not acknowledged (in flight
// when the node died, or waiting and then not made), and never takes a
// pool past its ceiling but by charges waiting (the minutes of a RELEASE
// ... SECONDS, charged whatever the pool). A clean stop writes R = C: no
// over-count.
//
// A pool not charged for IdleRelease (a day) has its reservation taken
// back to R = C (Service.Withdraw, then written with a step): a kill -9
// then counts it exactly. Without it every pool counted a lookahead more
// at every crash, the dormant accounts too: a block each, 100,000 ledger
// records of 1,000 tokens for a farm's 100,000 dormant accounts. Its next
// charge waits for a reservation, as a charge short of one does; the pool
// is then reserved for as before. At most maxReleases pools are taken
// back a step.
//
// A step costs the pools that changed since the last one (the engine's
// pool watch: charged, short of their reservation, allocated, given a new
// period) and those whose lookahead or wake mark is still above F after
// their rate fell, which it keeps bringing down as before; an idle pool
// whose lookahead is back to F is left alone, its last
// reservation standing, until it changes. Its rate is then measured from
// the last step that left it alone. A torn write at the end of the log
// (the node died before its fsync returned) is cut at the next start: the
// engine used none of its marks. Any other damage to the token state
// refuses the start: removing it would under-count.
//
// tokenlog.go is over 600 lines on purpose: the token state's on-disk
// format (records, snapshot, log, compaction, migration from tokens.json)
// is written and read in one file, so that the writer and the reader of
// each record cannot drift apart.
package meter

import (
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// SampleEvery is how often the peaks are sampled.
const SampleEvery = 100 * time.Millisecond

// Witnesses supplies the peers' ledger heads seen since the last flush.
type Witnesses func() []ledger.Witness

// Meter writes usage records.
type Meter struct {
	eng       *admission.Engine
	led       *ledger.Ledger
	res       *Reserver
	witnesses Witnesses
	watch     admission.PoolWatch // the pools charged since the last record

	mu    sync.Mutex // guards the fields below
	from  time.Time
	last  map[string]snapshot
	peaks map[string]*peaks
	// unrecorded names the pools, by service, that changed before a Flush
	// that could not append: the watch will not report them again.
	unrecorded map[string]map[string]bool
	changed    []admission.PoolState // ChangedPools' buffer, reused
	// trunks are the trunk keys' counters as last recorded.
	trunks map[*admission.Trunk][admission.NumReasons]uint64
}

// snapshot is a service's counters as last recorded, and every pool's.
type snapshot struct {
	st    admission.Stats
	pools map[string]admission.PoolState
}

type peaks struct{ caps, sessions, subscribers uint64 }

// New returns a meter writing to led; res may be nil (no durable tokens),
// witnesses may be nil. It takes one of the engine's pool watches, so
// that a Flush costs the pools charged in its interval, not every account.
func New(eng *admission.Engine, led *ledger.Ledger, res *Reserver, witnesses Witnesses, now time.Time) (*Meter, error) {
	w, err := eng.WatchPools()
	if err != nil {
		return nil, fmt.Errorf("cannot meter the token pools: %w", err)
	}
	m := &Meter{eng: eng, led: led, res: res, witnesses: witnesses, watch: w, from: now, last: map[string]snapshot{},
		peaks: map[string]*peaks{}, unrecorded: map[string]map[string]bool{}, trunks: map[*admission.Trunk][admission.NumReasons]uint64{}}
	for _, s := range eng.Services() {
		m.last[s.Name()] = m.baseline(s)
	}
	eng.EachTrunk(func(t *admission.Trunk) { m.trunks[t] = t.Stats().Admissions })
	return m, nil
}

// baseline is a service's snapshot to count the next interval from: its
// counters now, but for tokens what the ledger already has. Its pools
// come from the new watch, which has every pool pending.
func (m *Meter) baseline(s *admission.Service) snapshot {
	snap := snapshot{st: s.Stats(), pools: map[string]admission.PoolState{}}
	m.changed = s.ChangedPools(m.watch, m.changed[:0])
	for _, p := range m.changed {
		if m.res != nil {
			if l := m.res.Ledgered(s.Name(), p.Account); l >= 0 && l < p.Total {
				// Charged before a crash but not yet in the ledger: the
				// next record carries it, changed since or not.
				over := min(p.TotalOverage, p.Total-l)
				p.Total, p.TotalOverage = l, p.TotalOverage-over
				m.unrecord(s.Name(), p.Account)
			}
		}
		snap.pools[p.Account] = p
	}
	return snap
}

// Sample records the peaks.
func (m *Meter) Sample() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.eng.Services() {
		usedCAPS, sessions, subscribers := s.Peaks()
		caps, open, subs := uint64(math.Round(max(usedCAPS, 0))), uint64(max(sessions, 0)), uint64(max(subscribers, 0))
		if caps == 0 && open == 0 && subs == 0 {
			continue // raises no peak: an idle service costs three atomic reads
		}
		p := m.peaks[s.Name()]
		if p == nil {
			p = &peaks{}
			m.peaks[s.Name()] = p
		}
		p.caps, p.sessions, p.subscribers = max(p.caps, caps), max(p.sessions, open), max(p.subscribers, subs)
	}
}

// Flush appends the usage of [from, now) to the ledger (one fsync) and
// starts the next interval. It looks at the pools that changed since the
// last record (the pool watch), not at every account.
func (m *Meter) Flush(now time.Time) error {
	m.Sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	var usage []ledger.Usage
	type update struct {
		service string
		st      admission.Stats
		pools   map[string]admission.PoolState
	}
	var updates []update
	marks := map[[2]string]int64{}
	for _, s := range m.eng.Services() {
		name := s.Name()
		prev, ok := m.last[name]
		if !ok {
			prev = snapshot{pools: map[string]admission.PoolState{}}
		}
		cur := update{service: name, st: s.Stats(), pools: m.changedPools(s)}
		pk := m.peaks[name]
		if pk == nil {
			pk = &peaks{}
		}
		u := serviceUsage(name, prev.st, cur.st, *pk)
		var accounts []ledger.Usage
		for acct, p := range cur.pools {
			marks[[2]string{name, acct}] = p.Total
			t, o := poolDelta(prev.pools[acct], p)
			u.Tokens, u.Overage = u.Tokens+t, u.Overage+o
			if acct != "" && (t > 0 || o > 0) {
				accounts = append(accounts, ledger.Usage{Service: name, Account: acct, Tokens: t, Overage: o})
			}
		}
		updates = append(updates, cur)
		if !u.empty() {
			usage = append(usage, u.Usage)
		}
		sort.Slice(accounts, func(i, j int) bool { return accounts[i].Account < accounts[j].Account })
		usage = append(usage, accounts...)
	}
	keys, counted := m.trunkUsage()
	usage = append(usage, keys...)
	var wit []ledger.Witness
	if m.witnesses != nil {
		wit = m.witnesses()
	}
	if len(usage) > 0 || len(wit) > 0 {
		if _, err := m.led.Append(m.from, now, usage, wit); err != nil {
			for _, up := range updates { // counted again, from the same snapshot, next time
				for acct := range up.pools {
					m.unrecord(up.service, acct)
				}
			}
			return err
		}
	}
	for _, up := range updates {
		prev, ok := m.last[up.service]
		if !ok {
			prev = snapshot{pools: map[string]admission.PoolState{}}
		}
		prev.st = up.st
		for acct, p := range up.pools {
			prev.pools[acct] = p
		}
		m.last[up.service] = prev
	}
	for t, c := range counted {
		m.trunks[t] = c
	}
	m.from, m.peaks, m.unrecorded = now, map[string]*peaks{}, map[string]map[string]bool{}
	if m.res != nil {
		// Written at once: after a crash the next record must not carry
		// these tokens again.
		return m.res.MarkLedgered(marks, true)
	}
	return nil
}

// trunkUsage returns the trunk keys' records of the interval: the
// attempts with each key by the decision they got, and the peak of its
// sessions, for every key with one or the other (after the services'
// records, sorted by service and key); and each key's counters, to count
// the next interval from once the records are in the ledger. It reads
// every key (a Flush every ledger.interval: 100,000 keys in tens of ms).
func (m *Meter) trunkUsage() ([]ledger.Usage, map[*admission.Trunk][admission.NumReasons]uint64) {
	var out []ledger.Usage
	counted := map[*admission.Trunk][admission.NumReasons]uint64{}
	m.eng.EachTrunk(func(t *admission.Trunk) {
		cur := t.Stats().Admissions
		prev := m.trunks[t]
		u := ledger.Usage{Service: t.Service(), Trunk: t.Key(), PeakSessions: uint64(max(t.TakePeakSessions(), 0))}
		for r := range admission.NumReasons {
			d := cur[r] - prev[r]
			u.Attempts += d
			switch {
			case admission.Reason(r) == admission.OK:
				u.Admitted = d
			case d > 0:
				if u.Rejected == nil {
					u.Rejected = map[string]uint64{}
				}
				u.Rejected[admission.Reason(r).String()] = d
			}
		}
		if cur != prev {
			counted[t] = cur
		}
		if u.Attempts > 0 || u.PeakSessions > 0 {
			out = append(out, u)
		}
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Trunk < out[j].Trunk
	})
	return out, counted
}

// changedPools returns the pools of s that changed since the last record:
// those the watch reports and those a failed Flush left.
func (m *Meter) changedPools(s *admission.Service) map[string]admission.PoolState {
	m.changed = s.ChangedPools(m.watch, m.changed[:0])
	out := make(map[string]admission.PoolState, len(m.changed))
	for _, p := range m.changed {
		out[p.Account] = p
	}
	for acct := range m.unrecorded[s.Name()] {
		if _, ok := out[acct]; !ok {
			if p, ok := s.Pool(acct); ok {
				out[acct] = p
			}
		}
	}
	return out
}

func (m *Meter) unrecord(service, account string) {
	if m.unrecorded[service] == nil {
		m.unrecorded[service] = map[string]bool{}
	}
	m.unrecorded[service][account] = true
}

// poolDelta is the tokens a pool took between two snapshots, within the
// pool and beyond it.
func poolDelta(prev, cur admission.PoolState) (tokens, overage uint64) {
	t := cur.Total - cur.TotalOverage - (prev.Total - prev.TotalOverage)
	o := cur.TotalOverage - prev.TotalOverage
	return uint64(max(t, 0)), uint64(max(o, 0))
}

type usage struct{ ledger.Usage }

func (u usage) empty() bool {
	return u.Attempts == 0 && u.Emergency == 0 && u.Tokens == 0 && u.Overage == 0 && u.PeakSessions == 0 && u.PeakSubscribers == 0
}

// serviceUsage is a service's usage between two snapshots.
func serviceUsage(name string, prev, cur admission.Stats, pk peaks) usage {
	u := ledger.Usage{Service: name, Rejected: map[string]uint64{}}
	for r := range admission.NumReasons {
		d := cur.Admissions[r] - prev.Admissions[r]
		u.Attempts += d
		if admission.Reason(r) == admission.OK {
			u.Admitted = d
		} else if d > 0 {
			u.Rejected[admission.Reason(r).String()] = d
		}
	}
	u.Emergency = cur.Emergency - prev.Emergency
	u.PeakCAPS, u.PeakSessions, u.PeakSubscribers = pk.caps, pk.sessions, pk.subscribers
	if len(u.Rejected) == 0 {
		u.Rejected = nil
	}
	return usage{u}
}
