package admission

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Trunks. Inside a licensed service an operator gives named keys (trunks,
// customers, source prefixes) limits of their own: a CAPS bucket with its
// own depth and a number of concurrent sessions. ADMIT ... TRUNK key
// checks the key's limits first and the licence's after; an attempt the
// licence refuses gives back what it took of the key's (the bucket's
// token, the session), so a key's limits only ever count attempts that
// were admitted. A key the operator gave no limits is not looked up:
// the attempt is decided by the licence alone.
//
// A trunk's limits come through the same door as a licence's
// (SetLimits, under TrunkName(service, key)), so the cluster shares a
// key's limits between members as it shares a licence's.
//
// A trunk holds no table of its own: a session admitted through it is in
// its service's session table and points to it (8 bytes a session), and
// its count is one atomic word, taken with a compare-and-swap; the trunks
// of a service are found through a sharded copy-on-write map, without a
// lock.

// TrunkSep joins a service's name and a key's into the name the cluster
// plans the key's limits under ("voice#carrier-a"): it is not in the
// name alphabet, so the name never meets a service's or an account pool's
// ("voice/acct").
const TrunkSep = "#"

// TrunkName is the name of service's key under which its limits are set
// and shared.
func TrunkName(service, key string) string { return service + TrunkSep + key }

// SplitTrunk returns the service and key of a TrunkName.
func SplitTrunk(name string) (service, key string, ok bool) {
	return strings.Cut(name, TrunkSep)
}

// MaxTrunks bounds the keys with limits on a node, all services together
// (about 300 bytes each: 300 MB at the bound).
const MaxTrunks = 1 << 20

// ErrTooManyTrunks is returned when a key's limits would exceed MaxTrunks.
var ErrTooManyTrunks = errors.New("too many keys with limits")

// Trunk is one key's limits and counters on this node.
type Trunk struct {
	limiter
	key     string
	service *Service
	// touched: something was decided, released or counted since the key
	// was last drained (DrainMoved), and it is on the engine's stack of
	// moved keys (moved), so that a reader of 100,000 keys visits only
	// those that move.
	touched moveMark[Trunk]
	moved   *atomic.Pointer[Trunk]
	// peak is the most sessions open at once since TakePeakSessions.
	peak atomic.Int64
}

// notePeak keeps the peak of the key's sessions, now open.
func (t *Trunk) notePeak(now int64) {
	for {
		p := t.peak.Load()
		if now <= p || t.peak.CompareAndSwap(p, now) {
			return
		}
	}
}

// TakePeakSessions returns the most sessions open at once on the key since
// the last call (at least those open now), and starts over from now.
func (t *Trunk) TakePeakSessions() int64 {
	p := t.peak.Swap(t.sessionsN.Load())
	return max(p, t.sessionsN.Load())
}

func touchedMark(t *Trunk) *moveMark[Trunk] { return &t.touched }

// touch marks the key as moved: the first mark since it was last drained
// pushes it on the engine's stack (a compare-and-swap, no lock); the
// others only read the flag.
func (t *Trunk) touch() {
	if !t.touched.marked.Load() {
		markMoved(t.moved, t, &t.touched)
	}
}

// DrainMoved calls f for every key that moved (something was decided,
// released or counted on it) since the last drain, each once. A key that
// moves while f reads it is handed out again at the next drain. One
// caller at a time.
func (e *Engine) DrainMoved(f func(*Trunk)) { drainMoved(&e.movedTrunks, touchedMark, f) }

// Key returns the key's name within its service.
func (t *Trunk) Key() string { return t.key }

// Service returns the name of the service the key belongs to.
func (t *Trunk) Service() string { return t.service.name }

// Limited reports whether the key has limits.
func (t *Trunk) Limited() bool { return t.lim.Load().Licensed }

// OpenSessions returns the sessions open here that count against the key.
func (t *Trunk) OpenSessions() int64 { return t.sessionsN.Load() }

// Stats returns a snapshot of the key's limits and counters: Admissions
// counts the attempts with this key by the decision they got once they
// had reached the key's checks (OK, TRUNK_CAPS, TRUNK_SESSIONS, or the
// licence's reason when the licence refused them). Lock-free.
func (t *Trunk) Stats() Stats {
	l := t.lim.Load()
	st := Stats{Name: t.name, Limits: l.Limits, Burst: l.caps.burst, High: t.high.Load(), SpilledIn: t.spilledIn.Load(),
		SpilledOut: t.spilledOut.Load(), Sessions: t.sessionsN.Load(), UsedCAPS: math.Float64frombits(t.usedCAPS.Load()),
		TokensLeft: -1, trunk: true}
	for i := range st.Admissions {
		st.Admissions[i] = t.counts[i].Load()
	}
	return st
}

// trunkShards splits a service's trunks so that adding one copies a
// 256th of them (100,000 keys: about 400 each).
const trunkShards = 256

// trunkTable is a service's trunks by key: each shard an immutable map
// behind an atomic pointer, replaced (copy on write, under mu) when a key
// is added. Keys are never removed: a key whose limits are taken away
// keeps its counters and its open sessions' count, for when it gets
// limits again.
type trunkTable struct {
	mu sync.Mutex // serialises adding keys and setting their limits
	// shards are made with the first key: most services have none, and
	// 2 KB of empty shards would stand between one service's state and
	// the next's (see Service).
	shards atomic.Pointer[[trunkShards]atomic.Pointer[map[string]*Trunk]]
}

func trunkShard[K string | []byte](key K) int {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return int(h % trunkShards)
}

// get returns key's trunk or nil. It does not allocate.
func (tt *trunkTable) get(key []byte) *Trunk { return getTrunk(tt, key) }

func getTrunk[K string | []byte](tt *trunkTable, key K) *Trunk {
	shards := tt.shards.Load()
	if shards == nil {
		return nil
	}
	m := shards[trunkShard(key)].Load()
	if m == nil {
		return nil
	}
	return (*m)[string(key)]
}

// add returns key's trunk, made by mk if it is new. Called with mu held.
func (tt *trunkTable) add(key string, mk func() (*Trunk, error)) (*Trunk, error) {
	shards := tt.shards.Load()
	if shards == nil {
		shards = new([trunkShards]atomic.Pointer[map[string]*Trunk])
		tt.shards.Store(shards)
	}
	sh := &shards[trunkShard(key)]
	var old map[string]*Trunk
	if p := sh.Load(); p != nil {
		old = *p
	}
	if t, ok := old[key]; ok {
		return t, nil
	}
	t, err := mk()
	if err != nil {
		return nil, err
	}
	m := make(map[string]*Trunk, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[key] = t
	sh.Store(&m)
	return t, nil
}

// each calls f for every trunk, in no order.
func (tt *trunkTable) each(f func(*Trunk)) {
	shards := tt.shards.Load()
	if shards == nil {
		return
	}
	for i := range shards {
		if m := shards[i].Load(); m != nil {
			for _, t := range *m {
				f(t)
			}
		}
	}
}

// noTrunkLimits are a key's limits before it has any: none.
var noTrunkLimits = Limits{Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited, State: "none"}

// trunk returns service s's trunk of key, adding it (with no limits) if
// add is set.
func (e *Engine) trunk(s *Service, key string, add bool) (*Trunk, error) {
	if t := getTrunk(&s.trunks, key); t != nil || !add {
		return t, nil
	}
	s.trunks.mu.Lock()
	defer s.trunks.mu.Unlock()
	return e.addTrunk(s, key)
}

// addTrunk is trunk adding, with s.trunks.mu held.
func (e *Engine) addTrunk(s *Service, key string) (*Trunk, error) {
	return s.trunks.add(key, func() (*Trunk, error) {
		if e.trunkCount.Add(1) > MaxTrunks {
			e.trunkCount.Add(-1)
			return nil, fmt.Errorf("cannot add limits for %s: %w (limit %d)", TrunkName(s.name, key), ErrTooManyTrunks, MaxTrunks)
		}
		t := &Trunk{limiter: limiter{name: TrunkName(s.name, key)}, key: key, service: s, moved: &e.movedTrunks}
		t.lim.Store(derive(noTrunkLimits, &e.cfg))
		return t, nil
	})
}

// setTrunkLimits is SetLimitsAt for a key's limits (l.Licensed: the key
// has limits; a key given none is decided by its licence alone).
// Subscribers and tokens are not limited per key.
func (e *Engine) setTrunkLimits(now int64, service, key string, l Limits) error {
	s, _, err := e.ensure(service, true, nil)
	if err != nil {
		return err
	}
	l.Subscribers, l.Tokens, l.TokensPerAttempt, l.TokensPerMinute, l.TokensShared = Unlimited, Unlimited, 0, 0, false
	d := derive(l, &e.cfg)
	s.trunks.mu.Lock()
	defer s.trunks.mu.Unlock()
	t, err := e.addTrunk(s, key)
	if err != nil {
		return err
	}
	old := t.lim.Swap(d)
	rescale(&t.capsTAT, &old.caps, &d.caps, now)
	rescale(&t.headroomTAT, &old.headroom, &d.headroom, now)
	return nil
}

// Trunk returns service's trunk of key, or nil if the key never had limits.
func (e *Engine) Trunk(service, key string) *Trunk {
	s := e.Service(service)
	if s == nil {
		return nil
	}
	return getTrunk(&s.trunks, key)
}

// Trunks returns every key that has or had limits, sorted by name.
func (e *Engine) Trunks() []*Trunk {
	var out []*Trunk
	e.EachTrunk(func(t *Trunk) { out = append(out, t) })
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// EachTrunk calls f for every key that has or had limits, in no order.
func (e *Engine) EachTrunk(f func(*Trunk)) {
	for _, s := range e.services.Load().sorted {
		s.trunks.each(f)
	}
}

// trunkHold is what an attempt took of a key's limits, to be given back
// if the licence refuses it. The zero value holds nothing.
type trunkHold struct {
	t       *Trunk
	took    uint8 // tookCAPS, tookHeadroom or tookNone
	high    bool  // counted as a PRIORITY high attempt admitted
	session bool  // a session counted
}

// enter checks an attempt against the key's limits and takes what it
// uses: a CAPS token, and a session when session is set. On a refusal it
// counts it (TRUNK_CAPS, TRUNK_SESSIONS; a spillable TRUNK_CAPS is
// counted once settled: Engine.Refused) and returns the decision. remaining
// is what is left of the key's limiting quantity (-1: none). A key with
// no limits takes nothing.
func (t *Trunk) enter(now int64, prio Priority, session, spillable bool) (h trunkHold, remaining int64, d Decision, ok bool) {
	h.t = t
	t.touch()
	l := t.lim.Load()
	if !l.Licensed {
		return h, -1, Decision{}, true
	}
	remaining = -1
	if session && l.Sessions != Unlimited {
		limit := l.Sessions
		if prio == High {
			limit = l.highSessions
		}
		for {
			n := t.sessionsN.Load()
			if n >= limit {
				t.counts[TRUNK_SESSIONS].Add(1)
				return trunkHold{}, 0, Decision{Reason: TRUNK_SESSIONS, RetryAfterMS: retryCountedMS, Remaining: 0}, false
			}
			if t.sessionsN.CompareAndSwap(n, n+1) {
				remaining = limit - n - 1
				break
			}
		}
		h.session = true
	}
	left, took, d, ok := t.takeCAPS(now, &l.caps, l, prio)
	if !ok {
		if h.session {
			t.sessionsN.Add(-1)
		}
		if !spillable {
			t.counts[TRUNK_CAPS].Add(1)
			t.refusedCAPS(now)
		}
		d.Reason = TRUNK_CAPS
		return trunkHold{}, 0, d, false
	}
	h.took, h.high = took, prio == High
	return h, minRemaining(remaining, left), Decision{}, true
}

// admitted counts the attempt admitted; the key keeps what it took. The
// key is marked moved again after the count (enter marked it before): a
// reader that drained it between the two would otherwise never read the
// count (Engine.DrainMoved).
func (h trunkHold) admitted() {
	if h.t != nil {
		h.t.counts[OK].Add(1)
		h.t.touch()
	}
}

// refused gives back what the attempt took of the key's limits, the
// licence having refused it for reason; counted unless uncounted (a
// spillable refusal, counted where it is decided).
func (h trunkHold) refused(now int64, reason Reason, uncounted bool) {
	if h.t == nil {
		return
	}
	l := h.t.lim.Load()
	switch h.took {
	case tookCAPS:
		l.caps.refund(&h.t.capsTAT, now)
	case tookHeadroom:
		l.headroom.refund(&h.t.headroomTAT, now)
	}
	if h.high {
		h.t.high.Add(^uint64(0))
	}
	h.dropSession()
	if !uncounted {
		h.t.counts[reason].Add(1)
	}
	h.t.touch() // what it gave back and counted, after enter's mark (see admitted)
}

// dropSession gives back the session the attempt counted (the call was
// not opened after all).
func (h *trunkHold) dropSession() {
	if h.session {
		h.t.sessionsN.Add(-1)
		h.session = false
	}
}

// sessionTrunk is the trunk an opened session counts against.
func (h trunkHold) sessionTrunk() *Trunk {
	if h.session {
		return h.t
	}
	return nil
}

// AdmitTrunk is Admit with TRUNK key: the key's limits are checked first,
// then the licence's (see Trunks above). trunk may be nil (Admit).
func (e *Engine) AdmitTrunk(now int64, service, call, acct, trunk []byte, prio Priority) Decision {
	return e.admit(now, service, call, acct, trunk, prio, false)
}

// AdmitTrunkSpillable is AdmitSpillable with TRUNK key: a refusal by the
// licence's CAPS bucket is not counted (here nor on the key), and what it
// took of the key's limits is given back, for the member it is spilled to
// to decide the key's limits and the licence's there.
func (e *Engine) AdmitTrunkSpillable(now int64, service, call, acct, trunk []byte, prio Priority) Decision {
	return e.admit(now, service, call, acct, trunk, prio, true)
}

// AdmitTrunkSpilled is AdmitSpilled with TRUNK key.
func (e *Engine) AdmitTrunkSpilled(now int64, service, call, acct, trunk []byte, prio Priority) Decision {
	// Its CAPS refusal is not counted here: the member that spilled it
	// counts it, once it has its answer.
	d := e.admit(now, service, call, acct, trunk, prio, true)
	if d.Reason == OK {
		if s := e.service(service); s != nil {
			s.spilledIn.Add(1)
			if t := s.trunks.get(trunk); t != nil && trunk != nil {
				t.spilledIn.Add(1)
				t.touch()
			}
		}
	}
	return d
}
