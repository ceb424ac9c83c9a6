package admission

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every limit at the end of its range admits: a saturated sum of licences
// (math.MaxInt64) is a limit no one reaches, never a negative one. Before
// limits saturated, 9223372036854775807 sessions refused every PRIORITY
// high call (its headroom wrapped) and a percent overage of a pool that
// large refused every charge.
func TestLimitsAtTheEndOfTheirRange(t *testing.T) {
	const max = math.MaxInt64
	type step struct {
		do   func(e *Engine, now int64, i int) Decision
		want Reason
		left int64
	}
	call := func(p Priority) func(e *Engine, now int64, i int) Decision {
		return func(e *Engine, now int64, i int) Decision {
			return e.Admit(now, svc, []byte{'c', byte(i)}, nil, p)
		}
	}
	register := func(e *Engine, now int64, i int) Decision {
		return e.Register(now, svc, []byte{'s', byte(i)}, 0)
	}
	consume := func(units int64) func(e *Engine, now int64, i int) Decision {
		return func(e *Engine, now int64, i int) Decision { return e.Consume(now, svc, acct, units, nil) }
	}
	attempt := func(e *Engine, now int64, i int) Decision { return e.Admit(now, svc, nil, acct, Normal) }
	f := func(name string, l Limits, steps ...step) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			e, clk := newTestEngine(t, l)
			for i, s := range steps {
				d := s.do(e, clk.Now(), i)
				require.Equal(t, s.want, d.Reason, "step %d: %+v", i, d)
				require.Equal(t, s.left, d.Remaining, "step %d: %+v", i, d)
			}
			st := e.Service("voice").Stats()
			for _, v := range []int64{st.Limits.Sessions, st.Limits.Subscribers, st.Limits.Tokens, st.TokensUsed, st.Overage} {
				require.GreaterOrEqual(t, v, int64(Unlimited), "%+v", st)
			}
		})
	}
	base := capsOnly(1000)
	with := func(mod func(*Limits)) Limits { l := base; mod(&l); return l }

	f("sessions 0", with(func(l *Limits) { l.Sessions = 0 }), step{call(Normal), SESSIONS, 0}, step{call(High), SESSIONS, 0})
	f("sessions 1", with(func(l *Limits) { l.Sessions = 1 }), step{call(Normal), OK, 0}, step{call(Normal), SESSIONS, 0})
	f("sessions max", with(func(l *Limits) { l.Sessions = max }),
		step{call(Normal), OK, 99}, step{call(High), OK, 98}, step{call(Emergency), OK, -1}) // the CAPS bucket's 100 limit remaining
	f("subscribers 0", with(func(l *Limits) { l.Subscribers = 0 }), step{register, SUBSCRIBERS, 0})
	f("subscribers 1", with(func(l *Limits) { l.Subscribers = 1 }), step{register, OK, 0}, step{register, SUBSCRIBERS, 0})
	f("subscribers max", with(func(l *Limits) { l.Subscribers = max }), step{register, OK, maxRemaining}, step{register, OK, maxRemaining})
	f("tokens 0", with(func(l *Limits) { l.Tokens = 0 }), step{consume(1), TOKENS, 0}, step{consume(0), OK, 0})
	f("tokens 1", with(func(l *Limits) { l.Tokens = 1 }), step{consume(1), OK, 0}, step{consume(1), TOKENS, 0})
	f("tokens max", with(func(l *Limits) { l.Tokens = max }),
		step{consume(max - 1), OK, 1}, step{consume(1), OK, 0}, step{consume(1), TOKENS, 0})
	f("tokens max, overage percent:1000", with(func(l *Limits) { l.Tokens, l.Overage = max, Overage{Kind: OveragePercent, Percent: 1000} }),
		step{consume(max), OK, 0}, step{consume(max), OK, 0}, step{consume(1), OK, 0})
	f("tokens max, overage unlimited", with(func(l *Limits) { l.Tokens, l.Overage = max, Overage{Kind: OverageUnlimited} }),
		step{consume(max), OK, 0}, step{consume(max), OK, 0})
	f("tokens_per_attempt 1", with(func(l *Limits) { l.Tokens, l.TokensPerAttempt = 2, 1 }),
		step{attempt, OK, 1}, step{attempt, OK, 0}, step{attempt, TOKENS, 0})
	f("tokens_per_attempt max", with(func(l *Limits) { l.Tokens, l.TokensPerAttempt = max, max }),
		step{attempt, OK, 0}, step{attempt, TOKENS, 0})
	f("tokens_per_attempt max, pool unlimited", with(func(l *Limits) { l.TokensPerAttempt = max }),
		step{attempt, OK, 99}, step{attempt, OK, 98})

	// Charges past the end of the range saturate the counters instead of
	// wrapping them negative.
	e, clk := newTestEngine(t, with(func(l *Limits) { l.TokensPerMinute = max }))
	now := clk.Now()
	require.NoError(t, e.SetAccount("voice", "acme", 0, Overage{Kind: OverageUnlimited}))
	for i := range 3 {
		require.True(t, e.Admit(now, svc, []byte{'r', byte(i)}, nil, Normal).Admitted())
		require.True(t, e.Release(now, svc, []byte{'r', byte(i)}, MaxReleaseSeconds))
	}
	require.True(t, e.Consume(now, svc, acct, max, nil).Admitted())
	st := e.Service("voice").Stats()
	require.Equal(t, int64(max), st.TokensUsed)
	require.Equal(t, int64(max), st.Overage)
	require.Equal(t, int64(-1), st.TokensLeft)

	// Allocations to accounts may not pass the pool, even where their sum
	// passes math.MaxInt64.
	e, _ = newTestEngine(t, with(func(l *Limits) { l.Tokens = max }))
	require.NoError(t, e.SetAccount("voice", "a", max-1, Overage{}))
	require.EqualError(t, e.SetAccount("voice", "b", max, Overage{}),
		`cannot allocate 9223372036854775807 tokens to account "b": the service's pool has 9223372036854775807, 9223372036854775806 already allocated to other accounts`)
	require.NoError(t, e.SetAccount("voice", "b", 1, Overage{}))
	require.Equal(t, int64(0), e.Service("voice").Pools()[0].Size)
}

// Account names follow the one rule wherever they enter, allocations from
// members and from the state file included.
func TestSetAccountRefusesBadNames(t *testing.T) {
	e, _ := newTestEngine(t, capsOnly(10))
	for _, name := range []string{"", ".", "..", "a/b", "a b", string(make([]byte, 65))} {
		require.ErrorContains(t, e.SetAccount("voice", name, 1, Overage{}), "not a valid account name", "%q", name)
	}
	require.NoError(t, e.SetAccount("voice", "...", 1, Overage{}))
	require.Len(t, e.Service("voice").Pools(), 2)
}

// A configuration out of range is refused by name, not clamped: 0 and 100
// percent of headroom are the ends, MaxCAPS 0 is no limit.
func TestConfigRangesAreNotClamped(t *testing.T) {
	for _, ok := range []Config{{HighHeadroomPercent: 0}, {HighHeadroomPercent: 100}, {MaxCAPS: 0}, {MaxCAPS: 1},
		{MaxCAPS: math.MaxFloat64}} {
		require.NoError(t, ok.Validate(), "%+v", ok)
		require.NotNil(t, NewEngine(ok))
	}
	for bad, msg := range map[*Config]string{
		{HighHeadroomPercent: -1}:          "HighHeadroomPercent must be between 0 and 100, got -1",
		{HighHeadroomPercent: 101}:         "HighHeadroomPercent must be between 0 and 100, got 101",
		{MaxCAPS: -1}:                      "MaxCAPS must be a finite number >= 0, got -1",
		{MaxCAPS: math.Inf(1)}:             "MaxCAPS must be a finite number >= 0, got +Inf",
		{MaxCAPS: math.NaN()}:              "MaxCAPS must be a finite number >= 0, got NaN",
		{HighHeadroomPercent: math.MaxInt}: "HighHeadroomPercent must be between 0 and 100, got 9223372036854775807",
	} {
		require.EqualError(t, bad.Validate(), msg)
		require.PanicsWithValue(t, "admission.NewEngine: "+msg, func() { NewEngine(*bad) })
	}
}
