package bench

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRaiseProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(before)
	t.Setenv("GOMAXPROCS", "")

	restore := openLoopProcs()
	require.Equal(t, 3, runtime.GOMAXPROCS(0), "two more than before")
	restore()
	require.Equal(t, 1, runtime.GOMAXPROCS(0))

	// Overlapping runs: each raises from the value before the first; it
	// comes back only when the last one ends, whatever the order.
	a := openLoopProcs()
	b := raiseProcs(func(base int) int { return base + 4 })
	require.Equal(t, 5, runtime.GOMAXPROCS(0))
	c := openLoopProcs()
	require.Equal(t, 5, runtime.GOMAXPROCS(0), "never lowered while raised")
	a()
	a() // a second call does nothing
	require.Equal(t, 5, runtime.GOMAXPROCS(0))
	b()
	require.Equal(t, 5, runtime.GOMAXPROCS(0), "c still runs")
	c()
	require.Equal(t, 1, runtime.GOMAXPROCS(0))

	t.Setenv("GOMAXPROCS", "1") // the operator's choice wins
	restore = openLoopProcs()
	require.Equal(t, 1, runtime.GOMAXPROCS(0))
	restore()
	require.Equal(t, 1, runtime.GOMAXPROCS(0))
}

func TestMeasureStallsProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(before)
	t.Setenv("GOMAXPROCS", "")
	var s Stalls
	done := make(chan struct{})
	go func() {
		defer close(done)
		s = MeasureStalls(t.Context(), 300*time.Millisecond)
	}()
	// The spinners leave one P for everything else, this goroutine too.
	seen := map[int]bool{}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			seen[runtime.GOMAXPROCS(0)] = true
			time.Sleep(time.Millisecond)
		}
	}
	require.True(t, seen[runtime.NumCPU()+1], "GOMAXPROCS seen during the run: %v", seen)
	require.Equal(t, runtime.NumCPU(), s.CPUs, "a spinner per CPU")
	require.Equal(t, 1, runtime.GOMAXPROCS(0), "restored")
}
