package cluster

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing"
)

// limitsSink records what Shares gives the engine.
type limitsSink map[string]admission.Limits

func (s limitsSink) SetLimits(service string, l admission.Limits) error { s[service] = l; return nil }

// A node's part of a limit at the end of the int64 range is its part, not
// a wrapped negative number: float64(math.MaxInt64) is 2^63, and Go's
// conversion of 2^63 back to int64 gave math.MinInt64, so a node holding
// the whole of a 9223372036854775807-session licence refused every call.
func TestSharesOfLimitsAtTheEnd(t *testing.T) {
	f := func(part float64, limit, want int64) {
		t.Helper()
		sink := limitsSink{}
		s := NewShares(sink)
		require.NoError(t, s.SetLimits("vpn", admission.Limits{Licensed: true, CAPS: 100, Sessions: limit, Subscribers: limit, Tokens: admission.Unlimited}))
		require.NoError(t, s.SetShare("vpn", Share{CAPS: part, Sessions: part, Subscribers: part}))
		require.Equal(t, want, sink["vpn"].Sessions)
		require.Equal(t, want, sink["vpn"].Subscribers)
	}
	f(1, math.MaxInt64, math.MaxInt64)
	f(0.5, math.MaxInt64, 1<<62)
	f(0.999999, math.MaxInt64, 9223362813482738688)
	f(1e-300, math.MaxInt64, 0)
	f(0, math.MaxInt64, 0)
	f(1, 1, 1)
	f(0.5, 1, 0)
	f(1, 0, 0)
	f(-1, math.MaxInt64, math.MaxInt64) // the whole
	f(0.5, admission.Unlimited, admission.Unlimited)
}

// Before the cluster plans a node's parts, a licence applies whole on a node
// alone, evenly on a node that knows its members, and not at all on a node
// that joins a farm (its licences on disk are the farm's, which the others
// hold: a node restarted with them enforced the whole licence beside the
// others' parts until its first plan).
func TestSharesBeforeTheFirstPlan(t *testing.T) {
	lic := admission.Limits{Licensed: true, CAPS: 900, Sessions: 60, Subscribers: 30, Tokens: 3000}
	sink := limitsSink{}
	alone := NewShares(sink)
	require.NoError(t, alone.SetLimits("voice", lic))
	require.Equal(t, 900.0, sink["voice"].CAPS)
	require.Equal(t, int64(60), sink["voice"].Sessions)
	require.Equal(t, int64(30), sink["voice"].Subscribers)

	alone.SetMembers(3)
	require.NoError(t, alone.SetLimits("voice", lic))
	require.InDelta(t, 300.0, sink["voice"].CAPS, 1e-9)
	require.Equal(t, int64(20), sink["voice"].Sessions)
	require.Equal(t, int64(10), sink["voice"].Subscribers)

	joining := NewShares(sink)
	joining.AwaitPlan()
	joining.SetMembers(3)
	require.NoError(t, joining.SetLimits("voice", lic))
	got := sink["voice"]
	require.Zero(t, got.CAPS)
	require.True(t, got.DepthShared)
	require.Zero(t, got.DepthShare)
	require.Zero(t, got.Sessions)
	require.Zero(t, got.Subscribers)
	require.True(t, got.TokensShared)
	require.Zero(t, got.TokensBudget)

	// Once planned, a licence new here starts from an even part again, and
	// a planned part applies as planned.
	joining.Planned()
	require.NoError(t, joining.SetLimits("fax", lic))
	require.InDelta(t, 300.0, sink["fax"].CAPS, 1e-9)
	require.NoError(t, joining.SetShare("voice", Share{CAPS: 0.5, Sessions: 0.5, Subscribers: 0.5, Depth: 0.5}))
	require.InDelta(t, 450.0, sink["voice"].CAPS, 1e-9)
	require.Equal(t, int64(30), sink["voice"].Sessions)
}

// The licensed services' names, which the starved check walks every
// StarvedCheck, follow the licences as they come and go.
func TestLicensedNamesFollowTheLicences(t *testing.T) {
	s := NewShares(limitsSink{})
	require.Empty(t, s.LicensedNames())
	lic := admission.Limits{Licensed: true, CAPS: 100, Sessions: 10, Subscribers: 10, Tokens: admission.Unlimited}
	require.NoError(t, s.SetLimits("video", lic))
	require.NoError(t, s.SetLimits("voice", lic))
	require.Equal(t, []string{"video", "voice"}, s.LicensedNames())
	require.NoError(t, s.SetLimits("voice", admission.Limits{}))
	require.Equal(t, []string{"video"}, s.LicensedNames())
	lic.CAPS = 200 // a new licence for a service already licensed
	require.NoError(t, s.SetLimits("video", lic))
	require.Equal(t, []string{"video"}, s.LicensedNames())
	require.NoError(t, s.SetLimits("voice", lic))
	names := s.LicensedNames()
	require.Equal(t, []string{"video", "voice"}, names)
	// A key's limits are not named there, and setting them does not make
	// the next call walk every limit again (100,000 keys set in bulk).
	require.NoError(t, s.SetLimits(admission.TrunkName("voice", "carrier-a"), lic))
	again := s.LicensedNames()
	require.Equal(t, []string{"video", "voice"}, again)
	require.Same(t, &names[0], &again[0], "not rebuilt")
}

// LimitsOf: a dimension no counted licence sets is not limited, whatever
// its sum (0); one set is limited at its sum, 1 and the int64 maximum
// included; an unlimited licence lifts CAPS only; a monthly period keeps
// its month; no counted licence is unlicensed.
func TestLimitsOfEntitlements(t *testing.T) {
	u := int64(admission.Unlimited)
	require.Equal(t, admission.Limits{Sessions: u, Subscribers: u, Tokens: u, State: "unlicensed"},
		LimitsOf(licensing.Entitlement{Service: "voice"}))
	require.Equal(t, admission.Limits{Sessions: u, Subscribers: u, Tokens: u, State: "unlicensed"},
		LimitsOf(licensing.Entitlement{Service: "voice", State: licensing.StateExpired, CAPS: 9, SetsSessions: true, Sessions: 9}),
		"an entitlement whose state does not count is none")

	capsOnly := LimitsOf(licensing.Entitlement{Service: "voice", State: licensing.StateActive, CAPS: 1, Overage: "none", Period: "none"})
	require.Equal(t, admission.Limits{Licensed: true, CAPS: 1, Sessions: u, Subscribers: u, Tokens: u, State: "active"}, capsOnly)

	ov, err := admission.ParseOverage("percent:10")
	require.NoError(t, err)
	full := LimitsOf(licensing.Entitlement{Service: "voice", State: licensing.StateGrace, CAPS: math.MaxInt64, Unlimited: true,
		Sessions: 0, SetsSessions: true, Subscribers: 1, SetsSubscribers: true, Tokens: math.MaxInt64, SetsTokens: true,
		TokensPerAttempt: 2, TokensPerMinute: 3, Overage: "percent:10", Period: "monthly", PeriodID: 24317})
	require.Equal(t, admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: 0, Subscribers: 1, Tokens: math.MaxInt64,
		TokensPerAttempt: 2, TokensPerMinute: 3, Overage: ov, PeriodID: 24317, State: "grace"}, full,
		"a set dimension at 0 stays 0: limited to nothing")
}

// SyncLicensed keeps the exchange's map of limits up to date with what
// changed only, and copies it whole the first time and after more
// changes than it hands over one by one; the planner then plans the keys
// that changed, not every one.
func TestSyncLicensedAndLimitsChanged(t *testing.T) {
	s := NewShares(limitsSink{})
	key := func(i int) string { return admission.TrunkName("voice", "k"+strconv.Itoa(i)) }
	lic := admission.Limits{Licensed: true, CAPS: 1000, Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}
	require.NoError(t, s.SetLimits("voice", lic))
	for i := range 1000 {
		require.NoError(t, s.SetLimits(key(i), trunkLimitsOf(10)))
	}
	require.NoError(t, s.SetLimits("gone", admission.Limits{State: "unlicensed"}))
	dst := map[string]admission.Limits{}
	changed, all := s.SyncLicensed(dst)
	require.True(t, all, "the first sync copies every licence")
	require.Empty(t, changed)
	require.Equal(t, 1001, len(dst), "the unlicensed one is not there")

	p := NewPlanner("a", PolicyConfig{}, 100*time.Millisecond)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	live := []string{"a"}
	plan := func(step int) Plan {
		p.LimitsChanged(s.SyncLicensed(dst))
		return p.Plan(t0.Add(time.Duration(step)*ExchangeInterval), live, dst, nil)
	}
	require.Equal(t, 1001, len(plan(0).Parts))
	for step := 1; step < 5; step++ {
		plan(step) // the parts settle
	}
	require.Equal(t, 0, len(plan(5).Parts), "settled: nothing planned")

	require.NoError(t, s.SetLimits(key(7), trunkLimitsOf(20)))
	require.NoError(t, s.SetLimits(key(7), trunkLimitsOf(30)))
	require.NoError(t, s.SetLimits(key(8), admission.Limits{State: "none"}))
	changed, all = s.SyncLicensed(dst)
	require.False(t, all)
	require.Equal(t, []string{key(7), key(7), key(8)}, changed)
	require.Equal(t, 30.0, dst[key(7)].CAPS)
	require.NotContains(t, dst, key(8), "limits taken away")
	p.LimitsChanged(changed, all)
	parts := p.Plan(t0.Add(6*ExchangeInterval), live, dst, nil).Parts
	require.Equal(t, []string{key(7)}, slices.Collect(maps.Keys(parts)), "only the key that changed is planned")
	require.Equal(t, 1.0, parts[key(7)].CAPS)

	for i := range maxSyncChanges + 1 {
		require.NoError(t, s.SetLimits(key(i%2000), trunkLimitsOf(float64(40+i%3))))
	}
	changed, all = s.SyncLicensed(dst)
	require.True(t, all, "past maxSyncChanges, a copy of every licence")
	require.Empty(t, changed)
	require.Equal(t, 2001, len(dst))
}

// trunkLimitsOf are a key's limits of caps CAPS.
func trunkLimitsOf(caps float64) admission.Limits {
	return admission.Limits{Licensed: true, CAPS: caps, Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}
}

// Idle keys settle on every member of three, each at a third of its
// limits: a part that rises by the room the other two leave stops an ulp
// below the third it aims at, and must count as there, or every idle key
// is planned again at every exchange.
func TestIdleKeysSettleOnEveryMember(t *testing.T) {
	live := []string{"a", "b", "c"}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type member struct {
		p    *Planner
		lic  map[string]admission.Limits
		last Report
	}
	var ms []*member
	for _, name := range live {
		m := &member{p: NewPlanner(name, PolicyConfig{}, 100*time.Millisecond), lic: map[string]admission.Limits{}}
		for _, other := range live {
			m.p.Joined(t0.Add(-time.Second), other)
		}
		m.lic["voice"] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited}
		for k := range 300 {
			l := trunkLimitsOf(float64(100 + k))
			l.Sessions = int64(10 + k)
			m.lic[admission.TrunkName("voice", "k"+strconv.Itoa(k))] = l
		}
		ms = append(ms, m)
	}
	var planned []int
	for step := range 30 {
		now := t0.Add(time.Duration(step) * ExchangeInterval)
		planned = planned[:0]
		for _, m := range ms {
			pl := m.p.Plan(now, live, m.lic, nil)
			m.last = pl.Report
			planned = append(planned, pl.Planned)
		}
		for i, m := range ms {
			for j, o := range ms {
				if i != j {
					m.p.Heard(now, live[j], o.last)
				}
			}
		}
	}
	require.Equal(t, []int{0, 0, 0}, planned, "nothing left to plan on an idle farm")
	for _, m := range ms {
		sum := 0.0
		for _, o := range ms {
			sum += o.p.applied[admission.TrunkName("voice", "k7")].CAPS
		}
		require.InDelta(t, 1.0, sum, 1e-9, "the parts of a key sum to its limits")
		require.InDelta(t, 1.0/3, m.p.applied[admission.TrunkName("voice", "k7")].CAPS, 1e-9)
	}
}
