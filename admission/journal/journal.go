package journal

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/durable"
)

// FlushEvery is how often the node calls Flush: the group-commit interval,
// and so the window of changes a kill -9 may lose. 20 ms keeps that window
// below a SIP transaction's first retransmission (T1 = 500 ms) by far,
// while one fsync per interval costs the disk nothing noticeable.
const FlushEvery = 20 * time.Millisecond

// Dir is the directory under data_dir that holds the state.
const Dir = "state"

// Config configures Open.
type Config struct {
	// Dir holds the snapshot and journal (data_dir/state); created 0700.
	Dir string
	// Engine is what is restored and journaled; its Config.JournalState
	// must be set, or nothing is logged to journal.
	Engine *admission.Engine
	// Clock is the engine's clock (its instants are what the engine logs).
	Clock admission.Clock
	// Wall is the wall clock expiries are stored in, so that they mean the
	// same after a restart (the engine's clock starts again at each run);
	// nil means time.Now. Tests pass one derived from their fake clock.
	Wall func() time.Time
	// MaxJournalBytes: when the journal grows past it and past the
	// snapshot it follows, Flush writes a new snapshot and starts a new
	// journal. 64 MiB is a few minutes of a busy node's changes and
	// replays in well under a second; 0 means that. Past the snapshot's
	// size too, so that a big state is not rewritten every 64 MiB of
	// changes (at 10 M entries that would be 450 MB written for every
	// 64 MB: the bulk of a loaded node's work); a restart then reads at
	// most twice the snapshot.
	MaxJournalBytes int64
	// Log receives the warnings of a recovery (a torn tail cut off).
	Log *slog.Logger
}

// defaultMaxJournalBytes is Config.MaxJournalBytes's default.
const defaultMaxJournalBytes = 64 << 20

// Log sizes: a service's in-memory change log starts empty (an idle or
// made-up service costs nothing) and its first spare holds firstLog
// changes (1,000 licensed services, most of them idle, hold 4 KB each
// rather than 128); the spare handed back at each flush doubles when the
// log it replaces was three-quarters full, up to maxLog changes per flush
// interval (3 M changes a second at FlushEvery, beyond any node). A log
// that fills between two flushes grows by itself, up to admission.MaxLog
// (see Service.logChange); one that overflowed comes back with at least
// minLog.
const (
	firstLog = 32
	minLog   = 1024
	maxLog   = 1 << 16
)

// Recovery says what Open found.
type Recovery struct {
	// Snapshot is the snapshot read ("" when there was none).
	Snapshot string
	// Records is how many journal records were replayed.
	Records int
	// Torn is the journal whose tail was cut off, "" when none was; Cut is
	// how many bytes were dropped, from offset At.
	Torn    string
	At, Cut int64
	// Sessions and Subscribers are what is open again after the restore
	// (expired ones dropped).
	Sessions, Subscribers int
	// Dropped counts services that could not be restored (too many
	// made-up emergency services, Config.MaxServices).
	Dropped int
}

// Journal makes an engine's sessions and subscribers durable. Open
// restores them; Flush, called every FlushEvery off the event loops,
// drains each service's change log into the journal file and fsyncs it.
type Journal struct {
	cfg        Config
	wallAnchor int64 // Unix ns at engAnchor
	engAnchor  int64 // engine instant at Open
	recovery   Recovery

	mu    sync.Mutex // guards the fields below; Flush and Close hold it
	seq   uint64     // number of the current journal (and of the snapshot, unless continued)
	chain []uint64   // the journals Open replayed after the snapshot
	names names      // while loading
	// unmaps release the files mapped while loading.
	unmaps []func()
	f      *os.File // journal-seq.log, open for appending
	size   int64
	// snapSize is the size of the snapshot the journals follow, counted as
	// its entries would take as journal records (recordSize; its blocks
	// take about half): the journals are compacted when they pass it (and
	// MaxJournalBytes), so a snapshot's cost is spread over at least as
	// many changes as it holds entries.
	snapSize int64
	buf      []byte
	written  bool // records were written since the last fsync
	logs     map[*admission.Service]*logBufs
	// svcs are the engine's services at the last flush, which walked them
	// all; a flush since drains those that logged (Engine.DrainLogged)
	// into logged, and walks them all again when one is added.
	svcs, logged []*admission.Service
	resetAll     bool // a compaction failed: every service writes a reset next
	broken       bool // a write or fsync failed: the journal's tail is not trusted, compact
	closed       bool
	lastError    error
	// compacting is closed when the snapshot being written behind the
	// journal (compactBehindLocked) is done; nil when none is.
	compacting chan struct{}
	// abort tells a snapshot being written to stop: the journal is closing.
	abort atomic.Bool
}

// logBufs is a service's spare change log (see admission.Service.Drain).
type logBufs struct{ spare []admission.Change }

var (
	flushSeconds   = metrics.NewPrometheusHistogramExt(`capsgate_state_flush_duration_seconds`, []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1})
	journalBytes   = metrics.NewCounter(`capsgate_state_journal_written_bytes_total`)
	journalChanges = metrics.NewCounter(`capsgate_state_journal_changes_total`)
	snapshots      = metrics.NewCounter(`capsgate_state_snapshots_total`)
	logOverflows   = metrics.NewCounter(`capsgate_state_log_overflows_total`)
	stateErrors    = metrics.NewCounter(`capsgate_state_errors_total`)
	// What the last Open restored, and how long it took (from the start of
	// the read to the tables' last entry).
	restoreSeconds      = metrics.NewGauge(`capsgate_state_restore_seconds`, nil)
	restoredSessions    = metrics.NewGauge(`capsgate_state_restored_sessions`, nil)
	restoredSubscribers = metrics.NewGauge(`capsgate_state_restored_subscribers`, nil)
)

// Open reads the last snapshot and the journal after it, restores every
// service's live sessions and subscribers into the engine (call it once
// the licences and account allocations are loaded, before the front end
// serves), writes them as a new snapshot and starts a new journal.
func Open(cfg Config) (*Journal, error) {
	if cfg.Engine == nil || cfg.Clock == nil {
		return nil, errors.New("cannot open the state journal: Config.Engine and Config.Clock are required")
	}
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.MaxJournalBytes <= 0 {
		cfg.MaxJournalBytes = defaultMaxJournalBytes
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the state directory %s (data_dir, --data-dir): %w", cfg.Dir, err)
	}
	j := &Journal{cfg: cfg, logs: map[*admission.Service]*logBufs{}}
	j.engAnchor, j.wallAnchor = cfg.Clock.Now(), cfg.Wall().UnixNano()
	start := time.Now()
	if err := j.load(); err != nil {
		return nil, err
	}
	// A snapshot that a crash left half written is not needed: the
	// journals it would have replaced are all there.
	if tmps, err := filepath.Glob(filepath.Join(cfg.Dir, "snapshot-*.state"+durable.TempSuffix)); err == nil {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}
	restoreSeconds.Set(time.Since(start).Seconds())
	restoredSessions.Set(float64(j.recovery.Sessions))
	restoredSubscribers.Set(float64(j.recovery.Subscribers))
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.recovery.Snapshot == "" && len(j.chain) == 0 || len(j.chain) >= maxChain {
		// A new directory (the first snapshot is empty), or a chain long
		// enough to be worth a snapshot before serving.
		if err := j.compactLocked(j.cfg.Clock.Now()); err != nil {
			return nil, err
		}
	} else if err := j.continueLocked(); err != nil {
		return nil, err
	}
	// What the services hold is what the files say: their logs start now,
	// with a spare to swap in at the first Flush, rather than with the
	// overflow that would write them whole then (as much as the snapshot
	// again).
	for _, s := range j.cfg.Engine.Services() {
		b := j.bufs(s)
		drained, _ := s.Drain(b.spare)
		b.spare = recycle(drained, firstLog)
	}
	return j, nil
}

// maxChain bounds the journals a restart replays after the snapshot: a
// start that finds that many writes a snapshot before serving.
const maxChain = 8

// continueLocked starts the next journal after the ones just replayed,
// leaving them and their snapshot in place: a restart serves without
// rewriting the whole state (a snapshot of 2 M entries is about 50 MB).
// The chain counts toward MaxJournalBytes, so the next Flush past it
// compacts as usual, off the event loops.
func (j *Journal) continueLocked() error {
	if r := j.recovery; r.Torn != "" {
		// The tail a crash tore off goes, so that the chain reads clean.
		if err := truncateSync(r.Torn, r.At); err != nil {
			return fmt.Errorf("cannot cut the torn tail of the state journal %s: %w", r.Torn, err)
		}
	}
	seq := j.seq + 1
	var size int64
	for _, n := range j.chain {
		if fi, err := os.Stat(filepath.Join(j.cfg.Dir, journalName(n))); err == nil {
			size += fi.Size()
		}
	}
	jf, err := j.startJournal(seq)
	if err != nil {
		return fmt.Errorf("cannot start the state journal %d: %w", seq, err)
	}
	j.f, j.seq, j.size = jf, seq, size+int64(len(journalMagic))
	return nil
}

// startJournal creates journal seq, its header written and synced with
// its directory; on an error it leaves no file.
func (j *Journal) startJournal(seq uint64) (*os.File, error) {
	path := filepath.Join(j.cfg.Dir, journalName(seq))
	jf, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err = jf.WriteString(journalMagic); err == nil {
		err = jf.Sync()
	}
	if err == nil {
		err = durable.SyncDir(j.cfg.Dir)
	}
	if err != nil {
		jf.Close()
		_ = os.Remove(path)
		return nil, err
	}
	return jf, nil
}

// Recovered reports what Open restored.
func (j *Journal) Recovered() Recovery { return j.recovery }

func snapshotName(seq uint64) string { return fmt.Sprintf("snapshot-%d.state", seq) }
func journalName(seq uint64) string  { return fmt.Sprintf("journal-%d.log", seq) }

// wall converts an engine instant to Unix nanoseconds.
func (j *Journal) wall(t int64) int64 { return j.wallAnchor + (t - j.engAnchor) }

// bufs returns the spare log of s.
func (j *Journal) bufs(s *admission.Service) *logBufs {
	b := j.logs[s]
	if b == nil {
		b = &logBufs{spare: make([]admission.Change, 0, firstLog)}
		j.logs[s] = b
	}
	return b
}

// Flush drains every service's change log into the journal and fsyncs it
// (one group commit for all of them), then compacts the journal into a
// new snapshot if it has grown past Config.MaxJournalBytes. Call it every
// FlushEvery from one goroutine, off the event loops; changes acknowledged
// before a Flush returns survive a crash.
func (j *Journal) Flush() error {
	start := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	err := j.flushLocked()
	if err != nil {
		stateErrors.Inc()
		if j.lastError == nil || j.lastError.Error() != err.Error() {
			j.cfg.Log.Error("cannot make sessions and registrations durable; retrying", "err", err)
		}
	}
	j.lastError = err
	flushSeconds.UpdateDuration(start)
	return err
}

func (j *Journal) flushLocked() error {
	now := j.cfg.Clock.Now()
	if j.broken {
		// After a failed write or fsync the file may hold a partial record
		// (and Linux may have dropped the dirty pages): start afresh.
		return j.compactLocked(now)
	}
	j.buf = j.buf[:0]
	n := 0
	var werr error // the first failed write
	logged, all := j.logged[:0], j.cfg.Engine.Services()
	j.cfg.Engine.DrainLogged(func(s *admission.Service) { logged = append(logged, s) })
	visit := logged
	if j.resetAll || len(all) != len(j.svcs) || len(all) > 0 && &all[0] != &j.svcs[0] {
		// Every service: the first flush, a service added (not logged
		// yet, but its log to take in place), every one to reset.
		j.svcs, visit = all, all
	}
	j.logged = logged
	for _, s := range visit {
		if s.Quiet() && !j.resetAll {
			continue // nothing to drain: its buffers are not looked up
		}
		b := j.bufs(s)
		changes, lost := s.Drain(b.spare)
		if lost || j.resetAll {
			if lost {
				logOverflows.Inc()
			}
			// The log overflowed: write the service as it is now.
			grown := make([]admission.Change, 0, min(max(2*cap(changes), 2*cap(b.spare), minLog), maxLog))
			j.buf = appendRecord(j.buf, kindReset, s.Name(), nil, 0)
			drained := s.SnapshotTo(now, grown, func(chunk []admission.Change) {
				for i := range chunk {
					j.buf = appendRecord(j.buf, uint8(chunk[i].Kind), s.Name(), &chunk[i], j.wall(chunk[i].Expires))
				}
				n += len(chunk)
				werr = j.writeOut(werr, false)
			})
			b.spare = recycle(drained, cap(grown))
			continue
		}
		for i := range changes {
			c := &changes[i]
			j.buf = appendRecord(j.buf, uint8(c.Kind), s.Name(), c, j.wall(c.Expires))
		}
		n += len(changes)
		werr = j.writeOut(werr, false)
		want := cap(b.spare)
		if len(changes) > cap(changes)*3/4 {
			want = min(2*cap(changes), maxLog)
		}
		b.spare = recycle(changes, want)
	}
	j.resetAll = false
	clear(j.logged) // no service held past the flush but by the engine
	j.logged = j.logged[:0]
	if werr = j.writeOut(werr, true); werr != nil {
		j.broken = true // what was drained may be half written: rewrite every service
		return fmt.Errorf("cannot append to the state journal: %w", werr)
	}
	if j.written {
		j.written = false
		if err := j.f.Sync(); err != nil {
			j.broken = true
			return fmt.Errorf("cannot sync the state journal: %w", err)
		}
		journalChanges.Add(n)
	}
	if j.compacting == nil && !j.abort.Load() && j.size > max(j.cfg.MaxJournalBytes, j.snapSize) {
		return j.compactBehindLocked(now)
	}
	return nil
}

// compactLocked starts journal seq+1 and writes every service's live
// state as snapshot seq+1 in this goroutine (Open, and after a failed
// write or fsync); Flush compacts in the background instead
// (compactBehindLocked). If the snapshot cannot be written, every service
// is written whole into the new journal at the next Flush.
func (j *Journal) compactLocked(now int64) (err error) {
	seq, err := j.switchLocked()
	if err != nil {
		return err
	}
	size, err := j.writeSnapshot(seq, now)
	if err != nil {
		j.resetAll = true
		return err
	}
	j.snapshotWrittenLocked(seq, size)
	return nil
}

// compactBehindLocked starts journal seq+1, into which the next Flushes go
// on committing every FlushEvery, and writes snapshot seq+1 in a goroutine
// of its own. Until the snapshot is in place, a restart reads the older
// snapshot and every journal since, the new one included; once it is,
// the older files go. Nothing waits for the snapshot: at 10 M entries it
// takes seconds, and a Flush held that long would leave the changes of
// those seconds uncommitted (and the services' logs overflowing).
func (j *Journal) compactBehindLocked(now int64) error {
	seq, err := j.switchLocked()
	if err != nil {
		return err
	}
	done := make(chan struct{})
	j.compacting = done
	go func() {
		defer close(done)
		size, err := j.writeSnapshot(seq, now)
		j.mu.Lock()
		defer j.mu.Unlock()
		j.compacting = nil
		if err != nil {
			if !j.abort.Load() {
				stateErrors.Inc()
				j.cfg.Log.Error("cannot write the state snapshot; the journals since the last one are kept", "err", err)
			}
			return
		}
		j.snapshotWrittenLocked(seq, size)
	}()
	return nil
}

// switchLocked starts journal seq+1 after the current one (which the last
// Flush synced) and makes it current.
func (j *Journal) switchLocked() (uint64, error) {
	seq := j.seq + 1
	jf, err := j.startJournal(seq)
	if err != nil {
		return 0, fmt.Errorf("cannot start the state journal %d: %w", seq, err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.seq, j.size, j.written = jf, seq, int64(len(journalMagic)), false
	j.broken = false
	return seq, nil
}

// writeSnapshot writes every service's live entries at now as snapshot
// seq (a temporary file, fsync, rename, fsync of the directory), a table
// chunk at a time, and returns its size as journal records (recordSize).
// It holds no lock of the journal's
// (its own buffer, its own file), each service's only for a chunk; it
// stops, writing nothing, once Close has begun.
func (j *Journal) writeSnapshot(seq uint64, now int64) (int64, error) {
	path := filepath.Join(j.cfg.Dir, snapshotName(seq))
	f, err := durable.Create(path, 0o600)
	if err != nil {
		return 0, fmt.Errorf("cannot write the state snapshot: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<16)
	_, _ = w.WriteString(snapshotMagic)
	count, size := 0, int64(snapshotFrame)
	var buf []byte
	for _, s := range j.cfg.Engine.Services() {
		s.WalkTo(now, func(chunk []admission.Change) bool {
			buf = buf[:0] // a chunk's blocks in one write
			for len(chunk) > 0 {
				n := 1
				for n < len(chunk) && n < maxBlockEntries && chunk[n].Kind == chunk[0].Kind {
					n++
				}
				buf = appendBlock(buf, s.Name(), chunk[0].Kind, chunk[:n], j.wall)
				for i := range n {
					size += int64(recordSize(s.Name(), &chunk[i]))
				}
				count += n
				chunk = chunk[n:]
			}
			_, _ = w.Write(buf)
			return !j.abort.Load()
		})
	}
	end := admission.Change{Remaining: int64(count)}
	buf = appendRecord(buf[:0], kindEnd, "", &end, 0)
	_, _ = w.Write(buf)
	err = w.Flush()
	if err == nil && j.abort.Load() {
		err = errors.New("the journal is closing")
	}
	if err == nil {
		err = f.Commit()
	} else {
		f.Abort()
	}
	if err != nil {
		return 0, fmt.Errorf("cannot write the state snapshot %s: %w", path, err)
	}
	return size, nil
}

// snapshotWrittenLocked removes what came before snapshot seq, now in
// place, and makes its size the next compaction's bound.
func (j *Journal) snapshotWrittenLocked(seq uint64, size int64) {
	j.snapSize = size
	snapshots.Inc()
	snaps, journals, _ := j.files()
	for _, n := range snaps {
		if n < seq {
			_ = os.Remove(filepath.Join(j.cfg.Dir, snapshotName(n)))
		}
	}
	for _, n := range journals {
		if n < seq {
			_ = os.Remove(filepath.Join(j.cfg.Dir, journalName(n)))
		}
	}
}

// writeBytes is how much of the journal is gathered before it is written
// (not synced) to the file: a service written whole after its log
// overflowed is never held whole in memory.
const writeBytes = 1 << 20

// writeOut writes the gathered records to the journal file once they reach
// writeBytes, or whatever there is when all; after an error (err) it
// writes nothing more and returns it.
func (j *Journal) writeOut(err error, all bool) error {
	if err != nil {
		j.buf = j.buf[:0]
		return err
	}
	if len(j.buf) == 0 || !all && len(j.buf) < writeBytes {
		return nil
	}
	if _, err = j.f.Write(j.buf); err != nil {
		j.buf = j.buf[:0]
		return err
	}
	j.written = true
	j.size += int64(len(j.buf))
	journalBytes.Add(len(j.buf))
	j.buf = j.buf[:0]
	if cap(j.buf) > 2*writeBytes {
		j.buf = nil // one burst's buffer is not kept
	}
	return nil
}

// recycle returns a drained log as the next spare: emptied (dropping the
// account names it refers to), or a new one if it holds fewer than want
// changes, so a spare is never smaller than the log it replaces.
func recycle(drained []admission.Change, want int) []admission.Change {
	if cap(drained) < want {
		return make([]admission.Change, 0, want)
	}
	clear(drained)
	return drained[:0]
}

// truncateSync cuts the file at path to size and fsyncs it.
func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close flushes what is left and closes the journal. Safe to call twice.
func (j *Journal) Close() error {
	j.abort.Store(true)
	j.awaitSnapshot() // stopped: the journals it would have replaced stay
	err := j.Flush()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	if j.f != nil {
		if cerr := j.f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// awaitSnapshot waits for the snapshot being written behind the journal,
// if one is.
func (j *Journal) awaitSnapshot() {
	j.mu.Lock()
	done := j.compacting
	j.mu.Unlock()
	if done != nil {
		<-done
	}
}
