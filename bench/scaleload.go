package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
)

// load runs the two phases with redis-benchmark while the clean client
// probes and the sampler samples, and records them in run with the RSS
// growth and the entries held afterwards.
func (s *scaleServer) load(ctx context.Context, run *ScaleRun) error {
	c, err := dialScale(ctx, s.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	pid := s.proc.cmd.Process.Pid
	if run.RSSBefore, err = readRSS(pid); err != nil {
		return err
	}
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var probeErr, sampleErr error
	wg.Go(func() { run.Probes, probeErr = probe(ctx, stop, s.addr, start) })
	wg.Go(func() { run.Samples, sampleErr = sample(ctx, stop, pid, c, s.count, start) })
	loadErr := s.phasesRun(ctx, run, start)
	close(stop)
	wg.Wait()
	if err := errors.Join(loadErr, probeErr, sampleErr); err != nil {
		return err
	}
	if run.RSSAfter, err = readRSS(pid); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if run.Held, err = s.count(cctx, c); err != nil {
		return fmt.Errorf("cannot count the entries %s holds: %w", s.name, err)
	}
	run.Samples = append(run.Samples, ScaleSample{AtS: time.Since(start).Seconds(), RSS: run.RSSAfter, Held: run.Held})
	run.BytesPerEntry = float64(run.RSSAfter-run.RSSBefore) / float64(max(run.Held, 1))
	run.Probe = summarizeProbes(run.Probes)
	return nil
}

// phasesRun runs redis-benchmark for each phase, half the entries each.
func (s *scaleServer) phasesRun(ctx context.Context, run *ScaleRun, start time.Time) error {
	for _, command := range s.phases {
		began := time.Now()
		rate, err := redisBenchmark(ctx, s.addr, run.Entries/2, strings.Fields(command))
		if err != nil {
			if e := s.alive(ctx); e != nil {
				err = fmt.Errorf("%w; %w", err, e)
			}
			return err
		}
		run.Phases = append(run.Phases, ScalePhase{Command: command, Requests: run.Entries / 2, PerSec: rate,
			StartS: began.Sub(start).Seconds(), Seconds: time.Since(began).Seconds()})
	}
	return nil
}

// redisBenchmark runs redis-benchmark against addr — 50
// connections, 16 pipelined, n requests of command with random keys — and
// returns the requests per second it reports. It is bounded by a time that
// allows 10,000 requests per second.
func redisBenchmark(ctx context.Context, addr string, n int, command []string) (float64, error) {
	host, port, _ := net.SplitHostPort(addr)
	args := append([]string{"-h", host, "-p", port, "-c", strconv.Itoa(scaleConns), "-P", strconv.Itoa(scalePipeline),
		"-n", strconv.Itoa(n), "-r", strconv.Itoa(scaleKeyRange), "-q"}, command...)
	timeout := time.Minute + time.Duration(n)*100*time.Microsecond
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "redis-benchmark", args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	cmd.WaitDelay = time.Second
	err := farm.StartTied(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	what := "redis-benchmark " + strings.Join(command, " ")
	if ctx.Err() != nil {
		return 0, fmt.Errorf("%s: %w (bound %v)", what, ctx.Err(), timeout)
	}
	all := out.String() + stderr.String()
	if i := strings.Index(all, "Error from server"); i >= 0 {
		return 0, fmt.Errorf("%s: %s", what, strings.TrimSpace(firstLine(all[i:])))
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", what, err, lastLine(strings.ReplaceAll(all, "\r", "\n")))
	}
	rate, err := benchmarkRate(out.String())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return rate, nil
}

// benchmarkRate is the requests per second of redis-benchmark -q's
// output: its last "COMMAND: R requests per second, ..." (the lines
// before, ended by \r, are its progress).
func benchmarkRate(out string) (float64, error) {
	i := strings.LastIndex(out, " requests per second")
	if i < 0 {
		return 0, fmt.Errorf("no \"requests per second\" in its output %q", lastLine(strings.ReplaceAll(out, "\r", "\n")))
	}
	f := strings.Fields(out[:i])
	if len(f) == 0 {
		return 0, fmt.Errorf("no rate before \"requests per second\" in %q", out)
	}
	v, err := strconv.ParseFloat(f[len(f)-1], 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("cannot read the rate %q of its output", f[len(f)-1])
	}
	return v, nil
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// probe sends PING on a connection of its own every probeEvery until stop
// is closed, and returns when each was sent (from start) and how long its
// answer took. A PING in flight when stop closes is waited for, so a
// stall at the end of the load counts. No answer within probeTimeout, or
// a broken connection, is an error.
func probe(ctx context.Context, stop <-chan struct{}, addr string, start time.Time) ([]ProbeSample, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, fmt.Errorf("the PING probe cannot connect: %w", err)
	}
	defer conn.Close()
	r := client.NewReplyReader(conn)
	var out []ProbeSample
	next := time.Now()
	for {
		sent := time.Now()
		_ = conn.SetDeadline(sent.Add(probeTimeout))
		if err := ping(conn, r); err != nil {
			return out, fmt.Errorf("the PING probe, %.1f s into the load: %w", sent.Sub(start).Seconds(), err)
		}
		out = append(out, ProbeSample{AtS: sent.Sub(start).Seconds(), Ms: float64(time.Since(sent)) / 1e6})
		if next = next.Add(probeEvery); next.Before(time.Now()) {
			next = time.Now() // after a late answer, the next at once
		}
		select {
		case <-stop:
			return out, nil
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(time.Until(next)):
		}
	}
}

// pingOnce sends PING on a new connection and wants PONG within a second.
func pingOnce(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	return ping(conn, client.NewReplyReader(conn))
}

// pingFrame is PING as admission/client encodes it.
var pingFrame = client.AppendCommand(nil, "PING")

// ping sends PING on conn and wants PONG (Redis answers -LOADING while it
// reads its AOF), read with admission/client's parser.
func ping(conn net.Conn, r *client.ReplyReader) error {
	if _, err := conn.Write(pingFrame); err != nil {
		return err
	}
	reply, err := r.Read()
	if err != nil {
		return err
	}
	if reply.Kind != client.Simple || string(reply.Str) != "PONG" {
		return fmt.Errorf("PING answered %s", reply.String())
	}
	return nil
}

// sample reads pid's RSS and the entries held (count on c) now and every
// sampleEvery until stop is closed.
func sample(ctx context.Context, stop <-chan struct{}, pid int, c *client.Conn,
	count func(context.Context, *client.Conn) (int64, error), start time.Time) ([]ScaleSample, error) {
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	var out []ScaleSample
	for {
		at := time.Since(start).Seconds()
		rss, err := readRSS(pid)
		if err != nil {
			return out, err
		}
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		held, err := count(cctx, c)
		cancel()
		if err != nil {
			return out, fmt.Errorf("cannot count the entries held, %.1f s into the load: %w", at, err)
		}
		out = append(out, ScaleSample{AtS: at, RSS: rss, Held: held})
		select {
		case <-stop:
			return out, nil
		case <-ctx.Done():
			return out, ctx.Err()
		case <-tick.C:
		}
	}
}

// dialScale connects the client used to count entries.
func dialScale(ctx context.Context, addr string) (*client.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return client.Dial(dctx, addr)
}

// summarizeProbes is the p99 (the sorted latencies' element
// at 0.99 × (n-1)), the worst, and the longest time between two answers.
func summarizeProbes(ps []ProbeSample) ProbeSummary {
	s := ProbeSummary{Probes: len(ps)}
	if len(ps) == 0 {
		return s
	}
	lat := make([]float64, len(ps))
	for i, p := range ps {
		lat[i] = p.Ms
		if i > 0 {
			gap := (p.AtS*1e3 + p.Ms) - (ps[i-1].AtS*1e3 + ps[i-1].Ms)
			s.LongestGapMs = max(s.LongestGapMs, gap)
		}
	}
	slices.Sort(lat)
	s.P99Ms = lat[int(0.99*float64(len(lat)-1))]
	s.WorstMs = lat[len(lat)-1]
	return s
}
