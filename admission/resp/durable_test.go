package resp

import (
	"io"
	"os"
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
