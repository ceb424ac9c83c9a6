package resp

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// memKeys is a KeyStore whose commits the test makes (commit).
type memKeys struct {
	mu              sync.Mutex
	keys            map[admission.Key]admission.Decision
	ticket, durable atomic.Uint64
	kicks           atomic.Int64
}

func (m *memKeys) Lookup(k admission.Key, _ int64) (admission.Decision, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.keys[k]
	return d, ok
}

func (m *memKeys) Remember(k admission.Key, _ int64, d admission.Decision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ticket.Add(1)
	m.keys[k] = d
}

func (m *memKeys) Ticket() uint64  { return m.ticket.Load() }
func (m *memKeys) Durable() uint64 { return m.durable.Load() }
func (m *memKeys) Full() bool      { return false }

// keysEngine is an engine keeping CONSUME IDs in a memKeys whose commits
// the test makes, with the service demo of a token pool of tokens.
func keysEngine(t *testing.T, tokens int64) (*memKeys, *admission.Engine) {
	t.Helper()
	keys := &memKeys{keys: map[admission.Key]admission.Decision{}}
	cfg := admission.DefaultConfig()
	cfg.Keys = keys
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("demo", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: tokens}))
	return keys, e
}

// A CONSUME with ID is acknowledged once its key is committed: its reply
// and every later one on the connection wait (the commands after it still
// run), the commit is asked for at once, one commit releases a whole
// pipeline in order, and other connections are answered meanwhile.
func TestConsumeIDRepliesWaitForTheCommit(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	h.SetCommitKick(func() { keys.kicks.Add(1) })
	addr := serve(t, h, admission.NewSystemClock())
	c, r := dialResp(t, addr)
	var err error

	// Without an ID nothing waits.
	_, err = c.Write([]byte("CONSUME demo a 1\r\n"))
	require.NoError(t, err)
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:-1\r\n", replies(t, c, r, 5))

	var cmds strings.Builder
	cmds.WriteString("PING\r\n")
	for _, id := range []string{"i1", "i2", "i3"} {
		cmds.WriteString("CONSUME demo a 2 ID " + id + "\r\n")
	}
	cmds.WriteString("ECHO last\r\n")
	_, err = c.Write([]byte(cmds.String()))
	require.NoError(t, err)
	require.Equal(t, "+PONG\r\n", replies(t, c, r, 1), "the reply before the first CONSUME ID goes at once")
	require.Eventually(t, func() bool { return keys.Ticket() == 3 }, 5*time.Second, time.Millisecond,
		"the commands after a held reply still run")
	require.Positive(t, keys.kicks.Load(), "a commit was asked for")
	require.Equal(t, "+PONG\r\n", dialPing(t, addr)(), "another client is answered meanwhile")
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = r.ReadByte()
	require.Error(t, err, "nothing is acknowledged before the commit")

	keys.durable.Store(2) // a commit that made i1 and i2 durable, not i3
	h.Released()
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = r.ReadByte()
	require.Error(t, err, "the replies wait for the last CONSUME ID among them")
	keys.durable.Store(3)
	h.Released()
	want := "*4\r\n:1\r\n+OK\r\n:0\r\n:-1\r\n"
	require.Equal(t, want+want+want+"$4\r\nlast\r\n", replies(t, c, r, 17), "one commit releases the pipeline, in order")

	// A repeat of a durable ID waits for nothing; a new one waits again.
	_, err = c.Write([]byte("CONSUME demo a 2 ID i1\r\nCONSUME demo a 2 ID i4\r\nPING\r\n"))
	require.NoError(t, err)
	require.Equal(t, want, replies(t, c, r, 5))
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = r.ReadByte()
	require.Error(t, err)
	keys.durable.Store(4)
	h.Released()
	require.Equal(t, want+"+PONG\r\n", replies(t, c, r, 6))
}

// A QUIT behind replies held for a commit closes the connection once they
// are sent, not before (their acknowledgement must not come before the
// commit), and runs nothing after it; replies that wait longer than
// MaxHeldWait (a disk failing every commit) close the connection unsent.
func TestHeldRepliesQuitAndTimeout(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	clk := admission.NewFakeClock()
	addr := serve(t, h, clk)

	c, r := dialResp(t, addr)
	_, err := c.Write([]byte("CONSUME demo a 2 ID q1\r\nQUIT\r\nCONSUME demo a 2 ID q2\r\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return keys.Ticket() == 1 }, 5*time.Second, time.Millisecond)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = r.ReadByte()
	require.Error(t, err, "nothing before the commit, the QUIT's +OK included")
	keys.durable.Store(1)
	h.Released()
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:-1\r\n+OK\r\n", replies(t, c, r, 6))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "closed after the held replies")
	require.Equal(t, uint64(1), keys.Ticket(), "the CONSUME after QUIT did not run")

	c2, r2 := dialResp(t, addr)
	_, err = c2.Write([]byte("CONSUME demo a 2 ID q3\r\n"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return keys.Ticket() == 2 }, 5*time.Second, time.Millisecond)
	clk.Advance(MaxHeldWait - time.Second)
	_ = c2.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
	_, err = r2.ReadByte()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "open within MaxHeldWait")
	clk.Advance(2 * time.Second)
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r2.ReadByte()
	require.ErrorIs(t, err, io.EOF, "closed past MaxHeldWait, unacknowledged")
}

// A connection left waiting for a commit that then holds more replies (a
// later read's CONSUME ID, with a later ticket) waits for the later ticket:
// the commit that makes only the first durable leaves it waiting, and the
// commit that makes the last durable wakes it. (Listed for the first
// ticket only, it would find its replies not all durable at that wake, and
// nothing would wake it again.)
func TestHeldWaitFollowsLaterTickets(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	h.SetCommitKick(func() { keys.kicks.Add(1) })
	cs := NewConnState(1)
	woken := 0
	cs.SetWake(func() { woken++ })
	read := func(in string) {
		t.Helper()
		n, out, closed := h.Handle(1, cs, []byte(in), nil)
		require.Equal(t, len(in), n)
		require.Empty(t, out, "held for the commit")
		require.False(t, closed)
		require.True(t, h.wait(cs), "waits for the commit")
	}
	read(cmd("CONSUME", "demo", "a", "1", "ID", "w1"))
	read(cmd("CONSUME", "demo", "a", "1", "ID", "w2") + cmd("PING"))
	require.Equal(t, int64(2), keys.kicks.Load(), "a commit asked for each later ticket")

	keys.durable.Store(1)
	h.Released()
	require.Zero(t, woken, "not woken before its last ticket is durable")
	_, ok := h.HeldReady(cs, nil)
	require.False(t, ok, "w2 is not durable yet")
	require.True(t, h.wait(cs))
	require.Equal(t, int64(2), keys.kicks.Load(), "listed already")

	keys.durable.Store(2)
	h.Released()
	require.Equal(t, 1, woken, "woken by the commit of w2")
	out, ok := h.HeldReady(cs, nil)
	require.True(t, ok)
	require.Equal(t, dec(1, "OK", 0, -1)+dec(1, "OK", 0, -1)+"+PONG\r\n", string(out))
	require.False(t, h.wait(cs), "nothing left to wait for")
	h.waiters.mu.Lock()
	require.Empty(t, h.waiters.list)
	h.waiters.mu.Unlock()
}

// committer commits keys every millisecond, and at once when asked (as the
// node's key store does), until the test ends. A commit takes until the
// next one starts: each makes durable what the one before found to write,
// so commands keep running, on later tickets, while it writes.
func committer(t *testing.T, keys *memKeys, h *Handler) {
	kick, stop := make(chan struct{}, 1), make(chan struct{})
	h.SetCommitKick(func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		var writing uint64
		for {
			select {
			case <-stop:
				return
			case <-kick:
			case <-tick.C:
			}
			keys.durable.Store(writing)
			writing = keys.Ticket()
			h.Released()
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// Pipelined CONSUMEs with IDs, in one write or in many, are answered in
// order within a few commits, and the connection keeps answering.
func TestPipelinedConsumeIDsAnswered(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	committer(t, keys, h)
	addr := serve(t, h, admission.NewSystemClock())
	c, r := dialResp(t, addr)
	want := dec(1, "OK", 0, -1)
	id := 0
	next := func() string {
		id++
		return cmd("CONSUME", "demo", "a", "1", "ID", "p"+strconv.Itoa(id))
	}
	for _, writes := range [][]int{{2000}, {1, 1}, {1, 1, 1, 1, 1, 1, 1, 1}, {300, 300, 300}} {
		total := 0
		for _, n := range writes {
			var b strings.Builder
			for range n {
				b.WriteString(next())
			}
			_, err := c.Write([]byte(b.String()))
			require.NoError(t, err)
			total += n
		}
		_, err := c.Write([]byte(cmd("PING")))
		require.NoError(t, err)
		require.Equal(t, strings.Repeat(want, total)+"+PONG\r\n", replies(t, c, r, 5*total+1), "writes %v", writes)
	}
	require.Equal(t, uint64(id), keys.Ticket())
}

// Replies held for a commit come before the close that a malformed
// request, or the client's half-close, makes: the CONSUME was charged and
// its client must hear so.
func TestHeldRepliesBeforeClose(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	s := NewServer(Config{Addr: "127.0.0.1:0"}, h, admission.NewSystemClock())
	require.NoError(t, s.Start())
	t.Cleanup(func() { require.NoError(t, s.Stop(context.Background())) })
	addr := s.Addr()
	var err error
	quiet := func(c net.Conn, r *bufio.Reader) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := r.ReadByte()
		require.ErrorIs(t, err, os.ErrDeadlineExceeded, "nothing before the commit, and no close")
	}
	commit := func() {
		keys.durable.Store(keys.Ticket())
		h.Released()
	}
	eof := func(c net.Conn, r *bufio.Reader) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := r.ReadByte()
		require.ErrorIs(t, err, io.EOF, "closed after the replies")
	}

	// A malformed request behind a held reply.
	c, r := dialResp(t, addr)
	_, err = c.Write([]byte(cmd("CONSUME", "demo", "a", "1", "ID", "x1") + cmd("PING") + "*x\r\n" + cmd("PING")))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return keys.Ticket() == 1 }, 5*time.Second, time.Millisecond)
	quiet(c, r)
	commit()
	require.Equal(t, dec(1, "OK", 0, -1)+"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n", replies(t, c, r, 7))
	eof(c, r)

	// A half-close behind a held reply.
	c, r = dialResp(t, addr)
	_, err = c.Write([]byte(cmd("CONSUME", "demo", "a", "1", "ID", "x2") + cmd("PING")))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.Eventually(t, func() bool { return keys.Ticket() == 2 }, 5*time.Second, time.Millisecond)
	quiet(c, r)
	require.Equal(t, 1, orphans(s), "gnet closed it; its replies wait")
	require.Equal(t, int64(1), s.Conns(), "and count until sent")
	commit()
	require.Equal(t, dec(1, "OK", 0, -1)+"+PONG\r\n", replies(t, c, r, 6))
	eof(c, r)
	require.Eventually(t, func() bool { return s.Conns() == 0 }, 5*time.Second, time.Millisecond)
}

// orphans counts the closed connections whose held replies wait.
func orphans(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.orphans)
}

// Stopping the server sends the replies held for a commit once it is made
// (the node's key store commits while the front end drains), then closes.
func TestStopSendsHeldReplies(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	s := NewServer(Config{Addr: "127.0.0.1:0"}, h, admission.NewSystemClock())
	require.NoError(t, s.Start())
	c, r := dialResp(t, s.Addr())
	_, err := c.Write([]byte(cmd("CONSUME", "demo", "a", "1", "ID", "s1") + cmd("PING")))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return keys.Ticket() == 1 }, 5*time.Second, time.Millisecond)
	stopped := stopAsync(s)
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = r.ReadByte()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "nothing before the commit, and no close")
	require.Eventually(t, func() bool { return orphans(s) == 1 }, 5*time.Second, time.Millisecond, "its connection closed, its replies wait")
	keys.durable.Store(1)
	h.Released()
	require.Equal(t, dec(1, "OK", 0, -1)+"+PONG\r\n", replies(t, c, r, 6))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r.ReadByte()
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, <-stopped)
}

// Held replies left by a closed connection wait at most MaxHeldWait, as a
// connection's do: past it the socket closes with them unsent.
func TestOrphanedHeldRepliesTimeOut(t *testing.T) {
	keys, e := keysEngine(t, admission.Unlimited)
	h := NewHandler(e, "")
	clk := admission.NewFakeClock()
	s := NewServer(Config{Addr: "127.0.0.1:0"}, h, clk)
	require.NoError(t, s.Start())
	t.Cleanup(func() { require.NoError(t, s.Stop(context.Background())) })
	c, r := dialResp(t, s.Addr())
	_, err := c.Write([]byte(cmd("CONSUME", "demo", "a", "1", "ID", "t1")))
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	require.Eventually(t, func() bool { return orphans(s) == 1 }, 5*time.Second, time.Millisecond)
	timeouts := heldTimeouts.Get()
	clk.Advance(MaxHeldWait + time.Second)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = r.ReadByte()
	require.ErrorIs(t, err, io.EOF, "closed unacknowledged")
	require.Equal(t, timeouts+1, heldTimeouts.Get())
	require.Eventually(t, func() bool { return s.Conns() == 0 }, 5*time.Second, time.Millisecond)
	require.Equal(t, uint64(1), keys.Ticket())
}
