package cell

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// TestRedisCellTranscript replays redis-cell's own test of its limiter
// (src/cell/mod.rs, it_rate_limits: limit 5, one a second, instants from
// a start) with the durations in nanoseconds, and the same through a
// Table, whose replies are in seconds.
func TestRedisCellTranscript(t *testing.T) {
	r, err := NewRate(4, 1, 1) // max_burst 4, 1 per 1 s
	require.NoError(t, err)
	require.Equal(t, Rate{Emission: 1e9, Tolerance: 5e9, Limit: 5}, r)
	const start = int64(1000 * time.Hour)
	ms := func(n int64) int64 { return n * 1e6 }
	s := func(n int64) int64 { return n * 1e9 }
	var tat int64 // none held
	tab := NewTable(10)
	key := admission.KeyOf([]byte("foo"))
	f := func(num int, at, quantity, remaining, resetAfter, retryAfter int64, limited bool) {
		t.Helper()
		now := start + at
		var d Decision
		tat, d = Decide(now, tat, r, quantity)
		require.Equal(t, Decision{Limited: limited, Remaining: remaining, ResetAfter: resetAfter, RetryAfter: retryAfter}, d, "case %d", num)
		got, err := tab.Throttle(now, key, r, quantity)
		require.NoError(t, err)
		require.Equal(t, d.Reply(r), got, "case %d through a table", num)
	}
	// You can never make a request larger than the maximum.
	f(0, 0, 6, 5, 0, s(-1), true)
	// Rate limit normal requests appropriately.
	f(1, 0, 1, 4, s(1), s(-1), false)
	f(2, 0, 1, 3, s(2), s(-1), false)
	f(3, 0, 1, 2, s(3), s(-1), false)
	f(4, 0, 1, 1, s(4), s(-1), false)
	f(5, 0, 1, 0, s(5), s(-1), false)
	f(6, 0, 1, 0, s(5), s(1), true)
	f(7, ms(3000), 1, 2, ms(3000), s(-1), false)
	f(8, ms(3100), 1, 1, ms(3900), s(-1), false)
	f(9, ms(4000), 1, 1, ms(4000), s(-1), false)
	f(10, ms(8000), 1, 4, ms(1000), s(-1), false)
	f(11, ms(9500), 1, 4, ms(1000), s(-1), false)
	// Zero-volume request just peeks at the state.
	f(12, ms(9500), 0, 4, s(1), s(-1), false)
	// High-volume request uses up more of the limit.
	f(13, ms(9500), 2, 2, s(3), s(-1), false)
	// Large requests cannot exceed limits.
	f(14, ms(9500), 5, 2, s(3), s(3), true)
}

// TestREADMEExample: redis-cell's README, CL.THROTTLE user123 15 30 60
// on a new key: 0 16 15 -1 2.
func TestREADMEExample(t *testing.T) {
	r, err := NewRate(15, 30, 60)
	require.NoError(t, err)
	got, err := NewTable(1).Throttle(1, admission.KeyOf([]byte("user123")), r, 1)
	require.NoError(t, err)
	require.Equal(t, [5]int64{0, 16, 15, -1, 2}, got.Ints())
}

// TestSeconds: redis-cell rounds a duration up to the next second when a
// millisecond or more of a second remains.
func TestSeconds(t *testing.T) {
	f := func(ns, want int64) {
		t.Helper()
		require.Equal(t, want, seconds(ns), "%d ns", ns)
	}
	f(-1e9, -1)
	f(0, 0)
	f(999_999, 0)
	f(1e6, 1)
	f(1e9, 1)
	f(2e9+999_999, 2)
	f(2e9+1e6, 3)
	f(59_999_999_999, 60)
}
