package licensing

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestEffective(t *testing.T) {
	now := t0.Add(100 * 24 * time.Hour)
	lic := func(id string, issued int, change func(l *License)) *License {
		l := &License{ID: id, IssuedAt: t0.Add(time.Duration(issued) * time.Hour), Service: "vpn",
			NotBefore: t0, NotAfter: now.Add(time.Hour), Overage: "none", Period: "none"}
		if change != nil {
			change(l)
		}
		return l
	}
	expired := func(l *License) { l.NotAfter = now.Add(-time.Hour) }
	inGrace := func(l *License) { l.NotAfter, l.Grace = now.Add(-time.Hour), 2*time.Hour }
	pending := func(l *License) { l.NotBefore = now.Add(time.Nanosecond) }
	caps := func(n int64) func(*License) { return func(l *License) { l.CAPS = n } }

	f := func(ls []*License, revoked map[string]bool, want map[string]Entitlement) {
		t.Helper()
		require.Equal(t, want, Effective(ls, revoked, now))
	}

	// Two 500-CAPS licences give 1000.
	f([]*License{lic("a", 0, caps(500)), lic("b", 1, caps(500))}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 1000, Overage: "none", Period: "none", Licenses: []string{"a", "b"}},
	})
	// An expired, a pending and a revoked one do not count; one in grace does.
	f([]*License{
		lic("a", 0, caps(500)),
		lic("exp", 1, func(l *License) { l.CAPS = 100; expired(l) }),
		lic("pend", 2, func(l *License) { l.CAPS = 100; pending(l) }),
		lic("rev", 3, caps(100)),
		lic("grace", 4, func(l *License) { l.CAPS = 10; inGrace(l) }),
	}, map[string]bool{"rev": true, "nosuch": true}, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 510, Overage: "none", Period: "none", Licenses: []string{"a", "grace"}},
	})
	// Only licences in grace: state grace. Nothing counts: no entry.
	f([]*License{lic("g", 0, func(l *License) { l.CAPS = 7; inGrace(l) })}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateGrace, CAPS: 7, Overage: "none", Period: "none", Licenses: []string{"g"}},
	})
	f([]*License{lic("x", 0, expired), lic("y", 0, pending)}, map[string]bool{}, map[string]Entitlement{})
	f(nil, nil, map[string]Entitlement{})

	// Unlimited if any counted licence is; an expired unlimited one does not lift it.
	f([]*License{lic("a", 0, caps(500)), lic("u", 1, func(l *License) { l.Unlimited = true })}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 500, Unlimited: true, Overage: "none", Period: "none", Licenses: []string{"a", "u"}},
	})
	f([]*License{lic("a", 0, caps(500)), lic("u", 1, func(l *License) { l.Unlimited = true; expired(l) })}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 500, Overage: "none", Period: "none", Licenses: []string{"a"}},
	})

	// Sessions, subscribers and tokens add up; a licence without them adds
	// 0. Rates, overage and period come from the newest licence (IssuedAt,
	// then ID), whatever the order given.
	older := lic("m", 0, func(l *License) {
		l.CAPS, l.Sessions, l.Subscribers, l.Tokens = 100, 10, 1000, 5000
		l.TokensPerAttempt, l.TokensPerMinute, l.Overage, l.Period = 1, 2, "percent:10", "monthly"
	})
	newer := lic("n", 5, func(l *License) {
		l.CAPS, l.Tokens, l.TokensPerAttempt, l.TokensPerMinute, l.Overage, l.Period = 50, 2000, 3, 4, "unlimited", ""
	})
	sameTime := lic("z", 5, func(l *License) { l.Sessions, l.TokensPerAttempt, l.Overage = 5, 9, "" })
	want := map[string]Entitlement{"vpn": {Service: "vpn", State: StateActive, CAPS: 150, Sessions: 10, Subscribers: 1000,
		Tokens: 7000, TokensPerAttempt: 3, TokensPerMinute: 4, Overage: "unlimited", Period: "none",
		SetsSessions: true, SetsSubscribers: true, SetsTokens: true, Licenses: []string{"m", "n"}}}
	f([]*License{older, newer}, nil, want)
	f([]*License{newer, older}, nil, want)
	f([]*License{newer, sameTime, older}, nil, map[string]Entitlement{"vpn": {Service: "vpn", State: StateActive, CAPS: 150,
		Sessions: 15, Subscribers: 1000, Tokens: 7000, TokensPerAttempt: 9, Overage: "none", Period: "none",
		SetsSessions: true, SetsSubscribers: true, SetsTokens: true, Licenses: []string{"m", "n", "z"}}})
	// A monthly period names the month of now; an older monthly licence
	// under a newer one without a period sets none (above).
	monthly := lic("p", 6, func(l *License) { l.CAPS, l.Tokens, l.Period = 1, 1, "monthly" })
	f([]*License{monthly}, nil, map[string]Entitlement{"vpn": {Service: "vpn", State: StateActive, CAPS: 1, Tokens: 1,
		Overage: "none", Period: "monthly", SetsTokens: true, PeriodID: PeriodOf(now), Licenses: []string{"p"}}})
	require.Equal(t, int64(2026*12+5), PeriodOf(time.Date(2026, 6, 30, 23, 59, 59, 0, time.FixedZone("east", 3600))),
		"the month in UTC: June 30 23:59:59 at UTC+1 is still June")
	require.Equal(t, int64(2026*12+6), PeriodOf(time.Date(2026, 7, 1, 0, 0, 0, 0, time.FixedZone("west", -3600))),
		"and July 1 00:00 at UTC-1 is July")

	// Duplicate ids count once (the first one given).
	f([]*License{lic("a", 0, caps(500)), lic("a", 0, caps(500)), lic("a", 9, caps(7))}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 500, Overage: "none", Period: "none", Licenses: []string{"a"}},
	})

	// Services are apart; nil entries are skipped.
	f([]*License{lic("a", 0, caps(500)), nil, lic("b", 0, func(l *License) { l.Service, l.CAPS = "sms", 5 })}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: 500, Overage: "none", Period: "none", Licenses: []string{"a"}},
		"sms": {Service: "sms", State: StateActive, CAPS: 5, Overage: "none", Period: "none", Licenses: []string{"b"}},
	})

	// Sums saturate instead of overflowing.
	huge := func(l *License) {
		l.CAPS, l.Sessions, l.Subscribers, l.Tokens = math.MaxInt64, math.MaxInt64-1, math.MaxInt64/2+1, math.MaxInt64
	}
	f([]*License{lic("a", 0, huge), lic("b", 1, huge), lic("c", 2, caps(1))}, nil, map[string]Entitlement{
		"vpn": {Service: "vpn", State: StateActive, CAPS: math.MaxInt64, Sessions: math.MaxInt64, Subscribers: math.MaxInt64,
			Tokens: math.MaxInt64, Overage: "none", Period: "none", SetsSessions: true, SetsSubscribers: true, SetsTokens: true,
			Licenses: []string{"a", "b", "c"}},
	})
}
