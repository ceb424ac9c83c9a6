package cluster

import "hash/fnv"

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
// are lost; it then arrives with the next refresh, within deltaRefresh
// reports (10 s at the exchange's rate). The refresh costs a hundredth of
// a whole report in every report: 100,000 idle accounts are about 40 KB
// a report, where the whole one is 4.5 MB.
const (
	deltaAbove   = 256
	deltaRepeat  = 5
	deltaRefresh = 100
	deltaExpire  = 3 * deltaRefresh
)

// wireEntry is what this node last sent of one entry: its value, and the
// report that first carried that value.
type wireEntry[T any] struct {
	v       T
	changed uint64
}

// wireState is what this node last sent of one of a report's keyed maps.
type wireState[T any] struct {
	sent map[string]*wireEntry[T]
	eq   func(a, b T) bool
}

// record notes a whole report's entries as sent in report seq.
func (w *wireState[T]) record(cur map[string]T, seq uint64) {
	w.sent = make(map[string]*wireEntry[T], len(cur))
	for k, v := range cur {
		w.sent[k] = &wireEntry[T]{v: v, changed: seq}
	}
}

// delta returns the entries of cur that report seq carries: those changed
// in the last deltaRepeat reports (a removed one as its zero value), and
// the ones whose turn it is to be refreshed.
func (w *wireState[T]) delta(cur map[string]T, seq uint64) map[string]T {
	out := map[string]T{}
	if w.sent == nil {
		w.sent = map[string]*wireEntry[T]{}
	}
	var zero T
	for k, v := range cur {
		e := w.sent[k]
		switch {
		case e == nil:
			w.sent[k] = &wireEntry[T]{v: v, changed: seq}
		case !w.eq(e.v, v):
			e.v, e.changed = v, seq
		case seq-e.changed >= deltaRepeat && refreshSlot(k) != seq%deltaRefresh:
			continue
		}
		out[k] = v
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

// refreshSlot is the report, modulo deltaRefresh, that refreshes key.
func refreshSlot(key string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return h.Sum64() % deltaRefresh
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
