package cluster

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// starved looks at the licences whose bucket the engine says was taken
// from: a licence whose bucket spent half of what the plan lent it calls
// for an early plan from that very attempt on; an untouched licence is
// never looked at; a bucket full again and untouched since the last plan
// is let go; a licence loaded after the plan is watched from the next plan;
// a licence removed is let go.
func TestStarvedWatchesTheSpentBuckets(t *testing.T) {
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
	lent, watched := c.planner.Watched("voice")
	require.True(t, watched)
	require.Greater(t, lent, 2.0)
	require.False(t, c.starved())
	require.Empty(t, c.spending, "nothing spent")

	voice := eng.Service("voice")
	admitted := 0
	for {
		_, avail := voice.Bucket(clk)
		require.Equal(t, float64(2*avail) <= lent, c.starved(), "after %d attempts, %d left of %v lent", admitted, avail, lent)
		if float64(2*avail) <= lent {
			break
		}
		require.True(t, eng.Admit(clk.Now(), []byte("voice"), nil, nil, admission.Normal).Admitted())
		admitted++
		require.Less(t, admitted, 1000)
	}
	require.Len(t, c.spending, 1, "only the spent licence is looked at")
	require.Contains(t, c.spending, voice)
	_, idle := eng.Service("idle").Bucket(clk)
	require.Greater(t, float64(2*idle), lent, "idle untouched")

	// Refilled, it is still looked at until a plan has passed since it
	// was last spent; then it is let go, and taken up at its next attempt.
	clk.Advance(10 * time.Second)
	require.False(t, c.starved())
	require.Len(t, c.spending, 1, "spent since the last plan")
	c.plan(time.Now(), true)
	require.False(t, c.starved())
	require.Empty(t, c.spending, "full and untouched since the last plan")
	require.True(t, eng.Admit(clk.Now(), []byte("voice"), nil, nil, admission.Normal).Admitted())
	require.False(t, c.starved())
	require.Len(t, c.spending, 1)

	// A licence loaded since the plan: watched from the next one.
	require.NoError(t, shares.SetLimits("video", licence))
	video := eng.Service("video")
	for range 100 {
		eng.Admit(clk.Now(), []byte("video"), nil, nil, admission.Normal)
	}
	_, avail := video.Bucket(clk)
	require.Zero(t, avail)
	require.False(t, c.starved(), "not planned yet")
	c.plan(time.Now(), true)
	require.True(t, c.starved(), "planned: spent")

	// The licence removed: its bucket closes and nothing takes from it
	// again; it is let go, not starved at every check.
	require.NoError(t, shares.SetLimits("video", admission.Limits{}))
	depth, _ := video.Bucket(clk)
	require.Zero(t, depth)
	require.False(t, c.starved())
	require.NotContains(t, c.spending, video)
}
