package bench

import (
	"context"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
)

func TestByConn(t *testing.T) {
	type call struct{ conn, first, n int64 }
	f := func(from, to, conns int64, want ...call) {
		t.Helper()
		var got []call
		require.NoError(t, byConn(from, to, conns, func(conn, first, n int64) error {
			got = append(got, call{conn, first, n})
			return nil
		}))
		require.Equal(t, want, got, "[%d, %d) over %d", from, to, conns)
	}
	f(0, 0, 4)
	f(5, 6, 4, call{1, 5, 1})
	f(3, 6, 4, call{3, 3, 1}, call{0, 4, 1}, call{1, 5, 1})
	// 11 due on 4 connections: 3, 3, 3 and 2 in one write each.
	f(2, 13, 4, call{2, 2, 3}, call{3, 3, 3}, call{0, 4, 3}, call{1, 5, 2})
	// Every request exactly once, on its connection.
	for _, c := range []int64{1, 3, 50} {
		for _, span := range []int64{1, 2, 49, 50, 51, 200} {
			seen := map[int64]bool{}
			require.NoError(t, byConn(7, 7+span, c, func(conn, first, n int64) error {
				for k := range n {
					j := first + k*c
					require.Equal(t, conn, j%c)
					require.False(t, seen[j])
					seen[j] = true
				}
				return nil
			}))
			require.Len(t, seen, int(span))
		}
	}
}

func TestPace(t *testing.T) {
	// Started 20 ms ago at 10,000/s: the first wake sends the 201 due at
	// once, later ones what fell due since; none early, each once.
	s := schedule{interval: float64(100 * time.Microsecond), total: 600}
	start := time.Now().Add(-20 * time.Millisecond)
	next := int64(0)
	calls := 0
	lag, err := pace(context.Background(), start, &s, func(from, to int64) error {
		require.Equal(t, next, from)
		require.Greater(t, to, from)
		now := time.Since(start)
		require.LessOrEqual(t, s.at(to-1), now, "request %d sent before its time", to-1)
		next = to
		calls++
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, s.total, next)
	require.GreaterOrEqual(t, lag, 20*time.Millisecond)
	require.Less(t, calls, 600)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = pace(ctx, time.Now(), &s, func(from, to int64) error { return nil })
	require.ErrorIs(t, err, context.Canceled)
}

func TestLatency(t *testing.T) {
	l := NewLimit("127.0.0.1:0")
	require.NoError(t, l.Start())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, l.Stop(ctx))
	}()
	var mu sync.Mutex
	var last float64
	procs := map[int]bool{}
	before := runtime.GOMAXPROCS(0)
	res, err := Latency(context.Background(), Load{Addr: l.Addr(), Frame: client.AppendCommand(nil, "ADMIT", "bench"),
		Conns: 7, Rate: 4000, Duration: 300 * time.Millisecond,
		Progress: func(done float64) { mu.Lock(); last = done; procs[runtime.GOMAXPROCS(0)] = true; mu.Unlock() }})
	require.NoError(t, err)
	require.EqualValues(t, 1200, res.Requests)
	require.EqualValues(t, 1200, res.Admitted)
	require.EqualValues(t, 1200, res.Latency.Count())
	require.EqualValues(t, 1200, res.SendLag.Count())
	require.Positive(t, res.Latency.Quantile(0.5))
	// A reply cannot come before its request was sent.
	require.GreaterOrEqual(t, res.Latency.Max(), res.SendLag.Max())
	require.InDelta(t, 4000, res.OpsPerSec, 1000)
	mu.Lock()
	require.Equal(t, 1.0, last)
	if os.Getenv("GOMAXPROCS") == "" {
		require.Equal(t, map[int]bool{before + 2: true}, procs, "two more Ps during the run")
	}
	mu.Unlock()
	require.Equal(t, before, runtime.GOMAXPROCS(0), "restored after the run")
}

func TestLatencyServerGone(t *testing.T) {
	l := NewLimit("127.0.0.1:0")
	require.NoError(t, l.Start())
	go func() {
		time.Sleep(150 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Stop(ctx)
	}()
	done := make(chan error, 1)
	go func() {
		_, err := Latency(context.Background(), Load{Addr: l.Addr(), Frame: client.AppendCommand(nil, "ADMIT", "bench"),
			Conns: 3, Rate: 2000, Duration: 2 * time.Second})
		done <- err
	}()
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Latency does not end when the server goes away")
	}
}
