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
	// A budget of acme's pool on n3 and on n1 (the node asked: its own
	// account pools count too), each shown by one charge acknowledged.
	for _, node := range []int{2, 0} {
		require.Eventually(t, func() bool {
			v, err := n[node].Do("CONSUME", "voice", "acme", "1")
			return err == nil && v.([]any)[0] == int64(1)
		}, 5*time.Second, 20*time.Millisecond, "n%d has acme's allocation", node+1)
	}
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
	// More tokens charged on n3 and on n1, counting only the acknowledged
	// charges: a member's budget of acme's pool follows the rate it
	// charges at each exchange, so a charge past it is refused and charges
	// nothing (n1's may be none while n3 charges fast).
	charge := func(node int, tries int) (charged int64) {
		for range tries {
			ok, reason, _, err := n[node].Decision("CONSUME", "voice", "acme", "1")
			require.NoError(t, err)
			if ok {
				charged++
				continue
			}
			require.Contains(t, []string{"TOKENS", "OVERLOAD"}, reason, "refused only for want of budget")
		}
		return charged
	}
	tokens := 2 + charge(2, 298) + charge(0, 10)
	want := cluster.FarmUsage{Members: 3, Sessions: 5, Subscribers: 7, TokensUsed: tokens}
	var got cluster.FarmUsage
	require.Eventually(t, func() bool {
		s, err := n[0].Service("voice")
		require.NoError(t, err)
		got = s.Cluster
		got.OfferedCAPS = 0 // measured: moves
		return got == want
	}, 5*time.Second, 20*time.Millisecond, "n1 shows the farm's usage: %+v", got)
}
