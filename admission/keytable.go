package admission

import (
	"sync/atomic"

	"github.com/zeebo/xxh3"
)

// Key identifies a call-id, subscriber or idempotency key by a 128-bit hash
// of its bytes. Storing the hash instead of the bytes keeps insertion free of
// allocation (a string key would be copied to the heap) and every entry the
// same size; 128 bits make an accidental collision among even billions of
// live keys vanishingly unlikely (birthday bound ~2^64). The hash is
// unseeded, so every node of a cluster computes the same key.
type Key struct{ hi, lo uint64 }

// KeyOf hashes b.
func KeyOf(b []byte) Key {
	h := xxh3.Hash128(b)
	return Key{h.Hi, h.Lo}
}

// mix combines two keys into one that differs from both (for keys scoped by
// an account).
func (k Key) mix(o Key) Key {
	return Key{k.hi ^ (o.lo*0x9E3779B97F4A7C15 + 1), k.lo ^ (o.hi*0xC2B2AE3D27D4EB4F + 3)}
}

// wheelSlots is the number of one-second slots of a table's expiry wheel.
// An entry lives in slot (expiry second mod wheelSlots); one that expires
// further out than the wheel is visited once per turn and left in place
// until due, so any TTL works and a turn costs one look per such entry.
const wheelSlots = 1024

const none = -1

type entry[V any] struct {
	key        Key
	exp        int64 // instant (engine clock) at which the entry expires
	prev, next int32 // neighbours in the wheel slot's list, or in the free list
	slot       int32 // wheel slot, or none while free
	v          V
}

// table maps keys to values that expire. Entries live in one slab reused
// through a free list, linked into the slot of a timing wheel for their
// expiry second, so insertion, refresh and deletion are O(1) and allocate
// nothing once the slab has grown to the working set, and expiry visits only
// what is due. It is not safe for concurrent use: the owning service's mutex
// guards it.
type table[V any] struct {
	idx keyIndex
	// chunks hold the entries, chunkSize each: the slab grows a chunk at
	// a time, never copied (a slab of millions doubling copied hundreds of
	// MB under the service's lock); n counts the entries made.
	chunks [][]entry[V]
	n      int32
	free   int32
	// heads are the wheel's slots, made at the first entry: a service's
	// four tables would otherwise put 16 KB between one service's state
	// and the next's (see Service).
	heads *[wheelSlots]int32
	swept int64 // last whole second swept
	// lastFull is when a full table was last swept before refusing (see
	// Service.sweepAtLimit).
	lastFull int64
	// gone is called with the value of every entry that leaves the table by
	// expiring (not by del of a live entry), so owners can keep counts.
	gone func(V)
	// held, when set, is raised by every put: its owner's Tick lowers it
	// once its tables are empty, and skips them while it stays low.
	held *atomic.Bool
}

// chunkSize is the entries of one chunk of a table's slab.
const chunkSize = 1 << 12

// ent returns entry i.
func (t *table[V]) ent(i int32) *entry[V] { return &t.chunks[i/chunkSize][i%chunkSize] }

func (t *table[V]) init(gone func(V)) {
	t.gone = gone
	t.idx.init()
	t.free = none
	t.swept = -1
}

// len returns the number of entries, expired ones not yet swept included.
func (t *table[V]) len() int { return t.idx.n }

// find returns the place of k's entry (none if it has none) and where it
// is in the index.
func (t *table[V]) find(k Key) (i int32, s *segment, p, h uint32) {
	h = t.idx.hash(k)
	s = t.idx.segmentOf(h)
	mask := uint32(len(s.slots) - 1)
	for p = h & mask; ; p = (p + 1) & mask {
		o := s.slots[p]
		if o.at == 0 {
			return none, s, p, h
		}
		if o.h == h && t.ent(o.at-1).key == k {
			return o.at - 1, s, p, h
		}
	}
}

// lookup returns the place of k's entry, if it has one.
func (t *table[V]) lookup(k Key) (int32, bool) {
	i, _, _, _ := t.find(k)
	return i, i != none
}

// get returns the live entry for k. An expired entry is removed on sight.
func (t *table[V]) get(k Key, now int64) (*entry[V], bool) {
	i, ok := t.lookup(k)
	if !ok {
		return nil, false
	}
	e := t.ent(i)
	if e.exp <= now {
		return nil, false
	}
	return e, true
}

// reserve makes room for n more entries at once (a restore): the slab and
// the index grow once instead of doubling their way there.
func (t *table[V]) reserve(n int) {
	if n <= 0 {
		return
	}
	for need := int(t.n) + n; len(t.chunks)*chunkSize < need; {
		t.chunks = append(t.chunks, make([]entry[V], chunkSize))
	}
	t.idx.reserve(n)
}

// put inserts k (which must not be live) with value v until exp.
func (t *table[V]) put(k Key, v V, exp int64) {
	if t.held != nil && !t.held.Load() {
		t.held.Store(true)
	}
	i, s, p, h := t.find(k) // one probe: where k is, or where it goes
	if i != none {          // an expired leftover: reuse its place
		t.unlink(i)
		e := t.ent(i)
		if t.gone != nil {
			t.gone(e.v)
		}
		e.v, e.exp = v, exp
		t.link(i)
		return
	}
	if t.free != none {
		i = t.free
		t.free = t.ent(i).next
	} else {
		if int(t.n) == len(t.chunks)*chunkSize {
			t.chunks = append(t.chunks, make([]entry[V], chunkSize))
		}
		i = t.n
		t.n++
	}
	e := t.ent(i)
	e.key, e.v, e.exp = k, v, exp
	t.idx.insertAt(s, p, h, i)
	t.link(i)
}

// refresh moves e's expiry to exp.
func (t *table[V]) refresh(e *entry[V], exp int64) {
	i, _ := t.lookup(e.key)
	t.unlink(i)
	e.exp = exp
	t.link(i)
}

// del removes k and returns its value if it was live at now.
func (t *table[V]) del(k Key, now int64) (v V, live bool) {
	i, s, p, _ := t.find(k)
	if i == none {
		return v, false
	}
	e := t.ent(i)
	v, live = e.v, e.exp > now
	t.removeAt(i, s, p)
	if !live && t.gone != nil {
		t.gone(v)
	}
	return v, live
}

// expire removes every entry due at now, calling gone for each value. It
// visits the slots of the seconds since the last sweep (all of them at most
// once) and the current second's slot, which it will visit again next time.
func (t *table[V]) expire(now int64) { t.expireSome(now, -1) }

// ExpireBatch bounds the entries one step of expiry removes under a
// service's lock (Engine.Tick takes as many steps as it needs, letting go
// of the lock between them): a million registrations due in the same
// second are removed in steps of this many, and the event loops deciding
// on that service wait for one step at most, not for all of them.
const ExpireBatch = 4096

// expireSome is expire removing at most limit entries (limit < 0: no
// bound). It reports whether it removed everything due; if not, the next
// call goes on from the slot where it stopped.
func (t *table[V]) expireSome(now int64, limit int) bool {
	sec := now / 1e9
	from := t.swept + 1
	if t.swept < 0 || sec-from >= wheelSlots {
		from = sec - wheelSlots + 1
	}
	removed := 0
	if t.heads == nil {
		from = sec + 1 // never held an entry
	}
	for s := from; s <= sec; s++ {
		slot := int32(((s % wheelSlots) + wheelSlots) % wheelSlots)
		for i := t.heads[slot]; i != none; {
			if limit >= 0 && removed >= limit {
				t.swept = s - 1 // this slot again, from its head
				return false
			}
			e := t.ent(i)
			next := e.next
			if e.exp <= now {
				v := e.v
				t.remove(i)
				removed++
				if t.gone != nil {
					t.gone(v)
				}
			}
			i = next
		}
	}
	t.swept = sec - 1
	return true
}

// remove removes entry i (found by its key in the index).
func (t *table[V]) remove(i int32) {
	if j, s, p, _ := t.find(t.ent(i).key); j == i {
		t.removeAt(i, s, p)
	}
}

// removeAt removes entry i, which is at slot p of segment s in the index.
func (t *table[V]) removeAt(i int32, s *segment, p uint32) {
	e := t.ent(i)
	t.unlink(i)
	t.idx.remove(s, p)
	var zero V
	e.v = zero
	e.next = t.free
	t.free = i
}

func (t *table[V]) link(i int32) {
	e := t.ent(i)
	if t.heads == nil {
		t.heads = new([wheelSlots]int32)
		for j := range t.heads {
			t.heads[j] = none
		}
	}
	slot := int32(((e.exp / 1e9 % wheelSlots) + wheelSlots) % wheelSlots)
	e.slot, e.prev, e.next = slot, none, t.heads[slot]
	if e.next != none {
		t.ent(e.next).prev = i
	}
	t.heads[slot] = i
}

func (t *table[V]) unlink(i int32) {
	e := t.ent(i)
	if e.prev != none {
		t.ent(e.prev).next = e.next
	} else {
		t.heads[e.slot] = e.next
	}
	if e.next != none {
		t.ent(e.next).prev = e.prev
	}
	e.slot, e.prev, e.next = none, none, none
}
