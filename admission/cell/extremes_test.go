package cell

import (
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

func bargs(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, x := range s {
		out[i] = []byte(x)
	}
	return out
}

// TestParseArgs: what is accepted and every error, in the order
// redis-cell reports them (an integer that does not parse, then a zero
// rate), then the node's bounds.
func TestParseArgs(t *testing.T) {
	b := Bounds{MaxBurst: 100, MaxCount: 1000, MaxPeriod: 3600}
	ok := func(want Args, args ...string) {
		t.Helper()
		got, err := ParseArgs(bargs(args...), b)
		require.NoError(t, err)
		want.Key = []byte(args[0])
		require.Equal(t, want, got)
	}
	bad := func(want string, args ...string) {
		t.Helper()
		_, err := ParseArgs(bargs(args...), b)
		require.EqualError(t, err, want)
	}
	ok(Args{MaxBurst: 15, Count: 30, Period: 60, Quantity: 1}, "user123", "15", "30", "60")
	ok(Args{MaxBurst: 0, Count: 1, Period: 1, Quantity: 0}, "k", "0", "1", "1", "0")
	ok(Args{MaxBurst: 100, Count: 1000, Period: 3600, Quantity: math.MaxInt64}, "k", "+100", "1000", "3600", "9223372036854775807")
	ok(Args{MaxBurst: 0, Count: 1, Period: 1, Quantity: 1}, "k", "-0", "0001", "1")

	usage := "wrong number of arguments for 'cl.throttle' command (usage: CL.THROTTLE <key> <max_burst> <count per period> <period> [<quantity>])"
	bad(usage, "k", "1", "2")
	bad(usage, "k", "1", "2", "3", "4", "5")
	bad("key must be 1 to 256 bytes", "", "1", "2", "3")
	bad("key must be 1 to 256 bytes", string(make([]byte, 257)), "1", "2", "3")
	bad("Couldn't parse as integer: x", "k", "x", "0", "0")
	bad("Couldn't parse as integer: 1.5", "k", "1", "1.5", "1")
	bad("Couldn't parse as integer: ", "k", "1", "", "1")
	bad("Couldn't parse as integer: +", "k", "1", "1", "+")
	bad("Couldn't parse as integer:  1", "k", "1", "1", " 1")
	bad(`Couldn't parse as integer: \x00`, "k", "1", "1", "\x00")
	bad("Couldn't parse as integer: 9223372036854775808", "k", "1", "1", "1", "9223372036854775808")
	bad("Couldn't parse as integer: 99999999999999999999999", "k", "99999999999999999999999", "1", "1")
	bad("Zero rates are not supported", "k", "1", "0", "60")
	bad("Zero rates are not supported", "k", "1", "-5", "0")
	bad("max_burst must be between 0 and 100 (throttle.max_burst), got -1", "k", "-1", "1", "1")
	bad("max_burst must be between 0 and 100 (throttle.max_burst), got 101", "k", "101", "1", "1")
	bad("count must be between 1 and 1000 (throttle.max_count), got -3", "k", "1", "-3", "1")
	bad("count must be between 1 and 1000 (throttle.max_count), got 1001", "k", "1", "1001", "1")
	bad("period must be between 1 and 3600 seconds (throttle.max_period), got -9223372036854775808", "k", "1", "1", "-9223372036854775808")
	bad("period must be between 1 and 3600 seconds (throttle.max_period), got 3601", "k", "1", "1", "3601")
	bad("quantity must not be negative, got -1", "k", "1", "1", "1", "-1")
}

// TestNewRateExtremes: the smallest and largest rates, and what is
// refused rather than computed with sums past int64.
func TestNewRateExtremes(t *testing.T) {
	f := func(burst, count, period int64, want Rate, wantErr error) {
		t.Helper()
		got, err := NewRate(burst, count, period)
		require.Equal(t, wantErr, err, "%d %d %d", burst, count, period)
		require.Equal(t, want, got)
	}
	f(0, 1, 1, Rate{Emission: 1e9, Tolerance: 1e9, Limit: 1}, nil)
	f(0, 1_000_000, 1, Rate{Emission: 1000, Tolerance: 1000, Limit: 1}, nil)
	f(0, 3, 1, Rate{Emission: 333_333_333, Tolerance: 333_333_333, Limit: 1}, nil) // truncated
	f(1_000_000, 1, 86400, Rate{}, ErrSpan)                                        // 2.7 million years
	f(50_000, 1, 86400, Rate{Emission: 86400e9, Tolerance: 86400e9 * 50_001, Limit: 50_001}, nil)
	f(math.MaxInt64, 1, 1, Rate{}, ErrSpan)
	f(0, 1, math.MaxInt64, Rate{}, ErrSpan)
	f(0, 1, math.MaxInt64/int64(1e9), Rate{}, ErrSpan) // 292 years
	f(0, 2e9, 1, Rate{}, ErrZeroRate)                  // a period shorter than count ns: redis-cell's zero rate
	f(0, 0, 1, Rate{}, ErrZeroRate)
	f(0, 1, 0, Rate{}, ErrZeroRate)
	f(-1, 1, 1, Rate{}, ErrNegative)
	f(0, -1, 1, Rate{}, ErrNegative)
}

// TestDecideExtremes: quantities 0, 1 and the largest, at a limit of 1.
func TestDecideExtremes(t *testing.T) {
	r, err := NewRate(0, 1, 1) // one a second, no burst
	require.NoError(t, err)
	const now = int64(1e12)
	f := func(tat, q int64, wantTAT int64, want [5]int64) {
		t.Helper()
		got, d := Decide(now, tat, r, q)
		require.Equal(t, wantTAT, got)
		require.Equal(t, want, d.Reply(r).Ints(), "tat %d q %d", tat, q)
	}
	f(0, 0, now, [5]int64{0, 1, 1, -1, 0})             // a peek at a new key
	f(0, 1, now+1e9, [5]int64{0, 1, 0, -1, 1})         // one
	f(now+1e9, 1, now+1e9, [5]int64{1, 1, 0, 1, 1})    // the next at once
	f(0, 2, now, [5]int64{1, 1, 1, -1, 0})             // more than the limit: no retry helps
	f(0, math.MaxInt64, now, [5]int64{1, 1, 1, -1, 0}) // T × q saturates, limited
	f(now+1e9, math.MaxInt64, now+1e9, [5]int64{1, 1, 0, -1, 1})
	f(math.MaxInt64, 1, math.MaxInt64, [5]int64{1, 1, 0, 9223371036, 9223371037}) // a TAT at the end of time: retry then less T
}

// TestParseI64MatchesStrconv: the integers Rust's i64 parse accepts are
// those strconv.ParseInt accepts in base 10.
func TestParseI64MatchesStrconv(t *testing.T) {
	for _, s := range []string{"0", "-0", "+0", "+", "-", "", "00", "1_0", "0x10", " 1", "1 ", "9223372036854775807",
		"9223372036854775808", "-9223372036854775808", "-9223372036854775809", "+9223372036854775807", "١", "1e3"} {
		want, err := strconv.ParseInt(s, 10, 64)
		got, ok := parseI64([]byte(s))
		require.Equal(t, err == nil, ok, "%q", s)
		require.Equal(t, want*int64(b2i(ok)), got, "%q", s)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestTableFull: a table of 3 keys refuses a fourth new key while the
// three are held, goes on deciding for them, takes a new key once one
// has expired (swept when the new key needs room), and counts its keys.
func TestTableFull(t *testing.T) {
	r, err := NewRate(1, 1, 10) // 2 deep, one per 10 s: a key held 10-20 s
	require.NoError(t, err)
	tab := NewTable(3)
	key := func(i int) admission.Key { return admission.KeyOf([]byte{'k', byte(i)}) }
	now := int64(1e12)
	before := Held()
	for i := range 3 {
		got, err := tab.Throttle(now, key(i), r, 1)
		require.NoError(t, err)
		require.Equal(t, [5]int64{0, 2, 1, -1, 10}, got.Ints())
	}
	require.Equal(t, int64(3), tab.Len())
	require.Equal(t, before+3, Held())
	_, err = tab.Throttle(now, key(3), r, 1)
	require.ErrorIs(t, err, ErrFull)
	got, err := tab.Throttle(now, key(3), r, 0)
	require.NoError(t, err, "a peek keeps nothing: answered")
	require.Equal(t, [5]int64{0, 2, 2, -1, 0}, got.Ints())
	got, err = tab.Throttle(now, key(3), r, 3)
	require.NoError(t, err, "limited keeps nothing: answered")
	require.Equal(t, [5]int64{1, 2, 2, -1, 0}, got.Ints())
	got, err = tab.Throttle(now, key(0), r, 1)
	require.NoError(t, err, "a key held still decides")
	require.Equal(t, [5]int64{0, 2, 0, -1, 20}, got.Ints())

	now += 10e9 // keys 1 and 2 are full again; key 0 is not
	got, err = tab.Throttle(now, key(3), r, 1)
	require.NoError(t, err, "expired keys made room (a sweep for the new key)")
	require.Equal(t, [5]int64{0, 2, 1, -1, 10}, got.Ints())
	require.Equal(t, int64(2), tab.Len(), "keys 0 and 3")
	tab.Sweep(now + 20e9)
	require.Equal(t, int64(0), tab.Len(), "every bucket full again: nothing held")
	require.Equal(t, before, Held())
}
