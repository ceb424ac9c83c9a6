package admission

// This file is the engine's side of making open sessions and registrations
// survive a restart (package admission/journal is the other): each
// service logs its changes into a bounded in-memory slice under the mutex
// it already holds, and the journal drains, writes and replays them. The
// decision path does no I/O and allocates nothing for it.

import "sync"

// ChangeKind says what a Change did.
type ChangeKind uint8

// The kinds of Change. An entry that expires is not logged: a replay drops
// whatever has expired by then.
const (
	SessionOpened  ChangeKind = iota + 1 // ADMIT ... CALL opened a session
	SessionClosed                        // RELEASE ended one
	SubscriberSet                        // REGISTER added or refreshed a subscriber
	SubscriberGone                       // DEREGISTER (or a cluster claim) removed one
	ConsumedSet                          // CONSUME ... ID charged (or a member's was remembered): Remaining is its decision's
)

// Change is one change to a service's sessions or subscribers: a small
// fixed-size value, so the log is a slice that never allocates once it has
// its capacity. Account is the account's interned name (no copy).
type Change struct {
	Kind     ChangeKind
	Priority Priority // SessionOpened
	Licensed bool     // SessionOpened: counts against the licensed sessions
	Key      Key
	// Expires is the entry's expiry on the engine's clock (SessionOpened,
	// SubscriberSet).
	Expires int64
	// Remaining is the `remaining` of the session's first decision, which a
	// repeated ADMIT gets again (SessionOpened).
	Remaining int64
	// Account the session's RELEASE ... SECONDS charges ("" the service's
	// pool) (SessionOpened).
	Account string
	// Trunk is the key whose sessions it counts against ("" none)
	// (SessionOpened).
	Trunk string
}

// MaxLog bounds a service's change log: past it, changes are dropped
// and the journal writes the service whole instead (see logChange). 2 M
// changes (112 MB) is five seconds of a node's busiest rate.
const MaxLog = 1 << 21

// logChange appends c to the change log when journaling is on. A service
// the journal has not drained yet has no log (an idle or made-up service
// costs nothing): c is dropped and the drainer, told the log lost
// something, writes the service whole, which covers it. A full log
// doubles, up to Config.MaxLog: the journal sizes the log it hands back for what
// it drains every interval, so the log is full only when a flush fell
// behind (a disk slow to fsync under a snapshot's writes), and writing a
// service of millions of entries whole then would take seconds, long
// enough to overflow again. Called with mu held; allocates only then.
func (s *Service) logChange(c Change) {
	if !s.journal {
		return
	}
	if s.quiet.Load() {
		s.quiet.Store(false)
	}
	switch {
	case len(s.changes) < cap(s.changes):
		s.changes = append(s.changes, c)
	case cap(s.changes) == 0 || cap(s.changes) >= s.maxLog:
		s.changesLost = true
	default:
		grown := make([]Change, len(s.changes), min(2*cap(s.changes), s.maxLog))
		copy(grown, s.changes)
		s.changes = append(grown, c)
	}
	// Last, once the change is in the log and quiet lowered: a flush that
	// takes the mark off the engine's stack then finds them (a mark taken
	// before them would leave the change to a flush that never comes).
	if s.loggedStack != nil {
		markMoved(s.loggedStack, s, &s.logged)
	}
}

// Drain returns the changes logged since the last Drain or Snapshot, and
// whether some were lost because the log was full (the caller must then
// take a Snapshot to be complete). buf's storage becomes the new log: its
// capacity bounds how many changes the service logs until the next Drain,
// so a caller that alternates two buffers (passing back the slice the
// previous Drain returned) makes journaling allocation-free in steady
// state. A service that logged nothing since the last Drain keeps its log
// and hands buf back empty, without taking its lock. Called off the
// decision path (the journal's flush loop).
func (s *Service) Drain(buf []Change) (changes []Change, lost bool) {
	if s.Quiet() {
		return buf[:0], false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changes, lost = s.changes, s.changesLost
	s.changes, s.changesLost = buf[:0], false
	s.quiet.Store(cap(buf) > 0)
	return changes, lost
}

func loggedMark(s *Service) *moveMark[Service] { return &s.logged }

// DrainLogged calls f for every service that logged a change since the
// last drain, each once: the journal's flush, every 20 ms, drains those
// of a farm's 1,000 services, not every one. A service that logs while f
// reads it is handed out again at the next drain. One caller at a time
// (the engine's journal).
func (e *Engine) DrainLogged(f func(*Service)) { drainMoved(&e.loggedServices, loggedMark, f) }

// Quiet reports that the service logged nothing since the last Drain
// (false when it may have): Drain would hand buf back empty. One atomic
// read, without the lock.
func (s *Service) Quiet() bool { return s.quiet.Load() }

// Snapshot appends the service's live sessions (as SessionOpened),
// subscribers (as SubscriberSet) and remembered IDs (ConsumedSet) at now
// to out, after making buf the new change log. It takes the service's lock
// for the swap and then for one chunk of a table at a time, never for a
// whole table (a node holding millions of entries stalled every decision
// on the service while a snapshot walked them): what changes meanwhile is
// in the new log, which the journal writes after the snapshot, and
// replaying it over the snapshot gives the state (a put of an entry the
// snapshot holds, or a drop of one it lacks, changes nothing). What was
// logged before the swap is returned as drained, for the caller to
// recycle; the snapshot covers it.
func (s *Service) Snapshot(now int64, out, buf []Change) (snap, drained []Change) {
	s.mu.Lock()
	need := s.sessions.len() + s.subscribers.len() + s.consumed.len()
	s.mu.Unlock()
	if cap(out) < need {
		out = make([]Change, 0, need) // once, not doubling through millions
	}
	drained = s.SnapshotTo(now, buf, func(chunk []Change) { out = append(out, chunk...) })
	return out, drained
}

// SnapshotTo is Snapshot handing the entries to emit a table chunk at a
// time (at most 4,096 changes, valid only during the call, emitted with
// no lock held), so that a snapshot of millions of entries is written as
// it is taken, never held whole.
func (s *Service) SnapshotTo(now int64, buf []Change, emit func([]Change)) (drained []Change) {
	s.mu.Lock()
	drained = s.changes
	s.changes, s.changesLost = buf[:0], false
	s.quiet.Store(false) // the next Drain looks
	s.mu.Unlock()
	s.WalkTo(now, func(c []Change) bool { emit(c); return true })
	return drained
}

// WalkTo hands the service's live sessions, subscribers and remembered IDs
// at now to emit as SnapshotTo does, leaving the change log as it is, until
// emit returns false. It holds the service's lock for one chunk of a table
// at a time: each entry is emitted as it was at some instant of the walk,
// and a change made meanwhile is also in the log.
func (s *Service) WalkTo(now int64, emit func([]Change) bool) {
	tmp := make([]Change, 0, chunkSize)
	tmp, ok := walkTable(&s.mu, &s.sessions, now, tmp, emit, func(e *entry[session]) Change { return sessionChange(e.key, e.exp, e.v) })
	if ok {
		tmp, ok = walkTable(&s.mu, &s.subscribers, now, tmp, emit, func(e *entry[registered]) Change {
			return Change{Kind: SubscriberSet, Key: e.key, Expires: e.exp}
		})
	}
	if ok {
		walkTable(&s.mu, &s.consumed, now, tmp, emit, func(e *entry[Decision]) Change {
			return Change{Kind: ConsumedSet, Key: e.key, Expires: e.exp, Remaining: e.v.Remaining}
		})
	}
}

// walkTable emits the live entries of t at now, as change says, a chunk at
// a time: taken under mu into tmp, emitted after. It reports false if
// emit did.
func walkTable[V any](mu *sync.Mutex, t *table[V], now int64, tmp []Change, emit func([]Change) bool, change func(*entry[V]) Change) ([]Change, bool) {
	for c := 0; ; c++ {
		tmp = tmp[:0]
		mu.Lock()
		if c >= len(t.chunks) || c*chunkSize >= int(t.n) {
			mu.Unlock()
			return tmp, true
		}
		ch := t.chunks[c][:min(chunkSize, int(t.n)-c*chunkSize)]
		for i := range ch {
			if e := &ch[i]; e.slot != none && e.exp > now { // not free, not due
				tmp = append(tmp, change(e))
			}
		}
		mu.Unlock()
		if len(tmp) > 0 && !emit(tmp) {
			return tmp, false
		}
	}
}

func sessionChange(k Key, exp int64, x session) Change {
	c := Change{Kind: SessionOpened, Priority: x.prio, Licensed: x.licensed, Key: k, Expires: exp, Remaining: int64(x.remaining)}
	if x.account != nil {
		c.Account = x.account.name
	}
	if x.trunk != nil {
		c.Trunk = x.trunk.key
	}
	return c
}

// Restore puts back a service's sessions and subscribers after a restart,
// before the node serves: changes are what a snapshot and the journal
// after it say, in order, with expiries on this engine's clock. Entries
// due at now are dropped. The service is created (unlicensed, as an
// emergency call would) if no licence has made it yet. Restoring is not
// logged. It returns how many sessions and subscribers are open after it.
func (e *Engine) Restore(now int64, service string, changes []Change) (sessions, subscribers int, err error) {
	return e.restore(now, service, changes, false)
}

// RestoreSnapshot is Restore for changes of keys it has not restored
// before, as a snapshot holds them (each entry once, no removals): each is
// put without first looking for an earlier one.
func (e *Engine) RestoreSnapshot(now int64, service string, changes []Change) (sessions, subscribers int, err error) {
	return e.restore(now, service, changes, true)
}

// ReserveRestore makes room in service's tables for the sessions and
// subscribers a restore is about to put back, so that they grow once.
func (e *Engine) ReserveRestore(service string, sessions, subscribers int) error {
	s := e.Service(service)
	if s == nil {
		var err error
		if s, _, err = e.ensure(service, false, nil); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions.reserve(sessions)
	s.subscribers.reserve(subscribers)
	return nil
}

func (e *Engine) restore(now int64, service string, changes []Change, unique bool) (sessions, subscribers int, err error) {
	s := e.Service(service)
	if s == nil {
		if s, _, err = e.ensure(service, false, nil); err != nil {
			return 0, 0, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var nSess, nSubs int
	for i := range changes {
		switch changes[i].Kind {
		case SessionOpened:
			nSess++
		case SubscriberSet:
			nSubs++
		}
	}
	s.sessions.reserve(nSess) // the slab and index once, not doubling
	s.subscribers.reserve(nSubs)
	for len(changes) > 0 {
		batch := changes[:min(len(changes), restoreWarm)]
		changes = changes[len(batch):]
		s.warmRestore(batch)
		for _, c := range batch {
			switch c.Kind {
			case SessionOpened:
				if !unique {
					s.dropSession(c.Key)
				}
				if c.Expires <= now {
					continue
				}
				x := session{remaining: int32(clampRemaining(c.Remaining)), prio: c.Priority, licensed: c.Licensed}
				if c.Account != "" {
					x.account = s.accounts[c.Account] // nil if no longer allocated: the service's pool
				}
				if c.Trunk != "" && x.licensed {
					// The key may get its limits after the restore: it is
					// added without, counting its sessions meanwhile.
					x.trunk, _ = e.trunk(s, c.Trunk, true) // nil past MaxTrunks: not counted
				}
				s.sessions.put(c.Key, x, c.Expires)
				if x.licensed {
					s.licensedSessions++
					s.sessionsN.Add(1)
					if x.trunk != nil {
						x.trunk.notePeak(x.trunk.sessionsN.Add(1))
					}
				} else {
					s.emergencyOpened(1)
				}
			case SessionClosed:
				s.dropSession(c.Key)
			case SubscriberSet:
				if unique {
					if c.Expires > now {
						s.subscribers.put(c.Key, 0, c.Expires)
						s.subsN.Add(1)
					}
					continue
				}
				if x, ok := s.subscribers.get(c.Key, now); ok {
					if c.Expires <= now {
						s.subscribers.del(c.Key, now)
						s.subsN.Add(-1)
					} else {
						s.subscribers.refresh(x, c.Expires)
						x.v = 0 // restored: when it was registered is not known
					}
					continue
				}
				if c.Expires > now {
					s.subscribers.put(c.Key, 0, c.Expires)
					s.subsN.Add(1)
				}
			case SubscriberGone:
				if _, live := s.subscribers.del(c.Key, now); live {
					s.subsN.Add(-1)
				}
			case ConsumedSet:
				if _, ok := s.consumed.get(c.Key, now); !ok && c.Expires > now {
					s.consumed.put(c.Key, Decision{Reason: OK, Remaining: c.Remaining}, c.Expires)
				}
			}
		}
	}
	return s.sessions.len(), s.subscribers.len(), nil
}

// restoreWarm is how many changes a restore touches the places of at once
// (Service.warmRestore) before it applies them.
const restoreWarm = 16

// warmRestore touches the tables' places of a batch of changes' keys, so
// that a restore into tables of millions of entries pays the batch's
// cache misses together (see Engine.Warm). Called with mu held.
func (s *Service) warmRestore(batch []Change) {
	var sess, subs [restoreWarm]Key
	ns, nu := 0, 0
	for i := range batch {
		switch batch[i].Kind {
		case SessionOpened, SessionClosed:
			sess[ns] = batch[i].Key
			ns++
		case SubscriberSet, SubscriberGone:
			subs[nu] = batch[i].Key
			nu++
		}
	}
	s.warmed += s.sessions.warm(sess[:ns]) + s.subscribers.warm(subs[:nu])
}

// dropSession removes k's session, live or due, keeping the counts.
// Called with mu held.
func (s *Service) dropSession(k Key) {
	i, seg, p, _ := s.sessions.find(k)
	if i == none {
		return
	}
	x := s.sessions.ent(i).v
	s.sessions.removeAt(i, seg, p)
	s.sessionGone(x)
}

// Parts returns the key's two 64-bit halves, for storing it.
func (k Key) Parts() (hi, lo uint64) { return k.hi, k.lo }

// KeyFromParts is the key whose Parts are hi and lo.
func KeyFromParts(hi, lo uint64) Key { return Key{hi, lo} }
