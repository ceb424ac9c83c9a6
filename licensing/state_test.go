package licensing

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestState(t *testing.T) {
	const ns = time.Nanosecond
	nb, na := t0, t0.Add(30*24*time.Hour)
	withGrace := &License{NotBefore: nb, NotAfter: na, Grace: time.Hour}
	noGrace := &License{NotBefore: nb, NotAfter: na}
	forever := &License{NotBefore: nb}
	always := &License{}

	f := func(l *License, now time.Time, revoked bool, want State) {
		t.Helper()
		require.Equal(t, want, l.State(now, revoked), "at %s", now.Format(time.RFC3339Nano))
	}
	f(withGrace, nb.Add(-ns), false, StatePending)
	f(withGrace, nb, false, StateActive)
	f(withGrace, nb.Add(ns), false, StateActive)
	f(withGrace, na.Add(-ns), false, StateActive)
	f(withGrace, na, false, StateGrace)
	f(withGrace, na.Add(ns), false, StateGrace)
	f(withGrace, na.Add(time.Hour-ns), false, StateGrace)
	f(withGrace, na.Add(time.Hour), false, StateExpired)
	f(withGrace, na.Add(time.Hour+ns), false, StateExpired)

	f(noGrace, na.Add(-ns), false, StateActive)
	f(noGrace, na, false, StateExpired)
	f(noGrace, na.Add(ns), false, StateExpired)

	f(forever, nb.Add(-ns), false, StatePending)
	f(forever, nb, false, StateActive)
	f(forever, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), false, StateActive)
	f(always, time.Time{}, false, StateActive)
	f(always, t0, false, StateActive)

	for _, now := range []time.Time{nb.Add(-ns), nb, na, na.Add(2 * time.Hour)} {
		f(withGrace, now, true, StateRevoked)
	}

	require.True(t, StateActive.Counts())
	require.True(t, StateGrace.Counts())
	require.False(t, StatePending.Counts())
	require.False(t, StateExpired.Counts())
	require.False(t, StateRevoked.Counts())
}

func TestNextChange(t *testing.T) {
	const ns = time.Nanosecond
	nb, na := t0, t0.Add(30*24*time.Hour)
	withGrace := &License{NotBefore: nb, NotAfter: na, Grace: time.Hour}
	noGrace := &License{NotBefore: nb, NotAfter: na}
	forever := &License{NotBefore: nb}

	f := func(l *License, now, want time.Time) {
		t.Helper()
		got := l.NextChange(now)
		require.Equal(t, want, got, "at %s", now.Format(time.RFC3339Nano))
		if want.IsZero() {
			return
		}
		// The state holds until just before the change, and changes at it.
		require.Equal(t, l.State(now, false), l.State(want.Add(-ns), false))
		require.NotEqual(t, l.State(now, false), l.State(want, false))
	}
	f(withGrace, nb.Add(-time.Hour), nb)
	f(withGrace, nb.Add(-ns), nb)
	f(withGrace, nb, na)
	f(withGrace, na.Add(-ns), na)
	f(withGrace, na, na.Add(time.Hour))
	f(withGrace, na.Add(time.Hour-ns), na.Add(time.Hour))
	f(withGrace, na.Add(time.Hour), time.Time{})
	f(noGrace, nb, na)
	f(noGrace, na.Add(-ns), na)
	f(noGrace, na, time.Time{})
	f(forever, nb.Add(-ns), nb)
	f(forever, nb, time.Time{})
	f(&License{}, t0, time.Time{})

	require.Equal(t, nb, NextChange([]*License{forever, nil, withGrace, noGrace}, nb.Add(-time.Hour)))
	require.Equal(t, na, NextChange([]*License{forever, withGrace, noGrace}, nb))
	require.Equal(t, na.Add(time.Hour), NextChange([]*License{forever, withGrace, noGrace}, na))
	require.True(t, NextChange([]*License{forever, noGrace}, na).IsZero())
	require.True(t, NextChange(nil, t0).IsZero())
}
