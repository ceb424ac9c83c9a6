package cell

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/capsgate/capsgate/admission"
)

// Shards is the number of parts of a Table, each under its own mutex: a
// power of two well above the event loops of a node, so that two loops
// deciding at once rarely wait for each other.
const Shards = 64

// SweepBatch bounds the keys one step of Sweep removes under a shard's
// lock, as admission.ExpireBatch does for the engine's tables: an event
// loop deciding on that shard waits for one step at most.
const SweepBatch = admission.ExpireBatch

// ErrFull refuses a new key while the table holds its maximum of keys.
var ErrFull = errors.New("the key table is full")

// Table holds the theoretical arrival time of every CL.THROTTLE key whose
// bucket is not full, at most max keys. A key is kept until its time
// passes (its bucket is full again, and a key that holds nothing decides
// exactly as one never seen), so memory is freed by expiry: Sweep removes
// what is due, and a new key that finds the table full sweeps it (at most
// once per 100 ms) before it is refused (ErrFull; keys already held
// still decide).
//
// A key is its 128-bit hash (admission.Key): every entry is the same size
// (about 60 bytes with its place in the index), and deciding allocates
// nothing. Safe for concurrent use: each of Shards parts has its own
// mutex, taken for one decision; no lock spans the table.
type Table struct {
	max  int64
	held atomic.Int64 // keys in every shard, expired ones not yet swept included
	// lastFull is when a new key last swept the table, full (engine
	// clock; 0: never).
	lastFull atomic.Int64
	// shards are padded to a cache line each, so that two loops deciding
	// on neighbouring shards do not share one.
	shards [Shards]shard
}

type shard struct {
	mu  sync.Mutex          // guards set
	set *admission.Expiring // key → theoretical arrival time
	_   [48]byte
}

// heldAll counts the keys of every table of the process, for the keys
// gauge (Held).
var heldAll atomic.Int64

// Held returns the keys held by every table of the process.
func Held() int64 { return heldAll.Load() }

// NewTable returns an empty table that holds at most maxKeys keys (at
// least 1).
func NewTable(maxKeys int) *Table {
	t := &Table{max: int64(max(maxKeys, 1))}
	for i := range t.shards {
		t.shards[i].set = admission.NewExpiring()
	}
	return t
}

// Max returns the most keys the table holds.
func (t *Table) Max() int64 { return t.max }

// Len returns the keys held, expired ones not yet swept included.
func (t *Table) Len() int64 { return t.held.Load() }

func (t *Table) shard(k admission.Key) *shard {
	hi, _ := k.Parts()
	return &t.shards[hi>>58] // 64 shards: the top 6 bits
}

// add counts n keys more (or fewer) held.
func (t *Table) add(n int64) {
	if n != 0 {
		t.held.Add(n)
		heldAll.Add(n)
	}
}

// Throttle decides CL.THROTTLE for key at now: redis-cell's GCRA
// (Decide) on the key's time, which it then keeps. It returns ErrFull,
// deciding nothing, when the key is new, would be kept, and the table
// has no room even once swept.
func (t *Table) Throttle(now int64, key admission.Key, r Rate, quantity int64) (Reply, error) {
	reply, ok := t.throttle(now, key, r, quantity)
	if !ok {
		if !t.sweepWhenFull(now) {
			return Reply{}, ErrFull
		}
		if reply, ok = t.throttle(now, key, r, quantity); !ok {
			return Reply{}, ErrFull
		}
	}
	return reply, nil
}

// throttle is Throttle under the key's shard lock; false: the key is new
// and the table has no room for it.
func (t *Table) throttle(now int64, key admission.Key, r Rate, quantity int64) (Reply, bool) {
	s := t.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, held := s.set.Get(key, now)
	if !held {
		tat = now
	}
	newTAT, d := Decide(now, tat, r, quantity)
	switch {
	case newTAT == tat || newTAT <= now:
		// Limited, a peek, or nothing to keep.
	case held:
		s.set.Set(key, newTAT, now)
	case t.held.Add(1) > t.max:
		t.held.Add(-1)
		return Reply{}, false
	default:
		heldAll.Add(1)
		before := s.set.Len()
		s.set.Set(key, newTAT, now)
		t.add(int64(s.set.Len()-before) - 1) // counted above
	}
	return d.Reply(r), true
}

// fullSweepEvery bounds how often a full table is swept for a new key
// (the node sweeps every 100 ms anyway): a client sending new keys to a
// full table costs one sweep per interval, not one per key.
const fullSweepEvery = int64(100e6)

// sweepWhenFull sweeps the whole table for a new key that found it full,
// unless it was so swept less than fullSweepEvery before now; it reports
// whether it swept.
func (t *Table) sweepWhenFull(now int64) bool {
	last := t.lastFull.Load()
	if last != 0 && now-last < fullSweepEvery || !t.lastFull.CompareAndSwap(last, now) {
		return false // another swept, or is sweeping
	}
	t.Sweep(now)
	return true
}

// sweepStep removes at most SweepBatch keys of s due at now and reports
// whether that was all of them. Called with s.mu held.
func (t *Table) sweepStep(s *shard, now int64) bool {
	before := s.set.Len()
	done := s.set.ExpireSome(now, SweepBatch)
	t.add(int64(s.set.Len() - before))
	return done
}

// Sweep removes every key due at now (its bucket full again), SweepBatch
// at a time under each shard's lock, letting go of it between steps.
func (t *Table) Sweep(now int64) {
	for i := range t.shards {
		s := &t.shards[i]
		for done := false; !done; {
			s.mu.Lock()
			done = t.sweepStep(s, now)
			s.mu.Unlock()
		}
	}
}
