package resp

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// fakeRouter routes the IDs starting with "r-" to another member.
type fakeRouter struct{ asked }

func (f *fakeRouter) Routes(_, _, id []byte) bool { return strings.HasPrefix(string(id), "r-") }

func (f *fakeRouter) Route(args [][]byte, done func(admission.Decision, bool)) bool {
	f.record(args, done)
	return true
}

// A CONSUME whose ID another member owns goes to it (Router) and is
// answered with the owner's decision, in request order, other clients
// being answered meanwhile; an owner that does not answer makes it
// OVERLOAD (the client retries with its ID); an ID whose owner's notice
// came is answered here with the first decision; a routed CONSUME
// (ROUTED) and a transaction's are decided here; and a CONSUME to route
// behind replies held for a commit waits for the commit before it goes.
func TestRoutedConsume(t *testing.T) {
	keys, e := keysEngine(t, 1000)
	f := &fakeRouter{asked{calls: make(chan struct{}, 16)}}
	h := NewHandler(e, "")
	h.SetRouter(f)
	addr := serve(t, h, admission.NewSystemClock())
	c, r := dialResp(t, addr)
	used := func() int64 { return e.Service("demo").Stats().TokensUsed }
	write := func(s string) {
		t.Helper()
		_, err := c.Write([]byte(s))
		require.NoError(t, err)
	}
	silent := func(what string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := r.ReadByte()
		require.Error(t, err, what)
	}

	write("CONSUME demo a 2 ID r-1\r\nPING\r\n")
	<-f.calls
	require.Equal(t, []string{"CONSUME", "demo", "a", "2", "ID", "r-1"}, f.sent[0], "the CONSUME, whole")
	require.Equal(t, "+PONG\r\n", dialPing(t, addr)(), "another client is answered while it waits")
	silent("nothing before the owner's answer")
	f.answer(0, admission.Decision{Reason: admission.OK, Remaining: 42}, true)
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:42\r\n+PONG\r\n", replies(t, c, r, 6), "the owner's decision, then the PING")
	require.Zero(t, used(), "charged by the owner, not here")

	// The owner's refusal is the answer; no answer is OVERLOAD.
	write("CONSUME demo a 2 ID r-2\r\nCONSUME demo a 2 ID r-3\r\n")
	<-f.calls
	f.answer(1, admission.Decision{Reason: admission.TOKENS, RetryAfterMS: 60000, Remaining: 1}, true)
	<-f.calls
	f.answer(2, admission.Decision{}, false)
	require.Equal(t, "*4\r\n:0\r\n+TOKENS\r\n:60000\r\n:1\r\n*4\r\n:0\r\n+OVERLOAD\r\n:50\r\n:0\r\n", replies(t, c, r, 10))

	// The owner's notice came: answered here, uncharged, not sent.
	require.True(t, e.RecordConsumed(time.Now().UnixNano(), []byte("demo"), []byte("a"), []byte("r-known"),
		admission.Decision{Reason: admission.OK, Remaining: 7}))
	keys.durable.Store(keys.Ticket())
	write("CONSUME demo a 2 ID r-known\r\n")
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:7\r\n", replies(t, c, r, 5))

	// ROUTED, and inside a transaction: decided here.
	write("CONSUME demo a 2 ID r-4 ROUTED n2\r\nMULTI\r\nCONSUME demo a 3 ID r-5\r\nEXEC\r\n")
	require.Eventually(t, func() bool { return used() == 5 }, 5*time.Second, time.Millisecond)
	keys.durable.Store(keys.Ticket())
	h.Released()
	got := replies(t, c, r, 5+1+1+1+5)
	require.True(t, strings.HasPrefix(got, "*4\r\n:1\r\n+OK\r\n:0\r\n:998\r\n"), got)
	require.True(t, strings.HasSuffix(got, "*1\r\n*4\r\n:1\r\n+OK\r\n:0\r\n:995\r\n"), got)
	require.Len(t, f.sent, 3, "neither was sent")

	// Behind a reply held for this node's commit, a CONSUME to route
	// waits for the commit, then goes.
	write("CONSUME demo a 1 ID l-1\r\nCONSUME demo a 2 ID r-6\r\n")
	require.Eventually(t, func() bool { return used() == 6 }, 5*time.Second, time.Millisecond)
	select {
	case <-f.calls:
		t.Fatal("routed before the held reply was released")
	case <-time.After(50 * time.Millisecond):
	}
	keys.durable.Store(keys.Ticket())
	h.Released()
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:994\r\n", replies(t, c, r, 5), "the held reply first")
	<-f.calls
	require.Equal(t, "r-6", f.sent[3][5])
	f.answer(3, admission.Decision{Reason: admission.OK, Remaining: 3}, true)
	require.Equal(t, "*4\r\n:1\r\n+OK\r\n:0\r\n:3\r\n", replies(t, c, r, 5))
}
