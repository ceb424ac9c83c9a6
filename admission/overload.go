package admission

import (
	"math"
	"time"
)

// Overload feedback (OC service [TRUNK key], RFC 7339 with RFC 7415's
// rate algorithm): what a SIP proxy in front of capsgate tells the element
// upstream of it, in the Via of its responses, so that upstream sends no
// more attempts than the scope admits instead of having them refused one
// by one. A scope is a licence, or a key with limits of its own within
// it (its limits and its licence's, whichever is smaller).
//
// The rate is the scope's farm-wide CAPS (a proxy asks every node of the
// farm, each its part: upstream of it the whole farm's rate is what may
// come), and this node's part of it beside. A scope is overloaded while
// its CAPS bucket refused an attempt (CAPS, TRUNK_CAPS, counted: not one
// spilled to and admitted by another member) within OverloadWindow. Each
// limiter keeps the engine instant of its last such refusal in one atomic
// word, written where the refusal is counted; reading the feedback takes
// no lock and allocates nothing.

// OverloadWindow is how long after a counted CAPS refusal its scope is
// overloaded: a second, the span over which CAPS is counted.
const OverloadWindow = time.Second

// FeedbackValidity is the oc-validity advertised while a scope is
// overloaded: two windows, so that the feedback each refusal sends
// outlives the window it reports on, and upstream goes back to its own
// rate two seconds after the last refusal it heard of.
const FeedbackValidity = 2 * time.Second

// MaxFeedbackRate bounds the rate advertised (2147483647 attempts/s, the
// largest value a 32-bit reader of the reply keeps): a larger rate is
// advertised as this.
const MaxFeedbackRate = math.MaxInt32

// Feedback is a scope's overload feedback at an instant.
type Feedback struct {
	// Rate is the scope's farm-wide attempts per second (RFC 7415's oc),
	// rounded up, or -1 when no CAPS limit applies (an unlimited licence,
	// a key limited in sessions only under one); 0 admits nothing.
	Rate int64
	// NodeRate is this node's part of it, likewise.
	NodeRate int64
	// Overloaded: the scope's CAPS refused an attempt within
	// OverloadWindow. Never set with Rate -1 (nothing to throttle to).
	Overloaded bool
	// Trunk: the key's limits are part of the scope (it has some).
	Trunk bool
}

// Validity is the oc-validity to advertise with the feedback:
// FeedbackValidity while overloaded, else 0 (upstream stops throttling).
func (f Feedback) Validity() time.Duration {
	if f.Overloaded {
		return FeedbackValidity
	}
	return 0
}

// refusedCAPS records a counted CAPS refusal of the limiter's bucket at
// now (never 0: the engine's clock has moved on from its start by the
// time anything is refused).
func (r *limiter) refusedCAPS(now int64) { r.capsRefusedAt.Store(now) }

// overloaded reports whether the limiter's bucket refused an attempt
// within OverloadWindow of now.
func (r *limiter) overloaded(now int64) bool {
	at := r.capsRefusedAt.Load()
	return at != 0 && now-at < int64(OverloadWindow) && now >= at
}

// rates returns the limiter's farm-wide and node CAPS (Unlimited: none).
func (r *limiter) rates() (farm, node float64) {
	l := r.lim.Load()
	if !l.Licensed {
		return 0, 0
	}
	farm = l.LicensedCAPS
	if farm == 0 {
		farm = l.CAPS // a single node
	}
	return farm, l.CAPS
}

// Feedback returns the overload feedback of service's licence or, with a
// trunk key that has limits, of the key within it, at now; false when the
// engine never had limits for service. It does not allocate.
func (e *Engine) Feedback(now int64, service, trunk []byte) (Feedback, bool) {
	s := e.service(service)
	if s == nil {
		return Feedback{}, false
	}
	farm, node := s.rates()
	over := s.overloaded(now)
	var f Feedback
	if trunk != nil {
		if t := s.trunks.get(trunk); t != nil && t.lim.Load().Licensed {
			tf, tn := t.rates()
			farm, node = MinLimit(farm, tf), MinLimit(node, tn)
			over = over || t.overloaded(now)
			f.Trunk = true
		}
	}
	f.Rate, f.NodeRate = feedbackRate(farm), feedbackRate(node)
	f.Overloaded = over && f.Rate >= 0
	return f, true
}

// feedbackRate is a CAPS as RFC 7415's oc: whole attempts per second,
// rounded up (a licence of 0.5 CAPS admits one attempt every two
// seconds, which oc=0 would forbid), at most MaxFeedbackRate; -1 for
// Unlimited.
func feedbackRate(caps float64) int64 {
	switch {
	case caps < 0:
		return -1
	case !(caps < MaxFeedbackRate): // also +Inf and NaN
		return MaxFeedbackRate
	}
	return int64(math.Ceil(caps))
}
