package journal_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
)

func dial(t *testing.T, n *farm.Node) *client.Conn {
	t.Helper()
	c, err := client.Dial(context.Background(), n.RESPAddr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func quota(t *testing.T, c *client.Conn, field string) int64 {
	t.Helper()
	q, err := c.Quota(context.Background(), "demo")
	require.NoError(t, err)
	v, err := strconv.ParseInt(q[field], 10, 64)
	require.NoError(t, err, "QUOTA demo %s = %q", field, q[field])
	return v
}

// TestKill9KeepsSessionsAndRegistrations runs the SPEC's guarantee on a
// real process: open sessions and registrations are back after kill -9.
func TestKill9KeepsSessionsAndRegistrations(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs capsgate")
	}
	ctx := context.Background()
	n := farm.NewDev(t)
	c := dial(t, n)
	first := make([]client.Decision, 500)
	for i := range first {
		for { // the dev licence's 1000 CAPS pace the calls
			d, err := c.Admit(ctx, "demo", client.AdmitOptions{Call: fmt.Sprintf("call-%d@restart.test", i)})
			require.NoError(t, err)
			if d.Reason == "CAPS" {
				time.Sleep(time.Duration(max(d.RetryAfterMs, 1)) * time.Millisecond)
				continue
			}
			require.True(t, d.Admitted, "call %d: %+v", i, d)
			first[i] = d
			break
		}
	}
	for i := range 300 {
		d, err := c.Register(ctx, "demo", fmt.Sprintf("sip:+1555%07d@restart.test", i), 0)
		require.NoError(t, err)
		require.True(t, d.Admitted, "subscriber %d: %+v", i, d)
	}
	require.Equal(t, int64(500), quota(t, c, "sessions_used"))
	require.Equal(t, int64(300), quota(t, c, "subscribers_used"))

	time.Sleep(200 * time.Millisecond)
	n.Kill()
	require.NoError(t, n.Restart())
	c = dial(t, n)
	require.Equal(t, int64(500), quota(t, c, "sessions_used"))
	require.Equal(t, int64(300), quota(t, c, "subscribers_used"))
	require.Contains(t, n.Log(), "open sessions and registrations restored")
	for i := range first {
		d, err := c.Admit(ctx, "demo", client.AdmitOptions{Call: fmt.Sprintf("call-%d@restart.test", i)})
		require.NoError(t, err)
		require.Equal(t, first[i], d, "a repeated ADMIT of call %d gets its first decision", i)
	}
	require.Equal(t, int64(500), quota(t, c, "sessions_used"), "repeats are not counted")
	d, err := c.Register(ctx, "demo", "sip:+15550000000@restart.test", 0)
	require.NoError(t, err)
	require.True(t, d.Admitted)
	require.Equal(t, int64(300), quota(t, c, "subscribers_used"), "a re-registration is not counted twice")
	for i := range first {
		ok, err := c.Release(ctx, "demo", fmt.Sprintf("call-%d@restart.test", i), 0)
		require.NoError(t, err)
		require.True(t, ok, "RELEASE of call %d after the restart", i)
	}
	require.Zero(t, quota(t, c, "sessions_used"))
}

// TestKill9LossWindow measures what kill -9 loses: registrations are sent
// as fast as one connection goes, the node is killed in the middle, and
// every acknowledged one is looked up after the restart. Those missing
// were acknowledged within the last group commit (FlushEvery) before the
// kill.
func TestKill9LossWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs capsgate")
	}
	ctx := context.Background()
	n := farm.NewDev(t)
	c := dial(t, n)
	var (
		mu    sync.Mutex
		acked []time.Time // by subscriber number
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 9000; i++ { // below the dev licence's 10000
			d, err := c.Register(ctx, "demo", fmt.Sprintf("sub-%d", i), 0)
			if err != nil || !d.Admitted {
				return // the kill
			}
			mu.Lock()
			acked = append(acked, time.Now())
			mu.Unlock()
		}
	}()
	time.Sleep(300 * time.Millisecond)
	killAt := time.Now()
	n.Kill()
	<-done
	require.NoError(t, n.Restart())
	mu.Lock()
	defer mu.Unlock()
	require.Greater(t, len(acked), 100, "registrations before the kill")
	c = dial(t, n)
	var lost []time.Duration // how long before the kill each lost one was acknowledged
	for i, at := range acked {
		ok, err := c.Deregister(ctx, "demo", fmt.Sprintf("sub-%d", i))
		require.NoError(t, err)
		if !ok {
			lost = append(lost, killAt.Sub(at))
		}
	}
	sort.Slice(lost, func(a, b int) bool { return lost[a] > lost[b] })
	window := time.Duration(0)
	if len(lost) > 0 {
		window = lost[0]
	}
	rate := float64(len(acked)) / acked[len(acked)-1].Sub(acked[0]).Seconds()
	t.Logf("acknowledged %d registrations (%.0f/s), lost %d by kill -9; the oldest lost was acknowledged %s before the kill",
		len(acked), rate, len(lost), window)
	// One flush interval (20 ms) plus its fsync; a loaded CI machine may
	// delay the flush loop, so the bound is generous.
	require.Less(t, window, 250*time.Millisecond)
}
