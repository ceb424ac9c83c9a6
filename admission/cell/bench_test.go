package cell

import (
	"fmt"
	"testing"

	"github.com/capsgate/capsgate/admission"
)

// keys returns n keys' hashes.
func keys(n int) []admission.Key {
	out := make([]admission.Key, n)
	for i := range out {
		out[i] = admission.KeyOf(fmt.Appendf(nil, "user%d", i))
	}
	return out
}

// parse parses CL.THROTTLE's arguments and makes their rate.
func parse(tb testing.TB, args [][]byte) (Args, Rate) {
	a, err := ParseArgs(args, DefaultBounds())
	if err != nil {
		tb.Fatal(err)
	}
	r, err := NewRate(a.MaxBurst, a.Count, a.Period)
	if err != nil {
		tb.Fatal(err)
	}
	return a, r
}

// TestThrottleAllocatesNothing: parsing, hashing and deciding a
// CL.THROTTLE on held keys and on new ones (their slab grown) allocates
// nothing.
func TestThrottleAllocatesNothing(t *testing.T) {
	tab := NewTable(1 << 20)
	args := bargs("user123", "15", "30", "60", "1")
	now := int64(1e12)
	run := func() {
		a, r := parse(t, args)
		now += 1e6
		if _, err := tab.Throttle(now, admission.KeyOf(a.Key), r, a.Quantity); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Fatalf("a decision allocates %v times", n)
	}
	// New keys, each kept and later swept, once the slab holds them.
	ks := keys(4096)
	r, _ := NewRate(15, 30, 60)
	for _, k := range ks {
		_, _ = tab.Throttle(now, k, r, 1)
	}
	now += 120e9
	tab.Sweep(now)
	i := 0
	if n := testing.AllocsPerRun(len(ks)-1, func() {
		if _, err := tab.Throttle(now, ks[i], r, 1); err != nil {
			t.Fatal(err)
		}
		i++
	}); n != 0 {
		t.Fatalf("a new key allocates %v times", n)
	}
}

// BenchmarkThrottle: CL.THROTTLE's parse and decision on 10,000 keys, from
// every P at once (the shards' mutexes, no lock over the table).
func BenchmarkThrottle(b *testing.B) {
	tab := NewTable(1 << 20)
	ks := keys(10_000)
	args := bargs("user123", "15", "30", "60", "1")
	clk := admission.NewFakeClock()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			a, r := parse(b, args)
			_, _ = tab.Throttle(clk.Now(), ks[i%len(ks)], r, a.Quantity)
			i++
		}
	})
}
