package admission

import (
	"fmt"
	"math/rand/v2"
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
