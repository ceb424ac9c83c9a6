package admission

import (
	"time"

	"github.com/capsgate/capsgate/admission/sat"
)

// A service's decisions: the engine finds the service (engine.go) and the
// service decides, under its own lock where a session, a subscriber or a
// pool is involved, with the node's capacity from its gate (gate.go).

// admitRate is the lock-free path: an attempt that needs only the CAPS
// buckets (its key's, t, when it names one with limits, then the
// licence's, caps, read from the service's first line: hotCAPS), with
// the engine's gate g (s.gate, not read from another line of s).
func (s *Service) admitRate(now int64, g *gate, caps *gcra, licensed bool, prio Priority, spillable bool, t *Trunk) Decision {
	if !licensed {
		s.counts[UNLICENSED].Add(1)
		return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}
	}
	if d, ok := g.overload(now, prio); !ok {
		s.counts[OVERLOAD].Add(1)
		return d
	}
	var h trunkHold
	remaining := int64(-1)
	if t != nil {
		var d Decision
		var ok bool
		if h, remaining, d, ok = t.enter(now, prio, false, spillable); !ok {
			s.countTrunkRefusal(d.Reason, spillable)
			return d
		}
	}
	left, d, ok := s.takeCAPS(now, caps, nil, prio, spillable)
	if !ok {
		h.refused(now, CAPS, spillable)
		return d
	}
	h.admitted()
	s.counts[OK].Add(1)
	return Decision{Reason: OK, Remaining: clampRemaining(minRemaining(remaining, left))}
}

// countTrunkRefusal counts an attempt its key's limits refused, but a
// spillable TRUNK_CAPS, counted once settled (Engine.Refused).
func (s *Service) countTrunkRefusal(r Reason, spillable bool) {
	if !spillable || r != TRUNK_CAPS {
		s.counts[r].Add(1)
	}
}

// takeCAPS takes a CAPS token (and, for PRIORITY high, a headroom token when
// the licence is used up). On failure it counts the rejection, unless the
// attempt is spillable (AdmitSpillable).
func (s *Service) takeCAPS(now int64, caps *gcra, l *derived, prio Priority, spillable bool) (left int64, d Decision, ok bool) {
	left, _, d, ok = s.limiter.takeCAPS(now, caps, l, prio)
	if !s.spent.marked.Load() && s.spentStack != nil {
		markMoved(s.spentStack, s, &s.spent)
	}
	if !ok && !spillable {
		s.counts[CAPS].Add(1)
		s.refusedCAPS(now)
	}
	return left, d, ok
}

// Where takeCAPS took its token from, for a refund.
const (
	tookNone uint8 = iota
	tookCAPS
	tookHeadroom
)

// takeCAPS takes a token from the CAPS bucket, caps (and, for PRIORITY
// high, from the headroom bucket of l, or of lim when l is nil, when the
// first is empty); it counts nothing but the PRIORITY high attempts it
// lets through.
func (r *limiter) takeCAPS(now int64, caps *gcra, l *derived, prio Priority) (left int64, took uint8, d Decision, ok bool) {
	ok, left = caps.take(&r.capsTAT, now)
	took = tookCAPS
	if !ok && prio == High {
		if l == nil {
			l = r.lim.Load()
		}
		var hl int64
		if ok, hl = l.headroom.take(&r.headroomTAT, now); ok {
			left, took = hl, tookHeadroom
		}
	}
	if !ok {
		return 0, tookNone, Decision{Reason: CAPS, RetryAfterMS: retryMS(left), Remaining: 0}, false
	}
	if prio == High {
		r.high.Add(1)
	}
	return left, took, Decision{}, true
}

// admitLocked is the path for attempts that open a session or charge tokens.
// keyPool: acct is the name of the attempt's key (TRUNK), whose pool, if
// it has one, refuses TRUNK_TOKENS rather than TOKENS.
func (s *Service) admitLocked(now int64, call, acct []byte, prio Priority, scope []byte, spillable bool, t *Trunk, keyPool bool) Decision {
	var key Key
	if call != nil {
		key = sessionKey(call, scope)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.lim.Load(); prio != Emergency && l.Licensed {
		s.awaitCharge(acct, l.TokensPerAttempt) // may release mu: nothing checked yet
	}
	if call != nil {
		if x, ok := s.sessions.get(key, now); ok {
			return x.v.first() // a retransmission: same answer, not counted again
		}
		if d, ok := s.endedAnswer(now, key); ok {
			return d // likewise, of a call admitted after it had ended
		}
	}
	l := s.lim.Load()
	if prio != Emergency && !l.Licensed {
		s.counts[UNLICENSED].Add(1)
		return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}
	}
	if d, ok := s.gate.overload(now, prio); !ok {
		s.counts[OVERLOAD].Add(1)
		return d
	}
	if prio == Emergency {
		if call != nil && s.gate.emergencyOpen.Load() >= int64(s.gate.cfg.MaxEmergencySessions) {
			s.counts[OVERLOAD].Add(1)
			return Decision{Reason: OVERLOAD, RetryAfterMS: emergencyFullRetryMS, Remaining: 0}
		}
		s.emergency.Add(1)
		d := Decision{Reason: OK, Remaining: -1}
		if call != nil && !s.endedCall(now, key, d) {
			exp := now + int64(s.gate.cfg.SessionTTL)
			s.sessions.put(key, session{remaining: int32(d.Remaining), prio: Emergency}, exp)
			s.emergencyOpened(1)
			s.logChange(Change{Kind: SessionOpened, Priority: Emergency, Key: key, Expires: exp, Remaining: d.Remaining})
		}
		return d
	}
	// The key's limits first (t: it has some), then the licence's; what
	// the licence refuses gives back what it took of the key's.
	var h trunkHold
	remaining := int64(-1)
	if t != nil {
		var d Decision
		var ok bool
		h, remaining, d, ok = t.enter(now, prio, call != nil, spillable)
		if !ok && d.Reason == TRUNK_SESSIONS && s.sessions.len() > 0 {
			// Sessions due but not yet expired may hold the key's: expire
			// them (as for the licence's) and look again.
			s.sweepAtLimit(&s.sessions.lastFull, now, s.sessions.expireSome)
			t.counts[TRUNK_SESSIONS].Add(^uint64(0))
			h, remaining, d, ok = t.enter(now, prio, call != nil, spillable)
		}
		if !ok {
			s.countTrunkRefusal(d.Reason, spillable)
			return d
		}
	}
	d, ok := s.admitLicensed(now, l, call, key, acct, keyPool, prio, spillable, remaining, h)
	if !ok {
		h.refused(now, d.Reason, spillable && d.Reason == CAPS)
	}
	return d
}

// admitLicensed is admitLocked's part once the key's limits (h) admitted
// the attempt: the licence's limits, and the session opened.
func (s *Service) admitLicensed(now int64, l *derived, call []byte, key Key, acct []byte, keyPool bool, prio Priority, spillable bool, remaining int64, h trunkHold) (Decision, bool) {
	if call != nil && l.Sessions != Unlimited {
		limit := l.Sessions
		if prio == High {
			limit = l.highSessions
		}
		if s.licensedSessions >= limit {
			s.sweepAtLimit(&s.sessions.lastFull, now, s.sessions.expireSome)
		}
		if s.licensedSessions >= limit {
			s.counts[SESSIONS].Add(1)
			return Decision{Reason: SESSIONS, RetryAfterMS: retryCountedMS, Remaining: 0}, false
		}
		remaining = minRemaining(remaining, limit-s.licensedSessions-1)
	}
	p, a := s.poolFor(acct)
	cost := l.TokensPerAttempt
	if cost > 0 && !p.fits(cost) {
		r := TOKENS
		if keyPool && a != nil {
			r = TRUNK_TOKENS // the key's own pool
		}
		s.counts[r].Add(1)
		return Decision{Reason: r, RetryAfterMS: retryUnlicensedMS, Remaining: clampRemaining(p.left())}, false
	}
	if !s.reserved(p, cost) {
		s.wakeReserver()
		s.counts[OVERLOAD].Add(1)
		return Decision{Reason: OVERLOAD, RetryAfterMS: retryReserveMS, Remaining: 0}, false
	}
	left, d, ok := s.takeCAPS(now, &l.caps, l, prio, spillable)
	if !ok {
		return d, false
	}
	remaining = minRemaining(remaining, left)
	if cost > 0 {
		s.charge(p, cost)
		remaining = minRemaining(remaining, p.left())
	}
	d = Decision{Reason: OK, Remaining: clampRemaining(remaining)}
	if call != nil && !s.endedCall(now, key, d) {
		x := session{remaining: int32(d.Remaining), prio: prio, account: a, licensed: true, trunk: h.sessionTrunk()}
		exp := now + int64(s.gate.cfg.SessionTTL)
		s.sessions.put(key, x, exp)
		s.licensedSessions++
		s.sessionsN.Add(1)
		if x.trunk != nil {
			x.trunk.notePeak(x.trunk.sessionsN.Load()) // opened: its peak
		}
		if s.journal {
			s.logChange(sessionChange(key, exp, x))
		}
	} else {
		h.dropSession()
	}
	h.admitted()
	s.counts[OK].Add(1)
	return d, true
}

// release ends the session of key, charging its minutes; it reports
// whether it was open.
func (s *Service) release(now int64, key Key, seconds int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, live := s.sessions.del(key, now)
	if !live {
		return false
	}
	s.logChange(Change{Kind: SessionClosed, Key: key})
	s.sessionGone(x)
	if l := s.lim.Load(); seconds > 0 && x.licensed && l.TokensPerMinute > 0 {
		p := &s.tokens
		if x.account != nil {
			p = &x.account.pool
		}
		minutes := (min(seconds, MaxReleaseSeconds) + 59) / 60
		n := sat.Mul(minutes, l.TokensPerMinute)
		s.awaitReservation(p, n, true) // charged whatever the pool: the call is over
		s.charge(p, n)
	}
	return true
}

// endedMark is a call marked ended (Engine.Ended). The first ADMIT of it
// admitted opens no session and marks it answered, with that answer's
// remaining: its retransmissions get the same answer, uncounted, as those
// of an open session do (session.first), for EndedFor after it.
type endedMark struct {
	answered  bool
	remaining int32 // clampRemaining keeps it within int32
}

// endedCall reports whether key is marked ended, and marks it answered
// with d, the admitted ADMIT's answer. Called with mu held.
func (s *Service) endedCall(now int64, key Key, d Decision) bool {
	if s.ended.len() == 0 {
		return false
	}
	e, ok := s.ended.get(key, now)
	if !ok {
		return false
	}
	e.v = endedMark{answered: true, remaining: int32(d.Remaining)}
	s.ended.refresh(e, now+int64(EndedFor))
	return true
}

// endedAnswer returns the answer of an ended call's admitted ADMIT, which
// a repeat gets again (a retransmission must not open the session the
// mark kept closed). Called with mu held.
func (s *Service) endedAnswer(now int64, key Key) (Decision, bool) {
	if s.ended.len() == 0 {
		return Decision{}, false
	}
	e, ok := s.ended.get(key, now)
	if !ok || !e.v.answered {
		return Decision{}, false
	}
	return Decision{Reason: OK, Remaining: int64(e.v.remaining)}, true
}

// registerNew is Engine.RegisterNew on this service.
func (s *Service) registerNew(now int64, sub []byte, ttl int64, clk Clock) (Decision, bool, int64) {
	l := s.lim.Load()
	if !l.Licensed {
		return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}, false, now
	}
	exp := now + int64(s.gate.cfg.SubscriberTTL)
	if ttl > 0 {
		exp = now + min(ttl, MaxTTL)*int64(time.Second)
	}
	key := KeyOf(sub)
	s.mu.Lock()
	defer s.mu.Unlock()
	left := func() int64 {
		if l.Subscribers == Unlimited {
			return -1
		}
		return clampRemaining(l.Subscribers - int64(s.subscribers.len()))
	}
	if x, ok := s.subscribers.get(key, now); ok {
		s.subscribers.refresh(x, exp)
		x.v = registeredFor(now, exp)
		s.logChange(Change{Kind: SubscriberSet, Key: key, Expires: exp})
		return Decision{Reason: OK, Remaining: left()}, false, now
	}
	if l.Subscribers != Unlimited && int64(s.subscribers.len()) >= l.Subscribers {
		s.sweepAtLimit(&s.subscribers.lastFull, now, s.subscribers.expireSome)
		if int64(s.subscribers.len()) >= l.Subscribers {
			return Decision{Reason: SUBSCRIBERS, RetryAfterMS: retryCountedMS, Remaining: 0}, false, now
		}
	}
	s.subscribers.put(key, registeredFor(now, exp), exp)
	s.subsN.Add(1)
	s.logChange(Change{Kind: SubscriberSet, Key: key, Expires: exp})
	at := now
	if s.gate.claims.Load() {
		at = max(now, clk.Now())
		s.claims.made(key, at)
		s.claimsHeld.Store(true)
	}
	return Decision{Reason: OK, Remaining: left()}, true, at
}

// deregister is Engine.Deregister on this service.
func (s *Service) deregister(now int64, sub []byte) bool {
	key := KeyOf(sub)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deregisterLocked(now, key)
}

// deregisterLocked removes the subscriber key; s.mu is held.
func (s *Service) deregisterLocked(now int64, key Key) bool {
	_, live := s.subscribers.del(key, now)
	if live {
		s.subsN.Add(-1)
		s.logChange(Change{Kind: SubscriberGone, Key: key})
	}
	return live
}

// consume is Engine.ConsumeCharged on this licensed service.
func (s *Service) consume(now int64, acct []byte, units int64, id []byte) (Decision, bool) {
	var key Key
	if id != nil {
		key = AccountIDKey(acct, id)
		if d, ok := s.knownID(now, key); ok {
			return d, false
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.awaitCharge(acct, units) // may release mu: nothing checked yet
	if id != nil {
		if x, ok := s.consumed.get(key, now); ok {
			return x.v, false
		}
		if s.keysFull() {
			return Decision{Reason: OVERLOAD, RetryAfterMS: retryCountedMS, Remaining: 0}, false
		}
	}
	p, _ := s.poolFor(acct)
	if !p.fits(units) {
		return Decision{Reason: TOKENS, RetryAfterMS: retryUnlicensedMS, Remaining: clampRemaining(p.left())}, false
	}
	if !s.reserved(p, units) {
		s.wakeReserver()
		return Decision{Reason: OVERLOAD, RetryAfterMS: retryReserveMS, Remaining: 0}, false
	}
	s.charge(p, units)
	d := Decision{Reason: OK, Remaining: clampRemaining(p.left())}
	if id != nil {
		s.rememberID(now, key, d)
	}
	return d, true
}
