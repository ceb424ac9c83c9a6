package journal

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

var voice = []byte("voice")

var limits = admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: 10000, Subscribers: 10000,
	Tokens: admission.Unlimited, TokensPerMinute: 1}

// node is one run of a node: an engine and its journal on a data dir,
// with a clock that goes on across runs (the wall clock).
type node struct {
	t   *testing.T
	dir string
	clk *admission.FakeClock
	eng *admission.Engine
	j   *Journal
}

func (n *node) now() int64 { return n.clk.Now() }

// start runs the node on dir: a new engine (licensed, account acme), then
// Open.
func start(t *testing.T, dir string, clk *admission.FakeClock, mod ...func(*Config)) *node {
	t.Helper()
	cfg := admission.DefaultConfig()
	cfg.Clock, cfg.JournalState = clk, true
	cfg.MaxLog = 2 * minLog // overflows within a test's few thousand changes
	eng := admission.NewEngine(cfg)
	require.NoError(t, eng.SetLimits("voice", limits))
	require.NoError(t, eng.SetAccount("voice", "acme", 1000, admission.Overage{}))
	jc := Config{Dir: dir, Engine: eng, Clock: clk, Wall: func() time.Time { return time.Unix(0, clk.Now()) },
		Log: slog.New(slog.DiscardHandler)}
	for _, m := range mod {
		m(&jc)
	}
	j, err := Open(jc)
	require.NoError(t, err)
	return &node{t: t, dir: dir, clk: clk, eng: eng, j: j}
}

// crash abandons the run as kill -9 would: nothing more is flushed.
func (n *node) crash() { n.j.f.Close() }

func (n *node) stats() admission.Stats { return n.eng.Service("voice").Stats() }

// load opens calls call-0..calls-1 (call-i for account acme when i is even)
// and registers subs subscribers, sub-i with a TTL of 60+i s, returning
// the first decisions.
func (n *node) load(calls, subs int) map[string]admission.Decision {
	first := map[string]admission.Decision{}
	for i := range calls {
		var acct []byte
		if i%2 == 0 {
			acct = []byte("acme")
		}
		c := fmt.Sprintf("call-%d", i)
		first[c] = n.eng.Admit(n.now(), voice, []byte(c), acct, admission.Normal)
		require.True(n.t, first[c].Admitted())
	}
	for i := range subs {
		require.True(n.t, n.eng.Register(n.now(), voice, fmt.Appendf(nil, "sub-%d", i), int64(60+i)).Admitted())
	}
	return first
}

func TestReplayGivesTheSameState(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	first := n.load(300, 200)
	require.True(t, n.eng.Admit(n.now(), voice, []byte("sos"), nil, admission.Emergency).Admitted())
	for i := range 50 { // some calls end, some subscribers leave
		require.True(t, n.eng.Release(n.now(), voice, fmt.Appendf(nil, "call-%d", 250+i), 0))
		require.True(t, n.eng.Deregister(n.now(), voice, fmt.Appendf(nil, "sub-%d", 150+i)))
	}
	require.True(t, n.eng.Register(n.now(), voice, []byte("sub-0"), 3600).Admitted(), "refreshed")
	require.NoError(t, n.j.Flush())
	n.crash()

	clk.Advance(30 * time.Second)
	n2 := start(t, dir, clk)
	rec := n2.j.Recovered()
	require.Equal(t, 251, rec.Sessions)
	require.Equal(t, 150, rec.Subscribers)
	require.Empty(t, rec.Torn)
	st := n2.stats()
	require.Equal(t, int64(250), st.Sessions)
	require.Equal(t, int64(1), st.EmergencySessions)
	require.Equal(t, int64(150), st.Subscribers)
	for i := range 250 {
		c := fmt.Sprintf("call-%d", i)
		require.Equal(t, first[c], n2.eng.Admit(n2.now(), voice, []byte(c), nil, admission.Normal), c)
	}
	require.Zero(t, n2.stats().Admissions[admission.OK], "repeats after the restart are not counted")
	require.True(t, n2.eng.Release(n2.now(), voice, []byte("call-0"), 60), "an acme call")
	require.Equal(t, int64(1), n2.eng.Service("voice").Pools()[1].Used, "charged to acme")
	require.False(t, n2.eng.Release(n2.now(), voice, []byte("call-250"), 0), "released before the crash")

	// sub-i has a TTL of 60+i s: 130 s later those up to sub-70 are gone
	// but the refreshed sub-0.
	clk.Advance(100 * time.Second)
	require.NoError(t, n2.j.Flush())
	n2.crash()
	n3 := start(t, dir, clk)
	require.Equal(t, 249+1, n3.j.Recovered().Sessions)
	require.Equal(t, 1+79, n3.j.Recovered().Subscribers, "sub-0 and sub-71..sub-149")
	require.Equal(t, int64(1+79), n3.stats().Subscribers)
}

func TestExpiredEntriesAreDropped(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	n.load(10, 100)
	require.NoError(t, n.j.Flush())
	n.crash()
	clk.Advance(3*time.Hour + time.Second) // past the session TTL and every registration
	n2 := start(t, dir, clk)
	require.Zero(t, n2.j.Recovered().Sessions)
	require.Zero(t, n2.j.Recovered().Subscribers)
	st := n2.stats()
	require.Zero(t, st.Sessions)
	require.Zero(t, st.Subscribers)
}

func TestTornTailIsCut(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	n.load(20, 0)
	require.NoError(t, n.j.Flush())
	size := n.j.size
	n.load(0, 1) // one more record...
	require.NoError(t, n.j.Flush())
	path := filepath.Join(dir, journalName(n.j.seq))
	n.crash()
	// ... torn by the crash: its last 10 bytes never reached the disk.
	require.NoError(t, os.Truncate(path, n.j.size-10))

	n2 := start(t, dir, clk)
	rec := n2.j.Recovered()
	require.Equal(t, path, rec.Torn)
	require.Equal(t, size, rec.At)
	require.Equal(t, n.j.size-10-size, rec.Cut)
	require.Equal(t, 20, rec.Records)
	require.Equal(t, 20, rec.Sessions)
	require.Zero(t, rec.Subscribers)

	// The state is whole again in a new snapshot: a second restart finds
	// no tear.
	require.NoError(t, n2.j.Close())
	n3 := start(t, dir, clk)
	require.Empty(t, n3.j.Recovered().Torn)
	require.Equal(t, 20, n3.j.Recovered().Sessions)
}

// snapshotted makes a journal in a new dir whose state is in a snapshot,
// and returns the dir, its clock and the snapshot's path.
func snapshotted(t *testing.T) (dir string, clk *admission.FakeClock, path string) {
	t.Helper()
	dir, clk = t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	n.load(5, 5)
	require.NoError(t, n.j.Close())
	n = start(t, dir, clk)
	n.j.mu.Lock()
	require.NoError(t, n.j.compactLocked(clk.Now())) // the state is now in a snapshot
	n.j.mu.Unlock()
	require.NoError(t, n.j.Close())
	return dir, clk, filepath.Join(dir, snapshotName(n.j.seq))
}

// reopen opens the journal in dir for a new engine.
func reopen(dir string, clk *admission.FakeClock) error {
	cfg := admission.DefaultConfig()
	cfg.Clock, cfg.JournalState = clk, true
	_, err := Open(Config{Dir: dir, Engine: admission.NewEngine(cfg), Clock: clk, Log: slog.New(slog.DiscardHandler)})
	return err
}

func TestCorruptSnapshotStopsTheStart(t *testing.T) {
	dir, clk, path := snapshotted(t)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[len(snapshotMagic)+frameHeader+3] ^= 1
	require.NoError(t, os.WriteFile(path, b, 0o600))

	err = reopen(dir, clk)
	require.ErrorContains(t, err, "cannot read the state snapshot")
	require.ErrorContains(t, err, "move it away")
}

func TestCompactionKeepsTheState(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	small := func(c *Config) { c.MaxJournalBytes = 4 << 10 }
	n := start(t, dir, clk, small)
	seq := n.j.seq
	for i := range 40 { // 40 flushes of 10 changes: several compactions
		for k := range 5 {
			c := fmt.Appendf(nil, "call-%d-%d", i, k)
			require.True(t, n.eng.Admit(n.now(), voice, c, nil, admission.Normal).Admitted())
			if k%2 == 1 {
				require.True(t, n.eng.Release(n.now(), voice, c, 0))
			}
		}
		for k := range 5 {
			require.True(t, n.eng.Register(n.now(), voice, fmt.Appendf(nil, "sub-%d", i*5+k), 3600).Admitted())
		}
		require.NoError(t, n.j.Flush())
		n.j.awaitSnapshot()
	}
	require.Greater(t, n.j.seq, seq+2, "compacted more than twice")
	files, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, files, 2, "one snapshot and its journal; the older ones are removed")
	want := n.stats()
	require.Equal(t, int64(40*3), want.Sessions)
	require.Equal(t, int64(40*5), want.Subscribers)
	n.crash()

	n2 := start(t, dir, clk, small)
	st := n2.stats()
	require.Equal(t, want.Sessions, st.Sessions)
	require.Equal(t, want.Subscribers, st.Subscribers)
	require.True(t, n2.eng.Release(n2.now(), voice, []byte("call-39-4"), 0))
	require.False(t, n2.eng.Release(n2.now(), voice, []byte("call-39-3"), 0))
}

// TestCompactionWaitsForTheSnapshotsSize: the journals are compacted when
// they pass the snapshot they follow, not every MaxJournalBytes, so a big
// state is not rewritten for every few changes; a restart goes on with the
// same bound.
func TestCompactionWaitsForTheSnapshotsSize(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	small := func(c *Config) { c.MaxJournalBytes = 4 << 10 }
	n := start(t, dir, clk, small)
	n.load(0, 2000)
	require.NoError(t, n.j.Flush()) // past 4 KiB and the empty first snapshot
	n.j.awaitSnapshot()
	seq := n.j.seq
	snap := n.j.snapSize
	require.Greater(t, snap, int64(2000*40), "2,000 subscribers' records")
	// Refreshes: a journal of half the snapshot, then past it (flushed
	// in fifties, so that no service's log overflows and is written whole).
	refresh := func(from, count int) {
		for i := from; i < from+count; i++ {
			require.True(t, n.eng.Register(n.now(), voice, fmt.Appendf(nil, "sub-%d", i), 3600).Admitted())
			if i%50 == 49 {
				require.NoError(t, n.j.Flush())
			}
		}
	}
	refresh(0, 1000)
	require.Equal(t, seq, n.j.seq, "a journal of half the snapshot: not compacted")
	n.crash()

	n = start(t, dir, clk, small)
	require.Equal(t, snap, n.j.snapSize, "the snapshot continued after")
	require.Equal(t, seq+1, n.j.seq, "continued with the next journal")
	refresh(1000, 500)
	require.Equal(t, seq+1, n.j.seq, "three quarters: not compacted")
	refresh(1500, 500)
	require.Equal(t, seq+1, n.j.seq, "as big as the snapshot, within a few bytes: not compacted")
	refresh(0, 50)
	require.Equal(t, seq+2, n.j.seq, "past the snapshot: compacted")
	n.j.awaitSnapshot()
	snaps, journals, err := n.j.files()
	require.NoError(t, err)
	require.Equal(t, []uint64{seq + 2}, snaps)
	require.Equal(t, []uint64{seq + 2}, journals)
	require.Equal(t, int64(2000), n.stats().Subscribers)
}

// TestCrashWhileTheSnapshotIsWritten: a compaction starts the next journal
// at once and writes the snapshot behind it; a crash before the snapshot
// is in place (its temporary file half written) restarts from the older
// snapshot and every journal since, the new one included, and loses
// nothing that was flushed.
func TestCrashWhileTheSnapshotIsWritten(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	first := n.load(100, 300)
	require.NoError(t, n.j.Flush())
	n.j.mu.Lock()
	seq, err := n.j.switchLocked() // what compactBehindLocked does first
	n.j.mu.Unlock()
	require.NoError(t, err)
	tmp := filepath.Join(dir, snapshotName(seq)+".tmp")
	require.NoError(t, os.WriteFile(tmp, []byte(snapshotMagic+"half a snapshot"), 0o600))
	for i := range 50 { // changes flushed while the snapshot is written
		require.True(t, n.eng.Release(n.now(), voice, fmt.Appendf(nil, "call-%d", i), 0))
		require.True(t, n.eng.Register(n.now(), voice, fmt.Appendf(nil, "late-%d", i), 3600).Admitted())
	}
	require.NoError(t, n.j.Flush())
	n.crash()

	n2 := start(t, dir, clk)
	st := n2.stats()
	require.Equal(t, int64(50), st.Sessions)
	require.Equal(t, int64(350), st.Subscribers)
	for i := range 100 {
		c := fmt.Sprintf("call-%d", i)
		d := n2.eng.Admit(n2.now(), voice, []byte(c), nil, admission.Normal)
		if i < 50 {
			require.Equal(t, int64(51), n2.stats().Sessions-int64(i), "call-%d was released: a new session", i)
		} else {
			require.Equal(t, first[c], d, "call-%d is open: its first decision again", i)
		}
	}
	require.NoFileExists(t, tmp, "the half-written snapshot is removed")
}

// TestOverflowWritesTheServiceWhole: more changes between two flushes than
// the log holds are not lost: the flush writes the service as it is.
func TestOverflowWritesTheServiceWhole(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	overflows := logOverflows.Get()
	n.load(0, 3*minLog)
	require.NoError(t, n.j.Flush())
	require.Equal(t, overflows+1, logOverflows.Get())
	n.load(0, 3*minLog) // refreshes only: the log grew, so they fit or are written whole again
	require.NoError(t, n.j.Flush())
	// A service the journal has not seen yet logs nothing until it does.
	require.NoError(t, n.eng.SetLimits("video", limits))
	require.True(t, n.eng.Admit(n.now(), []byte("video"), []byte("v1"), nil, admission.Normal).Admitted())
	before := logOverflows.Get()
	require.NoError(t, n.j.Flush())
	require.Equal(t, before+1, logOverflows.Get(), "video's first change found no room")
	n.crash()

	n2 := start(t, dir, clk)
	require.NoError(t, n2.eng.SetLimits("video", limits))
	require.Equal(t, int64(3*minLog), n2.stats().Subscribers)
	require.Equal(t, int64(1), n2.eng.Service("video").Stats().Sessions)
	require.Equal(t, 3*minLog+1, n2.j.Recovered().Subscribers+n2.j.Recovered().Sessions)
}

// TestChangesAfterTheLastFlushAreLost states the loss window: what
// changed after the last Flush before a crash is not back.
func TestChangesAfterTheLastFlushAreLost(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	n.load(10, 0)
	require.NoError(t, n.j.Flush())
	require.True(t, n.eng.Admit(n.now(), voice, []byte("late"), nil, admission.Normal).Admitted())
	n.crash()
	n2 := start(t, dir, clk)
	require.Equal(t, int64(10), n2.stats().Sessions)
	require.False(t, n2.eng.Release(n2.now(), voice, []byte("late"), 0))
}

func TestRecordRoundTrip(t *testing.T) {
	f := func(kind uint8, service string, c admission.Change, exp int64) {
		t.Helper()
		b := appendRecord(nil, kind, service, &c, exp)
		r, size, err := readRecord(b)
		require.NoError(t, err)
		require.Equal(t, len(b), size)
		c.Expires = exp
		require.Equal(t, record{service: service, Change: c, kind: kind}, r)
		for cut := 1; cut < len(b); cut++ {
			_, _, err := readRecord(b[:cut])
			require.ErrorIs(t, err, errTorn, "cut at %d", cut)
		}
		for i := 8; i < len(b); i++ { // any flipped payload bit fails the CRC
			bad := append([]byte(nil), b...)
			bad[i] ^= 0x10
			_, _, err := readRecord(bad)
			require.ErrorIs(t, err, errTorn, "flipped byte %d", i)
		}
	}
	k := admission.KeyOf([]byte("a84b4c76e66710@pc33.atlanta.example.com"))
	f(uint8(admission.SessionOpened), "voice", admission.Change{Kind: admission.SessionOpened, Priority: admission.High,
		Licensed: true, Key: k, Remaining: 41, Account: "acme"}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	f(uint8(admission.SessionOpened), "voice", admission.Change{Kind: admission.SessionOpened, Licensed: true, Key: k, Remaining: 2,
		Trunk: "carrier-a"}, 1)
	f(uint8(admission.SessionOpened), "voice", admission.Change{Kind: admission.SessionOpened, Licensed: true, Key: k, Remaining: 2,
		Account: "acme", Trunk: "carrier-b"}, 1)
	f(uint8(admission.SessionClosed), "prepaid-voice", admission.Change{Kind: admission.SessionClosed, Key: k}, 0)
	f(uint8(admission.SubscriberSet), "v", admission.Change{Kind: admission.SubscriberSet, Key: k, Remaining: -1}, -5)
}

// A snapshot that is not a regular file (a FIFO here) stops the start in
// one line instead of blocking it.
func TestSnapshotNotAFileStopsTheStart(t *testing.T) {
	dir, clk, path := snapshotted(t)
	require.NoError(t, os.Remove(path))
	require.NoError(t, syscall.Mkfifo(path, 0o600))
	require.EqualError(t, reopen(dir, clk), "cannot read the state snapshot: "+path+": not a regular file (a FIFO)")
}

// A restart continues after the journals it replayed instead of writing
// the whole state as a new snapshot before serving; the next restart
// replays the chain whole, and a start that finds maxChain journals after
// the snapshot writes one (and the chain goes).
func TestRestartContinuesTheJournal(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	subs := 0
	for run := 1; run <= maxChain+2; run++ {
		n := start(t, dir, clk)
		require.Equal(t, subs, n.j.Recovered().Subscribers, "run %d restores every earlier run's", run)
		require.Equal(t, subs, int(n.stats().Subscribers))
		require.Equal(t, float64(subs), restoredSubscribers.Get(), "run %d: the gauge says what came back", run)
		require.Positive(t, restoreSeconds.Get())
		snaps, journals, err := n.j.files()
		require.NoError(t, err)
		switch {
		case run <= maxChain:
			require.Equal(t, []uint64{1}, snaps, "run %d: the first snapshot only", run)
			require.Len(t, journals, run, "run %d: one journal more", run)
		case run == maxChain+1:
			require.Equal(t, []uint64{maxChain + 1}, snaps, "run %d: a snapshot at the start", run)
			require.Equal(t, []uint64{maxChain + 1}, journals)
		default:
			require.Equal(t, []uint64{maxChain + 1}, snaps)
			require.Equal(t, []uint64{maxChain + 1, maxChain + 2}, journals)
		}
		for i := range 10 {
			require.True(t, n.eng.Register(n.now(), voice, fmt.Appendf(nil, "run%d-sub%d", run, i), 3600).Admitted())
		}
		// One of the previous run's goes: its removal must not come back.
		if run > 1 {
			require.True(t, n.eng.Deregister(n.now(), voice, fmt.Appendf(nil, "run%d-sub0", run-1)))
			subs--
		}
		subs += 10
		require.NoError(t, n.j.Flush())
		n.crash()
	}
}

// A change log that overflows writes its service whole after a reset
// record; a restart then drops what the snapshot and the journal held of
// that service before the reset (removals included), and applies what
// follows it.
func TestResetSupersedesTheSnapshot(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	sub := func(format string, i int) []byte { return fmt.Appendf(nil, format, i) }
	for i := range 100 {
		require.True(t, n.eng.Register(n.now(), voice, sub("s%d", i), 3600).Admitted())
	}
	require.NoError(t, n.j.Flush())
	n.j.mu.Lock()
	require.NoError(t, n.j.compactLocked(clk.Now())) // the 100 in a snapshot
	n.j.mu.Unlock()
	for i := range 10 {
		require.True(t, n.eng.Deregister(n.now(), voice, sub("s%d", i)))
	}
	for i := range 3000 { // more than the log holds between two flushes
		require.True(t, n.eng.Register(n.now(), voice, sub("n%d", i), 3600).Admitted())
	}
	overflows := logOverflows.Get()
	require.NoError(t, n.j.Flush()) // a reset, then the service whole
	require.Equal(t, overflows+1, logOverflows.Get(), "the log overflowed")
	require.True(t, n.eng.Deregister(n.now(), voice, sub("n%d", 0)))
	require.NoError(t, n.j.Flush())
	n.crash()

	n2 := start(t, dir, clk)
	require.Equal(t, 90+2999, n2.j.Recovered().Subscribers)
	require.Equal(t, int64(90+2999), n2.stats().Subscribers)
	for _, gone := range [][]byte{sub("s%d", 0), sub("s%d", 9), sub("n%d", 0)} {
		require.True(t, n2.eng.Register(n2.now(), voice, gone, 3600).Admitted())
	}
	require.Equal(t, int64(90+2999+3), n2.stats().Subscribers, "s0, s9 and n0 were not restored: each counts anew")
}

// TestRestoreInChunks: a snapshot and a journal each holding more than a
// chunk of a service's changes (restoreChunk), of three services, applied
// by the restorer's goroutine while the next are read: every entry comes
// back once, and the journal's removals after the snapshot hold.
func TestRestoreInChunks(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	big := func(c *Config) {
		c.MaxJournalBytes = 4 << 10
		l := admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
			Subscribers: admission.Unlimited, Tokens: admission.Unlimited}
		require.NoError(t, c.Engine.SetLimits("big", l))
		require.NoError(t, c.Engine.SetLimits("mid", l))
	}
	n := start(t, dir, clk, big)
	const subs, calls = 2*restoreChunk + 18_000, restoreChunk + 4_000
	for i := range subs {
		require.True(t, n.eng.Register(n.now(), []byte("big"), fmt.Appendf(nil, "sub-%d", i), 3600).Admitted())
	}
	for i := range calls {
		require.True(t, n.eng.Admit(n.now(), []byte("mid"), fmt.Appendf(nil, "call-%d", i), nil, admission.Normal).Admitted())
	}
	n.load(0, 100)
	require.NoError(t, n.j.Flush())
	require.NoError(t, n.j.Flush()) // the journal passed its bound: a snapshot
	n.j.awaitSnapshot()
	seq := n.j.seq
	for i := range 1000 {
		require.True(t, n.eng.Deregister(n.now(), []byte("big"), fmt.Appendf(nil, "sub-%d", i)))
	}
	for i := range 100 {
		require.True(t, n.eng.Release(n.now(), []byte("mid"), fmt.Appendf(nil, "call-%d", i), 0))
	}
	for i := range restoreChunk + 5_000 {
		require.True(t, n.eng.Register(n.now(), []byte("big"), fmt.Appendf(nil, "new-%d", i), 3600).Admitted())
	}
	require.NoError(t, n.j.Flush())
	require.Equal(t, seq, n.j.seq, "no second snapshot: the restart reads one and its journal")
	n.crash()

	n2 := start(t, dir, clk, big)
	rec := n2.j.Recovered()
	require.Equal(t, filepath.Join(dir, snapshotName(seq)), rec.Snapshot)
	wantSubs := subs - 1000 + restoreChunk + 5_000
	require.Equal(t, wantSubs+100, rec.Subscribers)
	require.Equal(t, calls-100, rec.Sessions)
	require.Zero(t, rec.Dropped)
	require.Equal(t, int64(wantSubs), n2.eng.Service("big").Stats().Subscribers)
	require.Equal(t, int64(calls-100), n2.eng.Service("mid").Stats().Sessions)
	require.Equal(t, int64(100), n2.stats().Subscribers)
	require.False(t, n2.eng.Deregister(n2.now(), []byte("big"), []byte("sub-999")), "removed after the snapshot")
	require.True(t, n2.eng.Deregister(n2.now(), []byte("big"), []byte("sub-1000")))
	require.True(t, n2.eng.Deregister(n2.now(), []byte("big"), fmt.Appendf(nil, "new-%d", restoreChunk+4_999)))
	require.False(t, n2.eng.Release(n2.now(), []byte("mid"), []byte("call-99"), 0))
	require.True(t, n2.eng.Release(n2.now(), []byte("mid"), fmt.Appendf(nil, "call-%d", calls-1), 0))
}

// A flush drains only the services that logged since the last one
// (Engine.DrainLogged): four goroutines register into 40 services, each
// at most 200 registrations ahead of the flushes, while 30 flushes run
// (each once 200 of its round's are in, the others going on), and a
// service is licensed at the tenth; every
// registration made before the last flush is back after a crash, service
// by service. (That a change is marked only once it is in the log is
// argued in logChange: a race that narrow does not show here.)
func TestFlushDrainsTheServicesThatLogged(t *testing.T) {
	const rounds, perRound = 30, 200
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	name := func(i int) string { return fmt.Sprintf("svc-%02d", i) }
	names := []string{"late"}
	for i := range 40 {
		require.NoError(t, n.eng.SetLimits(name(i), limits))
		names = append(names, name(i))
	}
	var flushes, made atomic.Int64
	errs := make(chan error, 1)
	go func() {
		for f := int64(0); f < rounds; f = flushes.Load() {
			// Each flush once a quarter of its round's registrations are
			// in, the writers going on meanwhile.
			if made.Load() < 4*perRound*f+perRound {
				runtime.Gosched()
				continue
			}
			if f == 10 {
				if err := n.eng.SetLimits("late", limits); err != nil {
					errs <- err
					return
				}
			}
			if err := n.j.Flush(); err != nil {
				errs <- err
				return
			}
			flushes.Add(1)
		}
		errs <- nil
	}()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				f := flushes.Load()
				for ; f < rounds && int64(i) >= perRound*(f+1); f = flushes.Load() {
					runtime.Gosched() // ahead of the flushes: wait for one
				}
				if f >= rounds {
					return
				}
				if i%10 == 0 && n.eng.Service("late") != nil &&
					!n.eng.Register(n.now(), []byte("late"), fmt.Appendf(nil, "late-%d-%d", g, i), 3600).Admitted() {
					panic("refused")
				}
				if !n.eng.Register(n.now(), []byte(name((i*7+g)%40)), fmt.Appendf(nil, "sub-%d-%d", g, i), 3600).Admitted() {
					panic("refused")
				}
				made.Add(1)
			}
		})
	}
	wg.Wait()
	require.NoError(t, <-errs)
	require.Equal(t, int64(rounds), flushes.Load())
	require.NoError(t, n.j.Flush())
	n.crash()
	n2 := start(t, dir, clk)
	total := int64(0)
	for _, s := range names {
		want := n.eng.Service(s).Stats().Subscribers
		require.NotNil(t, n2.eng.Service(s), s)
		require.Equal(t, want, n2.eng.Service(s).Stats().Subscribers, s)
		total += want
	}
	late := n.eng.Service("late").Stats().Subscribers
	require.Positive(t, late)
	require.Equal(t, made.Load(), total-late, "every registration into the 40, each a new subscriber")
}
