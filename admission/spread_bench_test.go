package admission

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
)

// BenchmarkAdmitSpread is ADMIT on one service against ADMIT on one of
// 1,000 services at random (names pre-drawn): what a decision pays for
// finding a service among many and for its state not being in the cache.
//
//	go test ./admission -run '^$' -bench AdmitSpread -benchmem
func BenchmarkAdmitSpread(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			e := NewEngine(DefaultConfig())
			names := make([][]byte, n)
			for i := range n {
				names[i] = fmt.Appendf(nil, "s%012d", i)
				if err := e.SetLimits(string(names[i]), Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}); err != nil {
					b.Fatal(err)
				}
			}
			rng := rand.New(rand.NewPCG(1, 1))
			order := make([][]byte, 1<<16)
			for i := range order {
				order[i] = names[rng.IntN(n)]
			}
			now := e.Now()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				e.Admit(now, order[i&(len(order)-1)], nil, nil, Normal)
				i++
			}
		})
	}
}

// BenchmarkAdmitSpreadCold is ADMIT spread over 16 engines of 1,000
// services each (16,000 services, far more state than the caches hold):
// each decision finds its service's state out of the cache, as a node's
// decisions do between the system calls of a loaded front end, and pays
// for each dependent miss in turn (the name's place in the index, the
// service, its limits).
//
//	go test ./admission -run '^$' -bench AdmitSpreadCold -benchmem
func BenchmarkAdmitSpreadCold(b *testing.B) {
	const engines, n = 16, 1000
	es := make([]*Engine, engines)
	names := make([][]byte, n)
	for i := range n {
		names[i] = fmt.Appendf(nil, "s%012d", i)
	}
	for j := range es {
		es[j] = NewEngine(DefaultConfig())
		for i := range n {
			if err := es[j].SetLimits(string(names[i]), Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}); err != nil {
				b.Fatal(err)
			}
		}
	}
	type pick struct {
		e    *Engine
		name []byte
	}
	rng := rand.New(rand.NewPCG(1, 1))
	order := make([]pick, 1<<16)
	for i := range order {
		order[i] = pick{es[rng.IntN(engines)], names[rng.IntN(n)]}
	}
	now := es[0].Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := &order[i&(len(order)-1)]
		p.e.Admit(now, p.name, nil, nil, Normal)
		i++
	}
}

// BenchmarkAdmitParallelServices is ADMIT from every P at once, all on
// one service against each P on a service of its own (services=P): what
// event loops deciding on one service pay for writing the same bucket
// line, which loops on different services do not.
//
//	go test ./admission -run '^$' -bench AdmitParallelServices -benchmem
func BenchmarkAdmitParallelServices(b *testing.B) {
	for _, n := range []int{1, runtime.GOMAXPROCS(0)} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			e := NewEngine(DefaultConfig())
			names := make([][]byte, n)
			for i := range n {
				names[i] = fmt.Appendf(nil, "s%012d", i)
				if err := e.SetLimits(string(names[i]), Limits{Licensed: true, CAPS: 1e9, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}); err != nil {
					b.Fatal(err)
				}
			}
			now := e.Now()
			var procs atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				name := names[int(procs.Add(1)-1)%n]
				for i := int64(0); pb.Next(); i++ {
					e.Admit(now+i, name, nil, nil, Normal)
				}
			})
		})
	}
}
