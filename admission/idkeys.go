package admission

import "github.com/zeebo/xxh3"

// This file is the engine's side of remembering CONSUME ID keys for a long
// idempotency window (up to 35 days, up to 100 M keys a node): an embedded
// store (package admission/idstore) holds them on disk and the service's
// consumed table is only a hot set in front of it.

// KeyStore remembers CONSUME ID keys beyond the hot set, durably. Keys are
// scoped by service (StoreKey); instants are on the engine's clock.
type KeyStore interface {
	// Lookup returns the decision remembered for k, if it is live at now.
	// Called on the event loops and the cluster's apply loop with no
	// engine lock held; it may read the disk (bloom filters and the block
	// cache keep a first-time key's miss in memory). Safe for concurrent
	// use.
	Lookup(k Key, now int64) (Decision, bool)
	// Remember records k with its decision d until exp. Called with the
	// service's mutex held: it must not block on I/O (it queues k, in
	// memory and visible to Lookup, for the store's next group commit).
	Remember(k Key, exp int64, d Decision)
	// Ticket numbers the keys remembered: it returns the last one's.
	// Durable returns the highest ticket whose key, and every key before
	// it, is on disk: a decision is durable once Durable reaches the
	// Ticket read after it.
	Ticket() uint64
	Durable() uint64
	// Full reports that the store holds its maximum number of keys: a
	// CONSUME with a new ID is then refused OVERLOAD (one without ID is
	// not affected).
	Full() bool
}

// DefaultHotKeys is Config.HotKeys's default: keys stay in memory this
// long after their charge (a client's quick retries are answered without
// the store), then only in the store. At 1 M charges a second that is
// 2 M keys, about 200 MB.
const DefaultHotKeys = 2_000_000_000 // 2 s, in nanoseconds

// StoreKey is k (an ID scoped by its account) scoped by service, as the
// store keeps it: one store serves every service of a node.
func StoreKey(service string, k Key) Key {
	h := xxh3.HashString128(service)
	return k.mix(Key{h.Hi, h.Lo})
}

// IDKey is the key a store keeps for CONSUME service acct ... ID id.
func IDKey(service string, acct, id []byte) Key {
	return StoreKey(service, AccountIDKey(acct, id))
}

// knownID returns the decision a CONSUME ID (key, already scoped by
// account) got, from the hot set or the store. The store is read with no
// lock held.
func (s *Service) knownID(now int64, key Key) (Decision, bool) {
	if s.gate.cfg.Keys == nil {
		return Decision{}, false // the caller looks in the table, under its lock
	}
	s.mu.Lock()
	x, ok := s.consumed.get(key, now)
	var d Decision
	if ok {
		d = x.v
	}
	s.mu.Unlock()
	if ok {
		return d, true
	}
	return s.gate.cfg.Keys.Lookup(StoreKey(s.name, key), now)
}

// KnownID returns the decision CONSUME service acct ... ID id got, here
// or (passed on) on another member, if this node remembers it at now.
func (e *Engine) KnownID(now int64, service, acct, id []byte) (Decision, bool) {
	s := e.service(service)
	if s == nil {
		return Decision{}, false
	}
	key := AccountIDKey(acct, id)
	if e.cfg.Keys != nil {
		return s.knownID(now, key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if x, ok := s.consumed.get(key, now); ok {
		return x.v, true
	}
	return Decision{}, false
}

// rememberID records a charged (or a member's) CONSUME ID with its
// decision: without a store, in the consumed table for the whole window
// (and the state journal); with one, in the hot set for Config.HotKeys
// and in the store for the window. Called with s.mu held.
func (s *Service) rememberID(now int64, key Key, d Decision) {
	cfg := s.gate.cfg
	exp := now + int64(cfg.IdempotencyWindow)
	if cfg.Keys == nil {
		s.consumed.put(key, d, exp)
		s.logChange(Change{Kind: ConsumedSet, Key: key, Expires: exp, Remaining: d.Remaining})
		return
	}
	s.consumed.put(key, d, min(exp, now+int64(cfg.HotKeys)))
	cfg.Keys.Remember(StoreKey(s.name, key), exp, d)
}

// IDTickets returns the ticket of the last CONSUME ID key remembered and
// the highest one on disk (both 0 without a store): a CONSUME with ID
// answered now is durable once the second reaches the first, and a client
// that must not see an acknowledgement a kill -9 could undo waits for that
// (the RESP front end holds the reply; see resp.Handler.Released).
func (e *Engine) IDTickets() (ticket, durable uint64) {
	if e.cfg.Keys == nil {
		return 0, 0
	}
	return e.cfg.Keys.Ticket(), e.cfg.Keys.Durable()
}

// keysFull reports whether a new ID must be refused: the store is full.
func (s *Service) keysFull() bool { return s.gate.cfg.Keys != nil && s.gate.cfg.Keys.Full() }
