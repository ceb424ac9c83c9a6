package idstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"

	"github.com/capsgate/capsgate/admission"
)

// Dir is the directory under data_dir that holds the store.
const Dir = "ids"

// FlushEvery is how often the node calls Flush: the group-commit interval,
// the same as the state journal's, so that a kill -9 loses the same window
// of both.
const FlushEvery = 20 * time.Millisecond

// MaxWindow is the longest admission.idempotency_window: 35 days, beyond
// the longest deduplication window of the billing systems an operator
// feeds (Metronome's 34 days).
const MaxWindow = 35 * 24 * time.Hour

// Config configures Open.
type Config struct {
	// Dir holds the store (data_dir/ids); created 0700.
	Dir string
	// Clock is the engine's clock: the instants Lookup and Remember get.
	Clock admission.Clock
	// Wall is the wall clock expiries are stored in, so that they mean the
	// same after a restart; nil means time.Now. Tests derive one from their
	// fake clock.
	Wall func() time.Time
	// MaxKeys bounds the keys kept (a CONSUME with a new ID beyond it is
	// refused OVERLOAD): 100 M, about 4 GB of disk; 0 means that.
	MaxKeys int64
	// ExpireScan is how many records a Flush looks at for expiry, once
	// every ExpireEvery: 10,000 a second is a few milliseconds of work and
	// makes a pass over 100 M keys in under 3 hours (an expired key is
	// never answered meanwhile: only its disk space waits); 0 means that.
	ExpireScan int
	// CacheBytes is pebble's block cache: 256 MiB holds the filters and
	// index blocks of 100 M keys (about 135 MB), so that a first-time
	// key's miss reads no disk; 0 means that.
	CacheBytes int64
	// Log receives pebble's errors and the store's warnings.
	Log *slog.Logger
}

const (
	defaultMaxKeys    = 100_000_000
	defaultExpireScan = 10_000
	// ExpireEvery is how often (on the engine's clock) a Flush does a step
	// of expiry.
	ExpireEvery       = time.Second
	defaultCacheBytes = 256 << 20
	shards            = 16
	// maxBacklog bounds the keys held in memory while commits fail (a
	// full or failing disk): beyond it a new ID is refused OVERLOAD, as
	// in a full store, until a commit succeeds.
	maxBacklog = 1_000_000
)

// rec is a remembered key's value: its wall-clock expiry (Unix ns) and the
// remaining of its decision (the decision is always OK: only an admitted
// charge records its ID).
type rec struct{ exp, remaining int64 }

// shard holds the keys remembered but not yet committed.
type shard struct {
	mu       sync.Mutex // guards the two maps
	pending  map[admission.Key]rec
	flushing map[admission.Key]rec // being written by Flush
}

// Store keeps CONSUME ID keys on disk. It implements admission.KeyStore.
type Store struct {
	cfg        Config
	db         *pebble.DB
	cache      *pebble.Cache
	wallAnchor int64 // Unix ns at engAnchor
	engAnchor  int64
	shards     [shards]shard
	count      atomic.Int64 // keys in the store (approximate: expired ones until deleted)
	full       atomic.Bool
	backlog    atomic.Int64 // keys a failed commit left in memory
	// ticket counts the keys remembered (Remember's tickets); durable is
	// the highest ticket whose key is committed, and every one below it.
	ticket, durable atomic.Uint64

	// lastAlive is the wall-clock time of the last commit before this
	// Open (zero: none).
	lastAlive time.Time
	// aliveWritten is when aliveFile was last written (under mu).
	aliveWritten time.Time

	mu      sync.Mutex // serialises Flush and Close; guards the fields below
	cursor  []byte     // where the next expiry scan starts
	expired int64      // engine instant of the last expiry step
	closed  bool
	batch   []admission.Key
}

var (
	storeKeys      = metrics.NewGauge(`capsgate_idempotency_keys`, nil)
	storeWritten   = metrics.NewCounter(`capsgate_idempotency_keys_written_total`)
	storeExpired   = metrics.NewCounter(`capsgate_idempotency_keys_expired_total`)
	storeErrors    = metrics.NewCounter(`capsgate_idempotency_store_errors_total`)
	storeFull      = metrics.NewCounter(`capsgate_idempotency_store_full_total`)
	storeFlushTime = metrics.NewPrometheusHistogramExt(`capsgate_idempotency_flush_duration_seconds`, []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1})
)

// Open opens (or creates) the store in cfg.Dir. Pebble replays its
// write-ahead log, so every key a Flush committed before a crash is back.
func Open(cfg Config) (*Store, error) {
	if cfg.Clock == nil {
		return nil, errors.New("cannot open the idempotency key store: Config.Clock is required")
	}
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = defaultMaxKeys
	}
	if cfg.ExpireScan <= 0 {
		cfg.ExpireScan = defaultExpireScan
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = defaultCacheBytes
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the idempotency key directory %s (data_dir, --data-dir): %w", cfg.Dir, err)
	}
	s := &Store{cfg: cfg, cache: pebble.NewCache(cfg.CacheBytes)}
	opts := &pebble.Options{
		Cache:  s.cache,
		Logger: pebbleLog{cfg.Log},
		// 64 MiB memtables: a few seconds of a burst of 1 M keys a second
		// before a flush to L0, and a bounded WAL to replay at restart.
		MemTableSize: 64 << 20,
	}
	for i := range opts.Levels {
		// Keys are 128-bit hashes, so most lookups are of keys never
		// seen: a bloom filter answers those without reading a block.
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		// 32 KiB blocks: an index entry per 1,000 keys, so the index of
		// 100 M keys (~10 MB) stays in the cache beside the filters
		// (10 bits a key, ~125 MB); a hit reads one block.
		opts.Levels[i].BlockSize = 32 << 10
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		s.cache.Unref()
		return nil, fmt.Errorf("cannot open the idempotency key store %s (data_dir, --data-dir): %w", cfg.Dir, err)
	}
	s.db = db
	for i := range s.shards {
		s.shards[i].pending = map[admission.Key]rec{}
		s.shards[i].flushing = map[admission.Key]rec{}
	}
	s.engAnchor, s.wallAnchor = cfg.Clock.Now(), cfg.Wall().UnixNano()
	s.count.Store(s.estimate())
	if b, err := os.ReadFile(filepath.Join(cfg.Dir, aliveFile)); err == nil && len(b) == 8 {
		s.lastAlive = time.Unix(0, int64(binary.LittleEndian.Uint64(b)))
	}
	s.updateFull()
	return s, nil
}

// estimate is the number of keys pebble holds, from its tables'
// properties (entries less twice the deletions, each shadowing one), cheap
// at start-up; what its memtable held is not counted until written again.
func (s *Store) estimate() int64 {
	levels, err := s.db.SSTables(pebble.WithProperties())
	if err != nil {
		return 0
	}
	var n int64
	for _, l := range levels {
		for _, t := range l {
			if t.Properties != nil {
				n += int64(t.Properties.NumEntries) - 2*int64(t.Properties.NumDeletions)
			}
		}
	}
	return max(n, 0)
}

// aliveFile holds the wall-clock time of a recent commit (8 bytes),
// written at most every aliveEvery after one, without fsync: a lost or
// torn one reads as older or as none, which only makes the node ask its
// members for more than it missed.
const (
	aliveFile  = "ALIVE"
	aliveEvery = time.Second
)

// LastAlive returns when the store last committed keys before it was
// opened (zero: never): this node knows every ID charged on it until then.
// A node that comes back asks the members for the IDs charged since.
func (s *Store) LastAlive() time.Time { return s.lastAlive }

// markAlive writes aliveFile, at most every aliveEvery unless now: every
// key remembered until now is committed. Called with mu held.
func (s *Store) markAlive(now bool) {
	w := s.cfg.Wall()
	if !now && w.Sub(s.aliveWritten) < aliveEvery {
		return
	}
	s.aliveWritten = w
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(w.UnixNano()))
	if err := os.WriteFile(filepath.Join(s.cfg.Dir, aliveFile), b[:], 0o600); err != nil {
		s.cfg.Log.Warn("cannot write the idempotency store's alive mark", "err", err)
	}
}

// wall converts an engine instant to wall-clock Unix ns.
func (s *Store) wall(now int64) int64 { return s.wallAnchor + (now - s.engAnchor) }

func encodeKey(b *[16]byte, k admission.Key) []byte {
	hi, lo := k.Parts()
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return b[:]
}

func decodeKey(b []byte) admission.Key {
	return admission.KeyFromParts(binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:16]))
}

func (s *Store) shardOf(k admission.Key) *shard {
	hi, _ := k.Parts()
	return &s.shards[hi%shards]
}

// Lookup implements admission.KeyStore.
func (s *Store) Lookup(k admission.Key, now int64) (admission.Decision, bool) {
	w := s.wall(now)
	sh := s.shardOf(k)
	sh.mu.Lock()
	r, ok := sh.pending[k]
	if !ok {
		r, ok = sh.flushing[k]
	}
	sh.mu.Unlock()
	if !ok {
		var kb [16]byte
		v, closer, err := s.db.Get(encodeKey(&kb, k))
		if err != nil {
			if !errors.Is(err, pebble.ErrNotFound) {
				storeErrors.Inc()
			}
			return admission.Decision{}, false
		}
		if len(v) == 16 {
			r = rec{int64(binary.LittleEndian.Uint64(v)), int64(binary.LittleEndian.Uint64(v[8:]))}
			ok = true
		}
		closer.Close()
	}
	if !ok || r.exp <= w {
		return admission.Decision{}, false
	}
	return admission.Decision{Reason: admission.OK, Remaining: r.remaining}, true
}

// Remember implements admission.KeyStore: k is queued for the next Flush.
// Its ticket is taken under its shard's lock, which the Flush that takes
// the shard's keys waits for: a ticket issued before a Flush began is in
// that Flush's batch.
func (s *Store) Remember(k admission.Key, exp int64, d admission.Decision) {
	sh := s.shardOf(k)
	sh.mu.Lock()
	s.ticket.Add(1)
	sh.pending[k] = rec{s.wall(exp), d.Remaining}
	sh.mu.Unlock()
}

// Ticket implements admission.KeyStore: the ticket of the key remembered
// last.
func (s *Store) Ticket() uint64 { return s.ticket.Load() }

// Durable implements admission.KeyStore: every key with a ticket up to it
// is committed.
func (s *Store) Durable() uint64 { return s.durable.Load() }

// Full implements admission.KeyStore.
func (s *Store) Full() bool {
	if s.full.Load() || s.backlog.Load() >= maxBacklog {
		storeFull.Inc()
		return true
	}
	return false
}

func (s *Store) updateFull() {
	n := s.count.Load()
	storeKeys.Set(float64(max(n, 0)))
	s.full.Store(n >= s.cfg.MaxKeys)
}

// Len returns the approximate number of keys kept (expired ones until
// their record is deleted).
func (s *Store) Len() int64 { return s.count.Load() }

// Flush commits every key remembered since the last Flush in one fsynced
// batch (group commit), then, once every ExpireEvery, does a bounded step
// of expiry. Call it every FlushEvery from one goroutine, off the event
// loops.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	start := time.Now()
	issued := s.ticket.Load() // every key with a ticket up to it is in this batch
	err := s.commitLocked()
	if err == nil {
		s.durable.Store(issued)
		s.markAlive(false)
	}
	if now := s.cfg.Clock.Now(); err == nil && now-s.expired >= int64(ExpireEvery) {
		s.expired = now
		err = s.expireLocked(s.wall(now), s.cfg.ExpireScan)
	}
	s.updateFull()
	storeFlushTime.UpdateDuration(start)
	if err != nil {
		storeErrors.Inc()
		s.cfg.Log.Error("cannot write idempotency keys; keys stay in memory and are retried at the next flush", "err", err)
	}
	return err
}

// commitLocked writes the pending keys of every shard and fsyncs them.
// While the batch is written they stay visible to Lookup (flushing).
func (s *Store) commitLocked() error {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		if len(sh.flushing) == 0 { // else a failed commit left it: retry it with what came since
			sh.pending, sh.flushing = sh.flushing, sh.pending
		} else {
			for k, r := range sh.pending {
				sh.flushing[k] = r
			}
			clear(sh.pending)
		}
		n += len(sh.flushing)
		sh.mu.Unlock()
	}
	if n == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	var kb [16]byte
	var vb [16]byte
	for i := range s.shards {
		// Flush is the only writer of flushing: read without the lock.
		for k, r := range s.shards[i].flushing {
			binary.LittleEndian.PutUint64(vb[:8], uint64(r.exp))
			binary.LittleEndian.PutUint64(vb[8:], uint64(r.remaining))
			if err := b.Set(encodeKey(&kb, k), vb[:], nil); err != nil {
				return err
			}
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		s.backlog.Store(int64(n))
		return fmt.Errorf("cannot commit %d idempotency keys: %w", n, err)
	}
	s.backlog.Store(0)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		clear(sh.flushing)
		sh.mu.Unlock()
	}
	s.count.Add(int64(n))
	storeWritten.Add(n)
	return nil
}

// expireLocked looks at up to limit records from the cursor and deletes
// those expired at wall w. The deletions need no fsync: a record that
// comes back after a crash is expired and Lookup ignores it.
func (s *Store) expireLocked(w int64, limit int) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: s.cursor})
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	seen, gone := 0, 0
	var ok bool
	for ok = it.First(); ok && seen < limit; ok = it.Next() {
		seen++
		v := it.Value()
		if len(v) != 16 || int64(binary.LittleEndian.Uint64(v)) <= w {
			if err := b.Delete(it.Key(), nil); err != nil {
				it.Close()
				return err
			}
			gone++
		}
	}
	if ok {
		s.cursor = append(s.cursor[:0], it.Key()...)
	} else {
		s.cursor = nil // the end: wrap around
	}
	if err := it.Close(); err != nil {
		return err
	}
	if gone == 0 {
		return nil
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("cannot delete expired idempotency keys: %w", err)
	}
	s.count.Add(-int64(gone))
	storeExpired.Add(gone)
	return nil
}

// Close commits what is pending and closes the store. Safe to call twice.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	issued := s.ticket.Load()
	err := s.commitLocked()
	if err == nil {
		s.durable.Store(issued)
		s.markAlive(true)
	}
	s.closed = true
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	s.cache.Unref()
	return err
}

// pebbleLog passes pebble's errors to the node's log and drops its
// informational lines (compactions, flushes).
type pebbleLog struct{ l *slog.Logger }

func (p pebbleLog) Infof(string, ...any) {}
func (p pebbleLog) Errorf(format string, args ...any) {
	p.l.Error("idempotency key store: " + fmt.Sprintf(format, args...))
}
func (p pebbleLog) Fatalf(format string, args ...any) {
	p.l.Error("idempotency key store: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}
