package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// TestCONSUMEIDsAcrossKillAndWindowEnd: 2,000 CONSUME IDs charged, then
// kill -9 right after the last acknowledgement and a restart: every repeat gets
// its first decision and none is charged (the keys come from data_dir/ids,
// not from memory); once the window (8 s here) has ended, a repeat is a
// new charge.
func TestCONSUMEIDsAcrossKillAndWindowEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	const window = 8 * time.Second
	c := farm.New(t, 1, farm.WithArgs("--admission-idempotency-window", window.String()))
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
	n.Kill() // every ID acknowledged is on disk: no wait for the commit

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

// TestAcknowledgedIDsSurviveKill: four clients charge CONSUME IDs as fast
// as they are acknowledged; kill -9 lands in the middle of the stream. After
// the restart every ID that had been acknowledged gets its first decision
// and is not charged again: an acknowledgement waits for its key's commit
// (the IDs charged in the last group commit interval before the kill were
// charged again after the restart when it did not).
func TestAcknowledgedIDsSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := farm.New(t, 1)
	c.LoadLicense(1, c.Issue("--service", meterService, "--tokens", "10000000", "--caps", "100000"))
	n := c.Node(1)
	require.Eventually(t, func() bool {
		ok, _, _, err := n.Decision("CONSUME", meterService, "acct1", "1", "ID", "warm-up")
		return err == nil && ok
	}, 5*time.Second, 20*time.Millisecond, "the pool's first reservation")
	type ack struct {
		id   string
		left int64
	}
	var mu sync.Mutex
	var acked []ack
	var wg sync.WaitGroup
	stop := time.Now().Add(1500 * time.Millisecond)
	for w := range 4 {
		conn, err := n.Dial()
		require.NoError(t, err)
		wg.Go(func() {
			defer conn.Close()
			for i := 0; time.Now().Before(stop); i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				v, err := conn.Do("CONSUME", meterService, "acct1", "2", "ID", id)
				if err != nil {
					return // the kill
				}
				if a, ok := v.([]any); ok && len(a) == 4 && a[0] == int64(1) {
					mu.Lock()
					acked = append(acked, ack{id, a[3].(int64)})
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(time.Second)
	n.Kill()
	wg.Wait()
	require.NoError(t, n.Restart())
	mu.Lock()
	defer mu.Unlock()
	require.Greater(t, len(acked), 40, "the clients were acknowledged before the kill")
	u := quota(t, n)["tokens_used"]
	again := 0
	for _, a := range acked {
		ok, reason, left, err := n.Decision("CONSUME", meterService, "acct1", "2", "ID", a.id)
		require.NoError(t, err)
		require.True(t, ok, reason)
		if left != a.left {
			again++
		}
	}
	after := quota(t, n)["tokens_used"]
	t.Logf("%d IDs acknowledged by 4 clients before kill -9; after the restart %d repeats charged again, tokens_used %d -> %d",
		len(acked), again, u, after)
	require.Zero(t, again, "a repeat of an acknowledged ID gets its first decision")
	require.Equal(t, u, after, "no acknowledged ID is charged twice")
}
