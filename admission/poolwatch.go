package admission

import (
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Pool watches: a consumer that keeps something per pool (the reserver's
// marks on disk, a cluster member's usage reports) asks each service for
// the pools that changed since it last asked, instead of walking every
// account under the service's mutex, which every decision takes. The work
// is O(pools changed) for the consumer and a bit test for a decision: a
// pool already pending for every watch costs nothing more.
//
// A pool becomes pending for every watch when it is charged, when a charge
// finds its reservation short (Wanted grows), when its reservation is set
// or restored (Reserve, Restore), when its limit or allocation changes
// (SetAccount, SetLimits), when it is created, and when a usage period
// begins. The engine has no way to remove an account, so no pool is ever
// reported gone.

// MaxPoolWatches is how many watches an engine hands out: one bit each in
// every pool, so that marking a pool costs a byte.
const MaxPoolWatches = 4

// ErrTooManyWatches is returned by WatchPools when every watch is taken.
var ErrTooManyWatches = errors.New("too many pool watches")

// PoolWatch names one consumer of pool changes (Engine.WatchPools).
type PoolWatch uint8

// WatchPools hands out a watch. Every pool the engine has is pending for it
// at once, so its first ChangedPools of each service reports them all;
// after that, only what changed. A watch is for the life of the engine.
func (e *Engine) WatchPools() (PoolWatch, error) {
	e.mu.Lock() // no service is added meanwhile (ensure)
	defer e.mu.Unlock()
	taken := e.watches.watching.Load()
	if taken == 1<<MaxPoolWatches-1 {
		return 0, ErrTooManyWatches
	}
	w := PoolWatch(bits.TrailingZeros32(^taken))
	e.watches.watching.Store(taken | 1<<w)
	for _, s := range e.services.Load().sorted {
		s.mu.Lock()
		s.mark(&s.tokens, 1<<w)
		for _, a := range s.accounts {
			s.mark(&a.pool, 1<<w)
		}
		s.mu.Unlock()
	}
	return w, nil
}

// touch makes p pending for every watch that has not got it pending yet.
// Called with mu held, on the decision path: a pool already pending costs
// an atomic load and a compare; the lists keep their room once drained, so
// nothing is allocated in a steady state.
func (s *Service) touch(p *pool) { s.mark(p, uint8(s.watches.watching.Load())) }

// mark makes p pending for the watches of the mask that have not got it
// pending yet. Called with mu held.
func (s *Service) mark(p *pool, watches uint8) {
	w := watches &^ p.dirty
	if w == 0 {
		return
	}
	p.dirty |= w
	if first := w &^ uint8(s.pendingAny.Load()); first != 0 {
		s.pendingAny.Or(uint32(first))
		s.watches.list(s, first)
	}
	if p.owner == nil {
		return // the service's pool: its dirty bits say it all
	}
	for ; w != 0; w &= w - 1 {
		i := bits.TrailingZeros8(w)
		s.pending[i] = append(s.pending[i], p.owner)
	}
}

// reserved is p.reserved, making p pending when the charge finds the
// reservation short: the reserver must see what it wants. Called with mu
// held.
func (s *Service) reserved(p *pool, n int64) bool {
	if p.reserved(n) {
		return true
	}
	s.touch(p)
	return false
}

// maxKeptPending bounds the room a drained pending list keeps: a burst of
// changes to every account (a start, a new period) does not hold its
// memory for the life of the service.
const maxKeptPending = 1 << 14

// PoolsPending reports whether a pool of the service is pending for w:
// whether ChangedPools would return any. One atomic read.
func (s *Service) PoolsPending(w PoolWatch) bool { return uint8(s.pendingAny.Load())&(1<<w) != 0 }

// ChangedPools appends to buf the state of every pool of the service that
// changed since w last asked (the service's pool first when it did), and
// forgets them for w. A service with nothing pending for w is answered
// without its mutex.
func (s *Service) ChangedPools(w PoolWatch, buf []PoolState) []PoolState {
	bit := uint8(1) << w
	if !s.PoolsPending(w) {
		return buf
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokens.dirty&bit != 0 {
		s.tokens.dirty &^= bit
		buf = append(buf, s.tokensState())
	}
	list := s.pending[w]
	for _, a := range list {
		a.dirty &^= bit
		buf = append(buf, s.accountState(a))
	}
	clear(list)
	if cap(list) > maxKeptPending {
		list = nil
	}
	s.pending[w] = list[:0]
	s.pendingAny.And(^uint32(bit))
	return buf
}

// watchState is what a service keeps for the pool watches. Guarded by the
// service's mutex but for what says otherwise.
type watchState struct {
	// watches is the engine's.
	watches *poolWatches
	// pendingAny has a bit per watch with a pool pending, so that asking
	// an idle service takes no lock (written under mu, read without).
	pendingAny atomic.Uint32
	// pending lists, per watch, the accounts whose pool is pending for it
	// (each once: its dirty bit says it is listed).
	pending [MaxPoolWatches][]*account
	// listed has a bit per watch whose list of services (poolWatches)
	// holds this one. Guarded by poolWatches.mu.
	listed uint8
}

// poolWatches is the engine's watches: which are handed out, and for
// each, the services with a pool pending, so that a consumer's round
// costs the services that changed, not every service (sorting 1,000
// services was 40% of a reserver step that had one pool to look at).
type poolWatches struct {
	// watching has a bit per watch handed out (read without a lock).
	watching atomic.Uint32

	mu       sync.Mutex // guards services and every Service.listed
	services [MaxPoolWatches][]*Service
}

// list adds s to the services of the watches in mask that do not list it
// yet. Called with s.mu held, when a pool of s becomes the first pending
// for a watch: once per service and round, not per charge.
func (w *poolWatches) list(s *Service, mask uint8) {
	w.mu.Lock()
	defer w.mu.Unlock()
	mask &^= s.listed
	s.listed |= mask
	for ; mask != 0; mask &= mask - 1 {
		i := bits.TrailingZeros8(mask)
		w.services[i] = append(w.services[i], s)
	}
}

// ChangedServices appends to buf the services that have had a pool
// pending for w since it last asked, and forgets them: ask each for its
// ChangedPools. A service may come with nothing pending (its pools were
// asked for meanwhile).
func (e *Engine) ChangedServices(w PoolWatch, buf []*Service) []*Service {
	pw := &e.watches
	pw.mu.Lock()
	defer pw.mu.Unlock()
	list := pw.services[w]
	for _, s := range list {
		s.listed &^= 1 << w
	}
	buf = append(buf, list...)
	clear(list)
	pw.services[w] = list[:0]
	return buf
}
