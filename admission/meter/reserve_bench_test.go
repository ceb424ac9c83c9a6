package meter

import (
	"log/slog"
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
	wg.Go(func() { // as admission/node's reserving loop
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
