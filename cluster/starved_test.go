package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// starved watches the buckets the last plan named, by pointer: a licence
// whose bucket spent half of what the plan lent it calls for an early plan
// from that very attempt on, an untouched licence does not, and a licence
// loaded after the plan is watched from the next plan.
func TestStarvedWatchesThePlannedBuckets(t *testing.T) {
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	eng := admission.NewEngine(cfg)
	shares := NewShares(eng)
	c, err := New(Config{NodeName: "a", BindAddr: freeAddr(t), Engine: eng, Shares: shares, Licences: noLicences{},
		Log: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.ml.Shutdown() })
	licence := admission.Limits{Licensed: true, CAPS: 100, Sessions: admission.Unlimited, Subscribers: admission.Unlimited,
		Tokens: admission.Unlimited}
	require.NoError(t, shares.SetLimits("voice", licence))
	require.NoError(t, shares.SetLimits("idle", licence))
	c.plan(time.Now(), true)
	require.Len(t, c.watch, 2)
	lent, watched := c.planner.Watched("voice")
	require.True(t, watched)
	require.Greater(t, lent, 2.0)
	require.False(t, c.starved())

	voice := eng.Service("voice")
	admitted := 0
	for {
		_, avail := voice.Bucket(clk.Now())
		require.Equal(t, float64(2*avail) <= lent, c.starved(), "after %d attempts, %d left of %v lent", admitted, avail, lent)
		if float64(2*avail) <= lent {
			break
		}
		require.True(t, eng.Admit(clk.Now(), []byte("voice"), nil, nil, admission.Normal).Admitted())
		admitted++
		require.Less(t, admitted, 1000)
	}
	_, idle := eng.Service("idle").Bucket(clk.Now())
	require.Greater(t, float64(2*idle), lent, "idle untouched")

	// A licence loaded since the plan: watched from the next one.
	require.NoError(t, shares.SetLimits("video", licence))
	eng.Service("video")
	c.plan(time.Now(), true)
	require.Len(t, c.watch, 3)
}
