package cluster_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// A member that was down (SIGKILL) when a licence was loaded gets it when
// it comes back and rejoins: a join's state sync carries every licence both
// ways. After that the members' licence digests match, and the state syncs
// that follow (every 5 s) send no licence: none of the three members sends
// one over 6 s.
func TestLicenceReachesAMemberThatWasDown(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes, one killed and restarted")
	c := farm.New(t, 3)
	c.WaitMembers(3, 10*time.Second)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "1000", "--id", "voice-before"))
	c.WaitCAPS("voice", 1000, 5*time.Second)
	n := c.Nodes()
	n[2].Kill()
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "500", "--id", "voice-while-down"))
	c.LoadLicense(1, c.Issue("--service", "fax", "--caps", "20", "--id", "fax-while-down"))
	require.Eventually(t, func() bool { return c.Service(2, "voice").Limits.CAPS == 1500 }, 2*time.Second, 10*time.Millisecond,
		"n2 gets it directly")
	// Packed (a licence is 900 bytes of text, 630 deflated): memberlist
	// compresses nothing, and every member reads packed messages.
	body, err := n[1].GetRaw("/metrics")
	require.NoError(t, err)
	require.GreaterOrEqual(t, metric(t, body, `capsgate_gossip_packed_total{direction="received"}`), 2.0)
	require.Zero(t, metric(t, body, `capsgate_gossip_packed_refused_total`))
	require.NoError(t, n[2].Restart())
	c.WaitMembers(3, 10*time.Second)
	c.WaitCAPS("voice", 1500, 10*time.Second)
	c.WaitCAPS("fax", 20, 5*time.Second)

	sent := func() (total float64) {
		for _, node := range n {
			body, err := node.GetRaw("/metrics")
			require.NoError(t, err)
			total += metric(t, body, `capsgate_gossip_messages_total{kind="state",direction="sent"}`)
		}
		return total
	}
	before := sent()
	time.Sleep(6 * time.Second)
	require.Equal(t, before, sent(), "digests match: push-pulls send no licence")
}
