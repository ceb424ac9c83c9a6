package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// binary is the capsgate under test; capsctl and capslicense sit beside it.
var binary, capsctl, capslicense string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "capsgate-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "capsgate")
	capsctl = filepath.Join(dir, "capsctl")
	capslicense = filepath.Join(dir, "capslicense")
	if out, err := exec.Command("go", "build", "-o", dir+"/", "../...").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot build the binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

type proc struct {
	cmd   *exec.Cmd
	resp  string
	admin string
	out   *syncBuffer
	done  chan error
}

// startDev runs `capsgate --dev` as a real process on free loopback ports.
func startDev(t *testing.T, extra ...string) *proc {
	t.Helper()
	return start(t, append([]string{"--dev", "--data-dir", t.TempDir()}, extra...)...)
}

// start runs capsgate with args on free loopback ports until the test ends.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{resp: freePort(t), admin: freePort(t), out: &syncBuffer{}, done: make(chan error, 1)}
	args = append([]string{"--resp-addr", p.resp, "--admin-addr", p.admin, "--gossip-addr", freePort(t)}, args...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); <-p.done })
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", p.resp)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 15*time.Second, 20*time.Millisecond, "capsgate --dev did not listen")
	return p
}

// syncBuffer collects a process's output; exec writes it from another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// client is a minimal RESP client reading decision replies.
type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{c: c, r: bufio.NewReader(c)}
}

func (c *client) line(t *testing.T) string {
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.r.ReadString('\n')
	require.NoError(t, err)
	return strings.TrimRight(l, "\r\n")
}

// decision reads [admitted, reason, retry, remaining].
func (c *client) decision(t *testing.T) (admitted bool, reason string, retry, remaining int64) {
	require.Equal(t, "*4", c.line(t))
	a := c.line(t)
	reason = strings.TrimPrefix(c.line(t), "+")
	retry, _ = strconv.ParseInt(strings.TrimPrefix(c.line(t), ":"), 10, 64)
	remaining, _ = strconv.ParseInt(strings.TrimPrefix(c.line(t), ":"), 10, 64)
	return a == ":1", reason, retry, remaining
}

// pacedResult tallies a paced run.
type pacedResult struct {
	admitted, caps, withRetry int
	minSpan, maxSpan          float64 // bounds of the span of the server's decision instants, s
}

// paced sends perTick commands every 10 ms for ticks ticks on c and reads
// every decision.
func paced(t *testing.T, c *client, command string, perTick, ticks int) pacedResult {
	t.Helper()
	var r pacedResult
	var firstSend, firstReply, lastSend, lastReply time.Time
	batch := []byte(strings.Repeat(command+"\r\n", perTick))
	start := time.Now()
	for k := 0; k < ticks; k++ {
		if d := time.Until(start.Add(time.Duration(k) * 10 * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
		lastSend = time.Now()
		if k == 0 {
			firstSend = lastSend
		}
		_, _ = c.c.Write(batch)
		for i := 0; i < perTick; i++ {
			ok, reason, retry, _ := c.decision(t)
			switch {
			case ok:
				r.admitted++
			case reason == "CAPS":
				r.caps++
				if retry > 0 {
					r.withRetry++
				}
			default:
				t.Fatalf("unexpected rejection %s", reason)
			}
		}
		lastReply = time.Now()
		if k == 0 {
			firstReply = lastReply
		}
	}
	r.maxSpan = lastReply.Sub(firstSend).Seconds()
	r.minSpan = lastSend.Sub(firstReply).Seconds()
	return r
}

// requireRate checks a run offered above rate against the bucket: a GCRA
// admits burst + rate × (span of the server's decision instants) ± 1, and
// the span lies between what the client saw, however the machine
// schedules it.
func (r pacedResult) requireRate(t *testing.T, rate, burst float64) {
	t.Helper()
	require.LessOrEqual(t, float64(r.admitted), burst+rate*r.maxSpan+1, "admitted %d", r.admitted)
	require.GreaterOrEqual(t, float64(r.admitted), burst+rate*r.minSpan-1, "admitted %d", r.admitted)
}

func TestDevNodeEnforcesCAPS(t *testing.T) {
	p := startDev(t)
	c := dial(t, p.resp)
	_, _ = c.c.Write([]byte("ADMIT demo\r\n"))
	ok, reason, retry, remaining := c.decision(t)
	require.True(t, ok)
	require.Equal(t, "OK", reason)
	require.Zero(t, retry)
	require.Equal(t, int64(99), remaining)
	time.Sleep(200 * time.Millisecond) // the bucket refills to its full burst

	r := paced(t, c, "ADMIT demo", 30, 100)
	t.Logf("admitted %d of 3000 (CAPS %d) over %.3f..%.3f s", r.admitted, r.caps, r.minSpan, r.maxSpan)
	r.requireRate(t, 1000, 100)
	require.Equal(t, 3000, r.admitted+r.caps)
	require.Equal(t, r.caps, r.withRetry, "every CAPS rejection carries retry_after_ms > 0")
	admitted, caps := r.admitted, r.caps

	// /metrics counts them.
	resp, err := http.Get("http://" + p.admin + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^capsgate_admissions_total\{service="demo",reason="OK"\} (\d+)$`).FindSubmatch(body)
	require.NotNil(t, m, string(body))
	require.Equal(t, strconv.Itoa(admitted+1), string(m[1]))
	m = regexp.MustCompile(`(?m)^capsgate_admissions_total\{service="demo",reason="CAPS"\} (\d+)$`).FindSubmatch(body)
	require.NotNil(t, m)
	require.Equal(t, strconv.Itoa(caps), string(m[1]))
	require.Regexp(t, `(?m)^capsgate_decision_seconds_count \d+$`, string(body))
	require.Regexp(t, `(?m)^capsgate_resp_connections 1$`, string(body))

	// SIGTERM drains and exits 0.
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		p.done <- err
		require.NoError(t, err, p.out.String())
	case <-time.After(20 * time.Second):
		t.Fatal("capsgate did not exit within 20 s of SIGTERM")
	}
}

func TestDevBanner(t *testing.T) {
	p := startDev(t)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "redis-cli -h 127.0.0.1 -p") }, 5*time.Second, 10*time.Millisecond)
	_, port, _ := net.SplitHostPort(p.resp)
	require.Contains(t, p.out.String(), "-p "+port+" ADMIT demo")
}

func TestBadConfigStopsStartup(t *testing.T) {
	dir := t.TempDir()
	f := func(name string, args []string, file, want string) {
		t.Helper()
		if file != "" {
			path := filepath.Join(dir, name+".yaml")
			require.NoError(t, os.WriteFile(path, []byte(file), 0o600))
			args = append(args, "--config", path)
		}
		out, err := exec.Command(binary, args...).CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, name)
		require.NotZero(t, ee.ExitCode(), name)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		require.Len(t, lines, 1, "%s: one clear line, got %q", name, out)
		require.Contains(t, lines[0], want, name)
	}
	f("unknown key", nil, "node_name: a\nresp:\n  maxconns: 5\n", "maxconns")
	f("bad value", nil, "node_name: a\nresp:\n  max_conns: -4\n", "resp.max_conns")
	f("unreadable", []string{"--config", filepath.Join(dir, "missing.yaml")}, "", "missing.yaml")
	f("bad flag value", []string{"--dev", "--max-caps", "lots"}, "", "max-caps")
	f("no token outside dev", []string{"--resp-addr", "127.0.0.1:1", "--gossip-insecure"}, "", "admin.token_file")
}
