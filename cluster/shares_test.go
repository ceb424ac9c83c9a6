package cluster

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
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
