package cell

import (
	"errors"
	"math"

	"github.com/capsgate/capsgate/admission/sat"
)

// Rate is a CL.THROTTLE limit (max_burst, count per period) in the terms
// redis-cell's GCRA works in.
type Rate struct {
	// Emission is the emission interval: period / count in nanoseconds,
	// truncated (redis-cell divides in float64 and truncates; the two
	// agree for every period below 2^53 ns, 104 days, and for longer
	// whole-second periods: period_ns is then a multiple of 2^9 with at
	// most 53 significant bits, so float64 holds it exactly).
	Emission int64
	// Tolerance is the delay variation tolerance: Emission × (max_burst+1),
	// the span of a full bucket.
	Tolerance int64
	// Limit is max_burst + 1, CL.THROTTLE's second reply.
	Limit int64
}

// MaxSpan bounds a bucket's span (Tolerance): 2^62 ns, 146 years. A longer
// one is refused (ErrSpan) rather than computed with sums that pass int64:
// with the engine's clock (nanoseconds since the node started) an instant
// plus a span then always fits.
const MaxSpan = int64(1) << 62

// Errors of NewRate. ErrZeroRate is redis-cell's own ("Zero rates are not
// supported": count or period 0, or a period shorter than count
// nanoseconds); the others refuse what redis-cell would compute with
// wrapped or negative numbers.
var (
	ErrZeroRate = errors.New("Zero rates are not supported")
	ErrNegative = errors.New("max_burst, count and period must not be negative")
	ErrSpan     = errors.New("the bucket is too long: (max_burst+1) × period / count must not exceed 146 years")
)

// NewRate returns the rate of CL.THROTTLE key maxBurst count period
// (period in seconds).
func NewRate(maxBurst, count, period int64) (Rate, error) {
	if count == 0 || period == 0 {
		return Rate{}, ErrZeroRate
	}
	if maxBurst < 0 || count < 0 || period < 0 {
		return Rate{}, ErrNegative
	}
	if period > math.MaxInt64/int64(1e9) || maxBurst == math.MaxInt64 {
		return Rate{}, ErrSpan
	}
	ei := int64(float64(period*1e9) / float64(count))
	if ei == 0 {
		return Rate{}, ErrZeroRate
	}
	dvt := sat.Mul(ei, maxBurst+1)
	if dvt > MaxSpan {
		return Rate{}, ErrSpan
	}
	return Rate{Emission: ei, Tolerance: dvt, Limit: maxBurst + 1}, nil
}

// Decision is what redis-cell's rate_limit returns, its durations in
// nanoseconds.
type Decision struct {
	Limited   bool
	Remaining int64
	// RetryAfter is how long until a retry of the same quantity can
	// pass: -1 s when not limited, and when the quantity exceeds the
	// limit (no wait would do).
	RetryAfter int64
	// ResetAfter is how long until the bucket is full again.
	ResetAfter int64
}

// Decide is redis-cell's GCRA (rate_limit) for a key whose theoretical
// arrival time is tat at the instant now (tat at or before now: the key
// holds nothing, as a new one), taking quantity (0 peeks). It returns the
// key's new theoretical arrival time (tat itself when limited) and the
// decision. It is pure: the caller keeps the key's time.
//
// Sums saturate at the ends of int64 instead of wrapping: a quantity so
// large that Emission × quantity passes int64 is limited, with no retry
// (it exceeds the limit), where redis-cell's wrapped product could let it
// through.
func Decide(now, tat int64, r Rate, quantity int64) (newTAT int64, d Decision) {
	tat = max(tat, now)
	increment := sat.Mul(r.Emission, quantity)
	newTAT = sat.Add(tat, increment)
	// Block the request if the next permitted time is in the future.
	allowAt := sat.Sub(newTAT, r.Tolerance)
	diff := sat.Sub(now, allowAt)
	d.RetryAfter = -1e9
	var ttl int64
	if diff < 0 {
		if increment <= r.Tolerance {
			d.RetryAfter = -diff
		}
		d.Limited = true
		newTAT = tat
		ttl = sat.Sub(tat, now)
	} else {
		ttl = sat.Sub(newTAT, now)
	}
	if next := sat.Sub(r.Tolerance, ttl); next > -r.Emission {
		// In whole microseconds, divided in float64 and truncated, as
		// redis-cell does.
		d.Remaining = truncate(float64(next/1e3) / float64(r.Emission/1e3))
	}
	d.ResetAfter = ttl
	return newTAT, d
}

// truncate converts x to an int64 as Rust's `as` does: toward zero,
// saturating at the ends, NaN as 0.
func truncate(x float64) int64 {
	switch {
	case x != x:
		return 0
	case x >= math.MaxInt64:
		return math.MaxInt64
	case x <= math.MinInt64:
		return math.MinInt64
	}
	return int64(x)
}

// Reply is CL.THROTTLE's reply: limited (0/1), limit, remaining,
// retry_after and reset_after, the last two in whole seconds.
type Reply struct {
	Limited                bool
	Limit, Remaining       int64
	RetryAfter, ResetAfter int64
}

// Reply returns the reply to d under r: each duration in whole seconds,
// rounded up when it has a part of a second of at least a millisecond, as
// redis-cell rounds ("otherwise a fast-paced caller could try again too
// early"): 2.0009 s is 2, 2.001 s is 3, -1 s stays -1.
func (d Decision) Reply(r Rate) Reply {
	return Reply{Limited: d.Limited, Limit: r.Limit, Remaining: d.Remaining,
		RetryAfter: seconds(d.RetryAfter), ResetAfter: seconds(d.ResetAfter)}
}

// seconds is redis-cell's rounding: whole seconds (toward zero), plus one
// if the milliseconds past them are above 0.
func seconds(ns int64) int64 {
	s := ns / 1e9
	if (ns%1e9)/1e6 > 0 {
		s++
	}
	return s
}

// Ints returns the reply as CL.THROTTLE's five integers.
func (r Reply) Ints() [5]int64 {
	var limited int64
	if r.Limited {
		limited = 1
	}
	return [5]int64{limited, r.Limit, r.Remaining, r.RetryAfter, r.ResetAfter}
}
