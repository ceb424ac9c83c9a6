package admission

import (
	"math"
	"time"
)

// ClaimMemory is how long a service remembers that a subscriber was newly
// registered on this node (a claim): far longer than a claim takes to reach
// every member of a farm.
const ClaimMemory = 10 * time.Second

// claimBook remembers the subscribers newly registered here lately, and
// when, so that of two members registering one subscriber at once the
// later keeps it (Engine.YieldSubscriber). It is written with the
// registration, under the service's lock, so that a claim from another
// member is never settled against a registration whose own claim is not
// yet written: the registration would be let go, then its claim would
// have the other member let go too, and neither would hold the subscriber.
//
// Two generations of ClaimMemory/2 or more each: a claim is found while it
// is younger than ClaimMemory, unless its generation was dropped first (it
// was then at least ClaimMemory/2 old), and forgetting a generation drops
// its map whole, never walking it (a million registrations in a few
// seconds would otherwise be walked under the lock of the event loop
// registering the next one); Engine.Tick drops those of a service that
// registers nothing new. A generation's map is held until its newest
// claim is ClaimMemory old: at most 2.5 × ClaimMemory after its oldest.
type claimBook struct {
	cur, prev map[Key]int64
	curSince  int64 // when cur began (engine instant)
}

// made remembers that the subscriber key was newly registered at at.
func (b *claimBook) made(key Key, at int64) {
	if b.cur == nil || at-b.curSince >= int64(ClaimMemory/2) {
		b.forget(at)
		// Not sized from the last generation: a million claims' map made
		// at once would be made under the lock (a map grows a table at
		// a time).
		b.prev, b.cur, b.curSince = b.cur, make(map[Key]int64), at
	}
	b.cur[key] = at
}

// of returns when key was claimed here, if it is remembered at now.
func (b *claimBook) of(key Key, now int64) (int64, bool) {
	at, ok := b.cur[key]
	if !ok {
		at, ok = b.prev[key]
	}
	return at, ok && now-at <= int64(ClaimMemory)
}

// forget drops the generations that hold only claims older than
// ClaimMemory at now, and reports whether any claim is left.
func (b *claimBook) forget(now int64) bool {
	if now-b.curSince >= int64(ClaimMemory) {
		b.prev = nil // all before curSince
	}
	if now-b.curSince >= int64(ClaimMemory+ClaimMemory/2) {
		b.cur = nil // all before curSince + ClaimMemory/2
	}
	return b.cur != nil || b.prev != nil
}

// TrackClaims has the engine remember, from now on, the subscribers each
// service newly registers (see YieldSubscriber). A node does once it has
// met another member; alone, nobody can claim a subscriber from it.
func (e *Engine) TrackClaims() { e.gate.claims.Store(true) }

// YieldSubscriber settles another member's claim of a subscriber, made at
// instant at of this engine's clock: this node lets go of the subscriber
// unless its own claim of it is later, or made at the same instant and
// tieKeeps (the other member's name sorts after this one's). A claim older
// than ClaimMemory is forgotten; the registration's last instant (a
// refresh included) stands for it then, so a claim replayed long after it
// was made (to a member back from a partition) does not end a registration
// made since; one restored from disk yields to any claim. The claim is
// settled under the lock that registers: a registration and its claim are
// one step for it.
//
// It reports whether a registration was let go, and, when one was kept on
// the strength of its registration's instant alone, that instant
// (reclaim): the member that claimed it has not heard of that
// registration (a refresh sends no claim), and the node must claim it
// again at that instant, or both would hold it until one expired.
func (e *Engine) YieldSubscriber(now int64, service, sub []byte, at int64, tieKeeps bool) (let bool, reclaimAt int64, reclaim bool) {
	return e.endUnlessLater(now, service, sub, at, tieKeeps, true)
}

// registered is a subscriber entry's value: how long before its expiry it
// was last registered (added or refreshed), in milliseconds, so that a
// DEREGISTER sent through another member before that registration does not
// end it (Engine.DeregisterBefore). 0: not known (restored from disk),
// taken as registered before any DEREGISTER. It fills the entry's padding.
type registered uint32

// registeredFor is the value of a registration at now that expires at exp.
func registeredFor(now, exp int64) registered {
	ms := (exp - now) / int64(time.Millisecond)
	if ms <= 0 || ms > math.MaxUint32 {
		return 0
	}
	return registered(ms)
}

// at returns when the entry expiring at exp was last registered (to the
// millisecond, never before it), if known.
func (r registered) at(exp int64) (int64, bool) {
	if r == 0 {
		return 0, false
	}
	return exp - int64(r)*int64(time.Millisecond), true
}

// DeregisterBefore ends a subscriber's registration here unless it was
// last registered after instant at of this engine's clock: a DEREGISTER
// passed on by another member, which must not end a registration through
// this node that came after it (a phone moving between proxies
// deregisters through one and registers through the next at once). It
// reports whether a registration was ended.
func (e *Engine) DeregisterBefore(now int64, service, sub []byte, at int64) bool {
	ended, _, _ := e.endUnlessLater(now, service, sub, at, false, false)
	return ended
}

// endUnlessLater ends a subscriber's registration unless this node's
// instant for it is after at (or equal to it and tieKeeps): its claim,
// when claimed and one is remembered, else its last registration; a
// registration whose instant is not known ends. It reports whether it
// ended one, and the registration's instant when that kept it.
func (e *Engine) endUnlessLater(now int64, service, sub []byte, at int64, tieKeeps, claimed bool) (ended bool, regAt int64, byReg bool) {
	s := e.service(service)
	if s == nil {
		return false, 0, false
	}
	key := KeyOf(sub)
	s.mu.Lock()
	defer s.mu.Unlock()
	if claimed {
		if mine, ok := s.claims.of(key, now); ok {
			if mine > at || mine == at && tieKeeps {
				return false, 0, false
			}
			return s.deregisterLocked(now, key), 0, false
		}
	}
	x, held := s.subscribers.get(key, now)
	if !held {
		return false, 0, false
	}
	if reg, known := x.v.at(x.exp); known && (reg > at || reg == at && tieKeeps) {
		return false, reg, true
	}
	return s.deregisterLocked(now, key), 0, false
}
