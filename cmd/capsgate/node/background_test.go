package node

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/journal"
	"github.com/capsgate/capsgate/admission/meter"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/farm"
)

// The background steps run at the instants a test gives them: metering
// samples and writes its record set only when an instant reaches the end
// of the ledger interval, whatever the wall clock says, and the state
// journal and the engine's housekeeping say when they are due next.
func TestBackgroundStepsAtInstants(t *testing.T) {
	n := startStepped(t, "--ledger-interval", "10s")
	require.Equal(t, 5, strings.Count(admit(t, n.RESPAddr(), 5), "+OK"))

	t0 := time.Date(2031, 1, 1, 0, 0, 3, 0, time.UTC) // 3 s into an interval
	seq0, _ := n.ledger.Head()
	require.Equal(t, meter.SampleEvery, n.stepMetering(t0))
	require.Equal(t, t0.Truncate(10*time.Second).Add(10*time.Second), n.meterNext)
	for at := t0; at.Before(n.meterNext); at = at.Add(time.Second) {
		n.stepMetering(at)
	}
	seq, _ := n.ledger.Head()
	require.Equal(t, seq0, seq, "nothing written before the interval ends")
	n.stepMetering(t0.Add(7 * time.Second)) // the end of the interval
	seq, _ = n.ledger.Head()
	require.Greater(t, seq, seq0, "the interval's record set is written at its end")
	require.Equal(t, t0.Truncate(10*time.Second).Add(20*time.Second), n.meterNext)

	require.Equal(t, tickInterval, n.stepEngine(t0))
	require.Equal(t, journal.FlushEvery, n.stepJournal(t0))
	var names []string
	for _, task := range n.tasks() {
		names = append(names, task.name)
	}
	require.Equal(t, []string{"housekeeping", "licence states", "metering", "token reservations", "state journal",
		"CONSUME ID commits", "CL.THROTTLE expiry", "cluster exchange", "cluster rejoin"}, names, "all the background work, in one table")
	require.Equal(t, cluster.StarvedCheck, n.cluster.StepExchange(t0))
	require.Equal(t, time.Second, n.cluster.StepRejoin(t0))
}

// A node that joins a farm answers /readyz 503 until the cluster's first
// plan has given it its parts (before, every licence applies here with no
// part: it would refuse every attempt), and 200 from then on.
func TestReadyAfterTheFirstPlan(t *testing.T) {
	g1 := farm.FreeAddr(t)
	a := startNode(t, "--dev", "--node-name", "a", "--gossip-addr", g1)
	n := startStepped(t, "--node-name", "joiner", "--join", g1)
	readyz := "http://" + n.AdminAddr() + "/readyz"
	code, body := get(t, readyz, "")
	require.Equal(t, 503, code)
	require.Equal(t, "not ready: awaiting the cluster's first plan\n", body)
	t0 := time.Now()
	n.cluster.StepExchange(t0) // schedules the first exchange
	code, _ = get(t, readyz, "")
	require.Equal(t, 503, code, "no plan yet")
	n.cluster.StepExchange(t0.Add(cluster.ExchangeInterval))
	code, body = get(t, readyz, "")
	require.Equal(t, 200, code)
	require.Equal(t, "ready\n", body)
	code, _ = get(t, "http://"+a.AdminAddr()+"/readyz", "")
	require.Equal(t, 200, code, "a node that joins nothing is ready at once")
}

// startStepped starts a --dev node with args whose background steps the
// test runs itself, at the instants it gives them.
func startStepped(t *testing.T, args ...string) *Node {
	t.Helper()
	cfg, err := Load(append([]string{"--dev", "--resp-addr", farm.FreeAddr(t), "--admin-addr", farm.FreeAddr(t),
		"--gossip-addr", farm.FreeAddr(t), "--data-dir", filepath.Join(t.TempDir(), "d")}, args...), io.Discard)
	require.NoError(t, err)
	n, err := New(cfg, nil)
	require.NoError(t, err)
	n.stepped = true
	require.NoError(t, n.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, n.Stop(ctx))
	})
	return n
}
