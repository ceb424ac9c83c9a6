package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("ledger is closed")

// Options configures Open.
type Options struct {
	// Dir holds the segment files (e.g. data_dir/ledger); created with mode
	// 0700 if missing.
	Dir string
	// Node and Cluster are written into every record. A ledger belongs to
	// one node: Open refuses a ledger written under another node name.
	Node, Cluster string
	// Key signs the records (see LoadOrCreateNodeKey). Open refuses a
	// ledger signed with another key.
	Key ed25519.PrivateKey
	// SegmentBytes is the size at which a new segment file is started,
	// as soon as the batch that reached it is written (a batch is never
	// split: a segment overruns it by at most one batch). Default 4
	// MiB: a few hours of 10 s intervals for a few dozen services, small
	// enough to copy and read, and the most a start verifies record by
	// record (the last segment: about 7,000 records, half a second).
	SegmentBytes int64
	// Clock stamps records ("at"). Default time.Now.
	Clock func() time.Time
	// Logger reports a recovered torn record. Default slog.Default().
	Logger *slog.Logger
	// Genesis opens a new (empty) ledger with a genesis record, durable
	// before Open returns, so that a verifier can tell the whole ledger
	// from one cut at the head. The node sets it; a ledger that already
	// has records is left as it is.
	Genesis bool
}

// DefaultSegmentBytes is the default Options.SegmentBytes.
const DefaultSegmentBytes = 4 << 20

// Recovery describes a torn record Open cut off the end of the ledger: the
// unacknowledged tail of an Append batch interrupted by a crash.
type Recovery struct {
	File   string // segment file
	Offset int64  // where the good records end (the file's new size)
	Bytes  int64  // bytes removed
	Line   int    // line number of the first removed line
	Seq    uint64 // the next record's seq (the last good one + 1)
}

func (r *Recovery) String() string {
	return fmt.Sprintf("%s: removed a torn record of %d bytes at line %d (offset %d); the chain continues at seq %d",
		r.File, r.Bytes, r.Line, r.Offset, r.Seq)
}

// Ledger is a node's append-only usage ledger. Its methods are safe for
// concurrent use.
type Ledger struct {
	dir           string
	node, cluster string
	key           ed25519.PrivateKey
	keyB64        string
	segBytes      int64
	clock         func() time.Time
	recovered     *Recovery
	log           *slog.Logger

	mu sync.Mutex // guards the following fields
	// segs are the segment files in seq order; the last is open in f.
	segs []segment
	f    *os.File
	size int64 // bytes of the last segment holding acknowledged records
	seq  uint64
	head string
	// genesis is the hash of the genesis record ("" if seq 1 is not one).
	genesis string
	// sealed are the segments before the last as Open found them, for
	// VerifyHistory.
	sealed []sealed
	// err is a failed write or fsync: the ledger refuses to append after
	// one, since what reached the disk is unknown until it is reopened.
	err    error
	closed bool
}

type segment struct {
	name  string // base name
	first uint64 // seq of its first record
}

// sealed is a segment before the last as Open checked it: the hash its
// first record follows, its last record's seq and hash, and its size.
type sealed struct {
	segment
	prev, hash string
	last       uint64
	size       int64
}

var segName = regexp.MustCompile(`^seg-([0-9]{20})\.jsonl$`)

func segmentName(first uint64) string { return fmt.Sprintf("seg-%020d.jsonl", first) }

// Open opens the ledger in o.Dir, creating it if needed. It verifies every
// record of the last segment (hash, signature, key, node, chain), and of
// each segment before it the first and the last record and how they join
// their neighbours: a node's start costs its last segment and two records
// a segment, not its whole history (a ledger of 2.6 million records took
// three minutes to open when every record was verified). A torn record at
// the very end, as a crash during Append leaves — a last line without its
// newline, or lines holding NUL bytes (the file grew but its data never
// reached the disk), with no whole line after them — is cut off, logged
// and reported by Recovered. Any other break found refuses to open,
// naming the file, line and seq: a whole line (ending in a newline,
// without NUL bytes) that is not an intact record is damage even at the
// very end, never cut off. VerifyHistory verifies the rest of the earlier
// segments, record by record, once the node runs.
func Open(o Options) (*Ledger, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	l := &Ledger{
		dir: o.Dir, node: o.Node, cluster: o.Cluster, key: o.Key,
		keyB64:   base64.StdEncoding.EncodeToString(o.Key.Public().(ed25519.PublicKey)),
		segBytes: o.SegmentBytes, clock: o.Clock, head: GenesisPrev,
	}
	if l.segBytes == 0 {
		l.segBytes = DefaultSegmentBytes
	}
	if l.clock == nil {
		l.clock = time.Now
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create ledger directory: %w", err)
	}
	segs, err := listSegments(o.Dir)
	if err != nil {
		return nil, err
	}
	l.segs = segs
	for i, s := range segs {
		var err error
		if i == len(segs)-1 {
			err = l.load(s, true)
		} else {
			err = l.loadSealed(s)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(l.segs) == 0 {
		if err := l.createSegment(1); err != nil {
			return nil, err
		}
	} else {
		last := l.path(l.segs[len(l.segs)-1])
		f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("cannot open ledger segment: %w", err)
		}
		l.f = f
	}
	if o.Genesis && l.seq == 0 {
		at := l.clock()
		g := &Record{Genesis: &Genesis{Key: l.keyB64, Cluster: l.cluster, First: formatTime(at)}}
		if err := l.write(at, at, at, []*Record{g}); err != nil {
			l.f.Close()
			return nil, err
		}
	}
	if l.log = o.Logger; l.log == nil {
		l.log = slog.Default()
	}
	if l.recovered != nil {
		l.log.Warn("ledger: recovered from a torn record", "file", l.recovered.File,
			"offset", l.recovered.Offset, "bytes", l.recovered.Bytes, "next_seq", l.recovered.Seq)
	}
	return l, nil
}

func (o *Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("invalid ledger options: Dir is empty")
	case o.Node == "" || len(o.Node) > 256:
		return errors.New("invalid ledger options: Node must be 1 to 256 bytes (node_name)")
	case len(o.Cluster) > 256:
		return errors.New("invalid ledger options: Cluster must be at most 256 bytes (cluster_id)")
	case len(o.Key) != ed25519.PrivateKeySize:
		return errors.New("invalid ledger options: Key is not an Ed25519 private key (see LoadOrCreateNodeKey)")
	case o.SegmentBytes < 0:
		return errors.New("invalid ledger options: SegmentBytes must be >= 0")
	}
	return nil
}

func listSegments(dir string) ([]segment, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot read ledger directory: %w", err)
	}
	var segs []segment
	for _, e := range entries {
		m := segName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		first, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil || first == 0 {
			return nil, fmt.Errorf("cannot open ledger: bad segment file name %s", e.Name())
		}
		segs = append(segs, segment{name: e.Name(), first: first})
	}
	slices.SortFunc(segs, func(a, b segment) int { return compareUint(a.first, b.first) })
	return segs, nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (l *Ledger) path(s segment) string { return filepath.Join(l.dir, s.name) }

// load verifies segment s and advances l.seq and l.head over it; for the
// last segment it also cuts off a torn tail and sets l.size.
func (l *Ledger) load(s segment, last bool) error {
	path := l.path(s)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot open ledger segment: %w", err)
	}
	defer f.Close()
	if s.first != l.seq+1 {
		return fmt.Errorf("cannot open ledger: %s: starts at seq %d but the ledger is at seq %d (a segment is missing or misnamed)", path, s.first, l.seq)
	}
	lr := newLineReader(f)
	var good int64
	for {
		line, off, n, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil && err != errLineTooLong {
			return fmt.Errorf("cannot read ledger segment %s: %w", path, err)
		}
		var problem error
		var r *Record
		if err == errLineTooLong {
			problem = fmt.Errorf("line longer than %d bytes", MaxLineBytes)
		} else {
			r, problem = intact(line)
		}
		if problem != nil {
			// Torn by a crash: the line lacks its newline (Append was
			// cut off writing it) or holds NUL bytes (the file grew but
			// the data never reached the disk), and so does every line
			// after it. A whole line is damage, wherever it stands.
			torn := !lr.whole || lr.nul
			after, err := wholeAfter(lr)
			switch {
			case err != nil:
				return fmt.Errorf("cannot read ledger segment %s: %w", path, err)
			case last && torn && !after:
				return l.cut(path, good, n)
			case !after:
				return fmt.Errorf("cannot open ledger: %s line %d (seq %d): %v; the line is whole (it ends in a newline), so it was damaged or altered, not torn by a crash (a crash leaves a last line without its newline, or NUL bytes): restore the file or move the ledger directory aside", path, n, l.seq+1, problem)
			}
			return fmt.Errorf("cannot open ledger: %s line %d (seq %d): %v; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside", path, n, l.seq+1, problem)
		}
		if err := l.follows(r); err != nil {
			return fmt.Errorf("cannot open ledger: %s line %d (seq %d): %v", path, n, r.Seq, err)
		}
		if r.Genesis != nil {
			l.genesis = r.Hash
		}
		l.seq, l.head, good = r.Seq, r.Hash, off+int64(len(line))
	}
	if last {
		l.size = good
	}
	return nil
}

// loadSealed checks a segment before the last: its first record follows
// the ledger so far, its last is intact and ends it, and the file ends in
// a newline; it advances l.seq and l.head to its last record and notes
// where it joins the ledger for VerifyHistory.
func (l *Ledger) loadSealed(s segment) error {
	path := l.path(s)
	if s.first != l.seq+1 {
		return fmt.Errorf("cannot open ledger: %s: starts at seq %d but the ledger is at seq %d (a segment is missing or misnamed)", path, s.first, l.seq)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cannot open ledger segment: %w", err)
	}
	defer f.Close()
	broken := func(line, seq string, problem error) error {
		return fmt.Errorf("cannot open ledger: %s %s (%s): %v; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside", path, line, seq, problem)
	}
	seqOf := func(r *Record) string {
		if r == nil { // not decoded: only where it stands is known
			return fmt.Sprintf("a record after seq %d, the segment's first", l.seq)
		}
		return fmt.Sprintf("seq %d", r.Seq)
	}
	first, _, _, err := newLineReader(f).next()
	switch {
	case err == io.EOF:
		return fmt.Errorf("cannot open ledger: %s: empty segment before the last one", path)
	case err == errLineTooLong:
		return broken("line 1", fmt.Sprintf("seq %d", l.seq+1), fmt.Errorf("line longer than %d bytes", MaxLineBytes))
	case err != nil:
		return fmt.Errorf("cannot read ledger segment %s: %w", path, err)
	}
	r, err := intact(first)
	if err != nil {
		return broken("line 1", fmt.Sprintf("seq %d", l.seq+1), err)
	}
	if err := l.follows(r); err != nil {
		return fmt.Errorf("cannot open ledger: %s line 1 (seq %d): %v", path, r.Seq, err)
	}
	start := sealed{segment: s, prev: l.head}
	if r.Genesis != nil {
		l.genesis = r.Hash
	}
	l.seq, l.head = r.Seq, r.Hash
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cannot read ledger segment %s: %w", path, err)
	}
	tail, err := lastLine(f, info.Size())
	if err != nil {
		return broken("last line", seqOf(nil), err)
	}
	if !bytes.Equal(tail, first) {
		last, err := intact(tail)
		if err != nil {
			return broken("last line", seqOf(last), err)
		}
		switch {
		case last.Key != l.keyB64 || last.Node != l.node:
			return broken("last line", seqOf(last), errors.New("written by another node or signed with another key than its first line"))
		case last.Seq <= l.seq:
			return broken("last line", seqOf(last), fmt.Errorf("seq %d is not after the first line's, %d", last.Seq, l.seq))
		}
		l.seq, l.head = last.Seq, last.Hash
	}
	start.last, start.hash, start.size = l.seq, l.head, info.Size()
	l.sealed = append(l.sealed, start)
	return nil
}

// VerifyHistory verifies, record by record, the segments before the last
// as Open found them (Open checked only where each begins and ends): every
// record intact, each following the one before, each segment ending on
// the record Open read there. A segment verified so before, by this or an
// earlier run (noted with its size and SHA-256 in the file verified), is
// only hashed again: a restart does not verify the same history again
// (2.6 million records, 1.7 GB, hash in a few seconds). It uses at most
// share of a core (0 < share <= 1), pausing between batches of records,
// and calls progress, if not nil, after each batch with the records
// verified so far. It returns the first break found, naming the file,
// line and seq, ctx's error if ctx is done first, or nil.
func (l *Ledger) VerifyHistory(ctx context.Context, share float64, progress func(records int)) error {
	if !(share > 0 && share <= 1) {
		return fmt.Errorf("invalid share of a core %v: must be in (0, 1]", share)
	}
	const batch = 256
	done, started := 0, time.Now()
	pace := func() error {
		if share < 1 {
			pause := time.Duration(float64(time.Since(started)) * (1 - share) / share)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
			started = time.Now()
		}
		return ctx.Err()
	}
	known := l.readVerified()
	var noted, wrote time.Time // the last verification noted, and when the note was written
	defer func() {
		if noted.After(wrote) {
			l.writeVerified(known) // at worst, verified again next time
		}
	}()
	for _, s := range l.sealed {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := os.Open(l.path(s.segment))
		if err != nil {
			return fmt.Errorf("cannot verify ledger segment: %w", err)
		}
		h := sha256.New()
		r := io.TeeReader(io.LimitReader(f, s.size), h)
		if k, ok := known[s.name]; ok && k.size == s.size {
			_, err = io.Copy(io.Discard, r)
			if err == nil && hex.EncodeToString(h.Sum(nil)) == k.sum {
				f.Close()
				done += int(s.last - s.first + 1)
				if progress != nil {
					progress(done)
				}
				if err := pace(); err != nil {
					return err
				}
				continue
			}
			h.Reset() // changed since it was verified: verify it again
			if _, err = f.Seek(0, io.SeekStart); err != nil {
				f.Close()
				return fmt.Errorf("cannot verify ledger segment: %w", err)
			}
			r = io.TeeReader(io.LimitReader(f, s.size), h)
		}
		err = l.verifySealed(s, r, func() error {
			if done++; done%batch != 0 {
				return nil
			}
			if progress != nil {
				progress(done)
			}
			return pace()
		})
		f.Close()
		if err != nil {
			return err
		}
		known[s.name] = verifiedSegment{size: s.size, sum: hex.EncodeToString(h.Sum(nil))}
		if noted = time.Now(); noted.Sub(wrote) >= verifiedEvery {
			l.writeVerified(known)
			wrote = noted
		}
	}
	if progress != nil {
		progress(done)
	}
	return nil
}

// verifiedSegment is a segment VerifyHistory verified: its size and the
// hex SHA-256 of its bytes then.
type verifiedSegment struct {
	size int64
	sum  string
}

// verifiedFile names the segments VerifyHistory verified, a line each:
// "<segment file name> <size> <sha256 hex>". It only saves verifying them
// again: a file missing, unreadable or malformed (or over verifiedBytes)
// counts as naming none. It is written at most every verifiedEvery while
// VerifyHistory runs, and when it ends.
const (
	verifiedFile  = "verified"
	verifiedBytes = 64 << 20 // 104 bytes a segment: 645,000 segments, 2.5 TB of ledger
	verifiedEvery = 10 * time.Second
)

// readVerified returns what verifiedFile names, by segment file name.
func (l *Ledger) readVerified() map[string]verifiedSegment {
	out := map[string]verifiedSegment{}
	b, err := bounded.ReadFile(filepath.Join(l.dir, verifiedFile), verifiedBytes)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			l.log.Warn("ledger: the note of the segments verified cannot be read; verifying them all again", "err", err)
		}
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || !segName.MatchString(f[0]) || len(f[2]) != 2*sha256.Size {
			continue
		}
		size, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil || size <= 0 {
			continue
		}
		out[f[0]] = verifiedSegment{size: size, sum: f[2]}
	}
	return out
}

// writeVerified replaces verifiedFile with the segments of known that are
// still in the ledger.
func (l *Ledger) writeVerified(known map[string]verifiedSegment) {
	var b strings.Builder
	for _, s := range l.sealed {
		if k, ok := known[s.name]; ok {
			fmt.Fprintf(&b, "%s %d %s\n", s.name, k.size, k.sum)
		}
	}
	_ = durable.WriteFile(filepath.Join(l.dir, verifiedFile), []byte(b.String()), 0o600)
}

// verifySealed verifies segment s, read from r, record by record; each
// is called after each record.
func (l *Ledger) verifySealed(s sealed, r io.Reader, each func() error) error {
	path := l.path(s.segment)
	seq, head := s.first-1, s.prev
	lr := newLineReader(r)
	for {
		line, _, n, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil && err != errLineTooLong {
			return fmt.Errorf("cannot read ledger segment %s: %w", path, err)
		}
		var rec *Record
		problem := err
		if err == errLineTooLong {
			problem = fmt.Errorf("line longer than %d bytes", MaxLineBytes)
		} else {
			rec, problem = intact(line)
		}
		if problem == nil {
			problem = follows(rec, l.keyB64, l.node, seq, head)
		}
		if problem != nil {
			return fmt.Errorf("%w: %s line %d (seq %d): %v", ErrBrokenChain, path, n, seq+1, problem)
		}
		seq, head = rec.Seq, rec.Hash
		if err := each(); err != nil {
			return err
		}
	}
	if seq != s.last || head != s.hash {
		return fmt.Errorf("%w: %s: ends at seq %d, not at seq %d as when the ledger opened (changed since?)", ErrBrokenChain, path, seq, s.last)
	}
	return nil
}

// ErrBrokenChain is VerifyHistory's verdict on a segment whose records do
// not all verify or chain.
var ErrBrokenChain = errors.New("ledger chain broken")

// intact decodes a whole line (newline included) and checks its hash and
// signature. The record is returned, with the check's error, if it
// decoded.
func intact(line []byte) (*Record, error) {
	if !bytes.HasSuffix(line, []byte("\n")) {
		return nil, errors.New("no newline at the end")
	}
	r, err := Decode(line)
	if err != nil {
		return nil, err
	}
	return r, r.Check()
}

// lastLine returns the last line of a file of size bytes, newline
// included, reading at most MaxLineBytes+1 bytes from its end.
func lastLine(f *os.File, size int64) ([]byte, error) {
	n := min(size, MaxLineBytes+1)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return nil, fmt.Errorf("cannot read its end: %w", err)
	}
	if !bytes.HasSuffix(buf, []byte("\n")) {
		return nil, errors.New("no newline at the end")
	}
	i := bytes.LastIndexByte(buf[:n-1], '\n')
	if i < 0 && n < size {
		return nil, fmt.Errorf("line longer than %d bytes", MaxLineBytes)
	}
	return buf[i+1:], nil
}

// follows reports why r, an intact record, cannot be the next in l.
func (l *Ledger) follows(r *Record) error { return follows(r, l.keyB64, l.node, l.seq, l.head) }

// follows reports why r, an intact record, cannot follow seq, whose hash
// is head, in node's ledger signed with key.
func follows(r *Record, key, node string, seq uint64, head string) error {
	switch {
	case r.Key != key:
		return errors.New("signed with another key than this node's node.key")
	case r.Node != node:
		return fmt.Errorf("written by node %q, not %q (node_name changed? use another data_dir)", r.Node, node)
	case r.Seq != seq+1:
		return fmt.Errorf("seq %d follows seq %d (a record is missing or out of order)", r.Seq, seq)
	case r.Prev != head:
		return fmt.Errorf("prev is not the hash of seq %d (altered?)", seq)
	}
	return nil
}

// wholeAfter reports whether a whole line (ending in a newline, without
// NUL bytes: an intact record, or damage) follows in lr, which a crash
// during Append cannot leave after a torn one.
func wholeAfter(lr *lineReader) (bool, error) {
	for {
		_, _, _, err := lr.next()
		switch {
		case err == io.EOF:
			return false, nil
		case err != nil && err != errLineTooLong:
			return false, err
		case lr.whole && !lr.nul:
			return true, nil
		}
	}
}

// cut truncates the last segment at good, removing the torn tail that
// starts at line n.
func (l *Ledger) cut(path string, good int64, n int) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot recover ledger: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("cannot recover ledger: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(good); err != nil {
		return fmt.Errorf("cannot recover ledger: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cannot recover ledger: %w", err)
	}
	l.recovered = &Recovery{File: path, Offset: good, Bytes: info.Size() - good, Line: n, Seq: l.seq + 1}
	l.size = good
	return nil
}

// createSegment starts the segment whose first record is seq first and
// makes it the one appended to. Called with mu held (or from Open).
func (l *Ledger) createSegment(first uint64) error {
	s := segment{name: segmentName(first), first: first}
	f, err := os.OpenFile(l.path(s), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cannot create ledger segment: %w", err)
	}
	if err := durable.SyncDir(l.dir); err != nil {
		f.Close()
		os.Remove(l.path(s)) // the next batch creates it again
		return fmt.Errorf("cannot create ledger segment: %w", err)
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.size = f, 0
	l.segs = append(l.segs, s)
	return nil
}

// Recovered returns what Open cut off the end of the ledger, or nil.
func (l *Ledger) Recovered() *Recovery { return l.recovered }

// PublicKey returns the key that verifies the records.
func (l *Ledger) PublicKey() ed25519.PublicKey { return l.key.Public().(ed25519.PublicKey) }

// Identity returns the node's public key (base64) and the hash of the
// ledger's genesis record ("" for a ledger without one): what a node
// gossips beside its head for peers to witness.
func (l *Ledger) Identity() (key, genesis string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.keyB64, l.genesis
}

// Head returns the last record's seq and hash (0 and GenesisPrev when the
// ledger is empty): what a node gossips for its peers to witness.
func (l *Ledger) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.head
}

// Append writes one record for each usage, then one for each witness, all
// covering [from, to), and fsyncs once before returning: when it returns
// nil, the n records are durable. A failed write (a full disk) is cut off
// again and nothing was appended: the caller may try again later. After a
// failed fsync, or a write that cannot be cut off, the ledger refuses
// further appends until it is reopened (Open then recovers the torn tail,
// if any).
func (l *Ledger) Append(from, to time.Time, usage []Usage, witnesses []Witness) (n int, err error) {
	if to.Before(from) {
		return 0, fmt.Errorf("cannot append to ledger: interval ends (%s) before it starts (%s)", formatTime(to), formatTime(from))
	}
	for _, t := range []time.Time{from, to} {
		if y := t.UTC().Year(); y < 1 || y > 9999 {
			return 0, fmt.Errorf("cannot append to ledger: time %s out of range", t)
		}
	}
	for i := range usage {
		if err := validUsage(&usage[i]); err != nil {
			return 0, fmt.Errorf("cannot append to ledger: %w", err)
		}
	}
	for i := range witnesses {
		if err := validWitness(&witnesses[i]); err != nil {
			return 0, fmt.Errorf("cannot append to ledger: %w", err)
		}
	}
	if len(usage)+len(witnesses) == 0 {
		return 0, nil
	}
	recs := make([]*Record, 0, len(usage)+len(witnesses))
	for i := range usage {
		u := usage[i]
		u.Rejected = nonZero(u.Rejected)
		recs = append(recs, &Record{Usage: &u})
	}
	for i := range witnesses {
		w := witnesses[i]
		recs = append(recs, &Record{Witness: &w})
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return 0, ErrClosed
	case l.err != nil:
		return 0, fmt.Errorf("cannot append to ledger after an earlier failure: %w", l.err)
	}
	if err := l.write(l.clock(), from, to, recs); err != nil {
		return 0, err
	}
	return len(recs), nil
}

// write seals recs as the next records, stamped at and covering [from,
// to), writes them and fsyncs once. Called with mu held (or from Open).
func (l *Ledger) write(at, from, to time.Time, recs []*Record) error {
	if l.size >= l.segBytes {
		if err := l.createSegment(l.seq + 1); err != nil {
			return err
		}
	}
	seq, head := l.seq, l.head
	var buf bytes.Buffer
	for _, r := range recs {
		seq++
		r.Seq, r.Node, r.Cluster, r.At, r.From, r.To, r.Prev = seq, l.node, l.cluster, at, from, to, head
		line, err := r.seal(l.key)
		if err != nil {
			return err
		}
		buf.Write(line)
		head = r.Hash
	}
	if _, err := l.f.Write(buf.Bytes()); err != nil {
		// A full disk: cut what part of the batch was written, so the
		// ledger ends on its last whole record and a later Append (the
		// same usage, carried over by the caller) can succeed. Only when
		// that fails too does the ledger stop until it is reopened.
		if terr := l.f.Truncate(l.size); terr != nil {
			l.err = err
		} else if serr := l.f.Sync(); serr != nil {
			l.err = serr
		}
		return fmt.Errorf("cannot append to ledger: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		l.err = err
		return fmt.Errorf("cannot append to ledger: fsync: %w", err)
	}
	if l.seq == 0 && recs[0].Genesis != nil {
		l.genesis = recs[0].Hash
	}
	l.seq, l.head = seq, head
	l.size += int64(buf.Len())
	if l.size >= l.segBytes {
		// The next segment now, not at the next batch: a start verifies
		// the last segment whole, and a node that dies before its next
		// batch leaves this one sealed. If it cannot be made, the next
		// batch tries again and reports why.
		_ = l.createSegment(l.seq + 1)
	}
	return nil
}

// nonZero returns m without its zero counts (nil if none is left), so a
// record says only what happened and has one encoding.
func nonZero(m map[string]uint64) map[string]uint64 {
	var out map[string]uint64
	for k, v := range m {
		if v != 0 {
			if out == nil {
				out = make(map[string]uint64, len(m))
			}
			out[k] = v
		}
	}
	return out
}

// Read calls fn, in seq order, for every record whose interval overlaps
// [from, to) (a zero from or to is unbounded; a record of an empty
// interval counts if its instant is in [from, to)), with the exact line
// stored (newline included; valid only during the call) and the decoded
// record. It reads what was acknowledged when it was called, without
// holding up Append. It stops at fn's first error and returns it.
func (l *Ledger) Read(from, to time.Time, fn func(line []byte, r *Record) error) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	segs, lastSize, lastSeq := slices.Clone(l.segs), l.size, l.seq
	l.mu.Unlock()
	for i, s := range segs {
		if err := l.readSegment(s, i == len(segs)-1, lastSize, lastSeq, from, to, fn); err != nil {
			return err
		}
	}
	return nil
}

func (l *Ledger) readSegment(s segment, last bool, size int64, lastSeq uint64, from, to time.Time, fn func([]byte, *Record) error) error {
	f, err := os.Open(l.path(s))
	if err != nil {
		return fmt.Errorf("cannot read ledger: %w", err)
	}
	defer f.Close()
	var src io.Reader = f
	if last {
		src = io.LimitReader(f, size)
	}
	lr := newLineReader(src)
	for {
		line, _, n, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("cannot read ledger: %s line %d: %w", s.name, n, err)
		}
		r, err := Decode(line)
		if err != nil {
			return fmt.Errorf("cannot read ledger: %s line %d: %w", s.name, n, err)
		}
		if r.Seq > lastSeq {
			return nil
		}
		if overlaps(r, from, to) {
			if err := fn(line, r); err != nil {
				return err
			}
		}
	}
}

func overlaps(r *Record, from, to time.Time) bool {
	if !to.IsZero() && !r.From.Before(to) {
		return false
	}
	if from.IsZero() {
		return true
	}
	if r.From.Equal(r.To) {
		return !r.From.Before(from)
	}
	return r.To.After(from)
}

// Close closes the segment file. Appends after Close fail with ErrClosed.
// It is safe to call twice.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return l.f.Close()
}
