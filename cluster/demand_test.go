package cluster

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// meterRun feeds a rate meter a seeded Poisson stream sampled every 100 ms
// (one exchange), its rate given per sample by rate(t), and returns the
// meter's rate after each sample.
func meterRun(seed uint64, samples int, rate func(t float64) float64) []float64 {
	rng := rand.New(rand.NewPCG(seed, 0x6d65746572))
	var m rateMeter
	var n uint64
	next := 0.0 // the next arrival, in seconds
	out := make([]float64, samples)
	m.push(sample{t: 0, n: 0})
	for k := range samples {
		end := float64(k+1) * 0.1
		// Arrivals by thinning: a stream at the highest rate, each kept
		// with the rate of its instant over the highest.
		for {
			next += rng.ExpFloat64() / 1000
			if next > end {
				next = end
				break
			}
			if rng.Float64()*1000 < rate(next) {
				n++
			}
		}
		out[k] = m.push(sample{t: end, n: n})
	}
	return out
}

// A node whose load leaves entirely is seen to have none within the
// exchanges the quiet test needs at its rate (e^-10.4 of a lull: 260 ms at
// 40 CAPS, 580 ms at 18), and the rate after the fall keeps nothing of the
// attempts before it. Before the quiet test a node at 36 CAPS kept its
// part for seconds: the 4-sigma test cannot see a fall of 18 expected
// attempts in 500 ms.
func TestRateMeterSeesLoadLeave(t *testing.T) {
	for _, c := range []struct {
		rate   float64
		within int // samples of 100 ms after the load left
	}{{360, 4}, {90, 4}, {40, 4}, {36, 4}, {27, 5}, {18, 7}} {
		for seed := range uint64(5) {
			got := meterRun(seed, 50, func(t float64) float64 {
				if t < 3 {
					return c.rate
				}
				return 0
			})
			require.InDelta(t, c.rate, got[29], 4*c.rate/10, "rate %v seed %d before the fall", c.rate, seed)
			require.Zero(t, got[29+c.within], "rate %v seed %d: %v", c.rate, seed, got[28:])
		}
	}
}

// A Poisson lull never reads as a fall: over 60 s of seeded arrivals the
// rate never drops below a quarter of the true rate (a fall reads below a
// fifth; a 3 s window at 18 CAPS holds 54 ± 7 attempts, and the seeds hold
// 3-sigma lulls).
func TestRateMeterKeepsLulls(t *testing.T) {
	for _, rate := range []float64{18, 40, 100, 400} {
		for seed := range uint64(3) {
			got := meterRun(seed, 600, func(float64) float64 { return rate })
			for k := 30; k < len(got); k++ {
				require.Greater(t, got[k], rate/4, "rate %v seed %d: lull read as a fall at sample %d", rate, seed, k)
			}
		}
	}
}

// A proxy that stalls 200 ms every 2 s and then sends its backlog within
// 10 ms, 30 stalls on each of 20 seeds: at most one stall in a hundred
// reads as a fall at any rate (measured: 1 of 600 at 20 and 40 CAPS, 3 at
// 100, where the 4-sigma test takes them), and the arrivals after it undo
// each within 500 ms (the backlog at once, where it is 7 attempts or more;
// at 20 CAPS the rise test needs 200 ms of attempts).
func TestRateMeterStalls(t *testing.T) {
	for _, rate := range []float64{20, 40, 100, 400} {
		falls := 0
		for seed := range uint64(20) {
			got := meterRun(seed, 600, func(t float64) float64 {
				switch s := math.Mod(t, 2); {
				case s >= 1.75 && s < 1.95:
					return 0
				case s >= 1.95 && s < 1.96:
					return rate * 21 // the 200 ms backlog within 10 ms
				}
				return rate
			})
			for k := 30; k < len(got)-6; k++ {
				if got[k] < rate/4 {
					falls++
					require.Greater(t, slices.Max(got[k+1:k+6]), rate/3, "rate %v seed %d: a fall at sample %d not undone within 500 ms", rate, seed, k)
				}
			}
		}
		t.Logf("%v CAPS: %d of 600 stalls read as a fall", rate, falls)
		require.LessOrEqual(t, falls, 6, "rate %v", rate)
	}
}

// push skips detect while nothing was counted in the window: over seeded
// streams that go idle and busy, sampled at irregular instants (early
// plans), every push returns what detect returns and leaves the meter as
// detect leaves it.
func TestRateMeterIdleShortcutChangesNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 0x69646c65))
	shortcuts := 0
	for range 200 {
		var m rateMeter
		var n uint64
		tm := 0.0
		for range 300 {
			tm += 0.01 + rng.Float64()*0.1
			switch r := rng.Float64(); {
			case r < 0.6: // idle
			case r < 0.9:
				n += uint64(rng.IntN(5))
			default:
				n += uint64(rng.IntN(200))
			}
			ref := m
			var want float64
			if span, ok := ref.add(sample{t: tm, n: n}); ok {
				if ref.rate(0) == 0 {
					shortcuts++
				}
				want = ref.detect(span)
			} else {
				want = ref.rate(0)
			}
			require.Equal(t, want, m.push(sample{t: tm, n: n}))
			require.Equal(t, ref, m)
		}
	}
	require.Greater(t, shortcuts, 1000, "the idle stretches took the shortcut")
}

// An idle meter's push: detect made it cost the square of the samples
// held (30 in 3 s of exchanges), for each of a farm's idle services.
func BenchmarkRateMeterIdle(b *testing.B) {
	var m rateMeter
	for i := range 64 {
		m.push(sample{t: float64(i) * 0.1})
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		m.push(sample{t: float64(64+i) * 0.1})
	}
}

// The usage reader leaves out a service quiet for serviceQuiet (its
// counters still, nothing held, charged or owed) and reads it again at
// whatever moves it: a decision, a registration, an expiry, a charge to
// one of its pools, new limits.
func TestUsageReaderLeavesQuietServicesOut(t *testing.T) {
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	eng := admission.NewEngine(cfg)
	lim := admission.Limits{Licensed: true, CAPS: 100, Sessions: 100, Subscribers: 100, Tokens: 1 << 30, TokensPerAttempt: 0}
	for _, s := range []string{"a", "b", "c"} {
		require.NoError(t, eng.SetLimits(s, lim))
	}
	require.NoError(t, eng.SetAccount("c", "acme", 1000, admission.Overage{}))
	r := NewUsageReader(eng)
	read := func() []string {
		var names []string
		for _, su := range r.Read() {
			names = append(names, su.Name)
		}
		return names
	}
	step := func() []string { clk.Advance(ExchangeInterval); return read() }
	require.Equal(t, []string{"a", "b", "c"}, read(), "every service at the first read")
	// Past serviceQuiet a quiet service's meters hold nothing but samples
	// of nothing: the window, and the sample across its edge.
	require.Greater(t, serviceQuiet.Seconds(), rateWindow+ExchangeInterval.Seconds())
	quiet := int(serviceQuiet / ExchangeInterval)
	for range quiet - 1 {
		require.Equal(t, []string{"a", "b", "c"}, step(), "read while quiet for less than serviceQuiet")
	}
	require.Empty(t, step())
	require.Empty(t, step())

	// A decision on a: read at once, its bucket owing what it took, and
	// its meters resumed.
	clk.Advance(ExchangeInterval)
	require.True(t, eng.Admit(clk.Now(), []byte("a"), nil, nil, admission.Normal).Admitted())
	got := r.Read()
	require.Len(t, got, 1)
	require.Equal(t, "a", got[0].Name)
	require.True(t, got[0].Resumed)
	require.Equal(t, uint64(1), got[0].Offered)
	require.Less(t, got[0].Avail, got[0].Depth)
	got = r.Read()
	require.Len(t, got, 1)
	require.False(t, got[0].Resumed, "read at the last read")
	// A subscriber on b: read while it holds one, moving or not.
	require.True(t, eng.Register(clk.Now(), []byte("b"), []byte("sip:x@y"), 2).Admitted())
	for range 3 * quiet {
		got := step()
		require.Contains(t, got, "b")
		require.NotContains(t, got, "c")
	}
	// Its expiry is a move: read, then left out serviceQuiet later.
	eng.Tick(clk.Now())
	require.Zero(t, eng.Service("b").Stats().Subscribers)
	require.Equal(t, []string{"b"}, step())
	for range quiet - 1 {
		require.Equal(t, []string{"b"}, step())
	}
	require.Empty(t, step())
	// A new allocation on c: no counter moves, a pool is pending.
	require.NoError(t, eng.SetAccount("c", "other", 10, admission.Overage{}))
	got = r.Read()
	require.Len(t, got, 1)
	require.Equal(t, "c", got[0].Name)
	require.Equal(t, []AccountUsage{{Account: "other", Size: 10}}, got[0].Accounts)
	// A charge to c's account.
	require.True(t, eng.Consume(clk.Now(), []byte("c"), []byte("acme"), 5, nil).Admitted())
	got = r.Read()
	require.Len(t, got, 1)
	require.Equal(t, "c", got[0].Name)
	require.Equal(t, []AccountUsage{{Account: "acme", Size: 1000, Used: 5}}, got[0].Accounts)
	for range quiet {
		step()
	}
	require.Empty(t, step())
	// New limits on a: read again.
	lim.CAPS = 200
	require.NoError(t, eng.SetLimits("a", lim))
	require.Equal(t, []string{"a"}, step())
	// A service added later is read at once.
	require.NoError(t, eng.SetLimits("d", lim))
	require.Equal(t, []string{"a", "d"}, step())
}

// A service the reader left out is measured, when it moves again, as if
// it had been read all along: over seeded Poisson loads that come and go
// (and bursts after silences), sampled at irregular instants (early plans
// between exchanges), a demand meter fed only what the reader would read
// gives at each of its measures exactly the rate of one fed at every
// measure; and wherever it was left out, the other measured no demand.
func TestResumedMeterMeasuresAsIfReadAllAlong(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 0x726573756d65))
	all, some := newDemandMeter(), newDemandMeter()
	var n uint64
	tm, lastMove, resumes, skipped, compared := 0.0, 0.0, 0, 0, 0
	rate, until := 0.0, 0.0
	read := true
	for range 20000 {
		// Early plans come between exchanges.
		tm += ExchangeInterval.Seconds() * (0.5 + rng.Float64())
		if tm >= until { // a new stretch: silence, a load, or a burst
			switch r := rng.Float64(); {
			case r < 0.5:
				rate = 0
			case r < 0.9:
				rate = 1 + rng.Float64()*200
			default:
				rate = 1000 + rng.Float64()*3000
			}
			until = tm + 0.5 + rng.Float64()*12
		}
		before := n
		for next := rng.ExpFloat64() / max(rate, 1e-9); rate > 0 && next < ExchangeInterval.Seconds(); next += rng.ExpFloat64() / rate {
			n++
		}
		if n != before {
			lastMove = tm
		}
		dAll, _, _ := all.measure(Usage{{Name: "s", Offered: n}}, tm)
		// The reader's rule: read while it moved within serviceQuiet.
		wasRead := read
		read = n != before || tm-lastMove < serviceQuiet.Seconds()
		if !read {
			skipped++
			require.Zero(t, dAll["s"], "at %.1f s: left out, yet the meter read along sees demand", tm)
			some.measure(Usage{}, tm) // a plan measures what was read: here nothing
			continue
		}
		if !wasRead {
			resumes++
		}
		dSome, _, _ := some.measure(Usage{{Name: "s", Offered: n, Resumed: !wasRead}}, tm)
		compared++
		require.Equal(t, dAll["s"], dSome["s"], "at %.1f s (%d resumes)", tm, resumes)
		a, b := &all.series["s"].offered, &some.series["s"].offered
		require.Equal(t, a.last, b.last)
		require.Equal(t, a.dt[:a.k], b.dt[:b.k], "at %.1f s (%d resumes): the samples held", tm, resumes)
		require.Equal(t, a.dn[:a.k], b.dn[:b.k], "at %.1f s (%d resumes)", tm, resumes)
	}
	require.Greater(t, resumes, 50)
	require.Greater(t, skipped, 2000)
	require.Greater(t, compared, 10000)
}

// A series missing from reads for another reason than the reader's quiet
// rule (a trunk key unread while it had no limits of its own, counting
// all the same) is not resumed: 3,000 attempts over the minute it was
// unread read as the minute's rate, not as a burst in the last 100 ms.
func TestUnreadSeriesIsNotResumed(t *testing.T) {
	m := newDemandMeter()
	var n uint64
	tm := 0.0
	for range 50 { // 50 attempts a second, read
		tm += 0.1
		n += 5
		m.measure(Usage{{Name: "svc/key"}, {Name: "x", Offered: n}}, tm)
	}
	for range 600 { // a minute unread, still counting
		tm += 0.1
		n += 5
		m.measure(Usage{}, tm)
	}
	tm += 0.1
	n += 5
	d, _, _ := m.measure(Usage{{Name: "x", Offered: n}}, tm)
	require.InDelta(t, 50, d["x"], 1, "the gap is one sample of the minute's attempts")
}

// busyLoops is an engine clock that, after telling each instant, moves on
// by 5 ms and decides an attempt on each service at the new instant, as
// a loaded node's event loops do while its exchange walks 1,000 buckets
// (while on is set), so that any reading the usage reader takes is stale
// by the time it reads the next bucket.
type busyLoops struct {
	at       *admission.FakeClock
	eng      *admission.Engine
	services []string
	on       bool
}

func (c *busyLoops) Now() int64 {
	now := c.at.Now()
	if c.on {
		c.at.Advance(5 * time.Millisecond)
		for _, s := range c.services {
			if !c.eng.Admit(c.at.Now(), []byte(s), nil, nil, admission.Normal).Admitted() {
				panic("refused: " + s)
			}
		}
	}
	return now
}

// What a member reads of its buckets owes only what was decided no
// later than it read each: on a node whose event loops go on deciding
// while the exchange reads every licence's bucket, a bucket refilled at
// 333,333 a second and taking 474 a second owed 1,000 to 1,400 attempts
// when read against the instant the read began, and the debt, reported,
// made every member plan every busy licence again at every report. Each
// service here takes an attempt 5 ms after every reading of the clock:
// against the reading the read began with, each would owe 501.
func TestUsageReadOwesWhatWasDecidedBeforeEachBucket(t *testing.T) {
	clk := admission.NewFakeClock()
	loops := &busyLoops{at: clk, services: []string{"a", "b", "c", "d"}}
	cfg := admission.DefaultConfig()
	cfg.Clock = loops
	eng := admission.NewEngine(cfg)
	loops.eng = eng
	lim := admission.Limits{Licensed: true, CAPS: 100_000, Sessions: admission.Unlimited, Subscribers: admission.Unlimited,
		Tokens: admission.Unlimited}
	for _, s := range loops.services {
		require.NoError(t, eng.SetLimits(s, lim))
	}
	for _, read := range []func() Usage{NewUsageReader(eng).Read, func() Usage { return ReadUsage(eng) }} {
		loops.on = true
		u := read()
		loops.on = false
		require.Len(t, u, len(loops.services))
		for _, su := range u {
			require.Equal(t, admission.Depth(100_000, cfg.Burst.Seconds()), su.Depth)
			require.LessOrEqual(t, su.Depth-su.Avail, int64(1), "%s owes at most the attempt decided at the instant its bucket was read", su.Name)
		}
		m := newDemandMeter()
		_, _, held := m.measure(u, 0)
		require.Empty(t, held, "nothing held or owed")
	}
}

// A service that charged tokens this period and is quiet since is carried,
// not read: the read repeats what it charged, the measure holds it as it
// held it when read (and nothing else), and a charge or a new allocation
// has it read again, its meters resumed. Every licence with tokens used
// once a period was read at every exchange before (PoolUsed above 0 was
// not idle): 1,000 of them, ten times a second.
func TestUsageReaderCarriesTokensCharged(t *testing.T) {
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	eng := admission.NewEngine(cfg)
	lim := admission.Limits{Licensed: true, CAPS: 100, Sessions: 100, Subscribers: 100, Tokens: 1 << 30}
	for _, s := range []string{"a", "b"} {
		require.NoError(t, eng.SetLimits(s, lim))
	}
	require.True(t, eng.Consume(clk.Now(), []byte("a"), nil, 550, nil).Admitted())
	r, m := NewUsageReader(eng), newDemandMeter()
	quiet := int(serviceQuiet / ExchangeInterval)
	var u Usage
	step := func() map[string]Held {
		clk.Advance(ExchangeInterval)
		u = r.Read()
		_, _, held := m.measure(u, float64(clk.Now())/1e9)
		return held
	}
	for range quiet + 1 {
		require.Equal(t, map[string]Held{"a": {Tokens: 550}}, step())
	}
	require.Equal(t, Usage{{Name: "a", PoolUsed: 550, Carried: true}}, u, "a carried, b left out")
	for range 3 {
		require.Equal(t, map[string]Held{"a": {Tokens: 550}}, step())
		require.Equal(t, Usage{{Name: "a", PoolUsed: 550, Carried: true}}, u)
	}

	// A charge: read at once, resumed.
	require.True(t, eng.Consume(clk.Now(), []byte("a"), nil, 50, nil).Admitted())
	require.Equal(t, map[string]Held{"a": {Tokens: 600}}, step())
	require.Len(t, u, 1)
	require.False(t, u[0].Carried)
	require.True(t, u[0].Resumed)
	require.Equal(t, int64(600), u[0].PoolUsed)
	for range quiet - 1 {
		require.Equal(t, map[string]Held{"a": {Tokens: 600}}, step())
		require.False(t, u[0].Carried, "read while quiet for less than serviceQuiet")
	}
	require.Equal(t, map[string]Held{"a": {Tokens: 600}}, step())
	require.Equal(t, Usage{{Name: "a", PoolUsed: 600, Carried: true}}, u)

	// A new period: read, nothing charged in it.
	lim.PeriodID = 1
	require.NoError(t, eng.SetLimits("a", lim))
	require.Equal(t, map[string]Held{}, step())
	require.Len(t, u, 1)
	require.False(t, u[0].Carried)
	require.Zero(t, u[0].PoolUsed)
	for range quiet {
		step()
	}
	require.Empty(t, u, "quiet, nothing charged: left out")

	// A new allocation (a pool pending, no counter moved): read.
	require.NoError(t, eng.SetAccount("a", "acme", 10, admission.Overage{}))
	require.Equal(t, map[string]Held{}, step())
	require.False(t, u[0].Carried)
	require.Equal(t, "acme", u[0].Accounts[0].Account)
}
