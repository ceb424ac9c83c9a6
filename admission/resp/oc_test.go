package resp

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// newOCConn is a connection to an engine on a fake clock, with voice
// licensed for caps and key a limited to 5 CAPS (burst 5), and a fake
// wall clock for oc-seq.
func newOCConn(t testing.TB, caps float64) (*testConn, *time.Time) {
	t.Helper()
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("voice", admission.Limits{Licensed: true, CAPS: caps, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
	require.NoError(t, e.SetLimits(admission.TrunkName("voice", "a"), admission.Limits{Licensed: true, CAPS: 5, Burst: 5,
		Sessions: admission.Unlimited}))
	wall := time.UnixMilli(1282321615781)
	c := &testConn{h: NewHandler(e, ""), cs: NewConnState(1), clk: clk}
	c.h.ocSeq.wall = func() time.Time { return wall }
	return c, &wall
}

// ocReply is OC's reply.
func ocReply(rate int64, validity int64, seq string, overloaded, node int64, scope string) string {
	return "*14\r\n" + bulk("oc") + fmt.Sprintf(":%d\r\n", rate) + bulk("oc-algo") + bulk("rate") +
		bulk("oc-validity") + fmt.Sprintf(":%d\r\n", validity) + bulk("oc-seq") + bulk(seq) +
		bulk("overloaded") + fmt.Sprintf(":%d\r\n", overloaded) + bulk("oc-node") + fmt.Sprintf(":%d\r\n", node) +
		bulk("scope") + bulk(scope)
}

func TestOC(t *testing.T) {
	c, wall := newOCConn(t, 100)
	f := c.expect(t)
	f(cmd("OC", "voice"), ocReply(100, 0, "1282321615.781", 0, 100, "licence"))
	f(cmd("oc", "voice", "trunk", "a"), ocReply(5, 0, "1282321615.781", 0, 5, "trunk"))
	f(cmd("OC", "voice", "TRUNK", "nokey"), ocReply(100, 0, "1282321615.781", 0, 100, "licence"))
	f(cmd("OC", "nosuch"), ocReply(0, 0, "1282321615.781", 0, 0, "licence"))

	// The key's bucket refuses: its scope is overloaded, the licence's not.
	for range 6 {
		c.send(cmd("ADMIT", "voice", "TRUNK", "a"))
	}
	*wall = wall.Add(9 * time.Millisecond)
	f(cmd("OC", "voice", "TRUNK", "a"), ocReply(5, 2000, "1282321615.790", 1, 5, "trunk"))
	f(cmd("OC", "voice"), ocReply(100, 0, "1282321615.790", 0, 100, "licence"))
	// A second later (engine clock) it is over; oc-validity 0 says so.
	c.clk.Advance(time.Second)
	*wall = time.UnixMilli(1282321617005)
	f(cmd("OC", "voice", "TRUNK", "a"), ocReply(5, 0, "1282321617.005", 0, 5, "trunk"))
	// A wall clock stepped back does not take oc-seq back.
	*wall = time.UnixMilli(1282321600000)
	f(cmd("OC", "voice"), ocReply(100, 0, "1282321617.005", 0, 100, "licence"))
	*wall = time.UnixMilli(1282321617060)
	f(cmd("OC", "voice"), ocReply(100, 0, "1282321617.060", 0, 100, "licence"))

	f(cmd("OC"), "-ERR wrong number of arguments for 'oc' command\r\n")
	f(cmd("OC", "voice", "TRUNK"), "-ERR wrong number of arguments for 'oc' command\r\n")
	f(cmd("OC", "voice", "TRUNK", "a", "x"), "-ERR wrong number of arguments for 'oc' command\r\n")
	f(cmd("OC", "voice", "CALL", "a"), "-ERR syntax error\r\n")
	f(cmd("OC", "voice", "TRUNK", "a b"), "-ERR invalid trunk key\r\n")
	f(cmd("OC", "bad name"), "-ERR invalid service name\r\n")
	f(cmd("MULTI")+cmd("OC", "voice")+cmd("EXEC"), "+OK\r\n+QUEUED\r\n*1\r\n"+ocReply(100, 0, "1282321617.060", 0, 100, "licence"))
}

// Extremes as OC writes them: CAPS 0, unlimited, very large.
func TestOCExtremes(t *testing.T) {
	f := func(caps float64, want string) {
		t.Helper()
		c, _ := newOCConn(t, caps)
		c.send(cmd("ADMIT", "voice") + cmd("ADMIT", "voice"))
		c.expect(t)(cmd("OC", "voice"), want)
	}
	f(0, ocReply(0, 2000, "1282321615.781", 1, 0, "licence"))
	f(admission.Unlimited, ocReply(-1, 0, "1282321615.781", 0, -1, "licence"))
	f(1e300, ocReply(2147483647, 0, "1282321615.781", 0, 2147483647, "licence"))
}

func TestOCSeqFormat(t *testing.T) {
	f := func(ms int64, want string) {
		t.Helper()
		require.Equal(t, want, string(appendSeq(nil, ms)))
	}
	f(0, "0.000")
	f(7, "0.007")
	f(1282321615781, "1282321615.781")
	f(1282321615080, "1282321615.080")
	f(1282321615100, "1282321615.100")
}

// OC after every refusal allocates nothing.
func TestOCAllocatesNothing(t *testing.T) {
	c, _ := newOCConn(t, 10)
	c.h.ocSeq.wall = nil // the real clock
	out := make([]byte, 0, 4096)
	buf := []byte(cmd("ADMIT", "voice", "TRUNK", "a") + cmd("OC", "voice", "TRUNK", "a"))
	c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		c.clk.Advance(time.Millisecond)
		c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
	}))
}

func BenchmarkOC(b *testing.B) {
	c, _ := newOCConn(b, 10)
	c.h.ocSeq.wall = nil
	out := make([]byte, 0, 4096)
	buf := []byte(cmd("OC", "voice", "TRUNK", "a"))
	b.ReportAllocs()
	for b.Loop() {
		c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
	}
}
