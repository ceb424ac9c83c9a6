package idstore

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/capsgate/capsgate/admission"
)

// BenchmarkConsumeWithIDs charges CONSUMEs with new IDs (each a first-time
// key, the costly case: a store lookup that misses, a charge, a queued
// key) from parallel goroutines (the event loops) on an engine whose store
// already remembers 1 M keys (10 M and more with IDSTORE_BENCH_KEYS, a
// comma-separated list), a flusher committing every FlushEvery beside them,
// as the node runs. It reports charges per second, the Go heap and the
// process's RSS, the store's size on disk, and the restart time (Close,
// then Open and a first lookup). The README's command:
//
//	IDSTORE_BENCH_KEYS=1000000,10000000 go test ./admission/idstore -run '^$' \
//	    -bench ConsumeWithIDs -benchtime 2000000x -timeout 60m
func BenchmarkConsumeWithIDs(b *testing.B) {
	sizes := []int{1_000_000}
	if env := os.Getenv("IDSTORE_BENCH_KEYS"); env != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				b.Fatalf("IDSTORE_BENCH_KEYS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		// One store per size, filled once: the sub-benchmark runs more
		// than once (N=1 first), each on the store the last one left.
		dir, err := os.MkdirTemp("", "idstore-bench-")
		if err != nil {
			b.Fatal(err)
		}
		run := 0
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			run++
			benchConsume(b, dir, n, run)
		})
		os.RemoveAll(dir)
	}
}

func benchConsume(b *testing.B, dir string, keys, run int) {
	clk := admission.NewSystemClock()
	s, err := Open(Config{Dir: dir, Clock: clk, MaxKeys: int64(keys) + 1<<30})
	if err != nil {
		b.Fatal(err)
	}
	if run == 1 {
		start := time.Now()
		prefill(b, s, keys)
		b.Logf("prefilled %d keys in %s", keys, time.Since(start).Round(time.Millisecond))
	}
	eng := admission.NewEngine(admission.Config{Clock: clk, IdempotencyWindow: MaxWindow, Keys: s})
	if err := eng.SetLimits("bill", admission.Limits{Licensed: true, CAPS: 1000, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}); err != nil {
		b.Fatal(err)
	}
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			case <-time.After(FlushEvery):
				if err := s.Flush(); err != nil {
					b.Error(err)
				}
			}
		}
	}()
	var next atomic.Int64
	svc, acct := []byte("bill"), []byte("acct")
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		id := make([]byte, 0, 32)
		prefix := fmt.Sprintf("r%d-", run)
		for pb.Next() {
			id = strconv.AppendInt(append(id[:0], prefix...), next.Add(1), 10)
			if d := eng.Consume(clk.Now(), svc, acct, 1, id); !d.Admitted() {
				b.Errorf("CONSUME: %+v", d)
				return
			}
		}
	})
	el := time.Since(t0)
	b.StopTimer()
	close(stop)
	<-flushed
	if err := s.Flush(); err != nil {
		b.Fatal(err)
	}
	if u := eng.Service("bill").Stats().TokensUsed; u != int64(b.N) {
		b.Fatalf("%d tokens used, want %d", u, b.N)
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(b.N)/el.Seconds(), "charges/s")
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(rssKB())/1024, "rss-MiB")
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(dirBytes(b, dir))/(1<<20), "disk-MiB")
	// Restart: open the store again and answer a repeat from it.
	t1 := time.Now()
	s2, err := Open(Config{Dir: dir, Clock: clk})
	if err != nil {
		b.Fatal(err)
	}
	defer s2.Close()
	k := admission.IDKey("bill", acct, fmt.Appendf(nil, "r%d-1", run))
	if _, ok := s2.Lookup(k, clk.Now()); !ok {
		b.Fatalf("r%d-1 not found after the restart", run)
	}
	b.ReportMetric(time.Since(t1).Seconds(), "restart-s")
	b.ReportMetric(float64(s2.Len()), "keys")
}

// prefill writes n remembered keys straight into pebble, 100,000 a batch.
func prefill(b *testing.B, s *Store, n int) {
	exp := s.wall(s.cfg.Clock.Now()) + int64(MaxWindow)
	var kb, vb [16]byte
	binary.LittleEndian.PutUint64(vb[:8], uint64(exp))
	var id [8]byte
	for i := 0; i < n; {
		batch := s.db.NewBatch()
		for j := 0; j < 100_000 && i < n; j, i = j+1, i+1 {
			binary.LittleEndian.PutUint64(id[:], uint64(i))
			if err := batch.Set(encodeKey(&kb, admission.KeyOf(id[:])), vb[:], nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(pebble.NoSync); err != nil {
			b.Fatal(err)
		}
		batch.Close()
	}
	if err := s.db.Flush(); err != nil {
		b.Fatal(err)
	}
	s.count.Add(int64(n))
}

func rssKB() int {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return kb
		}
	}
	return 0
}

func dirBytes(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}
