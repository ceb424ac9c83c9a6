package resp

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// cmd encodes a command as a RESP multibulk frame.
func cmd(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

func dec(admitted int, reason string, retry, remaining int64) string {
	return fmt.Sprintf("*4\r\n:%d\r\n+%s\r\n:%d\r\n:%d\r\n", admitted, reason, retry, remaining)
}

type testConn struct {
	h   *Handler
	cs  *ConnState
	clk *admission.FakeClock
}

func newTestConn(t testing.TB, password string) *testConn {
	t.Helper()
	e := admission.NewEngine(admission.DefaultConfig())
	require.NoError(t, e.SetLimits("demo", admission.DevLimits()))
	return &testConn{h: NewHandler(e, password), cs: NewConnState(1), clk: admission.NewFakeClock()}
}

// send runs in through the handler and returns the replies, the bytes left
// unconsumed and whether the connection closes.
func (c *testConn) send(in string) (out string, rest int, closed bool) {
	buf := []byte(in)
	n, o, cl := c.h.Handle(c.clk.Now(), c.cs, buf, nil)
	return string(o), len(buf) - n, cl
}

func TestCommandTable(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	f(cmd("PING"), "+PONG\r\n")
	f(cmd("ping", "hi"), "$2\r\nhi\r\n")
	f(cmd("ECHO", "x y"), "$3\r\nx y\r\n")
	f(cmd("SELECT", "0"), "+OK\r\n")
	f(cmd("SELECT", "1"), "-ERR DB index is out of range\r\n")
	f(cmd("COMMAND", "COUNT"), ":20\r\n")
	f(cmd("CLIENT", "SETINFO", "LIB-NAME", "go-redis"), "+OK\r\n")
	f(cmd("CLIENT", "SETNAME", "kamailio"), "+OK\r\n")
	f(cmd("CLIENT", "GETNAME"), "$8\r\nkamailio\r\n")
	f(cmd("HELLO", "3"), "-NOPROTO sorry, this protocol version is not supported.\r\n")
	f(cmd("AUTH", "x"), "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n")
	f(cmd("ADMIT", "demo"), dec(1, "OK", 0, 99))
	f("ADMIT demo\r\n", dec(1, "OK", 0, 98))
	f(cmd("admit", "demo", "CALL", "c1@host", "ACCOUNT", "acme", "PRIORITY", "high"), dec(1, "OK", 0, 97))
	f(cmd("ADMIT", "demo", "CALL", "c1@host"), dec(1, "OK", 0, 97)) // a retransmission: first answer
	f(cmd("RELEASE", "demo", "c1@host", "SECONDS", "95"), ":1\r\n")
	f(cmd("RELEASE", "demo", "c1@host"), ":0\r\n")
	f(cmd("ADMIT", "nosuch"), dec(0, "UNLICENSED", 60000, 0))
	f(cmd("ADMIT", "nosuch", "PRIORITY", "EMERGENCY"), dec(1, "OK", 0, -1))
	f(cmd("REGISTER", "demo", "sip:alice@example.net", "TTL", "3600"), dec(1, "OK", 0, 9999))
	f(cmd("REGISTER", "demo", "sip:alice@example.net"), dec(1, "OK", 0, 9999))
	f(cmd("DEREGISTER", "demo", "sip:alice@example.net"), ":1\r\n")
	f(cmd("DEREGISTER", "demo", "sip:alice@example.net"), ":0\r\n")
	f(cmd("CONSUME", "demo", "acme", "10", "ID", "tx-1"), dec(1, "OK", 0, 999990))
	f(cmd("CONSUME", "demo", "acme", "10", "ID", "tx-1"), dec(1, "OK", 0, 999990))
	f(cmd("CONSUME", "demo", "acme", "2000000"), dec(0, "TOKENS", 60000, 999990))
	// errors
	f(cmd("NOSUCH", "x"), "-ERR unknown command 'NOSUCH'\r\n")
	f(cmd("ADMIT"), "-ERR wrong number of arguments for 'admit' command\r\n")
	f(cmd("ADMIT", "demo", "CALL"), "-ERR wrong number of arguments for 'admit' command\r\n")
	f(cmd("ADMIT", "de mo"), "-ERR invalid service name\r\n")
	f(cmd("ADMIT", strings.Repeat("s", 65)), "-ERR invalid service name\r\n")
	f(cmd("ADMIT", "demo", "ACCOUNT", "a/b"), "-ERR invalid account name\r\n")
	f(cmd("ADMIT", "demo", "CALL", "a\x00b"), "-ERR invalid call-id\r\n")
	f(cmd("ADMIT", "demo", "PRIORITY", "urgent"), "-ERR invalid priority: want normal, high or emergency\r\n")
	f(cmd("ADMIT", "demo", "CALL", "a", "CALL", "b"), "-ERR syntax error\r\n")
	f(cmd("ADMIT", "demo", "COLOR", "red"), "-ERR syntax error\r\n")
	f(cmd("RELEASE", "demo", "c", "SECONDS", "-1"), "-ERR SECONDS must be a non-negative integer\r\n")
	f(cmd("REGISTER", "demo", "s", "TTL", "0"), "-ERR TTL must be a positive integer of seconds\r\n")
	f(cmd("REGISTER", "demo", "s", "TTL", "99999999999999999999"), "-ERR TTL must be a positive integer of seconds\r\n")
	f(cmd("CONSUME", "demo", "acme", "0"), "-ERR units must be a positive integer\r\n")
	f(cmd("CONSUME", "demo", "acme", "1", "KEY", "x"), "-ERR syntax error\r\n")
	f(cmd("QUOTA"), "-ERR wrong number of arguments for 'quota' command\r\n")
	// An unknown service has every field, as any other: nothing licensed.
	unknown := "*34\r\n"
	for _, k := range []string{"caps_licensed", "caps_share", "caps_used", "caps_burst", "sessions_licensed", "sessions_used",
		"sessions_emergency", "subscribers_licensed", "subscribers_used", "tokens_licensed", "tokens_used", "tokens_left",
		"tokens_overage", "tokens_per_attempt", "tokens_per_minute"} {
		v := ":0\r\n"
		if strings.HasPrefix(k, "caps_") && k != "caps_burst" {
			v = "$1\r\n0\r\n"
		}
		unknown += fmt.Sprintf("$%d\r\n%s\r\n%s", len(k), k, v)
	}
	f(cmd("QUOTA", "other"), unknown+"$7\r\noverage\r\n$4\r\nnone\r\n$13\r\nlicense_state\r\n$10\r\nunlicensed\r\n")
}

func TestQuota(t *testing.T) {
	c := newTestConn(t, "")
	got, _, _ := c.send(cmd("QUOTA", "demo"))
	for _, want := range []string{
		"$13\r\ncaps_licensed\r\n$4\r\n1000\r\n",
		"$10\r\ncaps_burst\r\n:100\r\n",
		"$17\r\nsessions_licensed\r\n:500\r\n",
		"$20\r\nsubscribers_licensed\r\n:10000\r\n",
		"$15\r\ntokens_licensed\r\n:1000000\r\n",
		"$13\r\nlicense_state\r\n$6\r\nactive\r\n",
	} {
		require.Contains(t, got, want)
	}
	require.True(t, strings.HasPrefix(got, "*34\r\n"))
}

func TestAuth(t *testing.T) {
	c := newTestConn(t, "s3cret")
	f := func(in, want string) {
		t.Helper()
		got, _, _ := c.send(in)
		require.Equal(t, want, got)
	}
	f(cmd("PING"), "-NOAUTH Authentication required.\r\n")
	f(cmd("ADMIT", "demo"), "-NOAUTH Authentication required.\r\n")
	f(cmd("AUTH", "wrong"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
	f(cmd("AUTH", "admin", "s3cret"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
	f(cmd("AUTH", "default", "s3cret"), "+OK\r\n")
	f(cmd("ADMIT", "demo"), dec(1, "OK", 0, 99))
	c2 := newTestConn(t, "s3cret")
	got, _, _ := c2.send(cmd("HELLO", "2", "AUTH", "default", "s3cret"))
	require.Contains(t, got, "$5\r\nproto\r\n:2\r\n")
	require.True(t, c2.cs.authed)
}

// TestHelloAppliesAllOrNothing: HELLO reads every option before applying
// any, as Redis does. A name given without authenticating, beside a
// failed AUTH or beside a syntax error is not set; a syntax error after a
// right AUTH does not authenticate.
func TestHelloAppliesAllOrNothing(t *testing.T) {
	c := newTestConn(t, "s3cret")
	name := func() string { return c.cs.info.get().name }
	f := func(in, want string) {
		t.Helper()
		got, _, _ := c.send(in)
		require.Equal(t, want, got)
	}
	noauth := "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
	f(cmd("HELLO", "2", "SETNAME", "x"), noauth)
	require.Equal(t, "", name())
	f(cmd("HELLO", "2", "SETNAME", "x", "AUTH", "default", "wrong"), "-"+errWrongPass+"\r\n")
	require.Equal(t, "", name())
	require.False(t, c.cs.authed)
	f(cmd("HELLO", "2", "AUTH", "default", "s3cret", "BOGUS"), "-ERR Syntax error in HELLO option 'BOGUS'\r\n")
	require.False(t, c.cs.authed)
	f(cmd("HELLO", "2", "AUTH", "default", "s3cret", "SETNAME", "bad name"), "-"+errClientName+"\r\n")
	require.False(t, c.cs.authed)
	got, _, _ := c.send(cmd("HELLO", "2", "SETNAME", "proxy-1", "AUTH", "default", "s3cret"))
	require.True(t, strings.HasPrefix(got, "*14\r\n"), got)
	require.True(t, c.cs.authed)
	require.Equal(t, "proxy-1", name())
}

// TestAuthWithoutPassword: a node without a password takes AUTH with the
// default user and any password, as Redis's default user (nopass) does, so
// that a client set up with a user and a password connects; the one
// argument form and any other user are refused as Redis refuses them.
func TestAuthWithoutPassword(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	f(cmd("AUTH", "x"), "-"+errAuthNoPassword+"\r\n")
	f(cmd("AUTH", "default", "anything"), "+OK\r\n")
	f(cmd("AUTH", "admin", "anything"), "-"+errWrongPass+"\r\n")
	f(cmd("AUTH", MemberUser, "anything"), "-"+errWrongPass+"\r\n")
	got, _, _ := c.send(cmd("HELLO", "2", "AUTH", "default", "anything"))
	require.True(t, strings.HasPrefix(got, "*14\r\n"), got)
	f(cmd("HELLO", "2", "AUTH", "admin", "anything"), "-"+errWrongPass+"\r\n")
	f(cmd("ADMIT", "demo"), dec(1, "OK", 0, 99))
}

func TestPipelineSplitAndQuit(t *testing.T) {
	c := newTestConn(t, "")
	stream := cmd("PING") + cmd("ADMIT", "demo") + "PING\r\n" + cmd("ECHO", "tail")
	// Everything but the last byte: the last command waits for its rest.
	got, rest, closed := c.send(stream[:len(stream)-1])
	require.Equal(t, "+PONG\r\n"+dec(1, "OK", 0, 99)+"+PONG\r\n", got)
	require.Equal(t, len(cmd("ECHO", "tail"))-1, rest)
	require.False(t, closed)
	got, _, closed = c.send(cmd("QUIT") + cmd("PING"))
	require.Equal(t, "+OK\r\n", got, "nothing after QUIT is answered")
	require.True(t, closed)
}

func TestProtocolErrorCloses(t *testing.T) {
	c := newTestConn(t, "")
	got, _, closed := c.send(cmd("PING") + "*2\r\n$4\r\nPING\r\n$abc\r\n")
	require.True(t, strings.HasPrefix(got, "+PONG\r\n-ERR Protocol error: "), got)
	require.True(t, closed)
}

// TestHandleAllocatesNothing covers the decision path from bytes in to
// bytes out.
func TestHandleAllocatesNothing(t *testing.T) {
	c := newTestConn(t, "")
	out := make([]byte, 0, 4096)
	f := func(name, in string) {
		t.Helper()
		buf := []byte(in)
		c.h.Handle(c.clk.Now(), c.cs, buf, out[:0]) // warm up tables
		allocs := testing.AllocsPerRun(1000, func() {
			c.clk.Advance(time.Millisecond)
			c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
		})
		require.Zero(t, allocs, name)
	}
	f("admit", cmd("ADMIT", "demo"))
	f("admit inline", "ADMIT demo PRIORITY high\r\n")
	f("admit call + release", cmd("ADMIT", "demo", "CALL", "a84b4c76e66710@pc33.atlanta.example.com", "ACCOUNT", "acme")+
		cmd("RELEASE", "demo", "a84b4c76e66710@pc33.atlanta.example.com", "SECONDS", "61"))
	f("register", cmd("REGISTER", "demo", "sip:alice@atlanta.example.com", "TTL", "3600"))
	var pipe strings.Builder // warmed first (warm.go)
	for i := range 16 {
		pipe.WriteString(cmd("REGISTER", "demo", fmt.Sprintf("sip:%d@atlanta.example.com", i), "TTL", "3600"))
	}
	for i := range 16 {
		pipe.WriteString(cmd("ADMIT", "demo", "CALL", fmt.Sprintf("call-%d", i)))
	}
	f("register and admit pipeline", pipe.String())
	f("consume", cmd("CONSUME", "demo", "acme", "1"))
	f("ping", cmd("PING"))
}

func benchHandle(b *testing.B, in string) {
	c := newTestConn(b, "")
	require.NoError(b, c.h.eng.SetLimits("demo", admission.Limits{Licensed: true, CAPS: 1e9, Sessions: 1 << 30,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
	buf := []byte(in)
	out := make([]byte, 0, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		c.clk.Advance(time.Microsecond)
		c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
	}
}

// BenchmarkHandleAdmit is one ADMIT from request bytes to reply bytes.
func BenchmarkHandleAdmit(b *testing.B) { benchHandle(b, cmd("ADMIT", "demo")) }

// BenchmarkHandleAdmitCallRelease is an ADMIT with CALL and its RELEASE.
func BenchmarkHandleAdmitCallRelease(b *testing.B) {
	benchHandle(b, cmd("ADMIT", "demo", "CALL", "a84b4c76e66710@pc33.atlanta.example.com")+
		cmd("RELEASE", "demo", "a84b4c76e66710@pc33.atlanta.example.com"))
}

// BenchmarkHandleRegister is one REGISTER refresh.
func BenchmarkHandleRegister(b *testing.B) {
	benchHandle(b, cmd("REGISTER", "demo", "sip:alice@atlanta.example.com", "TTL", "3600"))
}

// BenchmarkHandlePipeline100 is 100 pipelined ADMITs in one read.
func BenchmarkHandlePipeline100(b *testing.B) {
	benchHandle(b, strings.Repeat(cmd("ADMIT", "demo"), 100))
}

// BenchmarkHandleRegisterPipelineFull is a pipeline of 16 REGISTERs per
// read (half a million subscribers in turn, new then refreshed) into a
// table holding nothing else or 2 M more (far larger than the cache),
// with and without the warm pass that touches the 16 keys' places first
// (warm.go).
//
//	go test ./admission/resp -run '^$' -bench RegisterPipelineFull -benchtime 200000x
func BenchmarkHandleRegisterPipelineFull(b *testing.B) {
	const batch = 16
	for _, c := range []struct {
		full int
		warm bool
	}{{0, false}, {0, true}, {2_000_000, false}, {2_000_000, true}} {
		full, warm := c.full, c.warm
		b.Run(fmt.Sprintf("entries=%d/warm=%v", full, warm), func(b *testing.B) {
			c := newTestConn(b, "")
			c.h.noWarm = !warm
			require.NoError(b, c.h.eng.SetLimits("demo", admission.Limits{Licensed: true, CAPS: 1e9, Sessions: 1 << 30,
				Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
			now := c.clk.Now()
			for i := range full {
				c.h.eng.Register(now, []byte("demo"), []byte("sip:filler-"+strconv.Itoa(i)), 3600)
			}
			// Reads of new subscribers, made before the clock starts.
			reads := make([][]byte, 32768)
			for r := range reads {
				var sb strings.Builder
				for k := range batch {
					sb.WriteString(cmd("REGISTER", "demo", fmt.Sprintf("sip:new-%d-%d", r, k), "TTL", "3600"))
				}
				reads[r] = []byte(sb.String())
			}
			out := make([]byte, 0, 64<<10)
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				c.h.Handle(c.clk.Now(), c.cs, reads[i%len(reads)], out[:0])
				i++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(i*batch), "ns/register")
		})
	}
}

// The null handler frames as the real one does (multibulk and inline,
// blank lines skipped, an incomplete command left for more input, a
// malformed one closing the connection) and answers every command with
// NullReply, deciding nothing.
func TestNullHandler(t *testing.T) {
	h, cs := NewNullHandler(), NewConnState(1)
	in := cmd("ADMIT", "bench") + "\r\nNOSUCH command\r\n" + cmd("PING") + "*2\r\n$5\r\nADM"
	n, out, closeConn := h.Handle(1, cs, []byte(in), nil)
	require.False(t, closeConn)
	require.Equal(t, len(in)-len("*2\r\n$5\r\nADM"), n, "the incomplete command waits")
	require.Equal(t, strings.Repeat(NullReply, 3), string(out))
	require.Equal(t, dec(1, "OK", 0, 1), NullReply, "a decision of ADMIT's shape")

	n, out, closeConn = h.Handle(2, cs, []byte("*1\r\n:1\r\n"), nil)
	require.True(t, closeConn)
	require.Equal(t, 8, n)
	require.True(t, strings.HasPrefix(string(out), "-ERR Protocol error"), "%q", out)
}

// A quoted inline command left unconsumed (waiting for room to forward)
// and parsed again at the next call is the same command: its bytes were
// not unescaped in place the first time.
func TestQuotedInlineParsedAgain(t *testing.T) {
	c := newTestConn(t, "")
	f := &fakeForwarder{}
	c.h.SetForwarder(f)
	// The same buffer at each call, as the event loop's inbound buffer.
	in := []byte("RELEASE demo \"c\\x41\" \r\nRELEASE demo 'c-b'\r\nPING\r\n")
	for range 3 { // no room: nothing runs, nothing is consumed
		n, out, closed := c.h.Handle(c.clk.Now(), c.cs, in, nil)
		require.Empty(t, out)
		require.Zero(t, n)
		require.False(t, closed)
		require.True(t, c.cs.blocked)
	}
	f.room.Store(true)
	n, out, closed := c.h.Handle(c.clk.Now(), c.cs, in, nil)
	require.Equal(t, ":0\r\n:0\r\n+PONG\r\n", string(out))
	require.Equal(t, len(in), n)
	require.False(t, closed)
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Equal(t, []string{"release cA", "release c-b"}, f.calls)
}
