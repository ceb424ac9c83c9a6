package licensing

import (
	"cmp"
	"slices"
	"time"

	"github.com/capsgate/capsgate/admission/sat"
)

// Entitlement is what a service may use: the sum of its licences that
// count now (pay-as-you-grow).
type Entitlement struct {
	Service string
	// State is StateActive if any counted licence is active, else
	// StateGrace (all counted licences are in grace: raise the alarm).
	State State
	// CAPS, Sessions, Subscribers and Tokens are the sums over the counted
	// licences, saturating at math.MaxInt64. A licence that leaves one at
	// 0 adds nothing to it.
	CAPS        int64
	Sessions    int64
	Subscribers int64
	Tokens      int64
	// Unlimited: a counted licence lifts the CAPS limit; CAPS is then
	// not a limit (it still holds the sum, for reports).
	Unlimited bool
	// TokensPerAttempt, TokensPerMinute, Overage and Period are those of
	// the newest counted licence (greatest IssuedAt, then greatest ID).
	// Overage and Period are never "": "none" stands for the default.
	TokensPerAttempt int64
	TokensPerMinute  int64
	Overage          string
	Period           string
	// SetsSessions, SetsSubscribers and SetsTokens: a counted licence sets
	// that limit (above 0). A dimension that none sets is not limited: a
	// CAPS-only licence does not forbid sessions, and a service without
	// prepaid tokens meters use without a cap (pay-per-use).
	SetsSessions, SetsSubscribers, SetsTokens bool
	// PeriodID is the usage period at now (PeriodOf) when Period is
	// monthly, else 0.
	PeriodID int64
	// Licenses are the ids of the counted licences, oldest first.
	Licenses []string
}

// Licensed reports whether the service has a counted licence (an
// Entitlement's zero value: it has none).
func (e Entitlement) Licensed() bool { return e.State.Counts() }

// PeriodOf names the calendar month (UTC) of t for monthly usage limits:
// months since the start of year 0.
func PeriodOf(t time.Time) int64 {
	t = t.UTC()
	return int64(t.Year())*12 + int64(t.Month()) - 1
}

// Effective returns the entitlement of every service that has at least one
// counting licence (state active or grace) at now; a service absent from
// the map is unlicensed. revoked holds the revoked licence ids. A licence
// id listed more than once counts once (its first occurrence in ls).
//
// Effective is pure: the caller passes the verified licences it has loaded
// for this cluster (see License.AppliesTo) and the time, and recomputes at
// NextChange(ls, now).
func Effective(ls []*License, revoked map[string]bool, now time.Time) map[string]Entitlement {
	seen := make(map[string]bool, len(ls))
	counted := make([]*License, 0, len(ls))
	for _, l := range ls {
		if l == nil || seen[l.ID] {
			continue
		}
		seen[l.ID] = true
		if l.State(now, revoked[l.ID]).Counts() {
			counted = append(counted, l)
		}
	}
	slices.SortFunc(counted, func(a, b *License) int {
		return cmp.Or(a.IssuedAt.Compare(b.IssuedAt), cmp.Compare(a.ID, b.ID))
	})
	out := make(map[string]Entitlement)
	for _, l := range counted { // oldest first: the newest sets the rates last
		e := out[l.Service]
		e.Service = l.Service
		if e.State != StateActive {
			e.State = l.State(now, false)
		}
		e.CAPS = sat.Add(e.CAPS, max(l.CAPS, 0))
		e.Sessions = sat.Add(e.Sessions, max(l.Sessions, 0))
		e.Subscribers = sat.Add(e.Subscribers, max(l.Subscribers, 0))
		e.Tokens = sat.Add(e.Tokens, max(l.Tokens, 0))
		e.Unlimited = e.Unlimited || l.Unlimited
		e.TokensPerAttempt, e.TokensPerMinute = l.TokensPerAttempt, l.TokensPerMinute
		e.Overage, e.Period = orDefault(l.Overage, OverageNone), orDefault(l.Period, PeriodNone)
		e.SetsSessions = e.SetsSessions || l.Sessions > 0
		e.SetsSubscribers = e.SetsSubscribers || l.Subscribers > 0
		e.SetsTokens = e.SetsTokens || l.Tokens > 0
		if e.PeriodID = 0; e.Period == PeriodMonthly {
			e.PeriodID = PeriodOf(now)
		}
		e.Licenses = append(e.Licenses, l.ID)
		out[l.Service] = e
	}
	return out
}
