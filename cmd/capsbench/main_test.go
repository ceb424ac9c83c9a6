package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench"
	"github.com/capsgate/capsgate/cluster/farm"
)

// capsbench builds the commands once and returns this one's path.
func capsbench(t *testing.T) string {
	t.Helper()
	bin, err := farm.BuildOnce()
	require.NoError(t, err)
	return filepath.Join(filepath.Dir(bin.Capsgate), "capsbench")
}

// exitWithin waits for cmd to end and returns its exit code, failing the
// test if it takes longer than d.
func exitWithin(t *testing.T, cmd *exec.Cmd, d time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		require.NoError(t, err)
		return 0
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running %v after the signal", cmd.Args, d)
		return -1
	}
}

// The do-nothing server serves until SIGINT or SIGTERM, then stops and
// exits 0 (the signals are caught for the other commands' clean-up, so
// they must end this one too).
func TestServeLimitStopsOnSignal(t *testing.T) {
	exe := capsbench(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := exec.Command(exe, "serve-limit", "--addr", "127.0.0.1:0")
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			addr, err := bufio.NewReader(out).ReadString('\n')
			require.NoError(t, err)
			addr = strings.TrimSpace(addr)

			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
			_, err = c.Write([]byte("*2\r\n$5\r\nADMIT\r\n$5\r\nbench\r\n"))
			require.NoError(t, err)
			reply := make([]byte, len(bench.LimitReply))
			_, err = io.ReadFull(c, reply)
			require.NoError(t, err)
			require.Equal(t, bench.LimitReply, string(reply))

			require.NoError(t, cmd.Process.Signal(sig))
			require.Equal(t, 0, exitWithin(t, cmd, 10*time.Second))
			_, err = net.DialTimeout("tcp", addr, time.Second)
			require.Error(t, err, "still listening after exit")
		})
	}
}

// An interrupted `capsbench cluster` ends its load at once, says so, and
// leaves none of the capsgate nodes it started running.
func TestClusterInterrupted(t *testing.T) {
	exe := capsbench(t)
	cmd := exec.Command(exe, "cluster", "--nodes", "2", "--caps", "100", "--rate", "200", "--seconds", "120")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	// The first line comes once the licence is on every node and the
	// load starts.
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "stderr: %s", stderr.String())
	require.Contains(t, line, "2 nodes, licence 100 CAPS")
	require.Contains(t, line, "poisson arrivals, seed 1", "the default arrivals, printed so that the run can be repeated")
	nodes := children(t, cmd.Process.Pid)
	require.Len(t, nodes, 2, "capsgate nodes under capsbench")

	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.Equal(t, 1, exitWithin(t, cmd, 15*time.Second))
	require.Contains(t, stderr.String(), "interrupted")
	for _, pid := range nodes {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		require.True(t, os.IsNotExist(err), "node process %d still there", pid)
	}
}

// An arrival model capsbench does not know is refused in one line,
// before anything is started.
func TestClusterRefusesUnknownArrivals(t *testing.T) {
	err := cluster(context.Background(), []string{"--arrivals", "bursty"})
	require.EqualError(t, err, `bad --arrivals: unknown arrival model "bursty": want paced, poisson or stalling`)
}

// children returns the pids whose parent is ppid (from /proc).
func children(t *testing.T, ppid int) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	require.NoError(t, err)
	var pids []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		rest := s[strings.LastIndexByte(s, ')')+1:]
		fields := strings.Fields(rest)
		if len(fields) < 2 || fields[1] != strconv.Itoa(ppid) {
			continue
		}
		pid, err := strconv.Atoi(strings.Fields(s)[0])
		require.NoError(t, err)
		pids = append(pids, pid)
	}
	return pids
}

// A capsbench killed with SIGKILL, which it cannot catch, takes the
// servers it started with it.
func TestServersDieWithCapsbench(t *testing.T) {
	exe := capsbench(t)
	cmd := exec.Command(exe, "compare", "--targets", "capsgate,limit", "--seconds", "60", "--stall-seconds", "0", "--sweep", "")
	require.NoError(t, cmd.Start())
	var servers []int
	require.Eventually(t, func() bool {
		servers = children(t, cmd.Process.Pid)
		return len(servers) == 2
	}, 30*time.Second, 50*time.Millisecond, "capsgate and the limit server under capsbench")
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Eventually(t, func() bool {
		for _, pid := range servers {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "servers %v outlived capsbench", servers)
}

// `capsbench sim` repeats a run from its seed, writes the plot and the
// JSON it is asked for, and refuses a bad value in one line naming the
// flag.
func TestSim(t *testing.T) {
	exe := capsbench(t)
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.Command(exe, append([]string{"sim"}, args...)...)
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok {
			return o.String(), e.String(), ee.ExitCode()
		}
		require.NoError(t, err)
		return o.String(), e.String(), 0
	}
	svg := filepath.Join(t.TempDir(), "run.svg")
	first, stderr, code := run("--seconds", "3", "--nodes", "2", "--svg", svg)
	require.Equal(t, 0, code, stderr)
	require.True(t, strings.HasPrefix(first, "capsbench sim --nodes 2 --caps 1000 --seconds 3 --seed 1 --arrivals poisson --load 0.95 --skew even "))
	again, _, _ := run("--seconds", "3", "--nodes", "2")
	require.Equal(t, first, again)
	b, err := os.ReadFile(svg)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(b), "<svg"))

	out, _, code := run("--seconds", "3", "--json")
	require.Equal(t, 0, code)
	var r bench.SimRun
	require.NoError(t, json.Unmarshal([]byte(out), &r))
	require.Equal(t, 3, r.Farm.Scenario.Nodes)
	require.True(t, r.Reference.Scenario.Reference)

	out, stderr, code = run("--nodes", "0")
	require.Equal(t, 1, code)
	require.Empty(t, out)
	require.Equal(t, "capsbench sim: invalid value \"0\" for flag -nodes: want a whole number from 1 to 1000\n", stderr)
}
