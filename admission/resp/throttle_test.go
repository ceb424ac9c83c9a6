package resp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/cell"
)

// throttled returns CL.THROTTLE's reply of five integers.
func throttled(v [5]int64) string {
	return string(appendThrottle(nil, cell.Reply{Limited: v[0] == 1, Limit: v[1], Remaining: v[2], RetryAfter: v[3], ResetAfter: v[4]}))
}

// throttleHandler is a handler with CL.THROTTLE for keys "user" and "api:"
// and a table of maxKeys, its engine on clk (nil: the system clock).
func throttleHandler(t testing.TB, maxKeys int, clk admission.Clock) *Handler {
	t.Helper()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	e := admission.NewEngine(cfg)
	h := NewHandler(e, "")
	h.SetThrottle(Throttle{Allow: []string{"user", "api:"}, Bounds: cell.DefaultBounds(), Table: cell.NewTable(maxKeys)})
	return h
}

// TestThrottleRedisCellSession: redis-cell's README example through the
// real RESP server, then the same key at the same instant until the
// bucket (16 deep, 30 a minute) is dry, and the errors.
func TestThrottleRedisCellSession(t *testing.T) {
	clk := admission.NewFakeClock()
	h := throttleHandler(t, 2, clk)
	addr := serve(t, h, clk)
	c, r := dialResp(t, addr)
	do := func(in string, lines int) string {
		t.Helper()
		_, err := c.Write([]byte(in))
		require.NoError(t, err)
		return replies(t, c, r, lines)
	}
	// 127.0.0.1:6379> CL.THROTTLE user123 15 30 60 1
	require.Equal(t, throttled([5]int64{0, 16, 15, -1, 2}), do(cmd("CL.THROTTLE", "user123", "15", "30", "60", "1"), 6))
	for k := int64(2); k <= 16; k++ { // quantity 1 by default
		require.Equal(t, throttled([5]int64{0, 16, 16 - k, -1, 2 * k}), do(cmd("cl.throttle", "user123", "15", "30", "60"), 6), "call %d", k)
	}
	require.Equal(t, throttled([5]int64{1, 16, 0, 2, 32}), do(cmd("CL.THROTTLE", "user123", "15", "30", "60"), 6))
	clk.Advance(2 * time.Second)
	require.Equal(t, throttled([5]int64{0, 16, 0, -1, 32}), do(cmd("CL.THROTTLE", "user123", "15", "30", "60"), 6), "one emission later, one more")

	f := func(want string, args ...string) {
		t.Helper()
		require.Equal(t, "-"+want+"\r\n", do(cmd(args...), 1))
	}
	f("ERR wrong number of arguments for 'cl.throttle' command (usage: CL.THROTTLE <key> <max_burst> <count per period> <period> [<quantity>])", "CL.THROTTLE", "user1")
	f("ERR Couldn't parse as integer: ten", "CL.THROTTLE", "user1", "ten", "30", "60")
	f("ERR Zero rates are not supported", "CL.THROTTLE", "user1", "1", "0", "60")
	f("ERR max_burst must be between 0 and 1000000 (throttle.max_burst), got -1", "CL.THROTTLE", "user1", "-1", "30", "60")
	f("ERR period must be between 1 and 86400 seconds (throttle.max_period), got 86401", "CL.THROTTLE", "user1", "1", "30", "86401")
	f("ERR the bucket is too long: (max_burst+1) × period / count must not exceed 146 years", "CL.THROTTLE", "user1", "1000000", "1", "86400")
	f("ERR CL.THROTTLE key 'other' starts with none of the prefixes of throttle.allow", "CL.THROTTLE", "other", "1", "30", "60")
	f("ERR CL.THROTTLE key 'x\\x00' starts with none of the prefixes of throttle.allow", "CL.THROTTLE", "x\x00", "1", "30", "60")
	require.Equal(t, throttled([5]int64{0, 2, 1, -1, 60}), do(cmd("CL.THROTTLE", "api:k", "1", "1", "60"), 6), "the table's second key")
	f("ERR CL.THROTTLE cannot take a new key: the table holds throttle.max_keys (2) keys whose buckets are not full", "CL.THROTTLE", "user2", "1", "30", "60")
	require.Equal(t, throttled([5]int64{0, 2, 2, -1, 0}), do(cmd("CL.THROTTLE", "user2", "1", "30", "60", "0"), 6), "a peek keeps nothing: answered")
	require.Equal(t, throttled([5]int64{0, 16, 0, -1, 32}), do(cmd("CL.THROTTLE", "user123", "15", "30", "0"+"60", "0"), 6), "a key held still decides")
	do(cmd("MULTI"), 1)
	f("ERR 'cl.throttle' cannot be queued in a transaction (MULTI)", "CL.THROTTLE", "user1", "1", "30", "60")
	require.Equal(t, "-EXECABORT Transaction discarded because of previous errors.\r\n", do(cmd("EXEC"), 1))

	off := NewHandler(admission.NewEngine(admission.DefaultConfig()), "")
	off.SetThrottle(Throttle{Table: cell.NewTable(1)})
	c2 := &testConn{h: off, cs: NewConnState(2), clk: clk}
	c2.expect(t)(cmd("CL.THROTTLE", "user123", "15", "30", "60"), "-ERR CL.THROTTLE is not enabled (throttle.allow is empty)\r\n")
}

// TestThrottleGoRedis: go-redis sends CL.THROTTLE and reads its reply.
func TestThrottleGoRedis(t *testing.T) {
	clk := admission.NewFakeClock()
	h := throttleHandler(t, 100, clk)
	addr := serve(t, h, clk)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	got, err := rdb.Do(ctx, "CL.THROTTLE", "user123", 15, 30, 60, 1).Int64Slice()
	require.NoError(t, err)
	require.Equal(t, []int64{0, 16, 15, -1, 2}, got)
	pipe := rdb.Pipeline()
	var cmds []*redis.Cmd
	for range 3 {
		cmds = append(cmds, pipe.Do(ctx, "CL.THROTTLE", "user123", 15, 30, 60, 5))
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	for i, want := range [][]int64{{0, 16, 10, -1, 12}, {0, 16, 5, -1, 22}, {0, 16, 0, -1, 32}} {
		got, err := cmds[i].Int64Slice()
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	err = rdb.Do(ctx, "CL.THROTTLE", "nope", 15, 30, 60).Err()
	require.EqualError(t, err, "ERR CL.THROTTLE key 'nope' starts with none of the prefixes of throttle.allow")
}

// fakeThrottleRouter routes the keys starting "user:r" (guarded by mu).
type fakeThrottleRouter struct {
	asked
}

func (f *fakeThrottleRouter) ThrottleRoutes(key []byte) bool {
	return strings.HasPrefix(string(key), "user:r")
}

func (f *fakeThrottleRouter) RouteThrottle(args [][]byte, done func(cell.Reply, bool)) bool {
	f.record(args, func(d admission.Decision, ok bool) {
		done(cell.Reply{Limited: true, Limit: 9, Remaining: d.Remaining, RetryAfter: d.RetryAfterMS, ResetAfter: 7}, ok)
	})
	return true
}

// TestThrottleRouted: a CL.THROTTLE of a key another member owns goes to
// it and is answered with the owner's reply, in request order; with no
// answer it is decided here; a routed one (ROUTED) is decided here.
func TestThrottleRouted(t *testing.T) {
	clk := admission.NewFakeClock()
	h := throttleHandler(t, 100, clk)
	f := &fakeThrottleRouter{asked{calls: make(chan struct{}, 16)}}
	h.SetThrottleRouter(f)
	addr := serve(t, h, clk)
	c, r := dialResp(t, addr)
	write := func(s string) {
		t.Helper()
		_, err := c.Write([]byte(s))
		require.NoError(t, err)
	}
	write(cmd("CL.THROTTLE", "user:r1", "15", "30", "60") + cmd("PING"))
	<-f.calls
	require.Equal(t, []string{"CL.THROTTLE", "user:r1", "15", "30", "60"}, f.sent[0], "the command, whole")
	require.Equal(t, "+PONG\r\n", dialPing(t, addr)(), "another client is answered while it waits")
	f.answer(0, admission.Decision{Remaining: 3, RetryAfterMS: 4}, true)
	require.Equal(t, throttled([5]int64{1, 9, 3, 4, 7})+"+PONG\r\n", replies(t, c, r, 7), "the owner's reply, then the PING")

	write(cmd("CL.THROTTLE", "user:r1", "15", "30", "60"))
	<-f.calls
	f.answer(1, admission.Decision{}, false)
	require.Equal(t, throttled([5]int64{0, 16, 15, -1, 2}), replies(t, c, r, 6), "no answer: decided here")

	write(cmd("CL.THROTTLE", "user:r1", "15", "30", "60", "1", "ROUTED", "n2") + cmd("CL.THROTTLE", "user:local", "15", "30", "60"))
	require.Equal(t, throttled([5]int64{0, 16, 14, -1, 4})+throttled([5]int64{0, 16, 15, -1, 2}), replies(t, c, r, 12), "ROUTED and a key owned here: decided here")
	require.Len(t, f.sent, 2, "neither was sent")
}

// TestThrottleHandlerAllocatesNothing: CL.THROTTLE through the handler (parse,
// decide, reply) allocates nothing.
func TestThrottleHandlerAllocatesNothing(t *testing.T) {
	h := throttleHandler(t, 100, nil)
	cs := NewConnState(1)
	in := []byte(cmd("CL.THROTTLE", "user123", "15", "30", "60", "1"))
	out := make([]byte, 0, 256)
	now := int64(1e12)
	if n := testing.AllocsPerRun(1000, func() {
		now += 2e9
		_, out, _ = h.Handle(now, cs, in, out[:0])
	}); n != 0 {
		t.Fatalf("CL.THROTTLE allocates %v times", n)
	}
	require.Equal(t, throttled([5]int64{0, 16, 15, -1, 2}), string(out))
}
