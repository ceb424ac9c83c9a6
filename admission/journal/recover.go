package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/bounded"
)

// Recovery: at Open, the newest readable snapshot and the journals after it
// are read back into the engine (load), a torn tail cut and a corrupt
// middle refused.

// files returns the sequence numbers of the snapshots and journals in dir.
func (j *Journal) files() (snaps, journals []uint64, err error) {
	ents, err := os.ReadDir(j.cfg.Dir)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read the state directory: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		for _, f := range []struct {
			prefix, suffix string
			to             *[]uint64
		}{{"snapshot-", ".state", &snaps}, {"journal-", ".log", &journals}} {
			if rest, ok := strings.CutPrefix(name, f.prefix); ok {
				if num, ok := strings.CutSuffix(rest, f.suffix); ok {
					if n, err := strconv.ParseUint(num, 10, 64); err == nil {
						*f.to = append(*f.to, n)
					}
				}
			}
		}
	}
	slices.Sort(snaps)
	slices.Sort(journals)
	return snaps, journals, nil
}

// load reads the newest snapshot and the journals after it into the
// engine. Nothing is gathered whole first: the journals are read and
// checked (their torn tails found, which services they reset, how many
// entries they add), every service's tables are reserved once, then the
// snapshot and the journals are applied as they are read, in chunks of
// restoreChunk changes per service, in the order written (a service a
// journal resets skips what came before the reset, the snapshot's
// included).
func (j *Journal) load() error {
	snaps, journals, err := j.files()
	if err != nil {
		return err
	}
	j.names = names{}
	defer func() {
		j.names = nil
		for _, unmap := range j.unmaps { // the restored tables hold copies
			unmap()
		}
		j.unmaps = nil
	}()
	snapshot := ""
	if len(snaps) > 0 {
		j.seq = snaps[len(snaps)-1]
		snapshot = filepath.Join(j.cfg.Dir, snapshotName(j.seq))
	} else if len(journals) > 0 {
		j.seq = journals[0] // a first journal whose snapshot was never written
	}
	// The journals from the snapshot's on: one, or a chain of them when
	// earlier starts continued without a snapshot (continueLocked).
	var chain []journalFile
	j.chain = j.chain[:0]
	resets := map[string]position{} // each service's last reset
	for _, n := range journals {
		if n < j.seq {
			continue
		}
		f, err := j.readJournal(filepath.Join(j.cfg.Dir, journalName(n)), len(chain), resets)
		if err != nil {
			return err
		}
		chain = append(chain, f)
		j.chain = append(j.chain, n)
	}
	if len(j.chain) > 0 {
		// What comes next (a snapshot or the next journal) follows the
		// last journal read.
		j.seq = j.chain[len(j.chain)-1]
	}
	var snap []byte
	if snapshot != "" {
		if snap, err = j.openSnapshot(snapshot); err != nil {
			return err
		}
	}
	rs := restorer{j: j, now: j.cfg.Clock.Now(), counts: map[string][2]int{}, chunks: map[string][]admission.Change{}}
	rs.wallNow = j.wallAnchor + (rs.now - j.engAnchor)
	// Each service's tables grow once: count what it will hold (from the
	// records' headers).
	counts := map[string]*[2]int{}
	if snap != nil {
		countRecords(snap[len(snapshotMagic):], counts, nil)
	}
	for service := range resets {
		delete(counts, service) // the snapshot's do not count
	}
	for fi, f := range chain {
		countRecords(f.b[len(journalMagic):f.end], counts, func(service []byte, off int) bool {
			r, ok := resets[string(service)]
			return !ok || (position{fi, len(journalMagic) + off}).after(r)
		})
	}
	for service, c := range counts {
		if err := j.cfg.Engine.ReserveRestore(service, c[0], c[1]); err != nil {
			rs.restore(service, nil, true) // counted as dropped once
		}
	}
	rs.start()
	defer rs.wait()
	if snap != nil {
		if err := j.applySnapshot(snapshot, snap, resets, &rs); err != nil {
			return err
		}
		j.recovery.Snapshot = snapshot
	}
	for fi, f := range chain {
		for off := len(journalMagic); off < f.end; {
			rec, size, err := readRecordIn(f.b[off:], j.names)
			if err != nil {
				return fmt.Errorf("cannot read the state journal %s at offset %d a second time: %w", f.path, off, err)
			}
			at := position{fi, off}
			off += size
			if r, ok := resets[rec.service]; rec.kind == kindReset || ok && !at.after(r) {
				continue // superseded by the service's last reset
			}
			rs.add(rec.service, rec.Change, false)
		}
		chain[fi].b = nil
	}
	rs.flushAll()
	rs.wait()
	for _, c := range rs.counts {
		j.recovery.Sessions += c[0]
		j.recovery.Subscribers += c[1]
	}
	return nil
}

// position is a record's place in the chain of journals: which file, at
// which offset.
type position struct{ file, off int }

func (p position) after(q position) bool {
	return p.file > q.file || p.file == q.file && p.off > q.off
}

// journalFile is a journal mapped whole, valid up to end.
type journalFile struct {
	path string
	b    []byte
	end  int
}

// countRecords adds the sessions and subscribers of the records in b to
// counts, per service (the headers only; a record keep says no to is not
// counted), stopping at the first it cannot read.
func countRecords(b []byte, counts map[string]*[2]int, keep func(service []byte, off int) bool) {
	count := func(name []byte, k admission.ChangeKind, n int) {
		c := counts[string(name)]
		if c == nil {
			c = new([2]int)
			counts[string(name)] = c
		}
		if k == admission.SessionOpened {
			c[0] += n
		} else {
			c[1] += n
		}
	}
	for off := 0; off+frameHeader+blockHeader <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off:]))
		if isBlock(b[off:]) {
			if n > maxBlockPayload || off+frameHeader+n > len(b) {
				return
			}
			k, name, entries, _, err := blockHead(b[off+frameHeader : off+frameHeader+n])
			if err != nil {
				return
			}
			if (k == admission.SessionOpened || k == admission.SubscriberSet) && (keep == nil || keep(name, off)) {
				count(name, k, entries)
			}
			off += frameHeader + n
			continue
		}
		if n < fixedPayload || n > maxPayload || off+frameHeader+n > len(b) {
			return
		}
		p := b[off+frameHeader : off+frameHeader+n]
		if sl := int(p[3]); fixedPayload+sl <= n {
			name := p[fixedPayload : fixedPayload+sl]
			if k := admission.ChangeKind(p[0]); (k == admission.SessionOpened || k == admission.SubscriberSet) && (keep == nil || keep(name, off)) {
				count(name, k, 1)
			}
		}
		off += frameHeader + n
	}
}

// restorer hands changes to the engine, per service in chunks, with their
// expiries turned from Unix ns to engine instants. Once started, a
// goroutine of its own applies the chunks, in the order they were read,
// while the next records are read and checked: a restart takes about as
// long as the longer of the two, not their sum.
type restorer struct {
	j            *Journal
	now, wallNow int64
	// counts and failed belong to the goroutine that applies the chunks
	// until wait returns.
	counts map[string][2]int // sessions and subscribers a service holds after its last restore
	failed map[string]bool
	chunks map[string][]admission.Change
	unique bool // the chunks are a snapshot's
	// work carries full chunks to that goroutine, free brings their
	// buffers back, done says it has applied all.
	work chan restoreJob
	free chan []admission.Change
	done chan struct{}
}

// restoreJob is one chunk of a service's changes to apply.
type restoreJob struct {
	service  string
	changes  []admission.Change
	snapshot bool
}

// restoreChunk is how many changes of a service go to the engine at once;
// restoreAhead bounds the chunks read and not yet applied (each is at most
// restoreChunk changes).
const (
	restoreChunk = 1 << 16
	restoreAhead = 4
)

// start starts the goroutine that applies the chunks.
func (rs *restorer) start() {
	rs.work = make(chan restoreJob, restoreAhead)
	rs.free = make(chan []admission.Change, restoreAhead+1)
	rs.done = make(chan struct{})
	go func() {
		defer close(rs.done)
		for job := range rs.work {
			rs.restore(job.service, job.changes, job.snapshot)
			clear(job.changes) // let go of the names it holds
			select {
			case rs.free <- job.changes[:0]:
			default:
			}
		}
	}()
}

// wait returns once every chunk sent is applied; nothing is sent after.
func (rs *restorer) wait() {
	if rs.work != nil {
		close(rs.work)
		<-rs.done
		rs.work = nil
	}
}

// send applies a chunk of service's changes, or has it applied by the
// goroutine when it runs, and returns a buffer for the next (nil: none
// free).
func (rs *restorer) send(service string, changes []admission.Change) []admission.Change {
	if rs.work == nil {
		rs.restore(service, changes, rs.unique)
		clear(changes)
		return changes[:0]
	}
	rs.work <- restoreJob{service: service, changes: changes, snapshot: rs.unique}
	select {
	case b := <-rs.free:
		return b
	default:
		return nil
	}
}

func (rs *restorer) restore(service string, changes []admission.Change, snapshot bool) {
	if rs.failed[service] {
		return
	}
	for i := range changes {
		changes[i].Expires = rs.now + (changes[i].Expires - rs.wallNow)
	}
	restore := rs.j.cfg.Engine.Restore
	if snapshot {
		restore = rs.j.cfg.Engine.RestoreSnapshot // each key once
	}
	sess, subs, err := restore(rs.now, service, changes)
	if err != nil {
		if rs.failed == nil {
			rs.failed = map[string]bool{}
		}
		rs.failed[service] = true
		rs.j.recovery.Dropped++
		rs.j.cfg.Log.Error("cannot restore a service's sessions and subscribers", "service", service, "err", err)
		return
	}
	rs.counts[service] = [2]int{sess, subs}
}

// add queues a change of service (unique: a snapshot's); a snapshot's
// chunks all go before any journal's.
func (rs *restorer) add(service string, c admission.Change, unique bool) {
	if unique != rs.unique {
		rs.flushAll()
		rs.unique = unique
	}
	ch := rs.chunks[service]
	if len(ch) == restoreChunk {
		ch = rs.send(service, ch)
	}
	if ch == nil {
		ch = make([]admission.Change, 0, 1024)
	}
	rs.chunks[service] = append(ch, c)
}

func (rs *restorer) flushAll() {
	for service, ch := range rs.chunks {
		if len(ch) > 0 {
			rs.send(service, ch)
		}
		delete(rs.chunks, service)
	}
}

// openSnapshot reads a snapshot and checks its magic.
func (j *Journal) openSnapshot(path string) ([]byte, error) {
	b, unmap, err := bounded.MapFile(path, bounded.NodeState)
	if err != nil {
		return nil, fmt.Errorf("cannot read the state snapshot: %w", err)
	}
	j.unmaps = append(j.unmaps, unmap)
	magic := string(b[:min(len(b), len(snapshotMagic))])
	if magic != snapshotMagic && magic != snapshotMagicRecords {
		return nil, snapshotError(path, errors.New("not a capsgate state snapshot"))
	}
	return b, nil
}

func snapshotError(path string, err error) error {
	return fmt.Errorf("cannot read the state snapshot %s: %w (move it away to start without the open sessions and registrations it holds)", path, err)
}

// applySnapshot applies snapshot b (a service a journal resets skipped). A
// snapshot is written whole and renamed into place, so any damage is
// corruption, not a crash: it is an error.
func (j *Journal) applySnapshot(path string, b []byte, resets map[string]position, rs *restorer) error {
	n, weight := 0, int64(snapshotFrame)
	add := func(service string, c admission.Change) {
		n++
		weight += int64(recordSize(service, &c))
		if _, reset := resets[service]; !reset { // else a journal starts this service over
			rs.add(service, c, true)
		}
	}
	for off := len(snapshotMagic); ; {
		if isBlock(b[off:]) {
			size, err := readBlock(b[off:], j.names, add)
			if err != nil {
				return snapshotError(path, fmt.Errorf("at offset %d: %w", off, err))
			}
			off += size
			continue
		}
		rec, size, err := readRecordIn(b[off:], j.names)
		if err != nil {
			return snapshotError(path, fmt.Errorf("at offset %d: %w", off, err))
		}
		off += size
		if rec.kind == kindEnd {
			if rec.Remaining != int64(n) {
				return snapshotError(path, fmt.Errorf("it ends after %d records but says %d", n, rec.Remaining))
			}
			rs.flushAll()
			j.snapSize = weight
			return nil
		}
		if rec.kind == kindReset {
			n++
			continue
		}
		add(rec.service, rec.Change)
	}
}

// readJournal reads a journal and finds where its valid records end: at
// its first bad record, the tail a crash tore off (or, far less likely,
// damage; either way what follows it is not trusted). It notes in resets
// the position of each service's last reset (file is the journal's place
// in the chain) and counts the records.
func (j *Journal) readJournal(path string, file int, resets map[string]position) (journalFile, error) {
	b, unmap, err := bounded.MapFile(path, bounded.NodeState)
	if err != nil {
		return journalFile{}, fmt.Errorf("cannot read the state journal: %w", err)
	}
	j.unmaps = append(j.unmaps, unmap)
	off := len(journalMagic)
	if len(b) < off || string(b[:off]) != journalMagic {
		off = 0 // torn while being created
	} else {
		for off < len(b) {
			rec, size, err := readRecordIn(b[off:], j.names)
			if err != nil {
				break
			}
			if rec.kind == kindReset {
				resets[rec.service] = position{file, off}
			}
			j.recovery.Records++
			off += size
		}
	}
	if off < len(b) {
		j.recovery.Torn, j.recovery.At, j.recovery.Cut = path, int64(off), int64(len(b)-off)
		j.cfg.Log.Warn("the state journal's tail was torn by a crash and cut off; the changes before it are restored",
			"file", path, "offset", off, "bytes_cut", len(b)-off)
	}
	if off < len(journalMagic) {
		return journalFile{path: path, b: []byte(journalMagic), end: len(journalMagic)}, nil
	}
	return journalFile{path: path, b: b, end: off}, nil
}
