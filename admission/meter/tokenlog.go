package meter

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
)

// The token state on disk is a snapshot and a log of what changed since,
// so that a step writes (and fsyncs) only the pools it moved and an
// allocation only itself, whatever the number of accounts:
//
//	tokens.snap  header, then frames of entries: the whole state, and an end entry
//	tokens.log   header, then one frame (or more, see maxFrame) per write
//
// A header is 8 bytes of magic and the generation (uint64, little endian).
// A frame is its payload's length and CRC-32C (uint32 each, little
// endian), then the payload: entries, each a kind byte and its fields
// (strings as a uvarint length and bytes, numbers as varints):
//
//	entryPool    service, account, reserved, ledgered, base
//	entryPeriod  service, period id
//	entryAlloc   service, account, tokens, overage, at
//	entryEnd     the number of entries before it (snapshot only)
//
// An entry sets what it names: replaying the log over the snapshot gives
// the state. The log applies to the snapshot of its generation; one of an
// older generation is already in the snapshot (compaction stopped between
// renaming the new snapshot and replacing the log) and is dropped.
//
// Both files are read mapped (bounded.MapFile, at most bounded.NodeState
// each): the bytes are the page cache's, not the heap's. A pool is about
// 40 bytes in the snapshot, so 100,000 accounts make 4 MB; the 4 GiB bound
// is reached near 100 M pools, where the engine's memory would give out
// first.
const (
	SnapshotFile = "tokens.snap"
	LogFile      = "tokens.log"
	// LegacyStateFile is the JSON state of older versions, read once and
	// turned into a snapshot.
	LegacyStateFile = "tokens.json"
)

var (
	logMagic  = [8]byte{'c', 'a', 'p', 's', 't', 'l', 'g', '1'}
	snapMagic = [8]byte{'c', 'a', 'p', 's', 't', 's', 'n', '1'}
	crcTable  = crc32.MakeTable(crc32.Castagnoli)
)

const (
	headerSize = 16
	frameHead  = 8
	// maxFrame bounds a frame's payload: a longer write (a start that
	// reserves for every pool at once) is cut into frames with an fsync
	// after each, so that only the last frame of the log can be torn.
	// About 10,000 pools a frame.
	maxFrame = 1 << 20
	// minCompact: the log is compacted into a new snapshot when it
	// outgrows max(minCompact, 2 × the snapshot), so replaying it at a
	// start costs at most about twice reading the snapshot.
	minCompact = 4 << 20
)

const (
	entryPool byte = iota + 1
	entryPeriod
	entryAlloc
	entryEnd
)

// errTornTail says that the log ends in a write whose fsync never
// returned.
var errTornTail = errors.New("torn tail")

// tokenStore appends the token state's changes to the log, compacting it
// into a new snapshot when it has grown. Guarded by the Reserver's mu.
type tokenStore struct {
	dir      string
	log      *slog.Logger
	file     *os.File // the log, open for appending
	gen      uint64
	logSize  int64 // bytes in the log, header included
	snapSize int64
	// frames hold the entries not yet written, each at most maxFrame.
	frames [][]byte
	// closed: the log takes no more writes (a nil file without it is a
	// log a compaction has yet to start).
	closed bool
	// crash, in tests, stops compaction at a point as a kill -9 would.
	crash func(point string) bool
}

// openStore reads the token state in dir: the snapshot and the log, or a
// legacy tokens.json, which it turns into a snapshot.
func openStore(dir string, log *slog.Logger) (*tokenStore, fileState, error) {
	t := &tokenStore{dir: dir, log: log}
	state := fileState{Services: map[string]*serviceState{}}
	_ = os.Remove(t.path(SnapshotFile + durable.TempSuffix)) // a compaction's, never renamed
	_ = os.Remove(t.path(LogFile + durable.TempSuffix))
	err := t.readSnapshot(&state)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if migrated, err := t.migrate(&state); err != nil || migrated {
			return t, state, err
		}
	case err != nil:
		return nil, state, err
	default:
		// A legacy file left by a migration that stopped before removing
		// it is in the snapshot.
		if err := os.Remove(t.path(LegacyStateFile)); err == nil {
			log.Info("removed the token state of an older version: the snapshot has it", "file", t.path(LegacyStateFile))
		}
	}
	if err := t.replayLog(&state); err != nil {
		return nil, state, err
	}
	return t, state, nil
}

func (t *tokenStore) path(name string) string { return filepath.Join(t.dir, name) }

// readSnapshot reads tokens.snap into state. Any fault is an error: the
// snapshot is renamed into place only once whole and fsync'd.
func (t *tokenStore) readSnapshot(state *fileState) error {
	name := t.path(SnapshotFile)
	b, unmap, err := bounded.MapFile(name, bounded.NodeState)
	if errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err != nil {
		return fmt.Errorf("cannot read the token state: %w", err)
	}
	defer unmap()
	gen, err := readHeader(b, snapMagic)
	if err == nil {
		var end bool
		count := int64(0)
		_, err = readFrames(b[headerSize:], func(e entry) error {
			switch {
			case end:
				return errors.New("an entry after the end")
			case e.kind == entryEnd && e.n[0] != count:
				return fmt.Errorf("%d entries, the end says %d", count, e.n[0])
			}
			end, count = e.kind == entryEnd, count+1
			return state.apply(e)
		})
		if err == nil && !end {
			err = errors.New("no end entry: the snapshot is cut short")
		}
	}
	if err != nil {
		return corrupt(name, err)
	}
	t.gen, t.snapSize = gen, int64(len(b))
	return nil
}

// corrupt is the error for a state file that cannot be read.
func corrupt(name string, err error) error {
	return fmt.Errorf("cannot read the token state %s: %w (restore it from a backup; removing it would under-count)", name, err)
}

// migrate reads a legacy tokens.json into state and writes it as a
// snapshot, then removes it. A crash before the snapshot is renamed
// leaves tokens.json to read again; after, the snapshot wins.
func (t *tokenStore) migrate(state *fileState) (bool, error) {
	name := t.path(LegacyStateFile)
	b, err := bounded.ReadFile(name, bounded.NodeState)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("cannot read the token state: %w", err)
	}
	if err := json.Unmarshal(b, state); err != nil {
		return false, corrupt(name, err)
	}
	if state.Services == nil {
		state.Services = map[string]*serviceState{}
	}
	if err := t.compact(state); err != nil {
		return false, err
	}
	if err := os.Remove(name); err != nil {
		return false, fmt.Errorf("cannot remove the migrated token state: %w", err)
	}
	t.log.Info("token state migrated to a snapshot and log", "from", name, "to", t.path(SnapshotFile))
	return true, durable.SyncDir(t.dir)
}

// replayLog applies tokens.log to state and opens it for appending. A
// torn last write is cut away; any other fault is an error.
func (t *tokenStore) replayLog(state *fileState) error {
	name := t.path(LogFile)
	b, unmap, err := bounded.MapFile(name, bounded.NodeState)
	if errors.Is(err, fs.ErrNotExist) {
		return t.newLog()
	}
	if err != nil {
		return fmt.Errorf("cannot read the token state: %w", err)
	}
	gen, err := readHeader(b, logMagic)
	if err != nil {
		unmap()
		return corrupt(name, err)
	}
	if gen < t.gen {
		unmap()
		t.log.Info("dropped a token log the snapshot already has (a compaction stopped)", "file", name)
		return t.newLog()
	}
	if gen > t.gen {
		unmap()
		return corrupt(name, fmt.Errorf("generation %d, after the snapshot's %d: the snapshot is missing or older", gen, t.gen))
	}
	good, err := readFrames(b[headerSize:], state.apply)
	size := int64(len(b))
	unmap()
	if err != nil && !errors.Is(err, errTornTail) {
		return corrupt(name, err)
	}
	if t.file, err = os.OpenFile(name, os.O_WRONLY, 0); err != nil {
		return fmt.Errorf("cannot open the token log: %w", err)
	}
	t.logSize = headerSize + good
	if t.logSize < size {
		t.log.Warn("cut a torn write from the end of the token log (the node stopped before its fsync returned)",
			"file", name, "bytes", size-t.logSize)
		if err := t.file.Truncate(t.logSize); err == nil {
			err = t.file.Sync()
		}
		if err != nil {
			return fmt.Errorf("cannot cut the torn end of the token log %s: %w", name, err)
		}
	}
	if _, err := t.file.Seek(t.logSize, 0); err != nil {
		return fmt.Errorf("cannot open the token log: %w", err)
	}
	return nil
}

func readHeader(b []byte, magic [8]byte) (uint64, error) {
	if len(b) < headerSize || [8]byte(b[:8]) != magic {
		return 0, errors.New("not a token state file of this version")
	}
	return binary.LittleEndian.Uint64(b[8:]), nil
}

// readFrames calls apply for each entry of the frames in b and returns
// the length of the good frames. A bad frame is errTornTail when it can
// be the last write cut short: what is left from it to the end is no more
// than one frame (each frame is fsync'd before the next is written), and
// it runs past the end, ends there, or is all zeros (a file extended
// before its data was written). Anything else is corruption.
func readFrames(b []byte, apply func(entry) error) (int64, error) {
	off := 0
	for off < len(b) {
		rest := b[off:]
		payload, err := frame(rest)
		if err != nil {
			if len(rest) <= frameHead+maxFrame && (errors.Is(err, errTornTail) || allZero(rest)) {
				return int64(off), errTornTail
			}
			return int64(off), fmt.Errorf("frame at byte %d: %w", headerSize+off, err)
		}
		if err := forEntries(payload, apply); err != nil {
			return int64(off), fmt.Errorf("frame at byte %d: %w", headerSize+off, err)
		}
		off += frameHead + len(payload)
	}
	return int64(off), nil
}

// frame returns the payload of the frame that b begins with, or
// errTornTail when it runs past the end of b or, with a checksum that does
// not match, ends there.
func frame(b []byte) ([]byte, error) {
	if len(b) < frameHead {
		return nil, errTornTail
	}
	n, sum := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
	if n == 0 || n > maxFrame {
		return nil, fmt.Errorf("bad frame length %d", n)
	}
	if uint64(len(b)-frameHead) < uint64(n) {
		return nil, errTornTail
	}
	payload := b[frameHead : frameHead+int(n)]
	if crc32.Checksum(payload, crcTable) != sum {
		if len(b) == frameHead+int(n) {
			return nil, errTornTail
		}
		return nil, errors.New("checksum mismatch")
	}
	return payload, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// entry is one decoded entry: what its kind has of names and numbers (an
// allocation's overage policy in overage).
type entry struct {
	kind                      byte
	service, account, overage string
	n                         [3]int64
}

// forEntries calls apply for each entry of a frame's payload.
func forEntries(payload []byte, apply func(entry) error) error {
	for len(payload) > 0 {
		e, rest, err := decodeEntry(payload)
		if err != nil {
			return err
		}
		if err := apply(e); err != nil {
			return err
		}
		payload = rest
	}
	return nil
}

// decodeEntry decodes the entry b begins with and returns what follows.
func decodeEntry(b []byte) (entry, []byte, error) {
	e := entry{kind: b[0]}
	d := decoder{b: b[1:]}
	switch e.kind {
	case entryPool:
		e.service, e.account = d.str(), d.str()
		e.n = [3]int64{d.num(), d.num(), d.num()}
	case entryPeriod:
		e.service, e.n[0] = d.str(), d.num()
	case entryAlloc:
		e.service, e.account = d.str(), d.str()
		e.n[0], e.overage, e.n[1] = d.num(), d.str(), d.num()
	case entryEnd:
		e.n[0] = d.num()
	default:
		return e, nil, fmt.Errorf("unknown entry kind %d", e.kind)
	}
	if d.bad {
		return e, nil, fmt.Errorf("entry of kind %d cut short", e.kind)
	}
	return e, d.b, nil
}

// apply sets in state what e says.
func (state *fileState) apply(e entry) error {
	if e.kind == entryEnd {
		return nil
	}
	if e.kind == entryAlloc && checkAllocation(e.service, e.account, admission.Allocation{Tokens: e.n[0], At: e.n[1]}) != nil {
		// Kept by an earlier release, which did not always check: it
		// would stop the engine from taking the service's others.
		return nil
	}
	st := state.serviceOf(e.service)
	switch e.kind {
	case entryPool:
		p := st.Pools[e.account]
		if p == nil {
			p = &poolState{}
			st.Pools[e.account] = p
		}
		p.Reserved, p.Ledgered, p.Base = e.n[0], e.n[1], e.n[2]
	case entryPeriod:
		st.PeriodID = e.n[0]
	case entryAlloc:
		if st.Accounts == nil {
			st.Accounts = map[string]admission.Allocation{}
		}
		st.Accounts[e.account] = admission.Allocation{Tokens: e.n[0], Overage: e.overage, At: e.n[1]}
	}
	return nil
}

// serviceOf returns a service's state, made empty if it has none.
func (state *fileState) serviceOf(name string) *serviceState {
	s := state.Services[name]
	if s == nil {
		s = &serviceState{}
		state.Services[name] = s
	}
	if s.Pools == nil {
		s.Pools = map[string]*poolState{}
	}
	return s
}

// decoder reads an entry's fields; bad records that one ran past the end.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) num() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.bad, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string {
	n, k := binary.Uvarint(d.b)
	if k <= 0 || n > uint64(len(d.b)-k) {
		d.bad, d.b = true, nil
		return ""
	}
	s := string(d.b[k : k+int(n)])
	d.b = d.b[k+int(n):]
	return s
}

// Entries to write: each goes into the open frame, or a new one when it
// would pass maxFrame.

func (t *tokenStore) pool(service, account string, p *poolState) {
	e := t.entry(entryPool)
	e = appendStr(appendStr(e, service), account)
	t.end(binary.AppendVarint(binary.AppendVarint(binary.AppendVarint(e, p.Reserved), p.Ledgered), p.Base))
}

func (t *tokenStore) period(service string, id int64) {
	t.end(binary.AppendVarint(appendStr(t.entry(entryPeriod), service), id))
}

func (t *tokenStore) alloc(service, account string, a admission.Allocation) {
	e := appendStr(appendStr(t.entry(entryAlloc), service), account)
	e = appendStr(binary.AppendVarint(e, a.Tokens), a.Overage)
	t.end(binary.AppendVarint(e, a.At))
}

// maxEntry bounds an entry: two names of at most 64 bytes (names.Valid), an
// overage policy and five varints.
const maxEntry = 512

// entry begins an entry in the open frame, opening one (with the room of
// one written before, if any) when it has no room for the largest entry.
func (t *tokenStore) entry(kind byte) []byte {
	n := len(t.frames)
	if n == 0 || len(t.frames[n-1])+maxEntry > frameHead+maxFrame {
		if n < cap(t.frames) {
			t.frames = t.frames[:n+1]
		} else {
			t.frames = append(t.frames, nil)
		}
		t.frames[n] = append(t.frames[n][:0], make([]byte, frameHead)...)
	}
	return append(t.frames[len(t.frames)-1], kind)
}

func (t *tokenStore) end(e []byte) { t.frames[len(t.frames)-1] = e }

func appendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// pending reports whether entries wait to be written.
func (t *tokenStore) pending() bool { return len(t.frames) > 0 }

// commit writes the entries made since the last commit to the log, each
// frame fsync'd before the next is written, and compacts the log when it
// has outgrown the snapshot; state is the state with them. It returns nil
// once they are durable: a compaction that fails is logged and tried
// again at the next commit.
func (t *tokenStore) commit(state *fileState) error {
	if t.closed {
		return errors.New("cannot write the token log: closed")
	}
	if t.file == nil {
		// A compaction renamed its snapshot but could not start the log.
		if err := t.newLog(); err != nil {
			return err
		}
	}
	for i, f := range t.frames {
		seal(f)
		_, err := t.file.Write(f)
		if err == nil {
			err = t.file.Sync()
		}
		if err != nil {
			// Cut what part was written (or the next start does) and keep
			// the frames not written for the next commit: the marks in
			// them are in the state but not on disk.
			if _, serr := t.file.Seek(t.logSize, 0); serr == nil {
				_ = t.file.Truncate(t.logSize)
			}
			n := copy(t.frames, t.frames[i:])
			clear(t.frames[n:]) // no slot past the end may share a frame kept
			t.frames = t.frames[:n]
			return fmt.Errorf("cannot write the token log %s: %w", t.path(LogFile), err)
		}
		t.logSize += int64(len(f))
		t.frames[i] = f[:0]
	}
	t.frames = t.frames[:0]
	if t.logSize > max(minCompact, 2*t.snapSize) {
		if err := t.compact(state); err != nil {
			t.log.Warn("cannot compact the token log", "err", err)
		}
	}
	return nil
}

// seal fills in a frame's length and checksum.
func seal(f []byte) {
	binary.LittleEndian.PutUint32(f, uint32(len(f)-frameHead))
	binary.LittleEndian.PutUint32(f[4:], crc32.Checksum(f[frameHead:], crcTable))
}

// compact writes state as the snapshot of the next generation, then
// starts that generation's empty log. Each file is written aside,
// fsync'd, renamed into place and the directory fsync'd: a crash at any
// point leaves the old snapshot and log, or the new snapshot and the old
// log (older: dropped at the start), or both new.
func (t *tokenStore) compact(state *fileState) error {
	gen := t.gen + 1
	b := state.snapshot(t, gen)
	if err := writeFile(t.path(SnapshotFile), b, t.crashAt("snapshot written")); err != nil {
		return err
	}
	if t.crashAt("snapshot renamed")() {
		return errCrash
	}
	// The old log must take no more entries: the next start drops it.
	t.gen, t.snapSize = gen, int64(len(b))
	if err := t.newLog(); err != nil {
		_ = t.closeFile()
		return err
	}
	return nil
}

// errCrash is what a test's crash point returns.
var errCrash = errors.New("crash (test)")

func (t *tokenStore) crashAt(point string) func() bool {
	return func() bool { return t.crash != nil && t.crash(point) }
}

// newLog replaces the log with an empty one of the store's generation.
func (t *tokenStore) newLog() error {
	var h [headerSize]byte
	copy(h[:], logMagic[:])
	binary.LittleEndian.PutUint64(h[8:], t.gen)
	name := t.path(LogFile)
	if err := writeFile(name, h[:], t.crashAt("log written")); err != nil {
		return err
	}
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.Seek(headerSize, 0)
	}
	if err != nil {
		return fmt.Errorf("cannot open the token log: %w", err)
	}
	if t.file != nil {
		t.file.Close()
	}
	t.file, t.logSize = f, headerSize
	return nil
}

// snapshot encodes state whole, entries in a stable order.
func (state *fileState) snapshot(t *tokenStore, gen uint64) []byte {
	saved := t.frames
	t.frames = nil
	count := int64(0)
	for _, name := range slices.Sorted(maps.Keys(state.Services)) {
		st := state.Services[name]
		t.period(name, st.PeriodID)
		count++
		for _, acct := range slices.Sorted(maps.Keys(st.Accounts)) {
			t.alloc(name, acct, st.Accounts[acct])
			count++
		}
		for _, acct := range slices.Sorted(maps.Keys(st.Pools)) {
			t.pool(name, acct, st.Pools[acct])
			count++
		}
	}
	t.end(binary.AppendVarint(t.entry(entryEnd), count))
	size := headerSize
	for _, f := range t.frames {
		size += len(f)
	}
	b := make([]byte, headerSize, size)
	copy(b, snapMagic[:])
	binary.LittleEndian.PutUint64(b[8:], gen)
	for _, f := range t.frames {
		seal(f)
		b = append(b, f...)
	}
	t.frames = saved
	return b
}

// writeFile replaces name with b durably: a file aside, fsync, rename,
// fsync of the directory. crashed, in tests, stops it before the rename.
func writeFile(name string, b []byte, crashed func() bool) error {
	f, err := durable.Create(name, 0o600)
	if err != nil {
		return fmt.Errorf("cannot write the token state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil && crashed() {
		f.Close() // as a kill -9 leaves it: written aside, never renamed
		return errCrash
	}
	if err == nil {
		err = f.Commit()
	} else {
		f.Abort()
	}
	if err != nil {
		return fmt.Errorf("cannot write the token state %s: %w", name, err)
	}
	return nil
}

// close closes the log for good.
func (t *tokenStore) close() error {
	t.closed = true
	return t.closeFile()
}

func (t *tokenStore) closeFile() error {
	if t.file == nil {
		return nil
	}
	err := t.file.Close()
	t.file = nil
	return err
}
