package cluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster"
)

// GET /v1/services/{service} on any member shows the service's usage
// over the farm: subscribers registered, sessions open and tokens charged
// on every member, the accounts' included, once their reports are in.
func TestServiceViewShowsTheFarmsUsage(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	c := licensedFarm(t, nil, "voice", 1000, "--sessions", "100", "--subscribers", "100", "--tokens", "10000", "--id", "voice-usage")
	n := c.Nodes()
	require.NoError(t, n[0].PutAccount("voice", "acme", 1000))
	require.Eventually(t, func() bool {
		v, err := n[2].Do("CONSUME", "voice", "acme", "1")
		return err == nil && v.([]any)[0] == int64(1)
	}, 5*time.Second, 20*time.Millisecond, "n3 has acme's allocation")
	for i := range 7 {
		ok, reason, _, err := n[1].Decision("REGISTER", "voice", fmt.Sprintf("sip:u%d@example.net", i), "TTL", "600")
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	for i := range 5 {
		ok, reason, _, err := n[2].Decision("ADMIT", "voice", "CALL", fmt.Sprintf("call-%d", i))
		require.NoError(t, err)
		require.True(t, ok, reason)
	}
	for range 298 {
		v, err := n[2].Do("CONSUME", "voice", "acme", "1")
		require.NoError(t, err)
		require.Equal(t, int64(1), v.([]any)[0])
	}
	// On the node asked, too: its own account pools count. Its budget of
	// acme's pool grows with its charges, so a charge may be refused
	// (nothing charged) until the next exchange.
	charged := 0
	require.Eventually(t, func() bool {
		v, err := n[0].Do("CONSUME", "voice", "acme", "1")
		if err == nil && v.([]any)[0] == int64(1) {
			charged++
		}
		return charged == 10
	}, 10*time.Second, 5*time.Millisecond)
	want := cluster.FarmUsage{Members: 3, Sessions: 5, Subscribers: 7, TokensUsed: 309}
	var got cluster.FarmUsage
	require.Eventually(t, func() bool {
		s, err := n[0].Service("voice")
		require.NoError(t, err)
		got = s.Cluster
		got.OfferedCAPS = 0 // measured: moves
		return got == want
	}, 5*time.Second, 20*time.Millisecond, "n1 shows the farm's usage: %+v", got)
}
