package journal

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// benchState journals JOURNAL_BENCH_ENTRIES entries (default 200,000;
// half open calls, half registrations) as a node would, in a new dir, and
// returns their count, the engine and its journal (open) and a function
// that opens the dir on a new engine.
func benchState(b *testing.B) (int, *admission.Engine, *Journal, func() (*admission.Engine, *Journal)) {
	n := 200_000
	if v := os.Getenv("JOURNAL_BENCH_ENTRIES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 {
			b.Fatalf("JOURNAL_BENCH_ENTRIES=%q: want a count ≥ 2", v)
		}
	}
	lim := admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited}
	dir := b.TempDir()
	clk := admission.NewFakeClock()
	wall := func() time.Time { return time.Unix(0, clk.Now()) }
	open := func() (*admission.Engine, *Journal) {
		cfg := admission.DefaultConfig()
		cfg.Clock, cfg.JournalState = clk, true
		eng := admission.NewEngine(cfg)
		require.NoError(b, eng.SetLimits("voice", lim))
		j, err := Open(Config{Dir: dir, Engine: eng, Clock: clk, Wall: wall, Log: slog.New(slog.DiscardHandler)})
		require.NoError(b, err)
		return eng, j
	}
	eng, j := open()
	var key [32]byte
	for i := range n / 2 {
		c := fmt.Appendf(key[:0], "call-%d", i)
		require.True(b, eng.Admit(clk.Now(), voice, c, nil, admission.Normal).Admitted())
		s := fmt.Appendf(key[:0], "sub-%d", i)
		require.True(b, eng.Register(clk.Now(), voice, s, 3600).Admitted())
		if i%100_000 == 0 {
			require.NoError(b, j.Flush())
		}
	}
	require.NoError(b, j.Flush())
	return n, eng, j, open
}

// BenchmarkRestore measures a restart's restore: benchState's entries
// journaled and snapshotted as a node would, then each iteration opens the
// state on a new engine. Reported: the restore time and the Go heap the
// restored entries take per entry.
//
//	JOURNAL_BENCH_ENTRIES=2000000 go test ./admission/journal -run '^$' -bench Restore -benchtime 3x
func BenchmarkRestore(b *testing.B) {
	n, _, j, open := benchState(b)
	require.NoError(b, j.Close())
	b.ResetTimer()
	var heap float64
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		eng, j := open()
		d := time.Since(start)
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		st := eng.Service("voice").Stats()
		require.Equal(b, int64(n/2), st.Sessions)
		require.Equal(b, int64(n/2), st.Subscribers)
		heap = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		b.ReportMetric(d.Seconds(), "restore-s")
		require.NoError(b, j.Close())
		runtime.KeepAlive(eng)
		b.StartTimer()
	}
	b.ReportMetric(heap, "heap-B/entry")
}

// BenchmarkSnapshot measures writing a snapshot of benchState's entries
// (written, synced and renamed into place, as a compaction does).
// Reported: the time and the file's bytes per entry.
//
//	JOURNAL_BENCH_ENTRIES=2000000 go test ./admission/journal -run '^$' -bench Snapshot -benchtime 5x
func BenchmarkSnapshot(b *testing.B) {
	n, eng, j, _ := benchState(b)
	defer j.Close()
	require.Equal(b, int64(n/2), eng.Service("voice").Stats().Subscribers)
	var size int64
	b.ResetTimer()
	for i := range b.N {
		seq := uint64(1000 + i)
		_, err := j.writeSnapshot(seq, j.cfg.Clock.Now())
		require.NoError(b, err)
		b.StopTimer()
		fi, err := os.Stat(filepath.Join(j.cfg.Dir, snapshotName(seq)))
		require.NoError(b, err)
		size = fi.Size()
		require.NoError(b, os.Remove(filepath.Join(j.cfg.Dir, snapshotName(seq))))
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/snapshot")
	b.ReportMetric(float64(size)/float64(n), "B/entry")
}
