package admission

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/capsgate/capsgate/admission/sat"
)

// Unlimited marks a limit that the licence does not bound. It is the only
// negative limit: arithmetic on limits saturates (see package sat), so a sum of
// licences past math.MaxInt64 is math.MaxInt64, a finite limit no node can
// reach, never a negative number.
const Unlimited = -1

// Limits are what one service may use on this node: the sum of its valid
// licences, cut down to this node's share by the cluster. They are the only
// thing the engine knows about licences; see Engine.SetLimits.
type Limits struct {
	// Licensed is false when no valid licence covers the service: every
	// attempt but an emergency one is rejected with UNLICENSED.
	Licensed bool
	// CAPS is this node's call attempts per second, or Unlimited (an
	// unlimited licence; node.max_caps still holds). 0 admits no attempt.
	CAPS float64
	// Sessions, Subscribers: concurrent sessions and registered
	// subscribers this node may hold, or Unlimited.
	Sessions    int64
	Subscribers int64
	// Tokens is the service's prepaid token pool, or Unlimited (usage is
	// metered, never refused).
	Tokens int64
	// TokensPerAttempt is charged for each admitted attempt;
	// TokensPerMinute for each started minute a released call lasted.
	TokensPerAttempt int64
	TokensPerMinute  int64
	// Overage decides what happens when the pool is empty.
	Overage Overage
	// PeriodID names the usage period the limits belong to (a monthly
	// licence: months since year 0, UTC, by the licence clock); 0: none.
	// When it moves on, every token pool of the service starts empty.
	PeriodID int64
	// TokensShared says the pool is shared with other members (set by the
	// cluster): this node may charge the service's unallocated pool up to
	// TokensBudget in all, its part of the pool. A single node draws on
	// all of it.
	TokensShared bool
	TokensBudget int64
	// AccountBudgets are this node's budgets of the accounts' allocations
	// when TokensShared: those that changed. An account keeps the budget
	// it was last given; one never given one charges nothing here until
	// the cluster's next exchange gives it one.
	AccountBudgets map[string]int64
	// LicensedCAPS is the whole cluster's licensed CAPS, for reports; 0
	// means the same as CAPS (a single node).
	LicensedCAPS float64
	// Burst is the depth in attempts of a bucket at the whole licence's
	// CAPS (a trunk key's own burst); 0: Config.Burst of that rate.
	Burst int64
	// DepthShared: the CAPS bucket's depth is DepthShare of the depth a
	// bucket at LicensedCAPS would have (the licence's burst), lent by the
	// cluster where the attempts are, and beside it, while CAPS is less
	// than LicensedCAPS, a reserve of its own (Reserve of CAPS); not what
	// this node's CAPS alone would have.
	DepthShared bool
	DepthShare  float64
	// State is the licence state shown by QUOTA ("active", "grace", ...).
	State string
}

// OverageKind says what happens when a token pool is empty.
type OverageKind uint8

// Overage policies.
const (
	OverageNone      OverageKind = iota // reject with TOKENS
	OveragePercent                      // allow Percent % more than the pool
	OverageUnlimited                    // always allow; metered as overage
)

// Overage is a pool's overage policy.
type Overage struct {
	Kind    OverageKind
	Percent int64
}

// ParseOverage reads "none", "percent:N" or "unlimited".
func ParseOverage(s string) (Overage, error) {
	switch {
	case s == "none" || s == "":
		return Overage{}, nil
	case s == "unlimited":
		return Overage{Kind: OverageUnlimited}, nil
	case strings.HasPrefix(s, "percent:"):
		n, err := strconv.ParseInt(s[len("percent:"):], 10, 64)
		if err != nil || n < 0 || n > 1000 {
			return Overage{}, fmt.Errorf("invalid overage %q: percent must be an integer 0..1000", s)
		}
		return Overage{Kind: OveragePercent, Percent: n}, nil
	}
	return Overage{}, fmt.Errorf("invalid overage %q: want none, percent:N or unlimited", s)
}

// String returns the policy in the form ParseOverage reads.
func (o Overage) String() string {
	switch o.Kind {
	case OveragePercent:
		return "percent:" + strconv.FormatInt(o.Percent, 10)
	case OverageUnlimited:
		return "unlimited"
	}
	return "none"
}

// ceiling returns how many tokens a pool of size limit may hand out in
// all, or -1 when there is no end: the overage is unlimited, or a
// percentage takes the ceiling past math.MaxInt64, beyond what the pool's
// counters can count (they stop there; see package sat). A pool of exactly
// math.MaxInt64 tokens with no overage is a finite pool.
func (o Overage) ceiling(limit int64) int64 {
	switch o.Kind {
	case OveragePercent:
		extra := sat.PercentOf(limit, o.Percent)
		if extra > math.MaxInt64-limit {
			return -1
		}
		return limit + extra
	case OverageUnlimited:
		return -1
	}
	return limit
}

// DevLimits are the SPEC's --dev limits for service "demo".
func DevLimits() Limits {
	return Limits{Licensed: true, CAPS: 1000, Sessions: 500, Subscribers: 10000, Tokens: 1000000, State: "active"}
}

// derived is a service's Limits plus the numbers the hot path needs,
// computed once when the limits change.
type derived struct {
	Limits
	caps     gcra // normal priority
	headroom gcra // extra for PRIORITY high
	// highSessions is the session limit for PRIORITY high.
	highSessions int64
}

// WholeDepth is the depth in attempts of a bucket at l's whole licence
// (LicensedCAPS, or CAPS when it is 0): l.Burst when set, else burstSec
// seconds of that rate (Depth).
func WholeDepth(l Limits, burstSec float64) int64 {
	whole := l.CAPS
	if l.LicensedCAPS > 0 {
		whole = l.LicensedCAPS
	}
	if l.Burst > 0 && whole > 0 {
		return l.Burst
	}
	return Depth(whole, burstSec)
}

// depthAt is the depth of l's bucket at rate, a part of the whole
// licence's: l.Burst in proportion when set (at least one attempt), else
// burstSec seconds of the rate.
func (l *Limits) depthAt(rate, burstSec float64) int64 {
	whole := l.CAPS
	if l.LicensedCAPS > 0 {
		whole = l.LicensedCAPS
	}
	if l.Burst <= 0 || !(whole > 0) || !(rate > 0) {
		return Depth(rate, burstSec)
	}
	if rate >= whole {
		return l.Burst
	}
	return max(int64(math.Floor(float64(l.Burst)*rate/whole+1e-9)), 1)
}

func derive(l Limits, cfg *Config) *derived {
	d := &derived{Limits: l, highSessions: l.Sessions}
	d.caps = newGCRADepth(l.CAPS, l.depthAt(l.CAPS, cfg.Burst.Seconds()))
	if l.DepthShared && l.LicensedCAPS > 0 && l.CAPS > 0 {
		whole := float64(WholeDepth(l, cfg.Burst.Seconds()))
		depth := int64(math.Floor(min(l.DepthShare, 1)*whole + 1e-6))
		if l.CAPS < l.LicensedCAPS*(1-1e-6) {
			// A node that shares the licence keeps a reserve of its own
			// beside the depth it is lent, for the moments before it is
			// lent more; also when it is lent the whole of the farm's
			// depth, which it may owe. (A node holding the whole licence,
			// give or take the rounding of the parts that sum to it, is
			// alone: no reserve.)
			depth = sat.Add(depth, Reserve(l.CAPS))
		}
		d.caps = newGCRADepth(l.CAPS, depth)
	}
	if l.CAPS > 0 && cfg.HighHeadroomPercent > 0 {
		d.headroom = newGCRA(l.CAPS*float64(cfg.HighHeadroomPercent)/100, cfg.Burst.Seconds())
		if l.Burst > 0 {
			// A key's own burst: the headroom's depth is its part of it.
			d.headroom = newGCRADepth(l.CAPS*float64(cfg.HighHeadroomPercent)/100,
				sat.PercentOf(l.depthAt(l.CAPS, cfg.Burst.Seconds()), int64(cfg.HighHeadroomPercent)))
		}
	} else {
		d.headroom = newGCRA(0, 0)
	}
	if l.Sessions > 0 {
		d.highSessions = sat.Add(l.Sessions, sat.PercentOf(l.Sessions, int64(cfg.HighHeadroomPercent)))
	}
	if !l.Licensed {
		d.caps = newGCRA(0, 0)
	}
	return d
}

// LimitSetter is the one door through which what the engine enforces
// changes: --dev, the licensing layer (the sum of a service's valid
// licences) and the cluster layer (this node's share of them) call it.
// Implementations must be safe to call at any time from any goroutine and
// must keep counters, buckets and open sessions across a change.
type LimitSetter interface {
	SetLimits(service string, l Limits) error
}

var _ LimitSetter = (*Engine)(nil)
