package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/clustertest"
)

// TestCONSUMEIDsAcrossKillAndWindowEnd: 2,000 CONSUME IDs charged, then
// kill -9 (after the 20 ms group commit) and a restart: every repeat gets
// its first decision and none is charged (the keys come from data_dir/ids,
// not from memory); once the window (8 s here) has ended, a repeat is a
// new charge.
func TestCONSUMEIDsAcrossKillAndWindowEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	const window = 8 * time.Second
	c := clustertest.New(t, 1, clustertest.WithArgs("--admission-idempotency-window", window.String()))
	c.LoadLicense(1, c.Issue("--service", meterService, "--tokens", "1000000", "--caps", "100000"))
	n := c.Node(1)
	consume := func(id string) int64 {
		t.Helper()
		var ok bool
		var reason string
		var left int64
		var err error
		for range 100 { // the pool's first reservation may lag the licence
			if ok, reason, left, err = n.Decision("CONSUME", meterService, "acct1", "3", "ID", id); err != nil || ok || reason != "OVERLOAD" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		require.NoError(t, err)
		require.True(t, ok, "CONSUME ID %s: %s", id, reason)
		return left
	}
	used := func() int64 { t.Helper(); return quota(t, n)["tokens_used"] }
	const ids = 2000
	first := make([]int64, ids)
	charged := time.Now()
	for i := range ids {
		first[i] = consume(fmt.Sprintf("inv-%d", i))
	}
	require.Equal(t, int64(3*ids), used())
	time.Sleep(100 * time.Millisecond) // committed (every 20 ms)
	n.Kill()
	require.NoError(t, n.Restart())
	u := used() // the reservation's count: up to one block over
	for i := range ids {
		require.Equal(t, first[i], consume(fmt.Sprintf("inv-%d", i)), "a repeat after kill -9 gets the first decision")
	}
	require.Equal(t, u, used(), "no repeat after kill -9 and restart was charged")
	t.Logf("%d IDs charged, kill -9, restart: %d repeats uncharged (%s after the charges)", ids, ids, time.Since(charged).Round(time.Millisecond))
	require.Less(t, time.Since(charged), window, "the repeats must fall inside the window")
	time.Sleep(time.Until(charged.Add(window + 500*time.Millisecond)))
	consume("inv-0")
	require.Equal(t, u+3, used(), "after the window's end a repeat is a new charge")
}
