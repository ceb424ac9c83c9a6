package admission

// Expiring is a set of keys, each held until an instant of its own: the
// engine's table of sessions and registrations (a slab, an index from key
// to slot and an expiry wheel) with no value beside the instant, for the
// packages beside the engine that keep keys of their own (admission/cell
// keeps a CL.THROTTLE key until its theoretical arrival time). Get, Set
// and ExpireSome allocate nothing once the slab has grown to the working
// set. It is not safe for concurrent use: its owner's mutex guards it.
type Expiring struct {
	t table[struct{}]
	n int // keys held, expired ones not yet removed included
}

// NewExpiring returns an empty set.
func NewExpiring() *Expiring {
	x := &Expiring{}
	x.t.init(func(struct{}) { x.n-- })
	return x
}

// Get returns the instant until which k is held, if it is held at now
// (that instant is after now).
func (x *Expiring) Get(k Key, now int64) (until int64, ok bool) {
	e, ok := x.t.get(k, now)
	if !ok {
		return 0, false
	}
	return e.exp, true
}

// Set holds k until the instant until (after now); it reports whether k
// was not held at now (a key added, or one expired and taken again).
func (x *Expiring) Set(k Key, until, now int64) (added bool) {
	if e, ok := x.t.get(k, now); ok {
		x.t.refresh(e, until)
		return false
	}
	x.n++ // put calls gone for an expired leftover it reuses
	x.t.put(k, struct{}{}, until)
	return true
}

// ExpireSome removes at most limit keys whose instant is at or before
// now, and reports whether it removed every one due (false: the next call
// goes on where it stopped).
func (x *Expiring) ExpireSome(now int64, limit int) bool { return x.t.expireSome(now, limit) }

// Len returns the keys held, expired ones not yet removed included: what
// the set holds in memory.
func (x *Expiring) Len() int { return x.n }
