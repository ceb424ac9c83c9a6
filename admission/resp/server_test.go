package resp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

func TestMain(m *testing.M) {
	// 10,000 connections need 20,000 descriptors in one process (both ends).
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) == nil {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
	os.Exit(m.Run())
}

type testServer struct {
	*Server
	eng *admission.Engine
	clk admission.Clock
}

// startServer runs a real gnet server on a free loopback port.
func startServer(t testing.TB, cfg Config, clk admission.Clock, l admission.Limits, fwd ...Forwarder) *testServer {
	t.Helper()
	e := admission.NewEngine(admission.DefaultConfig())
	require.NoError(t, e.SetLimits("demo", l))
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	h := NewHandler(e, "")
	for _, f := range fwd {
		h.SetForwarder(f) // before serving
	}
	s := NewServer(cfg, h, clk)
	require.NoError(t, s.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, s.Stop(ctx))
	})
	return &testServer{Server: s, eng: e, clk: clk}
}

func unlimited() admission.Limits {
	return admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 1_000_000}
}

// needTool finds a binary that CI installs: missing, the test fails under
// CI=true and is skipped (with the reason) elsewhere.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed; .ci/run installs it (Debian redis-tools)", name)
		}
		t.Skipf("%s is not installed (apt-get install redis-tools)", name)
	}
	return p
}

func TestGoRedisPipelinedConformance(t *testing.T) {
	s := startServer(t, Config{}, admission.NewSystemClock(), unlimited())
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	require.Equal(t, "PONG", rdb.Ping(ctx).Val())

	const n = 10000
	pipe := rdb.Pipeline()
	cmds := make([]*redis.Cmd, n)
	for i := 0; i < n; i++ {
		var args []any
		switch i % 8 {
		case 0:
			args = []any{"ADMIT", "demo"}
		case 1:
			args = []any{"ADMIT", "demo", "CALL", fmt.Sprintf("call-%d", i)}
		case 2:
			args = []any{"ADMIT", "demo", "CALL", fmt.Sprintf("call-%d", i-1)} // retransmission
		case 3:
			args = []any{"RELEASE", "demo", fmt.Sprintf("call-%d", i-2)}
		case 4:
			args = []any{"REGISTER", "demo", fmt.Sprintf("sub-%d", (i/8)%80), "TTL", "60"}
		case 5:
			args = []any{"CONSUME", "demo", "acme", "1", "ID", fmt.Sprintf("tx-%d", i)}
		case 6:
			args = []any{"ECHO", fmt.Sprintf("e-%d", i)}
		case 7:
			args = []any{"ADMIT", "demo", "FOO", "bar"}
		}
		cmds[i] = pipe.Do(ctx, args...)
	}
	_, _ = pipe.Exec(ctx) // per-command errors are checked below
	consumed := int64(0)
	for i, c := range cmds {
		switch i % 8 {
		case 0, 1, 2:
			require.Equal(t, []any{int64(1), "OK", int64(0), int64(-1)}, c.Val(), "reply %d", i)
		case 3:
			require.Equal(t, int64(1), c.Val(), "reply %d", i)
		case 4:
			require.Equal(t, []any{int64(1), "OK", int64(0), int64(-1)}, c.Val(), "reply %d", i)
		case 5:
			consumed++
			require.Equal(t, []any{int64(1), "OK", int64(0), 1_000_000 - consumed}, c.Val(), "reply %d", i)
		case 6:
			require.Equal(t, fmt.Sprintf("e-%d", i), c.Val(), "reply %d", i)
		case 7:
			require.EqualError(t, c.Err(), "ERR syntax error", "reply %d", i)
		}
	}
	st := s.eng.Service("demo").Stats()
	require.Equal(t, uint64(2*n/8), st.Admissions[admission.OK], "retransmissions are not counted")
	require.Equal(t, int64(0), st.Sessions)
	require.Equal(t, int64(80), st.Subscribers)
	require.Equal(t, int64(n/8), st.TokensUsed)
}

func TestRedisCLI(t *testing.T) {
	cli := needTool(t, "redis-cli")
	l := admission.DevLimits()
	s := startServer(t, Config{}, admission.NewSystemClock(), l)
	host, port, _ := net.SplitHostPort(s.Addr())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(cli, append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
		require.NoError(t, err, string(out))
		return string(out)
	}
	require.Equal(t, "PONG\n", run("PING"))
	require.Equal(t, "1\nOK\n0\n99\n", run("ADMIT", "demo"))
	require.Equal(t, "0\nUNLICENSED\n60000\n0\n", run("ADMIT", "other"))
	require.Equal(t, "0\n", run("RELEASE", "demo", "x", "SECONDS", "0"))
	require.Equal(t, "ERR unknown command 'NOSUCH'", strings.TrimSpace(run("NOSUCH")))
	require.Contains(t, run("QUOTA", "demo"), "caps_licensed\n1000\n")
	require.Contains(t, run("INFO"), "capsgate_version:"+Version)
	// redis-cli reading commands from stdin, pipelined.
	c := exec.Command(cli, "-h", host, "-p", port)
	c.Stdin = strings.NewReader(strings.Repeat("ADMIT demo PRIORITY emergency\n", 50))
	out, err := c.CombinedOutput()
	require.NoError(t, err)
	require.Equal(t, 50, strings.Count(string(out), "OK\n"))
}

func TestRedisBenchmarkCountsExactly(t *testing.T) {
	bench := needTool(t, "redis-benchmark")
	s := startServer(t, Config{}, admission.NewSystemClock(), unlimited())
	host, port, _ := net.SplitHostPort(s.Addr())
	out, err := exec.Command(bench, "-h", host, "-p", port, "-n", "20000", "-c", "20", "-P", "16", "-q",
		"ADMIT", "demo", "PRIORITY", "high").CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "requests per second")
	require.Equal(t, uint64(20000), s.eng.Service("demo").Stats().Admissions[admission.OK], string(out))
}

// rawExchange sends raw bytes on a fresh connection and reads until the
// server closes it or goes quiet for 300 ms.
func rawExchange(t *testing.T, addr string, payload []byte) (reply string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write(payload)
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err == io.EOF {
			return b.String(), true
		}
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return b.String(), false
			}
			return b.String(), true // reset
		}
	}
}

// goodClient keeps asking PING and ADMIT on one connection and counts wrong
// answers until stopped.
func goodClient(t *testing.T, addr string, stop <-chan struct{}, wrong *atomic.Int64, done *sync.WaitGroup) {
	defer done.Done()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		wrong.Add(1)
		return
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if _, err := c.Write([]byte(cmd("ECHO", strconv.Itoa(i)))); err != nil {
			wrong.Add(1)
			return
		}
		want := fmt.Sprintf("$%d\r\n%d\r\n", len(strconv.Itoa(i)), i)
		got := make([]byte, len(want))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(r, got); err != nil || string(got) != want {
			wrong.Add(1)
			return
		}
	}
}

func TestBadInputLeavesOthersAlone(t *testing.T) {
	s := startServer(t, Config{}, admission.NewSystemClock(), unlimited())
	stop := make(chan struct{})
	var wrong atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go goodClient(t, s.Addr(), stop, &wrong, &wg)
	}
	big := strings.Repeat("x", MaxRequestBytes+10)
	f := func(name, payload, wantPrefix string, wantClosed bool) {
		t.Helper()
		got, closed := rawExchange(t, s.Addr(), []byte(payload))
		require.True(t, strings.HasPrefix(got, wantPrefix), "%s: got %q", name, got)
		require.Equal(t, wantClosed, closed, "%s: closed", name)
	}
	f("truncated frame waits", "*2\r\n$5\r\nADMIT\r\n$4\r\nde", "", false)
	f("bad bulk length", "*2\r\n$4\r\nPING\r\n$abc\r\n", "-ERR Protocol error: invalid bulk length", true)
	f("null multibulk", "*-1\r\n", "", false)
	f("negative multibulk", "*-5\r\n", "-ERR Protocol error: invalid multibulk length", true)
	f("bad multibulk", "*abc\r\n", "-ERR Protocol error: invalid multibulk length", true)
	f("huge bulk", "*1\r\n$99999999999\r\n", "-ERR Protocol error: ", true)
	f("negative bulk", "*1\r\n$-3\r\n", "-ERR Protocol error: invalid bulk length", true)
	f("wrong type", "*1\r\n+PING\r\n", "-ERR Protocol error: expected '$', got '+'", true)
	f("binary garbage", "\x00\xff\xfe\x13\x37\r\n", "-ERR unknown command", false)
	f("inline too long", big, "-ERR Protocol error: too big inline request", true)
	f("bulk too long", "*1\r\n$"+strconv.Itoa(MaxRequestBytes+1)+"\r\n", "-ERR Protocol error: ", true)
	f("too many args", "*100000\r\n", "-ERR Protocol error: ", true)
	f("unbalanced quotes", "ECHO \"abc\r\n", "-ERR Protocol error: unbalanced quotes in request", true)
	f("over-long name", cmd("ADMIT", strings.Repeat("n", 65)), "-ERR invalid service name", false)
	f("wrong arity", cmd("RELEASE", "demo"), "-ERR wrong number of arguments for 'release' command", false)
	f("int overflow", cmd("CONSUME", "demo", "a", "99999999999999999999"), "-ERR units must be a positive integer", false)
	f("inline ok", "PING\r\nPING\n", "+PONG\r\n+PONG\r\n", false)

	// 10,000 connections opened and dropped, 500 at a time.
	for batch := 0; batch < 20; batch++ {
		conns := make([]net.Conn, 0, 500)
		for i := 0; i < 500; i++ {
			c, err := net.Dial("tcp", s.Addr())
			require.NoError(t, err)
			conns = append(conns, c)
		}
		for i, c := range conns {
			if i%2 == 0 {
				_, _ = c.Write([]byte("*3\r\n$5\r\nADMIT\r\n")) // half a command, then gone
			}
			c.Close()
		}
	}
	close(stop)
	wg.Wait()
	require.Zero(t, wrong.Load(), "well-behaved clients got wrong answers")
	require.Eventually(t, func() bool { return s.Conns() == 0 }, 10*time.Second, 20*time.Millisecond)
	got, _ := rawExchange(t, s.Addr(), []byte(cmd("PING")))
	require.Equal(t, "+PONG\r\n", got)
}

func TestMaxConns(t *testing.T) {
	s := startServer(t, Config{MaxConns: 3}, admission.NewSystemClock(), unlimited())
	var held []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", s.Addr())
		require.NoError(t, err)
		held = append(held, c)
		_, _ = c.Write([]byte("PING\r\n"))
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "+PONG\r\n", line)
	}
	got, closed := rawExchange(t, s.Addr(), []byte("PING\r\n"))
	require.Equal(t, "-ERR max number of clients reached\r\n", got)
	require.True(t, closed)
	held[0].Close()
	require.Eventually(t, func() bool { return s.Conns() == 2 }, 5*time.Second, 10*time.Millisecond)
	got, _ = rawExchange(t, s.Addr(), []byte("PING\r\n"))
	require.Equal(t, "+PONG\r\n", got)
	for _, c := range held[1:] {
		c.Close()
	}
}

func TestIdleTimeout(t *testing.T) {
	clk := admission.NewFakeClock()
	s := startServer(t, Config{IdleTimeout: time.Second}, clk, unlimited())
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write([]byte("PING\r\n"))
	r := bufio.NewReader(c)
	line, _ := r.ReadString('\n')
	require.Equal(t, "+PONG\r\n", line)
	require.Equal(t, int64(1), s.Conns())
	clk.Advance(900 * time.Millisecond)
	time.Sleep(600 * time.Millisecond) // two sweeps see it not yet idle
	require.Equal(t, int64(1), s.Conns())
	clk.Advance(200 * time.Millisecond)
	require.Eventually(t, func() bool { return s.Conns() == 0 }, 5*time.Second, 10*time.Millisecond)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = r.ReadByte()
	require.ErrorIs(t, err, io.EOF)
}

func TestStopAnswersWhatWasReceived(t *testing.T) {
	e := admission.NewEngine(admission.DefaultConfig())
	require.NoError(t, e.SetLimits("demo", unlimited()))
	s := NewServer(Config{Addr: "127.0.0.1:0"}, NewHandler(e, ""), admission.NewSystemClock())
	require.NoError(t, s.Start())
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write([]byte(strings.Repeat(cmd("ADMIT", "demo"), 100)))
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	first, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "*4\r\n", first)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Stop(ctx))
	require.NoError(t, s.Stop(ctx), "Stop twice is harmless")
	rest, _ := io.ReadAll(r)
	require.Equal(t, 99, strings.Count(string(rest), "*4\r\n"), "all 100 decisions arrive before the close")
}

// benchLoopback sends ADMITs over one loopback connection, depth at a time,
// and reads every reply: the whole path through the kernel and gnet.
func benchLoopback(b *testing.B, depth int) {
	e := admission.NewEngine(admission.DefaultConfig())
	// A bucket so deep it never runs dry: every reply is the same.
	require.NoError(b, e.SetLimits("demo", admission.Limits{Licensed: true, CAPS: 1e11, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
	s := NewServer(Config{Addr: "127.0.0.1:0"}, NewHandler(e, ""), admission.NewSystemClock())
	require.NoError(b, s.Start())
	defer s.Stop(context.Background())
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(b, err)
	defer c.Close()
	req := []byte(strings.Repeat(cmd("ADMIT", "demo"), depth))
	reply := []byte(strings.Repeat(dec(1, "OK", 0, 2147483647), depth))
	buf := make([]byte, len(reply))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += depth {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoopbackAdmit is one ADMIT per round trip (how ndb_redis asks).
func BenchmarkLoopbackAdmit(b *testing.B) { benchLoopback(b, 1) }

// BenchmarkLoopbackAdmitPipelined64 is 64 ADMITs per round trip.
func BenchmarkLoopbackAdmitPipelined64(b *testing.B) { benchLoopback(b, 64) }

// A long pipeline is answered whole and in order, in paced rounds: 300,000
// ADMITs sent at once (9 MB, more than MaxInbound, by a client that reads
// as it writes but slower than the node answers: the node pauses it while
// it is behind) get 300,000 decisions, each admitted, while a second
// client's PINGs are answered between the rounds.
func TestLongPipelineAnsweredWhole(t *testing.T) {
	s := startServer(t, Config{}, &admission.SystemClock{}, unlimited())
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer c.Close()
	const n = 300_000
	go func() {
		w := bufio.NewWriterSize(c, 64<<10)
		for range n {
			_, _ = w.WriteString("*2\r\n$5\r\nADMIT\r\n$4\r\ndemo\r\n")
		}
		_ = w.Flush()
	}()
	pings := make(chan time.Duration, 1)
	go func() {
		p, err := net.Dial("tcp", s.Addr())
		if err != nil {
			pings <- -1
			return
		}
		defer p.Close()
		r := bufio.NewReader(p)
		var worst time.Duration
		for range 20 {
			t0 := time.Now()
			_, _ = p.Write([]byte("PING\r\n"))
			if l, err := r.ReadString('\n'); err != nil || l != "+PONG\r\n" {
				pings <- -1
				return
			}
			worst = max(worst, time.Since(t0))
			time.Sleep(5 * time.Millisecond)
		}
		pings <- worst
	}()
	r := bufio.NewReaderSize(c, 64<<10)
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for i := range n {
		// *4 :1 +OK :0 :-1 (unlimited)
		for k := range 5 {
			l, err := r.ReadSlice('\n')
			require.NoError(t, err, "decision %d of %d; paused %d times, closed for input %d", i, n, outputPaused.Get(), inputClosed.Get())
			if k == 1 {
				require.Equal(t, ":1\r\n", string(l), "decision %d", i)
			}
		}
	}
	worst := <-pings
	t.Logf("other client's worst PING %v; the pipeline paused %d times", worst, outputPaused.Get())
	require.Positive(t, worst, "the other client's PINGs were answered")
	require.Equal(t, uint64(n), s.eng.Service("demo").Stats().Admissions[admission.OK])
}

// fakeForwarder has room while room is set, and holds what it is given
// until flush sends it.
type fakeForwarder struct {
	mu     sync.Mutex
	room   atomic.Bool
	held   []*atomic.Int64
	calls  []string
	queued atomic.Int64
}

func (f *fakeForwarder) ForwardRoom() bool { return f.room.Load() }
func (f *fakeForwarder) hold(q *atomic.Int64, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q.Add(1)
	f.held = append(f.held, q)
	f.calls = append(f.calls, what)
}
func (f *fakeForwarder) ForwardRelease(_, call []byte, _ int64, q *atomic.Int64) {
	f.hold(q, "release "+string(call))
}
func (f *fakeForwarder) ForwardDeregister(_, sub []byte, _ int64, q *atomic.Int64) {
	f.hold(q, "deregister "+string(sub))
}
func (f *fakeForwarder) ClaimSubscriber(_, sub []byte, _ int64, q *atomic.Int64) {
	f.hold(q, "claim "+string(sub))
}
func (f *fakeForwarder) Consumed(_, _, id []byte, _ admission.Decision, q *atomic.Int64) {
	f.hold(q, "consumed "+string(id))
}
func (f *fakeForwarder) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range f.held {
		q.Add(-1)
	}
	f.held = f.held[:0]
}

// A connection that forwards work waits, not drops, when the forwarder has
// no room or when MaxForwardQueued of its own are waiting: its commands
// run once there is room, in order, and another connection's commands that
// forward nothing (PING, CONSUME without an ID) are answered meanwhile.
func TestForwardingWaitsForRoom(t *testing.T) {
	f := &fakeForwarder{}
	s := startServer(t, Config{}, &admission.SystemClock{}, unlimited(), f)
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer c.Close()
	r := bufio.NewReader(c)
	read := func(n int) []string {
		var got []string
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for range n {
			l, err := r.ReadString('\n')
			require.NoError(t, err)
			got = append(got, l)
		}
		return got
	}
	// No room: the RELEASE waits; the PING before it is answered.
	_, err = c.Write([]byte("PING\r\nRELEASE demo nobody-1\r\nPING\r\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"+PONG\r\n"}, read(1))
	other := dialPing(t, s.Addr())
	require.Equal(t, "+PONG\r\n", other())
	// A CONSUME without an ID forwards nothing: it does not wait.
	cc, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer cc.Close()
	_, err = cc.Write([]byte("CONSUME demo acme 1\r\n"))
	require.NoError(t, err)
	_ = cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(cc).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "*4\r\n", line, "CONSUME without an ID answered while the forwarder has no room")
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	require.Empty(t, f.calls, "nothing forwarded without room")
	f.mu.Unlock()
	f.room.Store(true)
	require.Equal(t, []string{":0\r\n", "+PONG\r\n"}, read(2))
	f.flush()
	// MaxForwardQueued waiting for the connection: the next one waits
	// until they are sent.
	var b strings.Builder
	for i := range MaxForwardQueued + 10 {
		fmt.Fprintf(&b, "RELEASE demo nobody-%d\r\n", i+2)
	}
	_, err = c.Write([]byte(b.String()))
	require.NoError(t, err)
	require.Len(t, read(MaxForwardQueued), MaxForwardQueued)
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	require.Len(t, f.calls, 1+MaxForwardQueued, "the rest wait")
	f.mu.Unlock()
	f.flush()
	require.Len(t, read(10), 10)
	f.mu.Lock()
	require.Len(t, f.calls, 1+MaxForwardQueued+10, "every RELEASE forwarded, none dropped")
	require.Equal(t, "release nobody-1", f.calls[0])
	require.Equal(t, fmt.Sprintf("release nobody-%d", MaxForwardQueued+11), f.calls[len(f.calls)-1])
	f.mu.Unlock()

	// With those 10 still waiting, an EXEC of 250 RELEASEs waits until
	// they are sent: a connection never has more than MaxForwardQueued
	// waiting.
	b.Reset()
	b.WriteString("MULTI\r\n")
	for i := range 250 {
		fmt.Fprintf(&b, "RELEASE demo tx-%d\r\n", i)
	}
	b.WriteString("EXEC\r\n")
	_, err = c.Write([]byte(b.String()))
	require.NoError(t, err)
	require.Len(t, read(251), 251, "+OK and QUEUED")
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	require.Len(t, f.calls, 1+MaxForwardQueued+10, "the EXEC waits")
	f.mu.Unlock()
	f.flush()
	got := read(251)
	require.Equal(t, "*250\r\n", got[0])
	f.mu.Lock()
	require.Len(t, f.calls, 1+MaxForwardQueued+10+250)
	f.mu.Unlock()
}

// dialPing returns a function sending PING on a new connection and
// returning the answer.
func dialPing(t *testing.T, addr string) func() string {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	return func() string {
		_, _ = c.Write([]byte("PING\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := r.ReadString('\n')
		require.NoError(t, err)
		return l
	}
}

// A negative bound is refused by name when the server starts, not taken
// as the default; 0 is the default, 1 a bound.
func TestServerConfigRanges(t *testing.T) {
	require.NoError(t, Config{MaxConns: 1, MaxOutbound: 1, MaxBuffered: 1, EventLoops: 1, IdleTimeout: 1}.Validate())
	require.NoError(t, Config{}.Validate())
	for cfg, msg := range map[*Config]string{
		{MaxConns: -1}:    "resp.Config.MaxConns must be >= 0 (0: the default), got -1",
		{IdleTimeout: -1}: "resp.Config.IdleTimeout must be >= 0 (0: the default), got -1",
		{EventLoops: -2}:  "resp.Config.EventLoops must be >= 0 (0: the default), got -2",
		{MaxOutbound: -1}: "resp.Config.MaxOutbound must be >= 0 (0: the default), got -1",
		{MaxBuffered: -9}: "resp.Config.MaxBuffered must be >= 0 (0: the default), got -9",
	} {
		cfg.Addr = "127.0.0.1:0"
		s := NewServer(*cfg, NewNullHandler(), admission.NewFakeClock())
		require.EqualError(t, s.Start(), "cannot listen for RESP on 127.0.0.1:0: "+msg)
	}
}

// TestStopRunsTheRounds: Stop runs and sends what a connection had
// received and had not yet run before it closes it, and refuses new
// connections meanwhile. 5,000 COMMAND DOCS (30 bytes each, a reply of
// kilobytes: tens of megabytes in all) and an ECHO sent at once, by a
// client that reads nothing until Stop has begun: the replies pass the
// sockets' buffers and the client's part of the node's reply memory, so
// the node pauses it with most of them unrun. Read from then on, every
// reply arrives, in order, the ECHO's last.
func TestStopRunsTheRounds(t *testing.T) {
	e := admission.NewEngine(admission.DefaultConfig())
	require.NoError(t, e.SetLimits("demo", unlimited()))
	h := NewHandler(e, "")
	one := len(handleOut(h, cmd("COMMAND", "DOCS")))
	require.Greater(t, one, 4<<10)
	s := NewServer(Config{Addr: "127.0.0.1:0"}, h, admission.NewSystemClock())
	s.drainFor = 30 * time.Second // tens of megabytes, under -race on a busy machine
	require.NoError(t, s.Start())
	c, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer c.Close()
	const n = 5000
	_, err = c.Write([]byte(strings.Repeat(cmd("COMMAND", "DOCS"), n) + cmd("ECHO", "end-marker")))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !s.pace.idle() }, 10*time.Second, time.Millisecond, "paused, most of it unrun")
	stopped := stopAsync(s)
	// While it drains, a new connection is refused.
	require.Eventually(t, s.draining.Load, 5*time.Second, time.Millisecond)
	late, err := net.Dial("tcp", s.Addr())
	require.NoError(t, err)
	defer late.Close()
	_ = late.SetReadDeadline(time.Now().Add(5 * time.Second))
	refused, _ := io.ReadAll(late)
	require.Equal(t, string(stoppingReply), string(refused))
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, _ := io.ReadAll(c)
	require.Equal(t, n*one+len(bulk("end-marker")), len(got), "every reply (%d bytes each) and the ECHO's", one)
	require.True(t, strings.HasSuffix(string(got), bulk("end-marker")))
	require.NoError(t, <-stopped)
}

// stopAsync stops s (within 10 s) on another goroutine, and returns where
// Stop's result comes.
func stopAsync(s *Server) <-chan error {
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopped <- s.Stop(ctx)
	}()
	return stopped
}

// handleOut is the reply a fresh connection of h gets to in.
func handleOut(h *Handler, in string) []byte {
	_, out, _ := h.Handle(0, NewConnState(1), []byte(in), nil)
	return out
}
