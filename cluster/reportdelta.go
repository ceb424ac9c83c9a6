package cluster

import (
	"math"
	"math/bits"
)

// A report names every pool a member holds or budgets (Held) and every
// service it applies a part of (Applied). With many accounts that is most
// of the report, and most of it does not change from one exchange to the
// next: 100,000 idle accounts with budgets would weigh 4.5 MB, sent to
// every member ten times a second. Above deltaAbove entries a member so
// sends a delta: the entries that changed (each for deltaRepeat reports in
// a row, so that a lost packet loses nothing), and a slice of the others
// in turn (every entry at least once in deltaRefresh reports). A receiver
// merges a delta into what it holds of the sender; an entry sent as its
// zero value is removed, and an entry the sender has not named for
// deltaExpire of its reports is forgotten (the sender dropped it while
// this member missed every report that said so). The first report after
// any member joins is whole, so a member never waits deltaRefresh reports
// to learn what the others hold.
//
// Demand and TokenRate hold only what moves (services and pools with
// traffic): they are whole in every report.
//
// Loss: a changed entry is missed only when deltaRepeat reports in a row
// are lost; it then arrives with the next refresh, within deltaRefresh ×
// stretch reports. The refresh is bounded: a report refreshes about
// refreshEntries entries, whatever the maps hold, and a map of more than
// deltaRefresh × refreshEntries entries is refreshed over stretch times
// deltaRefresh reports (refreshStretch: 100,000 idle accounts are
// refreshed every 800 reports, 80 s at the exchange's rate, and their
// idle report weighs about 6 KB where a hundredth of them was 45 KB and
// the whole report 4.5 MB). A report says its stretch (Report.Stretch),
// and a receiver forgets an entry after deltaExpire × the largest stretch
// its sender said since its last whole report (at most maxStretch). A
// sender's stretch is a power of two and only grows between whole reports
// (or falls to 1), so that an entry is named at least once in a cycle of
// the largest. While a member of an earlier release is live (its metadata
// does not say meta.Stretch), no member stretches: it would forget what a
// stretched refresh names.
const (
	deltaAbove   = 256
	deltaRepeat  = 5
	deltaRefresh = 100
	deltaExpire  = 3 * deltaRefresh
	// refreshEntries is about how many entries a report refreshes, at
	// most, once the maps hold more than deltaRefresh times it.
	refreshEntries = 128
	// maxStretch bounds the stretch a receiver takes from a report: a
	// refresh cycle of 100 million reports (four months at ten a second),
	// past any farm's entries, and deltaExpire × it cannot overflow.
	maxStretch = 1 << 20
	// noStretch as refreshEntries keeps the stretch at 1 for any count
	// of entries.
	noStretch = math.MaxInt / deltaRefresh
)

// refreshStretch is by how much a report of entries entries (its Held and
// Applied, whole) stretches the refresh cycle: 1 up to deltaRefresh ×
// per entries, so that a report refreshes about per of them at most,
// rounded up to a power of two. The schedules of powers of two nest (an
// entry due under 2s is due under s), so an entry is named within one
// cycle of the current stretch however it grew: stretches that grow a step
// at a time (3, 4, 5, ...) could each miss an entry's turn, and leave it
// unnamed for longer than the receiver's expiry.
func refreshStretch(entries, per int) uint64 {
	if entries <= 0 {
		return 1
	}
	n := uint64(1 + (entries-1)/(deltaRefresh*per))
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len64(n-1)
}

// refreshDue reports whether report seq refreshes an entry whose key
// hashes to h (refreshHash) under stretch: each entry once in every
// deltaRefresh × stretch reports, those of one refresh slot
// (h mod deltaRefresh) spread over stretch passes.
func refreshDue(h, seq, stretch uint64) bool {
	return h%deltaRefresh == seq%deltaRefresh && (h/deltaRefresh)%stretch == (seq/deltaRefresh)%stretch
}

// wireEntry is what this node last sent of one entry: its value, the
// report that first carried that value, and its key's refreshHash.
type wireEntry[T any] struct {
	v       T
	changed uint64
	hash    uint64
}

// newWireEntry is the entry of key k first sent as v in report seq.
func newWireEntry[T any](k string, v T, seq uint64) *wireEntry[T] {
	return &wireEntry[T]{v: v, changed: seq, hash: refreshHash(k)}
}

// wireState is what this node last sent of one of a report's keyed maps.
// For deltaOf it also indexes the keys by refresh slot and by the report
// that last changed them, so that a delta of a map whose keys are never
// removed (the parts applied, one per licence and trunk key) costs what
// changed and the slice of the rest being refreshed, not the whole map.
type wireState[T any] struct {
	sent  map[string]*wireEntry[T]
	eq    func(a, b T) bool
	slots [deltaRefresh][]string
	ring  [deltaRepeat]struct {
		seq  uint64
		keys []string
	}
}

// record notes a whole report's entries as sent in report seq.
func (w *wireState[T]) record(cur map[string]T, seq uint64) {
	w.sent = make(map[string]*wireEntry[T], len(cur))
	for i := range w.slots {
		w.slots[i] = w.slots[i][:0]
	}
	for i := range w.ring {
		w.ring[i].keys = w.ring[i].keys[:0]
	}
	ring := &w.ring[seq%deltaRepeat]
	ring.seq = seq
	for k, v := range cur {
		e := newWireEntry(k, v, seq)
		w.sent[k] = e
		slot := e.hash % deltaRefresh
		w.slots[slot] = append(w.slots[slot], k)
		// As delta does, the next deltaRepeat-1 reports repeat what a whole
		// one said, so that losing it loses nothing.
		ring.keys = append(ring.keys, k)
	}
}

// deltaOf is delta for a map whose keys are never removed, given the keys
// whose values moved (or appeared) since the last report: the same
// entries, found through the index instead of a walk of cur.
func (w *wireState[T]) deltaOf(cur map[string]T, moved []string, seq, stretch uint64) map[string]T {
	if w.sent == nil {
		w.sent = map[string]*wireEntry[T]{}
	}
	ring := &w.ring[seq%deltaRepeat]
	ring.seq, ring.keys = seq, ring.keys[:0]
	for _, k := range moved {
		v, ok := cur[k]
		if !ok {
			continue
		}
		switch e := w.sent[k]; {
		case e == nil:
			e = newWireEntry(k, v, seq)
			w.sent[k] = e
			w.slots[e.hash%deltaRefresh] = append(w.slots[e.hash%deltaRefresh], k)
		case !w.eq(e.v, v):
			e.v, e.changed = v, seq
		default:
			continue
		}
		ring.keys = append(ring.keys, k)
	}
	out := map[string]T{}
	for i := range w.ring {
		r := &w.ring[i]
		if seq-r.seq >= deltaRepeat {
			continue
		}
		for _, k := range r.keys {
			if e := w.sent[k]; e != nil && e.changed == r.seq {
				out[k] = e.v
			}
		}
	}
	for _, k := range w.slots[seq%deltaRefresh] {
		if e := w.sent[k]; e != nil && refreshDue(e.hash, seq, stretch) {
			out[k] = e.v
		}
	}
	return out
}

// delta returns the entries of cur that report seq carries: those changed
// in the last deltaRepeat reports (a removed one as its zero value), and
// the ones whose turn it is to be refreshed under stretch.
func (w *wireState[T]) delta(cur map[string]T, seq, stretch uint64) map[string]T {
	out := map[string]T{}
	if w.sent == nil {
		w.sent = map[string]*wireEntry[T]{}
	}
	var zero T
	// Every entry sent before that cur still holds: none to remove, and
	// the walk of what was sent is not needed.
	before, held := len(w.sent), 0
	for k, v := range cur {
		e := w.sent[k]
		if e != nil {
			held++
		}
		switch {
		case e == nil:
			w.sent[k] = newWireEntry(k, v, seq)
		case !w.eq(e.v, v):
			e.v, e.changed = v, seq
		case seq-e.changed >= deltaRepeat && !refreshDue(e.hash, seq, stretch):
			continue
		}
		out[k] = v
	}
	if held == before {
		return out
	}
	for k, e := range w.sent {
		if _, ok := cur[k]; ok {
			continue
		}
		if !w.eq(e.v, zero) {
			e.v, e.changed = zero, seq
		}
		if seq-e.changed >= deltaRepeat {
			delete(w.sent, k) // every member was told
			continue
		}
		out[k] = zero
	}
	return out
}

// refreshHash is the hash of key that says which reports refresh it
// (refreshDue).
func refreshHash(key string) uint64 {
	h := uint64(14695981039346656037) // FNV-1a, as hash/fnv's New64a, without its allocation
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * 1099511628211
	}
	return h
}

// merge applies a delta's entries to what a receiver holds of the sender
// (into, owned by the receiver), noting in heard the sender's report that
// last named each, and telling moved each entry that changed.
func merge[T any](into map[string]T, delta map[string]T, heard map[string]uint64, seq uint64, eq func(a, b T) bool, moved func(string)) {
	var zero T
	for k, v := range delta {
		if old, ok := into[k]; ok != !eq(v, zero) || !eq(old, v) {
			moved(k)
		}
		if eq(v, zero) {
			delete(into, k)
			delete(heard, k)
			continue
		}
		into[k] = v
		heard[k] = seq
	}
}

// expire forgets the entries the sender has not named since report
// before (those heard in its last whole report count as heard then).
func expire[T any](m map[string]T, heard map[string]uint64, wholeSeq, before uint64, moved func(string)) {
	for k := range m {
		at, ok := heard[k]
		if !ok {
			at = wholeSeq
		}
		if at < before {
			moved(k)
			delete(m, k)
			delete(heard, k)
		}
	}
}

func sameHeld(a, b Held) bool { return a == b }

// sameApplied compares what a report carries of a share (the token
// budgets are not sent).
func sameApplied(a, b Share) bool {
	return a.CAPS == b.CAPS && a.Sessions == b.Sessions && a.Subscribers == b.Subscribers && a.Depth == b.Depth
}

// nearlyApplied reports whether a applies b's parts but for rounding: a
// part that rises by the room the others' parts leave stops an ulp below
// the part it aims at (1 − 1/3 − 1/3 < 1/3 in float64), and would
// otherwise never settle (a farm of 30,000 idle keys planned 18,000 to
// 53,000 of them a second).
func nearlyApplied(a, b Share) bool {
	near := func(x, y float64) bool { return x == y || math.Abs(x-y) <= 1e-12 }
	return near(a.CAPS, b.CAPS) && near(a.Sessions, b.Sessions) && near(a.Subscribers, b.Subscribers) && near(a.Depth, b.Depth)
}
