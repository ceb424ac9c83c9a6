package cell

import (
	"fmt"
	"math"
)

// Bounds are what a node accepts of CL.THROTTLE's arguments (config
// section throttle), checked before anything is decided or kept.
type Bounds struct {
	// MaxBurst bounds max_burst (0..MaxBurst).
	MaxBurst int64
	// MaxCount bounds count (1..MaxCount); at most MaxCountLimit.
	MaxCount int64
	// MaxPeriod bounds period, in seconds (1..MaxPeriod).
	MaxPeriod int64
}

// MaxCountLimit is the largest Bounds.MaxCount: a million actions a
// second at the shortest period (1 s) is an emission interval of 1 µs,
// the unit redis-cell computes remaining in (a shorter one would divide by
// zero there).
const MaxCountLimit = 1_000_000

// DefaultBounds are the bounds of a node with nothing configured:
// max_burst up to a million (a bucket as deep as a busy API's hour),
// count up to MaxCountLimit, period up to a day (redis-cell's own
// examples run from seconds to a day; a key is held at most as long as
// its bucket takes to refill).
func DefaultBounds() Bounds {
	return Bounds{MaxBurst: 1_000_000, MaxCount: MaxCountLimit, MaxPeriod: 86400}
}

// MaxKeyLen bounds a key: 1 to 256 bytes, any bytes (keys are kept as a
// 128-bit hash, so its length costs nothing once parsed).
const MaxKeyLen = 256

// Args are a CL.THROTTLE's parsed arguments.
type Args struct {
	Key      []byte // valid as long as the arguments it was parsed from
	MaxBurst int64
	Count    int64
	Period   int64 // seconds
	Quantity int64 // 1 when not given
}

// ParseArgs parses CL.THROTTLE's arguments after the command name: key
// max_burst count period [quantity]. Integers are parsed as redis-cell
// parses them (Rust's i64: an optional sign, then decimal digits); its
// error for one that is not ("Couldn't parse as integer: x") comes first,
// then its error for a zero rate (ErrZeroRate, from NewRate), then the
// bounds. It allocates only to report an error.
func ParseArgs(args [][]byte, b Bounds) (Args, error) {
	if len(args) != 4 && len(args) != 5 {
		return Args{}, errUsage
	}
	a := Args{Key: args[0], Quantity: 1}
	if len(a.Key) == 0 || len(a.Key) > MaxKeyLen {
		return Args{}, errKeyLen
	}
	dst := [4]*int64{&a.MaxBurst, &a.Count, &a.Period, &a.Quantity}
	for i, arg := range args[1:] {
		v, ok := parseI64(arg)
		if !ok {
			return Args{}, fmt.Errorf("Couldn't parse as integer: %s", printable(arg))
		}
		*dst[i] = v
	}
	switch {
	case a.Count == 0 || a.Period == 0:
		return Args{}, ErrZeroRate
	case a.MaxBurst < 0 || a.MaxBurst > b.MaxBurst:
		return Args{}, fmt.Errorf("max_burst must be between 0 and %d (throttle.max_burst), got %d", b.MaxBurst, a.MaxBurst)
	case a.Count < 1 || a.Count > b.MaxCount:
		return Args{}, fmt.Errorf("count must be between 1 and %d (throttle.max_count), got %d", b.MaxCount, a.Count)
	case a.Period < 1 || a.Period > b.MaxPeriod:
		return Args{}, fmt.Errorf("period must be between 1 and %d seconds (throttle.max_period), got %d", b.MaxPeriod, a.Period)
	case a.Quantity < 0:
		return Args{}, fmt.Errorf("quantity must not be negative, got %d", a.Quantity)
	}
	return a, nil
}

// Errors of ParseArgs that need no formatting.
var (
	errUsage  = fmt.Errorf("wrong number of arguments for 'cl.throttle' command (usage: CL.THROTTLE <key> <max_burst> <count per period> <period> [<quantity>])")
	errKeyLen = fmt.Errorf("key must be 1 to %d bytes", MaxKeyLen)
)

// parseI64 parses what Rust's i64::from_str accepts: an optional + or -,
// then one or more decimal digits, within int64.
func parseI64(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (math.MaxInt64+1)/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
		if v > math.MaxInt64+1 {
			return 0, false
		}
	}
	switch {
	case neg:
		return int64(-v), true // -(2^63) wraps to itself: MinInt64
	case v > math.MaxInt64:
		return 0, false
	}
	return int64(v), true
}

// printable renders a client's argument for an error message: at most 64
// bytes, control and non-ASCII bytes as \xNN.
func printable(b []byte) string {
	const most = 64
	out := make([]byte, 0, min(len(b), most)+3)
	for i, c := range b {
		if i == most {
			return string(append(out, "..."...))
		}
		if c < 0x20 || c >= 0x7f {
			out = fmt.Appendf(out, `\x%02x`, c)
			continue
		}
		out = append(out, c)
	}
	return string(out)
}
