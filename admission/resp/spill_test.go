package resp

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// asked records what a node sends a member (a spilled ADMIT, a routed
// CONSUME); the test answers each itself.
type asked struct {
	mu    sync.Mutex
	sent  [][]string
	done  []func(admission.Decision, bool)
	calls chan struct{}
}

func (f *asked) record(args [][]byte, done func(admission.Decision, bool)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var a []string
	for _, b := range args {
		a = append(a, string(b))
	}
	f.sent, f.done = append(f.sent, a), append(f.done, done)
	f.calls <- struct{}{}
}

func (f *asked) answer(i int, d admission.Decision, ok bool) {
	f.mu.Lock()
	done := f.done[i]
	f.mu.Unlock()
	done(d, ok)
}

// fakeSpiller spills while it has room (guarded by mu).
type fakeSpiller struct {
	asked
	room bool
}

func (f *fakeSpiller) Spill(args [][]byte, _ []byte, done func(admission.Decision, bool)) bool {
	f.mu.Lock()
	room := f.room
	f.mu.Unlock()
	if !room {
		return false
	}
	f.record(args, done)
	return true
}

// spillServer serves a licence of 1 CAPS on a clock that never moves: the
// first ADMIT is admitted, every later one refused by the CAPS bucket.
func spillServer(t *testing.T, f *fakeSpiller) (addr string) {
	t.Helper()
	e := admission.NewEngine(admission.DefaultConfig())
	require.NoError(t, e.SetLimits("demo", admission.Limits{Licensed: true, CAPS: 1, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
	h := NewHandler(e, "")
	h.SetSpiller(f)
	return serve(t, h, admission.NewFakeClock())
}

// serve serves h on a loopback port until the test ends and returns the
// address.
func serve(t *testing.T, h *Handler, clk admission.Clock) string {
	t.Helper()
	s := NewServer(Config{Addr: "127.0.0.1:0"}, h, clk)
	require.NoError(t, s.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, s.Stop(ctx))
	})
	return s.Addr()
}

// dialResp connects to addr until the test ends, with a reader of its replies.
func dialResp(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// replies reads n RESP lines from r.
func replies(t *testing.T, c net.Conn, r *bufio.Reader, n int) string {
	t.Helper()
	var b strings.Builder
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range n {
		l, err := r.ReadString('\n')
		require.NoError(t, err)
		b.WriteString(l)
	}
	return b.String()
}

const (
	admitted1 = "*4\r\n:1\r\n+OK\r\n:0\r\n:7\r\n"
	refusedCA = "*4\r\n:0\r\n+CAPS\r\n"
)

// An ADMIT the bucket refuses goes to the Spiller; its answer comes in
// request order (the commands pipelined after it wait for it), is the
// member's decision when it admitted and this node's refusal otherwise;
// other clients are answered meanwhile. A spilled ADMIT (SPILLED) and the
// ADMITs of a transaction are decided here and never spilled.
func TestSpilledAdmitAnsweredInOrder(t *testing.T) {
	f := &fakeSpiller{asked: asked{calls: make(chan struct{}, 16)}, room: true}
	addr := spillServer(t, f)
	c, r := dialResp(t, addr)
	var err error

	_, err = c.Write([]byte("ADMIT demo\r\nADMIT demo CALL c-1\r\nPING\r\n"))
	require.NoError(t, err)
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:0\r\n", replies(t, c, r, 5), "the first is admitted here")
	<-f.calls
	require.Equal(t, []string{"ADMIT", "demo", "CALL", "c-1"}, f.sent[0], "the refused ADMIT, whole")
	require.Equal(t, "+PONG\r\n", dialPing(t, addr)(), "another client is answered while it waits")
	f.answer(0, admission.Decision{Reason: admission.OK, Remaining: 7}, true)
	require.Equal(t, admitted1+"+PONG\r\n", replies(t, c, r, 6), "the member's decision, then the PING")

	// The member refuses: this node's refusal stands.
	_, err = c.Write([]byte("ADMIT demo\r\nECHO after\r\n"))
	require.NoError(t, err)
	<-f.calls
	f.answer(1, admission.Decision{}, false)
	got := replies(t, c, r, 7)
	require.True(t, strings.HasPrefix(got, refusedCA), got)
	require.True(t, strings.HasSuffix(got, "$5\r\nafter\r\n"), got)

	// SPILLED: decided here; a transaction's ADMIT too; and no room to
	// spill: the refusal at once.
	_, err = c.Write([]byte("ADMIT demo SPILLED n2\r\nMULTI\r\nADMIT demo\r\nEXEC\r\n"))
	require.NoError(t, err)
	got = replies(t, c, r, 5+1+1+1+5)
	require.True(t, strings.HasPrefix(got, refusedCA), got)
	require.Contains(t, got, "+QUEUED\r\n*1\r\n"+refusedCA)
	f.mu.Lock()
	f.room = false
	f.mu.Unlock()
	_, err = c.Write([]byte("ADMIT demo\r\n"))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(replies(t, c, r, 5), refusedCA))
	f.mu.Lock()
	require.Len(t, f.sent, 2, "only the two plain refusals were spilled")
	f.mu.Unlock()
}
