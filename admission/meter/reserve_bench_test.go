package meter

import (
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// BenchmarkMixedCharges: CONSUMEs of 1 to 10^6 tokens (uniform) from
// every core at once on an idle pool of 2^62 tokens, with the node's
// reserving loop (woken by the engine, every StepEvery at the latest;
// fsync'd writes to a temporary dir) and charges that find their
// reservation short waiting for it (Await). Any charge not admitted fails
// the benchmark. Reported: charges/s, the reservations written per second
// and those a charge waited for; the start from an idle pool (1,000
// tokens reserved) is included.
//
//	go test -run '^$' -bench MixedCharges -benchtime 3s -benchmem ./admission/meter
func BenchmarkMixedCharges(b *testing.B) {
	wake := make(chan struct{}, 1)
	var res *Reserver
	var waits atomic.Int64
	cfg := admission.DefaultConfig()
	cfg.DurableTokens, cfg.ReserveWake = true, wake
	cfg.AwaitReserve = func() bool { waits.Add(1); return res.Await() }
	e := admission.NewEngine(cfg)
	if err := e.SetLimits("pre", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 1 << 62}); err != nil {
		b.Fatal(err)
	}
	var err error
	if res, err = OpenReserver(e, b.TempDir(), slog.Default()); err != nil {
		b.Fatal(err)
	}
	if err := res.Step(time.Now()); err != nil {
		b.Fatal(err)
	}
	var steps atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // as the node's reserving loop
		tick := time.NewTicker(StepEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			case <-wake:
			}
			if err := res.Step(time.Now()); err != nil {
				b.Error(err)
				return
			}
			steps.Add(1)
		}
	})
	var refused, tokens atomic.Int64
	var seed atomic.Uint64
	service := []byte("pre")
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		x := seed.Add(0x9E3779B97F4A7C15) | 1
		var sum int64
		for pb.Next() {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			n := int64(x%1_000_000) + 1
			if d := e.Consume(e.Now(), service, nil, n, nil); d.Reason != admission.OK {
				refused.Add(1)
			} else {
				sum += n
			}
		}
		tokens.Add(sum)
	})
	el := time.Since(start)
	b.StopTimer()
	close(stop)
	wg.Wait()
	if n := refused.Load(); n > 0 {
		b.Fatalf("%d of %d charges refused", n, b.N)
	}
	p := e.Service("pre").Pools()[0]
	if p.Total != tokens.Load() || p.Durable < p.Total {
		b.Fatalf("charged %d, admitted %d, reserved %d", p.Total, tokens.Load(), p.Durable)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "charges/s")
	res.mu.Lock()
	writes := res.writes
	res.mu.Unlock()
	b.ReportMetric(float64(steps.Load())/el.Seconds(), "steps/s")
	b.ReportMetric(float64(writes)/el.Seconds(), "writes/s")
	b.ReportMetric(float64(waits.Load()), "waits")
	b.ReportMetric(float64(p.Durable-p.Total), "ahead-tokens")
}

// bigLimits license "pre" with a pool room for any allocation.
var bigLimits = admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
	Subscribers: admission.Unlimited, Tokens: 1 << 60}

func accountName(i int) string { return fmt.Sprintf("a%d", i) }

// BenchmarkSetAccount allocates 100,000 accounts in one service, each
// PUT written and fsync'd (to a temporary dir), and reports the time of
// the first 1,000 allocations and of the last 1,000, and the median PUT
// of each: a PUT must cost the same whatever the number of accounts. The
// medians may differ by 2× at most; the sums are reported only, as an
// fsync on a shared disk now and then takes many times its median.
//
//	go test -run '^$' -bench SetAccount -benchtime 1x ./admission/meter
func BenchmarkSetAccount(b *testing.B) {
	const n, edge = 100_000, 1000
	for b.Loop() {
		e := admission.NewEngine(durableConfig())
		if err := e.SetLimits("pre", bigLimits); err != nil {
			b.Fatal(err)
		}
		res, err := OpenReserver(e, b.TempDir(), slog.Default())
		if err != nil {
			b.Fatal(err)
		}
		var first, last []time.Duration
		for i := range n {
			start := time.Now()
			if err := res.SetAccount("pre", accountName(i), admission.Allocation{Tokens: 1000, Overage: "none"}); err != nil {
				b.Fatal(err)
			}
			switch {
			case i < edge:
				first = append(first, time.Since(start))
			case i >= n-edge:
				last = append(last, time.Since(start))
			}
		}
		sum := func(d []time.Duration) (t time.Duration) {
			for _, x := range d {
				t += x
			}
			return t
		}
		median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
		b.ReportMetric(float64(sum(first).Milliseconds()), "first1000-ms")
		b.ReportMetric(float64(sum(last).Milliseconds()), "last1000-ms")
		mf, ml := median(first), median(last)
		b.ReportMetric(float64(mf.Microseconds()), "first-median-us")
		b.ReportMetric(float64(ml.Microseconds()), "last-median-us")
		if ml > 2*mf {
			b.Fatalf("the median of the last 1,000 allocations is %v, of the first %v", ml, mf)
		}
		if err := res.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStep: a Step with many idle accounts and one charged between
// steps (a token a step: within its reservation but for a write, fsync'd
// to a temporary dir, every 500 steps); its cost must not grow with the
// idle accounts: one service with 1,000 or 100,000, or 1,000 services
// with 100 each.
//
//	go test -run '^$' -bench Step -benchmem ./admission/meter
func BenchmarkStep(b *testing.B) {
	for _, c := range []struct{ services, accounts int }{{1, 1000}, {1, 100_000}, {1000, 100}} {
		b.Run(fmt.Sprintf("services=%d/accounts=%d", c.services, c.accounts), func(b *testing.B) {
			e := admission.NewEngine(durableConfig())
			for i := range c.services {
				name := fmt.Sprintf("s%d", i)
				if err := e.SetLimits(name, bigLimits); err != nil {
					b.Fatal(err)
				}
				for j := range c.accounts {
					if err := e.SetAccount(name, accountName(j), 1<<40, admission.Overage{}); err != nil {
						b.Fatal(err)
					}
				}
			}
			res, err := OpenReserver(e, b.TempDir(), slog.Default())
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			if err := res.Step(now); err != nil { // every pool's first reservation
				b.Fatal(err)
			}
			busy := []byte(accountName(0))
			b.ReportAllocs()
			for b.Loop() {
				if d := e.Consume(e.Now(), []byte("s0"), busy, 1, nil); d.Reason != admission.OK {
					b.Fatal(d)
				}
				now = now.Add(StepEvery)
				if err := res.Step(now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func durableConfig() admission.Config {
	cfg := admission.DefaultConfig()
	cfg.DurableTokens = true
	return cfg
}
