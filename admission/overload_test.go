package admission

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// feedbackAt is the feedback of voice (TRUNK key when key is not "") at
// the clock's instant.
func feedbackAt(t *testing.T, e *Engine, clk *FakeClock, key string) Feedback {
	t.Helper()
	var trunk []byte
	if key != "" {
		trunk = []byte(key)
	}
	f, ok := e.Feedback(clk.Now(), svc, trunk)
	require.True(t, ok)
	return f
}

// A scope is overloaded for OverloadWindow after a counted CAPS refusal,
// and only then; the rate is its CAPS, rounded up.
func TestFeedbackWindow(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(10))
	f := feedbackAt(t, e, clk, "")
	require.Equal(t, Feedback{Rate: 10, NodeRate: 10}, f, "nothing refused yet")
	require.Zero(t, f.Validity())

	ok, _ := admitted(20, func(int) Decision { return e.Admit(clk.Now(), svc, nil, nil, Normal) })
	require.Less(t, ok, 20)
	f = feedbackAt(t, e, clk, "")
	require.Equal(t, Feedback{Rate: 10, NodeRate: 10, Overloaded: true}, f)
	require.Equal(t, 2*time.Second, f.Validity())

	clk.Advance(OverloadWindow - time.Nanosecond)
	require.True(t, feedbackAt(t, e, clk, "").Overloaded, "still within the window")
	clk.Advance(time.Nanosecond)
	require.False(t, feedbackAt(t, e, clk, "").Overloaded, "a window after the last refusal")

	// Admitted attempts do not make it overloaded, however many.
	clk.Advance(10 * time.Second)
	ok, _ = admitted(5, func(int) Decision { return e.Admit(clk.Now(), svc, nil, nil, Normal) })
	require.Equal(t, 5, ok)
	require.False(t, feedbackAt(t, e, clk, "").Overloaded)

	_, known := e.Feedback(clk.Now(), []byte("nosuch"), nil)
	require.False(t, known)
}

// A spillable refusal is not the scope's until it is counted: spilled and
// admitted elsewhere (SpilledOut) it never is; refused there too
// (Refused), it is, at the engine's clock.
func TestFeedbackSpill(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1))
	now := clk.Now()
	require.Equal(t, OK, e.AdmitSpillable(now, svc, nil, nil, Normal).Reason)
	require.Equal(t, CAPS, e.AdmitSpillable(now, svc, nil, nil, Normal).Reason)
	e.SpilledOut(svc, nil)
	require.False(t, feedbackAt(t, e, clk, "").Overloaded, "admitted by another member")
	clk.Advance(time.Millisecond)
	e.Refused(svc, nil, CAPS)
	require.True(t, feedbackAt(t, e, clk, "").Overloaded)
	clk.Advance(OverloadWindow)
	require.False(t, feedbackAt(t, e, clk, "").Overloaded)
}

// A key with limits: the smaller rate of the key's and the licence's, and
// overloaded by either's refusals; a key without limits is the licence.
func TestFeedbackTrunk(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(100))
	setTrunk(t, e, "a", trunkLimits(10, 5, Unlimited))
	setTrunk(t, e, "s", trunkLimits(Unlimited, 0, 3)) // sessions only
	require.Equal(t, Feedback{Rate: 10, NodeRate: 10, Trunk: true}, feedbackAt(t, e, clk, "a"))
	require.Equal(t, Feedback{Rate: 100, NodeRate: 100, Trunk: true}, feedbackAt(t, e, clk, "s"))
	require.Equal(t, Feedback{Rate: 100, NodeRate: 100}, feedbackAt(t, e, clk, "nokey"))

	ok, reasons := admitted(10, func(int) Decision { return e.AdmitTrunk(clk.Now(), svc, nil, nil, []byte("a"), Normal) })
	require.Equal(t, 5, ok)
	require.Equal(t, 5, reasons[TRUNK_CAPS])
	require.True(t, feedbackAt(t, e, clk, "a").Overloaded, "TRUNK_CAPS")
	require.False(t, feedbackAt(t, e, clk, "").Overloaded, "the licence refused nothing")
	require.False(t, feedbackAt(t, e, clk, "s").Overloaded)

	// The licence's refusals overload every key under it.
	clk.Advance(OverloadWindow)
	admitted(200, func(int) Decision { return e.AdmitTrunk(clk.Now(), svc, nil, nil, []byte("s"), Normal) })
	for _, key := range []string{"", "a", "s", "nokey"} {
		require.True(t, feedbackAt(t, e, clk, key).Overloaded, "key %q", key)
	}

	// A key's limits taken away: the licence's scope again.
	setTrunk(t, e, "a", Limits{})
	require.Equal(t, Feedback{Rate: 100, NodeRate: 100, Overloaded: true}, feedbackAt(t, e, clk, "a"))
}

// In a farm the rate is the farm's (LicensedCAPS), the node's part beside.
func TestFeedbackFarm(t *testing.T) {
	l := capsOnly(33.4)
	l.LicensedCAPS = 100
	e, clk := newTestEngine(t, l)
	tl := trunkLimits(20.2, 10, Unlimited)
	tl.LicensedCAPS = 60
	setTrunk(t, e, "a", tl)
	require.Equal(t, Feedback{Rate: 100, NodeRate: 34}, feedbackAt(t, e, clk, ""))
	require.Equal(t, Feedback{Rate: 60, NodeRate: 21, Trunk: true}, feedbackAt(t, e, clk, "a"))
}

// Extremes: CAPS 0 (nothing admitted: oc 0, overloaded by its refusals),
// unlimited (-1, never overloaded), very large (bounded), no licence.
func TestFeedbackExtremes(t *testing.T) {
	f := func(l Limits, want Feedback) {
		t.Helper()
		e, clk := newTestEngine(t, l)
		e.Admit(clk.Now(), svc, nil, nil, Normal)
		e.Admit(clk.Now(), svc, nil, nil, Normal)
		require.Equal(t, want, feedbackAt(t, e, clk, ""))
	}
	f(capsOnly(0), Feedback{Rate: 0, NodeRate: 0, Overloaded: true})
	f(capsOnly(Unlimited), Feedback{Rate: -1, NodeRate: -1})
	f(capsOnly(0.5), Feedback{Rate: 1, NodeRate: 1, Overloaded: true})
	f(capsOnly(1e18), Feedback{Rate: MaxFeedbackRate, NodeRate: MaxFeedbackRate})
	f(capsOnly(math.MaxInt32), Feedback{Rate: MaxFeedbackRate, NodeRate: MaxFeedbackRate})
	f(capsOnly(math.MaxInt32-1), Feedback{Rate: MaxFeedbackRate - 1, NodeRate: MaxFeedbackRate - 1})
	f(capsOnly(math.Inf(1)), Feedback{Rate: MaxFeedbackRate, NodeRate: MaxFeedbackRate})
	f(Limits{}, Feedback{}) // no licence: refused UNLICENSED, not overloaded

	// An unlimited licence never reports overload, even right after its
	// limited predecessor refused.
	e, clk := newTestEngine(t, capsOnly(0))
	e.Admit(clk.Now(), svc, nil, nil, Normal)
	require.True(t, feedbackAt(t, e, clk, "").Overloaded)
	require.NoError(t, e.SetLimits("voice", capsOnly(Unlimited)))
	require.Equal(t, Feedback{Rate: -1, NodeRate: -1}, feedbackAt(t, e, clk, ""))
}

// Reading the feedback allocates nothing.
func TestFeedbackAllocs(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1))
	setTrunk(t, e, "a", trunkLimits(1, 1, Unlimited))
	trunk := []byte("a")
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		e.AdmitTrunk(clk.Now(), svc, nil, nil, trunk, Normal)
		_, _ = e.Feedback(clk.Now(), svc, trunk)
	}))
}
