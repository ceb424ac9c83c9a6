package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster/farm"
)

// ClusterRun describes `capsbench cluster`.
type ClusterRun struct {
	Nodes int
	// Skew weighs the load per node (70,20,10); nil spreads it evenly.
	Skew []float64
	// CAPS is the licence; Rate the offered load over all nodes.
	CAPS     int64
	Rate     float64
	Duration time.Duration
	// Arrivals is when each node's connection sends (paced, or seeded
	// Poisson, with or without a stalling proxy); printed, seed and all,
	// so a run can be repeated.
	Arrivals openloop.Arrivals
}

// RunCluster starts Nodes capsgate processes in one cluster, loads a
// licence of CAPS for BenchService on n1, waits until every node holds it,
// offers Rate ADMITs per second spread by Skew for Duration in Arrivals
// (open loop, openloop.Load) and reports cluster-wide admitted per
// second against the licence. When ctx ends (capsbench: SIGINT or
// SIGTERM) the nodes are killed at once, which ends the load, and
// RunCluster says it was interrupted.
func RunCluster(ctx context.Context, r ClusterRun, out io.Writer) (err error) {
	if r.Nodes < 1 || r.CAPS < 1 || !(r.Rate > 0) || r.Duration <= 0 {
		return fmt.Errorf("cannot run a cluster: want --nodes, --caps, --rate and --seconds above 0")
	}
	if r.Skew != nil && len(r.Skew) != r.Nodes {
		return fmt.Errorf("cannot run a cluster: --skew has %d weights for %d nodes", len(r.Skew), r.Nodes)
	}
	bin, err := capsgateBinaries()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "capsbench-cluster-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	c, err := farm.Start(farm.Config{Nodes: r.Nodes, Dir: dir, Bin: bin})
	if err != nil {
		return err
	}
	defer c.Close()
	defer context.AfterFunc(ctx, c.Close)()
	defer func() {
		if ctx.Err() != nil {
			err = fmt.Errorf("capsbench cluster: interrupted (%w)", context.Cause(ctx))
		}
	}()
	if err := c.AwaitMembers(r.Nodes, 15*time.Second); err != nil {
		return fmt.Errorf("cluster did not form: %w", err)
	}
	lic, err := c.Bin.Issue(c.VendorKey, "--service", BenchService, "--caps", strconv.FormatInt(r.CAPS, 10))
	if err != nil {
		return err
	}
	if err := c.Node(1).PostLicense(lic); err != nil {
		return fmt.Errorf("cannot load the licence: %w", err)
	}
	if err := c.AwaitCAPS(BenchService, float64(r.CAPS), 10*time.Second); err != nil {
		return fmt.Errorf("licence did not reach every node: %w", err)
	}
	if err := c.AwaitShares(BenchService, float64(r.CAPS), 10*time.Second); err != nil {
		return fmt.Errorf("the nodes did not plan their parts of the licence: %w", err)
	}
	fmt.Fprintf(out, "%d nodes, licence %d CAPS, offering %.0f/s for %v (skew %v, %v)\n", r.Nodes, r.CAPS, r.Rate, r.Duration, r.Skew, r.Arrivals)
	tally := openloop.Load{Addrs: c.RESPAddrs(), Weights: r.Skew, Rate: r.Rate, Duration: r.Duration,
		Command: "ADMIT " + BenchService, Arrivals: r.Arrivals}.Run()
	if tally.Total.Err != nil {
		return fmt.Errorf("load: %w", tally.Total.Err)
	}
	lo, hi := tally.Total.Span()
	span := (lo + hi) / 2
	perSec := float64(tally.Total.Admitted) / span.Seconds()
	fmt.Fprintln(out, tally)
	fmt.Fprintf(out, "cluster-wide admitted %.1f/s over %.2fs vs licensed %d/s (%.3f×)\n", perSec, span.Seconds(), r.CAPS, perSec/float64(r.CAPS))
	for i, n := range tally.Nodes {
		fmt.Fprintf(out, "  n%d: sent %d, admitted %d (%.1f/s)\n", i+1, n.Sent, n.Admitted, float64(n.Admitted)/span.Seconds())
	}
	return nil
}
