package admission

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// trunkLimits are a key's limits: CAPS with its own burst, sessions.
func trunkLimits(caps float64, burst, sessions int64) Limits {
	return Limits{Licensed: true, CAPS: caps, Burst: burst, Sessions: sessions, Subscribers: Unlimited, Tokens: Unlimited}
}

func setTrunk(t *testing.T, e *Engine, key string, l Limits) {
	t.Helper()
	require.NoError(t, e.SetLimits(TrunkName("voice", key), l))
}

func TestTrunkName(t *testing.T) {
	s, k, ok := SplitTrunk(TrunkName("voice", "carrier-a"))
	require.True(t, ok)
	require.Equal(t, "voice", s)
	require.Equal(t, "carrier-a", k)
	_, _, ok = SplitTrunk("voice")
	require.False(t, ok)
}

// A key's CAPS bucket holds its burst, refills at its rate, and leaves the
// other keys and the licence alone.
func TestTrunkCAPS(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	setTrunk(t, e, "a", trunkLimits(10, 5, Unlimited))
	setTrunk(t, e, "b", trunkLimits(100, 50, Unlimited))
	now := clk.Now()
	ok, reasons := admitted(20, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal) })
	require.Equal(t, 5, ok, "the key's burst")
	require.Equal(t, 15, reasons[TRUNK_CAPS])
	d := e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal)
	require.Equal(t, TRUNK_CAPS, d.Reason)
	require.Equal(t, int64(100), d.RetryAfterMS, "one interval at 10 CAPS")
	ok, _ = admitted(50, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("b"), Normal) })
	require.Equal(t, 50, ok, "another key has its own bucket")
	ok, _ = admitted(100, func(int) Decision { return e.Admit(now, svc, nil, nil, Normal) })
	require.Equal(t, 45, ok, "the licence's burst (100) less what the keys took")
	// An unknown key is decided by the licence alone.
	require.Equal(t, CAPS, e.AdmitTrunk(now, svc, nil, nil, []byte("nokey"), Normal).Reason)
	clk.Advance(time.Second)
	now = clk.Now()
	ok, _ = admitted(20, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal) })
	require.Equal(t, 5, ok, "refilled to its burst, no more")
	st := e.Trunk("voice", "a").Stats()
	require.Equal(t, uint64(10), st.Admissions[OK])
	require.Equal(t, uint64(31), st.Admissions[TRUNK_CAPS])
	require.Equal(t, uint64(41), st.Offered())
	sst := e.Service("voice").Stats()
	require.Equal(t, uint64(31), sst.Admissions[TRUNK_CAPS], "the service counts the key's refusals")
	require.Equal(t, sst.Admissions[OK]+sst.Admissions[CAPS], sst.Offered(), "which never reached the licence")
}

// A key's sessions: held until RELEASE, the licence's refusal gives its
// session back, a retransmission counts once.
func TestTrunkSessions(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: 5, Subscribers: Unlimited, Tokens: Unlimited})
	setTrunk(t, e, "a", trunkLimits(Unlimited, 0, 3))
	now := clk.Now()
	tr := []byte("a")
	for i := range 3 {
		d := e.AdmitTrunk(now, svc, []byte("c"+strconv.Itoa(i)), nil, tr, Normal)
		require.Equal(t, OK, d.Reason)
		require.Equal(t, int64(2-i), d.Remaining, "the key's sessions left, below the licence's")
	}
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("c0"), nil, tr, Normal).Reason, "a retransmission")
	d := e.AdmitTrunk(now, svc, []byte("c3"), nil, tr, Normal)
	require.Equal(t, TRUNK_SESSIONS, d.Reason)
	require.Equal(t, int64(1000), d.RetryAfterMS)
	require.Equal(t, int64(3), e.Trunk("voice", "a").Stats().Sessions)
	require.True(t, e.Release(now, svc, []byte("c1"), 0))
	require.Equal(t, int64(2), e.Trunk("voice", "a").Stats().Sessions)
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("c3"), nil, tr, Normal).Reason)
	// The licence (5) refuses before the key (3) does: the key keeps 3.
	require.Equal(t, OK, e.Admit(now, svc, []byte("x1"), nil, Normal).Reason)
	require.Equal(t, OK, e.Admit(now, svc, []byte("x2"), nil, Normal).Reason)
	require.Equal(t, int64(5), e.Service("voice").Stats().Sessions)
	require.NoError(t, e.SetLimits(TrunkName("voice", "a"), trunkLimits(Unlimited, 0, 10)))
	d = e.AdmitTrunk(now, svc, []byte("c4"), nil, tr, Normal)
	require.Equal(t, SESSIONS, d.Reason)
	require.Equal(t, int64(3), e.Trunk("voice", "a").Stats().Sessions, "the licence's refusal gave the key's session back")
	require.Equal(t, uint64(1), e.Trunk("voice", "a").Stats().Admissions[SESSIONS])
	// Sessions that expire leave the key too.
	clk.Advance(4 * time.Hour)
	e.Tick(clk.Now())
	require.Zero(t, e.Trunk("voice", "a").Stats().Sessions)
	require.Zero(t, e.Service("voice").Stats().Sessions)
}

// What the licence's CAPS bucket refuses gives the key's token back; a
// spillable refusal is not counted on the key.
func TestTrunkRefund(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(20))
	setTrunk(t, e, "a", trunkLimits(100, 100, Unlimited))
	now := clk.Now()
	tr := []byte("a")
	ok, reasons := admitted(60, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, tr, Normal) })
	require.Equal(t, 20, ok, "the licence's bucket (20)")
	require.Equal(t, 40, reasons[CAPS])
	tk := e.Trunk("voice", "a")
	depth, avail := tk.Bucket(At(now))
	require.Equal(t, int64(100), depth)
	require.Equal(t, int64(80), avail, "only the admitted took the key's tokens")
	require.Equal(t, uint64(40), tk.Stats().Admissions[CAPS])
	require.Equal(t, CAPS, e.AdmitTrunkSpillable(now, svc, nil, nil, tr, Normal).Reason)
	require.Equal(t, uint64(40), tk.Stats().Admissions[CAPS], "spillable: counted once settled")
	e.Refused(svc, tr, CAPS)
	require.Equal(t, uint64(41), tk.Stats().Admissions[CAPS])
	e.SpilledOut(svc, tr)
	require.Equal(t, uint64(1), tk.Stats().SpilledOut)
	_, avail = tk.Bucket(At(now))
	require.Equal(t, int64(80), avail)

	// The key's own bucket refusing a spillable attempt: not counted
	// until settled, then as TRUNK_CAPS on the key and the service.
	setTrunk(t, e, "b", trunkLimits(100, 1, Unlimited))
	b := []byte("b")
	clk.Advance(time.Second)
	now = clk.Now()
	require.Equal(t, OK, e.AdmitTrunkSpillable(now, svc, nil, nil, b, Normal).Reason)
	require.Equal(t, TRUNK_CAPS, e.AdmitTrunkSpillable(now, svc, nil, nil, b, Normal).Reason)
	tb := e.Trunk("voice", "b")
	require.Zero(t, tb.Stats().Admissions[TRUNK_CAPS])
	before := e.Service("voice").Stats().Admissions[TRUNK_CAPS]
	e.Refused(svc, b, TRUNK_CAPS)
	require.Equal(t, uint64(1), tb.Stats().Admissions[TRUNK_CAPS])
	require.Equal(t, before+1, e.Service("voice").Stats().Admissions[TRUNK_CAPS])
}

// PRIORITY emergency ignores a key's limits; PRIORITY high may use the
// key's headroom.
func TestTrunkPriorities(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(Unlimited))
	setTrunk(t, e, "a", trunkLimits(0, 0, 0))
	now := clk.Now()
	tr := []byte("a")
	require.Equal(t, TRUNK_CAPS, e.AdmitTrunk(now, svc, nil, nil, tr, Normal).Reason, "CAPS 0 admits nothing")
	require.Equal(t, TRUNK_SESSIONS, e.AdmitTrunk(now, svc, []byte("c"), nil, tr, Normal).Reason, "sessions 0 hold none")
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("e"), nil, tr, Emergency).Reason)
	require.Zero(t, e.Trunk("voice", "a").Stats().Sessions, "an emergency call is not the key's")
	setTrunk(t, e, "h", trunkLimits(100, 10, Unlimited))
	ok, _ := admitted(30, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("h"), High) })
	require.Equal(t, 11, ok, "the key's burst (10) and its headroom's part of it (10 %)")
}

// Extremes: an unlimited key, the largest sessions, limits taken away.
func TestTrunkExtremes(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(Unlimited))
	now := clk.Now()
	setTrunk(t, e, "u", trunkLimits(Unlimited, 0, math.MaxInt64))
	ok, _ := admitted(1000, func(i int) Decision {
		return e.AdmitTrunk(now, svc, []byte("c"+strconv.Itoa(i)), nil, []byte("u"), Normal)
	})
	require.Equal(t, 1000, ok)
	d := e.AdmitTrunk(now, svc, []byte("last"), nil, []byte("u"), Normal)
	require.Equal(t, int64(math.MaxInt32), d.Remaining, "remaining is capped")
	setTrunk(t, e, "one", trunkLimits(1, 1, 1))
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("o1"), nil, []byte("one"), Normal).Reason)
	require.Equal(t, TRUNK_SESSIONS, e.AdmitTrunk(now, svc, []byte("o2"), nil, []byte("one"), Normal).Reason)
	require.Equal(t, TRUNK_CAPS, e.AdmitTrunk(now, svc, nil, nil, []byte("one"), Normal).Reason)
	// Limits taken away: the key is decided by the licence alone, and
	// keeps counting its open session for when it gets limits again.
	require.NoError(t, e.SetLimits(TrunkName("voice", "one"), Limits{Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}))
	require.Equal(t, OK, e.AdmitTrunk(now, svc, nil, nil, []byte("one"), Normal).Reason)
	require.Equal(t, int64(1), e.Trunk("voice", "one").Stats().Sessions)
	// A key's limits may come before its service's licence.
	require.NoError(t, e.SetLimits(TrunkName("data", "k"), trunkLimits(5, 5, 5)))
	require.Equal(t, UNLICENSED, e.AdmitTrunk(now, []byte("data"), nil, nil, []byte("k"), Normal).Reason)
	require.Zero(t, e.Trunk("data", "k").Stats().Offered(), "an unlicensed attempt never reached the key")
}

// Restored sessions count against their key again.
func TestTrunkRestore(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited},
		func(c *Config) { c.JournalState = true })
	setTrunk(t, e, "a", trunkLimits(Unlimited, 0, 2))
	now := clk.Now()
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("c1"), nil, []byte("a"), Normal).Reason)
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("c2"), nil, []byte("a"), Normal).Reason)
	var changes []Change
	e.Service("voice").WalkTo(now, func(c []Change) bool { changes = append(changes, c...); return true })
	require.Len(t, changes, 2)
	require.Equal(t, "a", changes[0].Trunk)

	e2, _ := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited})
	_, _, err := e2.Restore(now, "voice", changes)
	require.NoError(t, err)
	require.Equal(t, int64(2), e2.Trunk("voice", "a").Stats().Sessions, "counted before the key has limits again")
	require.NoError(t, e2.SetLimits(TrunkName("voice", "a"), trunkLimits(Unlimited, 0, 2)))
	require.Equal(t, TRUNK_SESSIONS, e2.AdmitTrunk(now, svc, []byte("c3"), nil, []byte("a"), Normal).Reason)
	require.True(t, e2.Release(now, svc, []byte("c1"), 0))
	require.Equal(t, OK, e2.AdmitTrunk(now, svc, []byte("c3"), nil, []byte("a"), Normal).Reason)
}

// A key's bucket under seeded Poisson and bursty arrivals admits at most
// burst + rate × t over the run, and all that a single bucket would.
func TestTrunkArrivals(t *testing.T) {
	for _, bursty := range []bool{false, true} {
		e, clk := newTestEngine(t, capsOnly(Unlimited))
		setTrunk(t, e, "a", trunkLimits(200, 40, Unlimited))
		rng := rand.New(rand.NewPCG(7, 11))
		var got, offered int
		start := clk.Now()
		for clk.Now()-start < int64(10*time.Second) {
			gap := time.Duration(rng.ExpFloat64() / 400 * float64(time.Second)) // twice the key's rate
			n := 1
			if bursty && rng.IntN(50) == 0 {
				gap, n = 100*time.Millisecond, 40 // a stall, then its backlog
			}
			clk.Advance(gap)
			for range n {
				offered++
				if e.AdmitTrunk(clk.Now(), svc, nil, nil, []byte("a"), Normal).Reason == OK {
					got++
				}
			}
		}
		el := float64(clk.Now()-start) / 1e9
		require.LessOrEqual(t, float64(got), 40+200*el, "bursty=%v", bursty)
		require.GreaterOrEqual(t, float64(got), 200*el-1, "bursty=%v: offered twice the rate, the key admits its rate", bursty)
		require.Greater(t, offered, got)
	}
}

func BenchmarkAdmitTrunk(b *testing.B) {
	e, clk := newTestEngine(b, capsOnly(Unlimited))
	for i := range 1000 {
		require.NoError(b, e.SetLimits(TrunkName("voice", "t"+strconv.Itoa(i)), trunkLimits(Unlimited, 0, Unlimited)))
	}
	tr := []byte("t500")
	now := clk.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if e.AdmitTrunk(now, svc, nil, nil, tr, Normal).Reason != OK {
			b.Fatal("refused")
		}
	}
}

// DrainMoved hands out each key that moved since the last drain, once,
// and a key that moves during a drain again at the next.
func TestDrainMoved(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(Unlimited))
	for _, k := range []string{"a", "b", "c"} {
		setTrunk(t, e, k, trunkLimits(Unlimited, 0, 10))
	}
	drained := func() []string {
		var out []string
		e.DrainMoved(func(tk *Trunk) { out = append(out, tk.Key()) })
		slices.Sort(out)
		return out
	}
	require.Empty(t, drained(), "limits set move nothing")
	now := clk.Now()
	for range 3 {
		e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal)
	}
	e.AdmitTrunk(now, svc, []byte("call"), nil, []byte("b"), Normal)
	require.Equal(t, []string{"a", "b"}, drained())
	require.Empty(t, drained())
	require.True(t, e.Release(now, svc, []byte("call"), 0))
	require.Equal(t, []string{"b"}, drained(), "a session that ends moves its key")

	// Concurrent decisions while a reader drains and reads each key handed
	// out (as the cluster's usage reader does): once the deciders stop and
	// a last drain is made, what the reader last read of every key is its
	// final count. A move lost between a drain and the flag's reset would
	// leave a count it never read.
	var wg sync.WaitGroup
	for _, k := range []string{"a", "b", "c"} {
		wg.Go(func() {
			for range 20000 {
				e.AdmitTrunk(now, svc, nil, nil, []byte(k), Normal)
			}
		})
	}
	last := map[string]uint64{}
	read := func() {
		e.DrainMoved(func(tk *Trunk) { last[tk.Key()] = tk.Stats().Admissions[OK] })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for reads := 0; ; reads++ {
		select {
		case <-done:
			read()
			for _, k := range []string{"a", "b", "c"} {
				require.Equal(t, e.Trunk("voice", k).Stats().Admissions[OK], last[k], "key %s after %d reads", k, reads)
			}
			return
		default:
			read()
		}
	}
}

// A key's token pool is the allocation of the account of its name: ADMIT
// ... TRUNK key charges it (TRUNK_TOKENS when it is spent), a key without
// one charges the licence's pool, ACCOUNT names another pool, and the
// minutes of a call through the key are charged to it at RELEASE.
func TestTrunkTokenPool(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited,
		Tokens: 1000, TokensPerAttempt: 1, TokensPerMinute: 2})
	setTrunk(t, e, "a", trunkLimits(100, 100, Unlimited))
	require.NoError(t, e.SetAccount("voice", "a", 10, Overage{}))
	require.NoError(t, e.SetAccount("voice", "other", 50, Overage{}))
	now := clk.Now()
	s := e.Service("voice")
	pool := func(acct string) int64 {
		p, ok := s.Pool(acct)
		require.True(t, ok)
		return p.Used
	}
	ok, reasons := admitted(15, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal) })
	require.Equal(t, 10, ok, "the key's pool of 10")
	require.Equal(t, 5, reasons[TRUNK_TOKENS])
	d := e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Normal)
	require.Equal(t, Decision{Reason: TRUNK_TOKENS, RetryAfterMS: retryUnlicensedMS, Remaining: 0}, d)
	require.Equal(t, int64(10), pool("a"))
	require.Equal(t, int64(0), pool(""), "the licence's pool is not charged for the key's")
	st := e.Trunk("voice", "a").Stats()
	require.Equal(t, uint64(10), st.Admissions[OK])
	require.Equal(t, uint64(6), st.Admissions[TRUNK_TOKENS], "the key counts its pool's refusals")
	require.Equal(t, uint64(16), st.Offered())
	require.Equal(t, uint64(6), s.Stats().Admissions[TRUNK_TOKENS])
	// A refusal by the pool gives back the key's CAPS token: 10 of its
	// 100 were taken.
	_, avail := e.Trunk("voice", "a").Bucket(At(now))
	require.Equal(t, int64(90), avail)
	ok, _ = admitted(200, func(int) Decision { return e.AdmitTrunk(now, svc, nil, []byte("other"), []byte("a"), Normal) })
	require.Equal(t, 50, ok, "ACCOUNT other: its pool of 50, not the key's")
	require.Equal(t, int64(50), pool("other"))
	ok, _ = admitted(100, func(int) Decision { return e.AdmitTrunk(now, svc, nil, nil, []byte("b"), Normal) })
	require.Equal(t, 100, ok, "a key without a pool charges the licence's")
	require.Equal(t, int64(100), pool(""))
	// A call through a key with a pool: its attempt and its minutes.
	require.NoError(t, e.SetAccount("voice", "a", 20, Overage{}))
	require.Equal(t, OK, e.AdmitTrunk(now, svc, []byte("call-1"), nil, []byte("a"), Normal).Reason)
	require.True(t, e.Release(now, svc, []byte("call-1"), 90))
	require.Equal(t, int64(11+4), pool("a"), "1 for the attempt, 2 a minute for 90 s (2 minutes begun)")
	// Emergency calls are charged nothing.
	require.Equal(t, OK, e.AdmitTrunk(now, svc, nil, nil, []byte("a"), Emergency).Reason)
	require.Equal(t, int64(15), pool("a"))
}

// A key's pool set before its service's licence comes (the config's, at
// start) is kept and applies once the licence does.
func TestTrunkTokenPoolBeforeLicence(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(10))
	require.NoError(t, e.SetLimits(TrunkName("pre", "k"), trunkLimits(100, 100, Unlimited)))
	require.NoError(t, e.SetAccount("pre", "k", 5, Overage{}), "the service is known from its key, not licensed")
	now := clk.Now()
	require.Equal(t, UNLICENSED, e.AdmitTrunk(now, []byte("pre"), nil, nil, []byte("k"), Normal).Reason)
	require.NoError(t, e.SetLimits("pre", Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited,
		Tokens: 1000, TokensPerAttempt: 1}))
	ok, reasons := admitted(8, func(int) Decision { return e.AdmitTrunk(now, []byte("pre"), nil, nil, []byte("k"), Normal) })
	require.Equal(t, 5, ok)
	require.Equal(t, 3, reasons[TRUNK_TOKENS])
	require.ErrorContains(t, e.SetAccount("pre", "k", 1001, Overage{}), "the service's pool has 1000", "licensed: bounded by its pool")
}

// Tick measures the licence's and each key's admitted rate over a second;
// the keys are walked once a second, not at every tick.
func TestUsedCAPSOfServiceAndKey(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(1000))
	setTrunk(t, e, "a", trunkLimits(100, 100, Unlimited))
	e.Tick(clk.Now()) // the marks
	ok, _ := admitted(60, func(int) Decision { return e.AdmitTrunk(clk.Now(), svc, nil, nil, []byte("a"), Normal) })
	require.Equal(t, 60, ok)
	ok, _ = admitted(40, func(int) Decision { return e.Admit(clk.Now(), svc, nil, nil, Normal) })
	require.Equal(t, 40, ok)
	for range 9 {
		clk.Advance(100 * time.Millisecond)
		e.Tick(clk.Now())
	}
	require.Zero(t, e.Trunk("voice", "a").Stats().UsedCAPS, "not a second yet")
	clk.Advance(100 * time.Millisecond)
	e.Tick(clk.Now())
	require.Equal(t, 100.0, e.Service("voice").Stats().UsedCAPS, "the licence's: every attempt")
	require.Equal(t, 60.0, e.Trunk("voice", "a").Stats().UsedCAPS, "the key's")
	clk.Advance(time.Second)
	e.Tick(clk.Now())
	require.Zero(t, e.Trunk("voice", "a").Stats().UsedCAPS, "an idle second")
}

// DrainSpent hands out each service whose CAPS bucket was taken from
// since the last drain, once, whether the attempt was admitted, refused
// for CAPS or made with a session; a service decided without its bucket
// (a call already open) is not handed out, nor one never decided.
func TestDrainSpent(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(2))
	for _, name := range []string{"video", "idle"} {
		require.NoError(t, e.SetLimits(name, Limits{Licensed: true, CAPS: 2, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}))
	}
	drained := func() []string {
		var out []string
		e.DrainSpent(func(s *Service) { out = append(out, s.Name()) })
		slices.Sort(out)
		return out
	}
	require.Empty(t, drained(), "limits set spend nothing")
	now := clk.Now()
	for range 5 { // two admitted, three refused
		e.Admit(now, svc, nil, nil, Normal)
	}
	require.True(t, e.Admit(now, []byte("video"), []byte("call"), nil, Normal).Admitted())
	require.Equal(t, []string{"video", "voice"}, drained())
	require.Empty(t, drained())
	require.True(t, e.Admit(now, []byte("video"), []byte("call"), nil, Normal).Admitted(), "the call already open")
	require.Empty(t, drained(), "a repeat of an open call takes nothing from the bucket")
	e.Admit(now, svc, nil, nil, Normal)
	require.Equal(t, []string{"voice"}, drained(), "a refusal for CAPS")
}

// racingClock tells the instant it stands at, and then, as an event loop
// would while a reader goes on with that instant, moves on by step and
// decides an attempt on service at the new instant.
type racingClock struct {
	at       *FakeClock
	step     time.Duration
	decide   func(now int64)
	readings int
}

func (c *racingClock) Now() int64 {
	now := c.at.Now()
	c.readings++
	c.at.Advance(c.step)
	c.decide(c.at.Now())
	return now
}

// A bucket's debt counts the attempts decided no later than the instant
// its reading tells: Bucket reads the bucket, then the clock, so that an
// attempt decided between the two (on an event loop, while the reader
// waited for a processor) is not counted as owed. Read against an instant
// taken 5 ms before the one attempt it took, a bucket refilled at 100,000
// a second would owe 501.
func TestBucketOwesNothingDecidedAfterItsReading(t *testing.T) {
	e, clk := newTestEngine(t, capsOnly(100_000))
	s := e.Service("voice")
	race := &racingClock{at: clk, step: 5 * time.Millisecond, decide: func(now int64) {
		require.True(t, e.Admit(now, svc, nil, nil, Normal).Admitted())
	}}
	depth, avail := s.Bucket(race)
	require.Equal(t, 1, race.readings)
	require.Equal(t, Depth(100_000, DefaultConfig().Burst.Seconds()), depth)
	require.Equal(t, depth, avail, "the attempt decided after the reading is not owed")
	// The next reading, at the instant it was decided, owes it: its token
	// is back 10 µs later.
	_, avail = s.Bucket(race)
	require.Equal(t, depth-1, avail)
	// Read against an instant 5 ms before the attempt it took last, a
	// bucket refilled at 100,000 a second owes 501.
	_, avail = s.Bucket(At(clk.Now() - int64(5*time.Millisecond)))
	require.Equal(t, depth-501, avail)
}
