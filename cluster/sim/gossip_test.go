package sim

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster"
)

// gossipRun runs sc and sums, per node, what observe saw it send: the
// reports and their bytes as the cluster sends them to the others; and
// the pools the reports told tokens charged to.
func gossipRun(t *testing.T, sc Scenario) (Result, []NodeGossip, map[string]bool) {
	t.Helper()
	var seen []NodeGossip
	charged := map[string]bool{}
	observe = func(node int, r cluster.Report) {
		for k, h := range r.Held {
			if h.Tokens > 0 {
				charged[k] = true
			}
		}
		for len(seen) <= node {
			seen = append(seen, NodeGossip{Name: NodeName(len(seen))})
		}
		size := cluster.ReportWireSize(ledgerHead(NodeName(node)), r)
		seen[node].Reports++
		seen[node].Bytes += int64(size * (sc.Nodes - 1))
		seen[node].Largest = max(seen[node].Largest, size)
	}
	defer func() { observe = nil }()
	r, err := Run(sc)
	require.NoError(t, err)
	return r, seen, charged
}

// Each node's report bytes are the size of each report it sent, as the
// cluster encodes it, times the other members; an idle farm sends its
// reports at the exchange only.
func TestGossipBytes(t *testing.T) {
	sc := Scenario{Nodes: 3, CAPS: 1000, Duration: 3 * time.Second, Seed: 1, Arrivals: Poisson, Net: LAN}
	r, seen, _ := gossipRun(t, sc)
	require.Len(t, r.Gossip, 3)
	for i, g := range r.Gossip {
		require.Equal(t, int64(30), g.Reports, "idle: one per exchange")
		require.Zero(t, g.Early)
		want := seen[i]
		want.Early = g.Early
		require.Equal(t, want, g)
		require.Positive(t, g.Bytes)
	}
	rate := r.GossipRate()
	require.InDelta(t, 10, rate.Reports, 1e-9)
	require.InDelta(t, float64(r.Gossip[0].Bytes)/3, rate.MeanBytes, 1e-9)

	// Under load, with early plans, services and accounts.
	sc.Load, sc.Services, sc.Accounts = 0.9, 3, 5
	r, seen, charged := gossipRun(t, sc)
	var early int64
	for i, g := range r.Gossip {
		want := seen[i]
		want.Early = g.Early
		require.Equal(t, want, g)
		early += g.Early
	}
	require.Positive(t, early)
	require.Positive(t, r.Admitted)
	require.Less(t, r.RefusedFraction(), 0.01)
	require.Len(t, charged, 15, "every account of every service charged: %v", charged)
	require.True(t, charged["voice3/acct-00005"])

	// One node alone sends nothing to anyone.
	sc.Nodes = 1
	r, _, _ = gossipRun(t, sc)
	require.Zero(t, r.GossipRate().MeanBytes)
}

// A node's report bytes per second grow as its report's size × (nodes −
// 1) × its reports per second: an idle farm's per other member and
// report stay within a few bytes of one another from 3 to 30 nodes.
func TestGossipGrowsWithNodes(t *testing.T) {
	var perReport []float64
	for _, n := range []int{3, 10, 30} {
		r, err := Run(Scenario{Nodes: n, CAPS: 1000, Duration: 2 * time.Second, Seed: 1, Arrivals: Poisson, Net: LAN})
		require.NoError(t, err)
		g := r.GossipRate()
		require.InDelta(t, 10, g.Reports, 1e-9)
		perReport = append(perReport, g.MeanBytes/float64(n-1)/g.Reports)
		require.LessOrEqual(t, perReport[len(perReport)-1], float64(g.Largest))
	}
	for _, b := range perReport[1:] {
		require.InEpsilon(t, perReport[0], b, 0.2, "%v", perReport)
	}
}

// Services split the licence: the farm admits what one service would.
func TestServicesShareTheLicence(t *testing.T) {
	sc := Scenario{Nodes: 3, CAPS: 900, Duration: 5 * time.Second, Seed: 1, Arrivals: Poisson, Net: LAN, Load: 2, Services: 3}
	r, err := Run(sc)
	require.NoError(t, err)
	require.InDelta(t, 900*5, float64(r.Admitted), 900*5*0.05)
	require.InDelta(t, 900, r.MaxCAPS, 1)
}
