package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock returns the readings in order, then stays at the last.
func fakeClock(readings ...time.Duration) func() time.Duration {
	i := 0
	return func() time.Duration {
		r := readings[min(i, len(readings)-1)]
		i++
		return r
	}
}

func TestSpinCountsPauses(t *testing.T) {
	us := time.Microsecond
	// Gaps: 10 (not a pause), 20 (not: at the minimum), 21, 150, 300,
	// 2000 (over 1 ms), 5.
	clock := fakeClock(0, 10*us, 30*us, 51*us, 201*us, 501*us, 2501*us, 2506*us)
	got := spin(clock, 2506*us, nil)
	require.Equal(t, stallTally{
		spun: 2506 * us, stalled: (21 + 150 + 300 + 2000) * us,
		over100us: 3, over250us: 2, over1ms: 1, longest: 2000 * us,
	}, got)
}

func TestSpinStopsWhenDone(t *testing.T) {
	done := make(chan struct{})
	close(done)
	var n int
	clock := func() time.Duration { n++; return time.Duration(n) }
	got := spin(clock, time.Hour, done)
	require.Equal(t, stallTally{}, got, "a closed done ends it before its second reading")
	require.Equal(t, 1, n)
}

func TestSumStalls(t *testing.T) {
	ms := time.Millisecond
	s := sumStalls([]stallTally{
		{spun: 1000 * ms, stalled: 10 * ms, over100us: 4, over250us: 2, over1ms: 1, longest: 3 * ms},
		{spun: 990 * ms, stalled: 30 * ms, over100us: 6, over250us: 3, over1ms: 2, longest: 5 * ms},
	})
	require.Equal(t, Stalls{Seconds: 1, CPUs: 2, StalledFraction: 40.0 / 1990, Over100us: 10, Over250us: 5, Over1ms: 3, MaxUs: 5000}, s)
}

func TestMeasureStalls(t *testing.T) {
	s := MeasureStalls(context.Background(), 200*time.Millisecond)
	require.GreaterOrEqual(t, s.CPUs, 1)
	require.InDelta(t, 0.2, s.Seconds, 0.05)
	require.GreaterOrEqual(t, s.StalledFraction, 0.0)
	require.Less(t, s.StalledFraction, 1.0)
	require.LessOrEqual(t, s.Over1ms, s.Over250us)
	require.LessOrEqual(t, s.Over250us, s.Over100us)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	s = MeasureStalls(ctx, time.Hour)
	require.Less(t, time.Since(start), 5*time.Second, "a cancelled context ends it")
	require.Less(t, s.Seconds, 1.0)
}

func TestParseStatCPU(t *testing.T) {
	// Field 2 may hold spaces and parentheses; utime and stime are fields
	// 14 and 15, in 1/100 s.
	line := []byte("4242 (a (b) c) S 1 4242 4242 0 -1 4194560 2500 0 0 0 150 27 0 0 20 0 9 0 123 456 789\n")
	d, err := parseStatCPU(line)
	require.NoError(t, err)
	require.Equal(t, 1770*time.Millisecond, d)

	for _, bad := range []string{"", "4242 no parens", "1 (x) S 1 2 3", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 1 0"} {
		_, err := parseStatCPU([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestProcessCPU(t *testing.T) {
	self, err := processCPU(0)
	require.NoError(t, err)
	byPid, err := processCPU(os.Getpid())
	require.NoError(t, err)
	// Burn 100 ms of CPU (however long a busy machine takes to give it):
	// /proc, in 10 ms ticks, sees about as much.
	deadline := time.Now().Add(20 * time.Second)
	for {
		now, err := processCPU(0)
		require.NoError(t, err)
		if now-self >= 100*time.Millisecond {
			break
		}
		require.True(t, time.Now().Before(deadline), "100 ms of CPU not used in 20 s")
		for end := time.Now().Add(time.Millisecond); time.Now().Before(end); {
		}
	}
	byPid2, err := processCPU(os.Getpid())
	require.NoError(t, err)
	require.GreaterOrEqual(t, byPid2-byPid, 70*time.Millisecond, "/proc counts in 10 ms ticks")
	_, err = processCPU(1 << 30)
	require.Error(t, err)
}
