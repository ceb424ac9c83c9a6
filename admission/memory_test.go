package admission

import (
	"os"
	"runtime"
	"strconv"
	"testing"
	"unsafe"
)

// The sizes the package doc's memory arithmetic rests on.
func TestEntrySizes(t *testing.T) {
	for _, c := range []struct {
		what      string
		got, want uintptr
	}{
		{"a session", unsafe.Sizeof(session{}), 24},
		{"a session's table entry", unsafe.Sizeof(entry[session]{}), 64},
		{"a subscriber's table entry", unsafe.Sizeof(entry[registered]{}), 40},
		{"a remembered ID's table entry", unsafe.Sizeof(entry[Decision]{}), 64},
		{"an index slot", unsafe.Sizeof(slot{}), 8},
	} {
		if c.got != c.want {
			t.Errorf("%s takes %d bytes, the package doc says %d", c.what, c.got, c.want)
		}
	}
}

// BenchmarkMemoryPerEntry reports the Go heap a node holds per registered
// subscriber and per open call (heap after a collection, over the entries):
// MEMORY_BENCH_ENTRIES of each (default 1,000,000).
func BenchmarkMemoryPerEntry(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("MEMORY_BENCH_ENTRIES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("MEMORY_BENCH_ENTRIES=%q: want a count ≥ 1", v)
		}
	}
	lim := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	var subs, calls float64
	for range b.N {
		clk := NewFakeClock()
		cfg := DefaultConfig()
		cfg.Clock = clk
		measure := func(fill func(e *Engine)) float64 {
			e := NewEngine(cfg)
			if err := e.SetLimits("voice", lim); err != nil {
				b.Fatal(err)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			fill(e)
			runtime.GC()
			runtime.ReadMemStats(&after)
			runtime.KeepAlive(e)
			return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		}
		var key [24]byte
		subs = measure(func(e *Engine) {
			for i := range n {
				if !e.Register(clk.Now(), []byte("voice"), strconv.AppendInt(append(key[:0], "sub:"...), int64(i), 10), 3600).Admitted() {
					b.Fatal("refused")
				}
			}
		})
		calls = measure(func(e *Engine) {
			for i := range n {
				if !e.Admit(clk.Now(), []byte("voice"), strconv.AppendInt(append(key[:0], "call:"...), int64(i), 10), nil, Normal).Admitted() {
					b.Fatal("refused")
				}
			}
		})
	}
	b.ReportMetric(subs, "B/subscriber")
	b.ReportMetric(calls, "B/call")
}
