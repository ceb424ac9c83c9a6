package main

import (
	"bufio"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster/farm"
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

type proc struct {
	cmd    *exec.Cmd
	resp   string
	admin  string
	gossip string
	out    *farm.LogBuffer
	done   chan error
}

// startDev runs `capsgate --dev` as a real process on free loopback ports.
func startDev(t *testing.T, extra ...string) *proc {
	t.Helper()
	return start(t, append([]string{"--dev", "--data-dir", t.TempDir()}, extra...)...)
}

// start runs capsgate with args on free loopback ports until the test ends.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{resp: farm.FreeAddr(t), admin: farm.FreeAddr(t), gossip: farm.FreeAddr(t), out: &farm.LogBuffer{},
		done: make(chan error, 1)}
	args = append([]string{"--resp-addr", p.resp, "--admin-addr", p.admin, "--gossip-addr", p.gossip}, args...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, farm.StartTied(p.cmd))
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

// paced offers command to addr at rate for d (openloop.Paced: open loop,
// 10 ms batches) and checks every rejection is CAPS.
func paced(t *testing.T, addr, command string, rate float64, d time.Duration) openloop.Count {
	t.Helper()
	tally := openloop.Paced([]string{addr}, nil, rate, d, command)
	c := tally.Total
	require.NoError(t, c.Err)
	require.Equal(t, c.Admitted+c.Reasons["CAPS"], c.Sent, "only CAPS rejections: %s", c)
	return c
}

// requireRate checks a run offered above rate against the bucket: a GCRA
// admits burst + rate × (span of the server's decision instants), and the
// bounds follow from when the client sent and read each batch, stalls of
// a loaded machine included.
func requireRate(t *testing.T, c openloop.Count, rate, burst float64) {
	t.Helper()
	lo, hi := c.GCRABounds(rate, burst)
	require.LessOrEqual(t, float64(c.Admitted), hi, "%s", c)
	require.GreaterOrEqual(t, float64(c.Admitted), lo, "%s", c)
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

	// 3000 ADMITs paced over one second, always above the licensed 1000/s.
	r := paced(t, p.resp, "ADMIT demo", 3000, time.Second)
	t.Logf("admitted %s", r)
	requireRate(t, r, 1000, 100)
	require.Equal(t, 3000, r.Sent)
	admitted, caps := r.Admitted, r.Reasons["CAPS"]
	require.Equal(t, caps, r.RetryHints, "every CAPS rejection carries retry_after_ms > 0")

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

// exitLine runs capsgate with args, wants it to exit with code, and
// returns the last line it wrote.
func exitLine(t *testing.T, code int, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	require.Equal(t, code, ee.ExitCode(), "%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// --dev is a node with no config file (SPEC): with --config it would run
// a production file without its admin token, on its listeners and in its
// data dir; it is refused in one line, exit 2, before anything is written.
func TestDevRefusesConfigFile(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(token, []byte("s3cret\n"), 0o600))
	data := filepath.Join(dir, "data")
	base := filepath.Join(dir, "base.yaml")
	require.NoError(t, os.WriteFile(base, []byte("data_dir: "+data+"\nresp:\n  addr: "+farm.FreeAddr(t)+
		"\nadmin:\n  addr: "+farm.FreeAddr(t)+"\n  token_file: "+token+"\ngossip:\n  addr: "+farm.FreeAddr(t)+
		"\n  insecure: true\n"), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // were it accepted, it would run
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--config", base, "--dev").CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	require.Equal(t, 2, ee.ExitCode())
	require.Equal(t, "capsgate: invalid command line: --dev cannot be combined with --config: --dev runs a node with no config file; give its settings as flags (see capsgate --help)\n", string(out))
	require.NoDirExists(t, data)
}

// In --dev the flags still apply (SPEC): --admin-token-file makes the
// admin API require that token; /metrics, /healthz and /readyz need none.
func TestDevHonoursAdminTokenFile(t *testing.T) {
	token := filepath.Join(t.TempDir(), "admin.token")
	require.NoError(t, os.WriteFile(token, []byte("s3cret\n"), 0o600))
	p := startDev(t, "--admin-token-file", token)
	f := func(path, auth string, want int) {
		t.Helper()
		req, err := http.NewRequest("GET", "http://"+p.admin+path, nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, "%s %q", path, auth)
	}
	f("/v1/licenses", "", http.StatusUnauthorized)
	f("/v1/licenses", "Bearer wrong", http.StatusUnauthorized)
	f("/v1/licenses", "Bearer s3cret", http.StatusOK)
	f("/metrics", "", http.StatusOK)
	f("/healthz", "", http.StatusOK)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "(bearer token of "+token+")") }, 5*time.Second, 10*time.Millisecond)
}

// A listener's address in use stops start-up (exit 1) with the cause,
// for the RESP front end as for the admin API and gossip.
func TestListenerAddressInUse(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(token, []byte("s3cret\n"), 0o600))
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	busy := taken.Addr().String()
	f := func(flag, want string) {
		t.Helper()
		args := map[string]string{"--resp-addr": farm.FreeAddr(t), "--admin-addr": farm.FreeAddr(t), "--gossip-addr": farm.FreeAddr(t)}
		args[flag] = busy
		line := exitLine(t, 1, "--resp-addr", args["--resp-addr"], "--admin-addr", args["--admin-addr"], "--gossip-addr", args["--gossip-addr"],
			"--admin-token-file", token, "--gossip-insecure", "--data-dir", filepath.Join(dir, "data"))
		require.Equal(t, want, line)
	}
	f("--resp-addr", "capsgate: cannot listen for RESP on "+busy+" (resp.addr, --resp-addr): listen tcp "+busy+": bind: address already in use")
	f("--admin-addr", "capsgate: cannot listen for the admin API on "+busy+" (admin.addr, --admin-addr): listen tcp "+busy+": bind: address already in use")
	f("--gossip-addr", "capsgate: cannot start gossip on "+busy+" (gossip.addr, --gossip-addr): could not set up network transport: failed to obtain an address: failed to start TCP listener on \"127.0.0.1\" port "+busy[len("127.0.0.1:"):]+": listen tcp "+busy+": bind: address already in use")
}
