package cluster_test

import (
	"bufio"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster"
)

// metric reads one sample of n's /metrics (0 when absent).
func metric(t *testing.T, body []byte, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

// A burst on one node of a farm below its licence is admitted from the
// other nodes' buckets too: the attempts n1's bucket refuses go to the
// members with room (spilled), as one bucket holding the licence would
// admit them, and never beyond what the farm's buckets hold.
func TestBurstSpillsToMembersWithRoom(t *testing.T) {
	needsProcesses(t, "3 capsgate nodes")
	const licence = 300
	c := licensedFarm(t, nil, "voice", licence)
	n := c.Nodes()
	// Every node's bucket full, and heard so by n1: a bucket whose part
	// the plans just set may start in debt and refills at the part's rate
	// (100/s here: its 24 attempts of depth in 240 ms), and n1 hears of it
	// at the next exchange. A fixed wait was not always enough (CI runs
	// spilled 10 and 19): wait until n1's view of n2 and n3 (their last
	// reports, GET /v1/cluster) shows nothing owed, and n1's own bucket
	// has had time to refill.
	require.Eventually(t, func() bool {
		ms, err := n[0].Members()
		if err != nil {
			return false
		}
		full := 0
		for _, m := range ms {
			if m.Name != "n1" && m.State == "alive" && m.Shares["voice"] > 0 {
				if owed, ok := m.Owed["voice"]; ok && owed == 0 {
					full++
				}
			}
		}
		return full == 2
	}, 10*time.Second, 10*time.Millisecond, "n1 hears n2's and n3's buckets full")
	time.Sleep(240 * time.Millisecond) // n1's own, refilled like theirs
	own := quota(t, n[0], "voice", "caps_burst")

	conn, err := net.Dial("tcp", n[0].RESPAddr)
	require.NoError(t, err)
	defer conn.Close()
	const burst = 150
	start := time.Now()
	_, err = conn.Write([]byte(strings.Repeat("ADMIT voice\r\n", burst)))
	require.NoError(t, err)
	r := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	admitted := 0
	for range burst {
		var lines [5]string
		for i := range lines {
			lines[i], err = r.ReadString('\n')
			require.NoError(t, err)
		}
		require.Equal(t, "*4\r\n", lines[0])
		if lines[1] == ":1\r\n" {
			admitted++
		} else {
			require.Equal(t, "+CAPS\r\n", lines[2])
		}
	}
	took := time.Since(start)
	// A plan made during the burst (n1's bucket starved calls one early)
	// may lend n2's and n3's free attempts to n1 rather than leave them
	// for the spills: their depths fall, and n1's rises, usually a plan
	// later, after this burst, but sometimes while it lasts (a CI run: 42
	// lent, 51 admitted by n1 from a bucket 24 deep in 39 ms). What was
	// lent moved from their buckets to n1's: the farm's bound below still
	// holds it all.
	lent := 0
	for _, x := range n[1:] {
		lent += int(max(own-quota(t, x, "voice", "caps_burst"), 0))
	}
	body, err := n[0].GetRaw("/metrics")
	require.NoError(t, err)
	spilled := int(metric(t, body, `capsgate_spill_total{result="admitted"}`))
	sent := int(metric(t, body, `capsgate_spill_total{result="sent"}`))
	t.Logf("%d ADMITs at once on n1 (its bucket %d deep) in %v: %d admitted, %d of them by n2 and n3 (%d spilled; refused there %v, failed %v, skipped busy %v); %d lent to n1 by a plan meanwhile",
		burst, own, took, admitted, spilled, sent,
		metric(t, body, `capsgate_spill_total{result="refused"}`), metric(t, body, `capsgate_spill_failed_total`),
		metric(t, body, `capsgate_spill_skipped_total{why="busy"}`), lent)
	refill := 1.01 * licence * took.Seconds()
	require.LessOrEqual(t, float64(admitted-spilled), float64(own)+float64(lent)+refill+1,
		"n1 admits no more than its bucket and what was lent to it")
	require.Greater(t, spilled, 0, "n2 and n3 admit from their buckets what n1's refused")
	require.GreaterOrEqual(t, spilled+lent, 20, "what n2's and n3's buckets held is admitted for n1 or lent to it")
	require.LessOrEqual(t, float64(admitted), cluster.MaxBurst(licence, 3, 100*time.Millisecond)+refill,
		"the farm admits no more than its buckets hold")
	require.GreaterOrEqual(t, sent, spilled, "an ADMIT admitted elsewhere was spilled first")
}
