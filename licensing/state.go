package licensing

import "time"

// State is where a licence stands at an instant.
type State string

// Licence states, as GET /v1/licenses shows them.
const (
	StatePending State = "pending" // now < NotBefore
	StateActive  State = "active"  // NotBefore <= now < NotAfter (or NotAfter zero)
	StateGrace   State = "grace"   // NotAfter <= now < NotAfter+Grace: limits hold, alarm
	StateExpired State = "expired" // NotAfter+Grace <= now
	StateRevoked State = "revoked" // retired by a Revocation, whatever the dates
)

// Counts reports whether a licence in state s adds to its service's limits
// (active or grace).
func (s State) Counts() bool {
	return s == StateActive || s == StateGrace
}

// State returns the licence's state at now; revoked says whether a
// verified Revocation names it. Each state starts at its instant exactly:
// at NotBefore the licence is active, at NotAfter in grace (or expired when
// Grace is 0), at NotAfter+Grace expired.
//
// The caller supplies now, and must not let it go back: detecting a clock
// set back (the high-water mark) is the node's job.
func (l *License) State(now time.Time, revoked bool) State {
	switch {
	case revoked:
		return StateRevoked
	case now.Before(l.NotBefore):
		return StatePending
	case l.NotAfter.IsZero() || now.Before(l.NotAfter):
		return StateActive
	case now.Before(l.NotAfter.Add(l.Grace)):
		return StateGrace
	}
	return StateExpired
}

// NextChange returns the first instant after now at which the licence's
// state changes, or the zero time if it never will (no NotAfter, or already
// expired). Revocation is not a timed change and is not considered; a
// revoked licence stays revoked.
func (l *License) NextChange(now time.Time) time.Time {
	switch l.State(now, false) {
	case StatePending:
		return l.NotBefore
	case StateActive:
		return l.NotAfter // zero when it never expires
	case StateGrace:
		return l.NotAfter.Add(l.Grace)
	}
	return time.Time{}
}

// NextChange returns the earliest NextChange of the licences, or the zero
// time if none will change: the instant a node should recompute Effective.
func NextChange(ls []*License, now time.Time) time.Time {
	var next time.Time
	for _, l := range ls {
		if l == nil {
			continue
		}
		if t := l.NextChange(now); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}
