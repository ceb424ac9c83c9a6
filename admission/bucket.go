package admission

import (
	"math"
	"sync/atomic"
	"time"
)

// gcra holds the parameters of a token bucket expressed as the Generic Cell
// Rate Algorithm (ITU-T I.371): a bucket of depth burst refilled at rate per
// second is the same as remembering one instant, the theoretical arrival time
// (TAT) of the next conforming attempt. An attempt at now conforms when
// TAT - now <= tolerance, and then moves TAT on by one interval.
//
// One word of state makes the bucket exact without a lock: the attempt that
// wins the compare-and-swap on TAT is the one admitted. Under contention a
// loser simply re-reads and re-decides; measured at 2 event loops on one
// service the CAS retries cost less than a per-service mutex would (see
// BenchmarkAdmitParallel).
type gcra struct {
	mode      uint8 // gcraLimited, gcraUnlimited or gcraClosed
	interval  int64 // nanoseconds per token (1/rate)
	tolerance int64 // (burst-1) × interval
	burst     int64 // bucket depth in tokens
}

const (
	gcraClosed    = iota // rate 0: nothing conforms
	gcraLimited          // a real bucket
	gcraUnlimited        // no limit
)

// minBurst is the least depth of a bucket that runs at MinBurst attempts per
// second or more. At a small rate (a cluster node's share of a licence, a
// small licence) burstSec of it is a token or two, and random (Poisson)
// arrivals at 75 % of the rate were refused ~9 % of the time in simulation;
// 20 tokens bring that under 0.01 %. Below 20 CAPS the depth is one second
// of the rate.
const minBurst = 20

// newGCRA builds a bucket of rate tokens per second whose depth is burstSec
// seconds' worth of rate, at least min(minBurst, one second of rate) and at
// least one token. A negative rate is unlimited.
func newGCRA(rate, burstSec float64) gcra {
	return newGCRADepth(rate, Depth(rate, burstSec))
}

// Depth is the depth in attempts of a bucket of rate attempts per second
// whose depth is burstSec seconds of it: at least min(minBurst, one second
// of rate) and at least one attempt (0 for a rate that is not positive).
func Depth(rate, burstSec float64) int64 {
	if !(rate > 0) {
		return 0
	}
	if math.IsInf(rate, 1) {
		return math.MaxInt64
	}
	burst := math.Floor(min(rate*burstSec+1e-9, 1<<62))
	return max(int64(burst), min(minBurst, int64(math.Floor(min(rate, 1<<62)+1e-9))), 1)
}

// Reserve is the depth a farm node's bucket keeps of its own at rate
// attempts per second, beside the depth it is lent: reserveZ standard
// deviations of the Poisson attempts that come in reserveSpan, the time
// it takes to be lent more (see package cluster).
func Reserve(rate float64) int64 {
	if !(rate > 0) {
		return 0
	}
	return int64(math.Ceil(ReserveZ * math.Sqrt(min(rate, 1<<60)*ReserveSpan.Seconds())))
}

// Reserve settings.
const (
	ReserveZ    = 3
	ReserveSpan = 200 * time.Millisecond
)

// newGCRADepth builds a bucket of rate tokens per second and the given
// depth (at least one token). A negative rate is unlimited.
func newGCRADepth(rate float64, burst int64) gcra {
	switch {
	case rate < 0 || math.IsInf(rate, 1):
		return gcra{mode: gcraUnlimited}
	case rate == 0 || math.IsNaN(rate):
		return gcra{mode: gcraClosed}
	}
	// The interval saturates too: a rate below one attempt in
	// maxInterval (a limit of 1e-11 CAPS, or a share's float residue) is
	// one attempt in maxInterval, not an int64 conversion out of range
	// (MinInt64 on amd64: a nanosecond, a billion attempts a second).
	interval := int64(maxInterval)
	if iv := math.Round(1e9 / rate); iv < maxInterval {
		interval = max(int64(iv), 1)
	}
	burst = max(burst, 1)
	// The tolerance saturates: a depth of years at a high rate is no bound.
	tolerance := int64(math.MaxInt64 / 4)
	if burst-1 < tolerance/interval {
		tolerance = (burst - 1) * interval
	}
	return gcra{mode: gcraLimited, interval: interval, tolerance: tolerance, burst: burst}
}

// maxInterval bounds a bucket's interval between attempts (about 73
// years), so that a TAT (at most now, the tolerance and one interval
// ahead, each below a quarter of MaxInt64) never overflows.
const maxInterval = math.MaxInt64 / 4

// take tries to take one token at now from the bucket whose TAT is tat. It
// returns whether it conformed, the tokens left afterwards (or, when it did
// not, the nanoseconds until it would).
func (g *gcra) take(tat *atomic.Int64, now int64) (ok bool, left int64) {
	switch g.mode {
	case gcraUnlimited:
		return true, -1
	case gcraClosed:
		return false, math.MaxInt64
	}
	for {
		old := tat.Load()
		base := old
		if base < now {
			base = now
		}
		if over := base - now - g.tolerance; over > 0 {
			return false, over
		}
		next := base + g.interval
		if tat.CompareAndSwap(old, next) {
			return true, (g.tolerance + g.interval - (next - now)) / g.interval
		}
	}
}

// refund gives back one token taken at now, when a later check rejects the
// attempt after all. TAT never moves back past now, so a refund can not
// create more than a full bucket.
func (g *gcra) refund(tat *atomic.Int64, now int64) {
	if g.mode != gcraLimited {
		return
	}
	for {
		old := tat.Load()
		next := old - g.interval
		if next < now {
			next = now
		}
		if next >= old || tat.CompareAndSwap(old, next) {
			return
		}
	}
}

// availableAt returns the tokens a limited bucket whose TAT was base
// holds at now, without taking any.
func (g *gcra) availableAt(base, now int64) int64 {
	if base < now {
		base = now
	}
	n := (g.tolerance + g.interval - (base - now)) / g.interval
	if n < 0 {
		return 0
	}
	return n
}

// rescale carries a bucket's state across a change of rate at now: what
// the bucket owed (TAT ahead of now) is kept in tokens, not in time, so
// raising the rate does not leave the old, slower debt in the way (an idle
// cluster node whose share rises from a trickle to its demand). All of it
// is kept, even beyond the new, smaller depth after a fall: the attempts
// were admitted, and forgiving them would let a cluster whose shares move
// admit more than its licence's burst (a node that spent its burst and
// falls would get part of it back while the node that rises gets its
// larger depth). A bucket that was closed or unlimited starts full.
func rescale(tat *atomic.Int64, old, cur *gcra, now int64) {
	if cur.mode != gcraLimited {
		return
	}
	for {
		t := tat.Load()
		next := now // full
		if old.mode == gcraLimited && t > now {
			owed := float64(t-now) / float64(old.interval)
			next = now + int64(min(owed*float64(cur.interval), 1<<62))
		}
		if t == next || tat.CompareAndSwap(t, next) {
			return
		}
	}
}

// retryMS turns a wait in nanoseconds into a retry hint of at least 1 ms.
func retryMS(waitNs int64) int64 {
	if waitNs >= math.MaxInt64/2 {
		return retryUnlicensedMS
	}
	ms := (waitNs + 999_999) / 1_000_000
	if ms < 1 {
		ms = 1
	}
	return ms
}

// hotCAPS is a copy of a service's CAPS bucket (lim's caps) and of two
// of its limits' flags, in the service's first cache line, so that a
// decision on that bucket alone reads no other line: with 1,000 licences
// spread over the traffic, lim's limits are seldom in the cache. It is
// written by Service.setLim alone, under the service's lock, and read
// with a sequence count: a read that meets a write under way, or
// overlaps one, reads lim's limits instead (never waits). Trunk keys,
// decided through their limits, keep none.
type hotCAPS struct {
	seq       atomic.Uint32 // odd while a write is under way
	flags     atomic.Uint32 // the bucket's mode (low byte), hotLicensed, hotRateOnly
	interval  atomic.Int64
	tolerance atomic.Int64
}

// hotCAPS's flags.
const (
	hotLicensed = 1 << 8 // Limits.Licensed
	hotRateOnly = 1 << 9 // licensed, no tokens per attempt, or not licensed: an ADMIT without CALL needs the CAPS bucket alone
)

// hotFlags are d's flags for hotCAPS.
func hotFlags(d *derived) uint32 {
	f := uint32(d.caps.mode)
	if d.Licensed {
		f |= hotLicensed
	}
	if d.TokensPerAttempt == 0 || !d.Licensed {
		f |= hotRateOnly
	}
	return f
}

// store writes d's bucket and flags. One writer at a time.
func (h *hotCAPS) store(d *derived) {
	h.seq.Add(1)
	h.flags.Store(hotFlags(d))
	h.interval.Store(d.caps.interval)
	h.tolerance.Store(d.caps.tolerance)
	h.seq.Add(1)
}

// load returns the bucket (for take: its depth is not kept) and the
// flags; from lim when a write is under way.
func (h *hotCAPS) load(lim *atomic.Pointer[derived]) (gcra, uint32) {
	s := h.seq.Load()
	f, iv, tol := h.flags.Load(), h.interval.Load(), h.tolerance.Load()
	if s&1 != 0 || h.seq.Load() != s {
		d := lim.Load()
		return d.caps, hotFlags(d)
	}
	return gcra{mode: uint8(f), interval: iv, tolerance: tol}, f
}
