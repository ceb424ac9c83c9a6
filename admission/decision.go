package admission

import "math"

// Reason says why a decision came out as it did. Its String form is the
// reason word on the wire.
type Reason uint8

// The reasons of the SPEC's decision table, in wire order.
const (
	OK          Reason = iota // admitted
	CAPS                      // the service's call-attempt rate is used up right now
	SESSIONS                  // the service's concurrent sessions are all in use
	SUBSCRIBERS               // the service's subscriber count is reached
	TOKENS                    // the token pool is exhausted and no overage is allowed
	UNLICENSED                // no valid licence covers the service
	OVERLOAD                  // the node protects itself (node.max_caps)
	// TRUNK_CAPS, TRUNK_SESSIONS and TRUNK_TOKENS refuse an ADMIT ...
	// TRUNK key by the operator's own limits of that key (a trunk, a
	// customer), inside the licence.
	TRUNK_CAPS     // the key's call-attempt rate is used up right now
	TRUNK_SESSIONS // the key's concurrent sessions are all in use
	TRUNK_TOKENS   // the key's token pool is exhausted and no overage is allowed
	NumReasons     = iota
)

var reasonNames = [NumReasons]string{"OK", "CAPS", "SESSIONS", "SUBSCRIBERS", "TOKENS", "UNLICENSED", "OVERLOAD", "TRUNK_CAPS", "TRUNK_SESSIONS", "TRUNK_TOKENS"}

// String returns the reason word, e.g. "CAPS".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "UNKNOWN"
}

// ParseReason returns the reason whose word is s, as a reply carries it.
func ParseReason(s string) (Reason, bool) {
	for r, n := range reasonNames {
		if n == s {
			return Reason(r), true
		}
	}
	return 0, false
}

// Priority is the PRIORITY option of ADMIT.
type Priority uint8

// Priorities, as the SPEC defines them.
const (
	Normal    Priority = iota
	High               // may use the headroom above the licence
	Emergency          // never rejected by a licence limit, only by OVERLOAD
)

// Decision is the engine's answer: [admitted, reason, retry_after_ms, remaining].
type Decision struct {
	Reason       Reason
	RetryAfterMS int64 // 0 when admitted; else a hint for when a retry could succeed
	Remaining    int64 // what is left of the limiting quantity, or -1 (no limit applies)
}

// Admitted reports whether the decision admits.
func (d Decision) Admitted() bool { return d.Reason == OK }

// maxRemaining caps `remaining`: some clients read replies as 32-bit integers.
const maxRemaining = math.MaxInt32

func clampRemaining(v int64) int64 {
	switch {
	case v > maxRemaining:
		return maxRemaining
	case v < -1:
		return 0
	}
	return v
}

// Retry hints for limits that do not refill at a known instant.
const (
	retryCountedMS    = 1000  // SESSIONS, SUBSCRIBERS: a slot frees when a call or registration ends
	retryUnlicensedMS = 60000 // UNLICENSED, TOKENS: needs an operator (a licence, a top-up)
	retryReserveMS    = 50    // OVERLOAD: charges outran the durable reservation until its next write
)
