package admission

import "time"

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
// Two generations of ClaimMemory/2 each: a claim is found for at least
// ClaimMemory/2 and at most ClaimMemory, and forgetting a generation drops
// its map whole, never walking it (a million registrations in a few
// seconds would otherwise be walked under the lock of the event loop
// registering the next one).
type claimBook struct {
	cur, prev map[Key]int64
	curSince  int64 // when cur began (engine instant)
}

// made remembers that the subscriber key was newly registered at at.
func (b *claimBook) made(key Key, at int64) {
	if b.cur == nil || at-b.curSince >= int64(ClaimMemory/2) {
		b.prev, b.cur, b.curSince = b.cur, make(map[Key]int64), at
	}
	b.cur[key] = at
}

// of returns when key was claimed here, if it is remembered.
func (b *claimBook) of(key Key) (int64, bool) {
	if at, ok := b.cur[key]; ok {
		return at, true
	}
	at, ok := b.prev[key]
	return at, ok
}

// TrackClaims has the engine remember, from now on, the subscribers each
// service newly registers (see YieldSubscriber). A node does once it has
// met another member; alone, nobody can claim a subscriber from it.
func (e *Engine) TrackClaims() { e.gate.claims.Store(true) }

// YieldSubscriber settles another member's claim of a subscriber, made at
// instant at of this engine's clock: this node lets go of the subscriber
// unless its own claim of it is later, or made at the same instant and
// tieKeeps (the other member's name sorts after this one's). The claim is
// settled under the lock that registers: a registration and its claim are
// one step for it. It reports whether a registration was let go.
func (e *Engine) YieldSubscriber(now int64, service, sub []byte, at int64, tieKeeps bool) bool {
	s := e.service(service)
	if s == nil {
		return false
	}
	key := KeyOf(sub)
	s.mu.Lock()
	defer s.mu.Unlock()
	if mine, ok := s.claims.of(key); ok && (mine > at || mine == at && tieKeeps) {
		return false
	}
	return s.deregisterLocked(now, key)
}
