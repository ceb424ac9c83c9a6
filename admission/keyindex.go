package admission

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
)

// keyIndex maps a table's keys to their entries' places in the slab. It is
// a hash table made for what a carrier node holds, millions of keys
// inserted at line rate:
//
//   - Small. A slot is 8 bytes: 32 bits of the key's hash and the entry's
//     place. The key itself is only in the entry, read when the hash bits
//     match (almost only for the key sought). At the loads it runs at
//     (3/8 to 3/4) that is 11–21 bytes per key; a Go map of the same keys
//     needs 28–57. Fewer bytes also means fewer cache and TLB misses per
//     lookup, which is what a lookup in a big table costs.
//   - No stall as it grows. Keys are spread over segments of at most
//     segSlots slots by the top bits of their hash (extendible hashing: a
//     directory of 2^depth segment pointers, segments shared by the
//     directory entries whose prefix they own). A segment that fills up
//     splits in two, moving at most segSlots slots; the directory doubles
//     (copying pointers only, 8 bytes per ~500 keys) when a split needs a
//     longer prefix. No insertion ever moves the whole table, where a
//     single array doubling at 10 M keys would copy hundreds of MB while
//     the service's lock is held.
//   - One probe sequence per operation: within a segment, linear probing
//     in 64-byte cache lines of 8 slots; deletion shifts the following
//     slots back, so there are no tombstones and lookups never slow down
//     with churn.
//
// The hash is keyed with a per-process random seed: keys are hashes of
// what clients send (Key), and an unkeyed spread would let a client craft
// keys that all land in one segment and split it until the directory
// exhausts memory.
type keyIndex struct {
	dir   []*segment // 2^depth entries
	depth uint8
	n     int // keys
	seed  [2]uint64
	// spare is a split's scratch copy of the segment being split.
	spare []slot
}

// slot is one place of a segment: h, the key's hash (its top 32 bits); at,
// the entry's place in the slab plus one (0: empty).
type slot struct {
	h  uint32
	at int32
}

type segment struct {
	depth uint8 // the prefix bits its keys share
	n     int32
	slots []slot // len a power of two, at most segSlots
}

const (
	// segSlots is the largest segment: 1,024 slots, 8 KiB. A split moves
	// at most this many slots (a few microseconds).
	segSlots = 1 << 10
	// A segment holding more than maxLoad/8 of its slots grows (a small
	// one) or splits. Linear probing at 3/4 takes 2.5 probes on average
	// for a key that is there and 8.5 for one that is not, within one or
	// two cache lines.
	maxLoad = 6
	// minSegSlots is a new table's single segment.
	minSegSlots = 8
	// maxDepth bounds the directory: the position in a segment and the
	// prefix come from the same 32 hash bits, and 2^22 segments of 1,024
	// slots hold more keys than a slab can place (int32).
	maxDepth = 32 - 10
)

func (x *keyIndex) init() {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	x.seed = [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
	x.dir = []*segment{{slots: make([]slot, minSegSlots)}}
	x.depth = 0
	x.n = 0
}

// hash is the key's 32-bit index hash.
func (x *keyIndex) hash(k Key) uint32 {
	hi, lo := bits.Mul64(k.lo^x.seed[0], k.hi^x.seed[1])
	return uint32((hi ^ lo) >> 32)
}

func (x *keyIndex) segmentOf(h uint32) *segment {
	if x.depth == 0 {
		return x.dir[0]
	}
	return x.dir[h>>(32-x.depth)]
}

// reserve makes room for n keys more without splitting as they arrive. On
// an empty index it lays out all segments at once, in one allocation.
func (x *keyIndex) reserve(n int) {
	if n <= 0 || x.n > 0 {
		return
	}
	// Segments filled to about half, so that the keys' uneven spread
	// does not split them as they are put.
	need := (n + segSlots/2 - 1) / (segSlots / 2)
	d := uint8(0)
	for 1<<d < need && d < maxDepth {
		d++
	}
	if d == 0 {
		size := minSegSlots
		for size*maxLoad/8 < n*2 && size < segSlots {
			size *= 2
		}
		x.dir = []*segment{{slots: make([]slot, size)}}
		x.depth = 0
		return
	}
	segs := make([]segment, 1<<d)
	all := make([]slot, (1<<d)*segSlots)
	x.dir = make([]*segment, 1<<d)
	for i := range segs {
		segs[i] = segment{depth: d, slots: all[i*segSlots : (i+1)*segSlots : (i+1)*segSlots]}
		x.dir[i] = &segs[i]
	}
	x.depth = d
}

// insert records that the key of hash h is at place at; the key must not
// be in the index.
func (x *keyIndex) insert(h uint32, at int32) {
	s := x.segmentOf(h)
	if int(s.n+1)*8 > len(s.slots)*maxLoad {
		x.makeRoom(s)
		s = x.segmentOf(h)
	}
	s.put(h, at)
	x.n++
}

// insertAt is insert for a key whose probe ended at the empty slot p of
// segment s (table.find): it goes there, unless s must first grow or
// split.
func (x *keyIndex) insertAt(s *segment, p, h uint32, at int32) {
	if int(s.n+1)*8 > len(s.slots)*maxLoad {
		x.insert(h, at)
		return
	}
	s.slots[p] = slot{h: h, at: at + 1}
	s.n++
	x.n++
}

func (s *segment) put(h uint32, at int32) {
	mask := uint32(len(s.slots) - 1)
	for p := h & mask; ; p = (p + 1) & mask {
		if s.slots[p].at == 0 {
			s.slots[p] = slot{h: h, at: at + 1}
			s.n++
			return
		}
	}
}

// makeRoom grows s if it is small, or splits it.
func (x *keyIndex) makeRoom(s *segment) {
	if len(s.slots) < segSlots {
		old := s.slots
		s.slots, s.n = make([]slot, 2*len(old)), 0
		for _, o := range old {
			if o.at != 0 {
				s.put(o.h, o.at-1)
			}
		}
		return
	}
	if s.depth >= maxDepth {
		return // unreachable with int32 places; s keeps filling instead
	}
	if s.depth == x.depth {
		dir := make([]*segment, 2*len(x.dir))
		for i, p := range x.dir {
			dir[2*i], dir[2*i+1] = p, p
		}
		x.dir = dir
		x.depth++
	}
	// s keeps the keys whose next prefix bit is 0, a new segment takes
	// those with 1; each then owns half of the directory entries s had.
	if x.spare == nil {
		x.spare = make([]slot, segSlots)
	}
	copy(x.spare, s.slots)
	clear(s.slots)
	s.n = 0
	s.depth++
	t := &segment{depth: s.depth, slots: make([]slot, segSlots)}
	bit := uint32(1) << (32 - s.depth)
	for _, o := range x.spare {
		switch {
		case o.at == 0:
		case o.h&bit != 0:
			t.put(o.h, o.at-1)
		default:
			s.put(o.h, o.at-1)
		}
	}
	// The directory entries s had are a run of 2^(depth-s.depth+1)
	// aligned on the prefix its keys shared; the second half is now t's.
	span := 1 << (x.depth - s.depth + 1)
	first := 0
	for _, o := range x.spare { // s was full: it had keys
		if o.at != 0 {
			first = int(o.h>>(32-x.depth)) &^ (span - 1)
			break
		}
	}
	for i := first + span/2; i < first+span; i++ {
		x.dir[i] = t
	}
}

// remove deletes the slot p of segment s, shifting back the slots after it
// that would otherwise no longer be found.
func (x *keyIndex) remove(s *segment, p uint32) {
	mask := uint32(len(s.slots) - 1)
	for q := (p + 1) & mask; s.slots[q].at != 0; q = (q + 1) & mask {
		home := s.slots[q].h & mask
		// q's key may move to p if p lies on its probe path, from home
		// to q (cyclically).
		if (q-home)&mask >= (q-p)&mask {
			s.slots[p] = s.slots[q]
			p = q
		}
	}
	s.slots[p] = slot{}
	s.n--
	x.n--
}
