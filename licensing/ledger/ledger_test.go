package ledger

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAppendReadReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ledger")
	now := t0
	l := open(t, dir, "n1", testKey(1), 0, &now)
	seq, hash := l.Head()
	require.Equal(t, uint64(0), seq)
	require.Equal(t, GenesisPrev, hash)
	require.Equal(t, testKey(1).Public(), l.PublicKey())

	n, err := l.Append(t0, t0, nil, nil)
	require.NoError(t, err)
	require.Equal(t, 0, n)
	appendAt(t, l, 0, []Usage{voice(10), {Service: "voice", Account: "acme", Admitted: 3}}, nil)
	appendAt(t, l, 1, []Usage{voice(20)}, []Witness{{Node: "n2", Seq: 7, Hash: strings.Repeat("ab", 32)}})
	seq, hash = l.Head()
	require.Equal(t, uint64(4), seq)

	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), info.Mode().Perm())
	segs := segFiles(t, dir)
	require.Equal(t, []string{filepath.Join(dir, "seg-00000000000000000001.jsonl")}, segs)
	info, err = os.Stat(segs[0])
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	// Read gives the stored lines verbatim, decoded, filtered by time.
	all := readAll(t, l)
	require.Equal(t, readFile(t, segs[0]), all)
	var got []uint64
	var recs []*Record
	from, to := interval(1)
	require.NoError(t, l.Read(from, to, func(line []byte, r *Record) error {
		got = append(got, r.Seq)
		recs = append(recs, r)
		return nil
	}))
	require.Equal(t, []uint64{3, 4}, got)
	require.Equal(t, &Usage{Service: "voice", Attempts: 22, Admitted: 20, Rejected: map[string]uint64{"CAPS": 2},
		Emergency: 1, PeakCAPS: 12, PeakSessions: 30, PeakSubscribers: 7, Tokens: 20}, recs[0].Usage)
	require.Equal(t, &Witness{Node: "n2", Seq: 7, Hash: strings.Repeat("ab", 32)}, recs[1].Witness)
	require.Equal(t, KindWitness, recs[1].Kind())
	require.Equal(t, recs[0].Hash, recs[1].Prev)
	require.Equal(t, "n1", recs[1].Node)
	require.Equal(t, "prod", recs[1].Cluster)
	require.Equal(t, t0, recs[1].At)
	_, end := interval(0)
	got = nil
	require.NoError(t, l.Read(time.Time{}, end, func(_ []byte, r *Record) error { got = append(got, r.Seq); return nil }))
	require.Equal(t, []uint64{1, 2}, got)
	stop := os.ErrClosed
	require.Equal(t, stop, l.Read(time.Time{}, time.Time{}, func([]byte, *Record) error { return stop }))

	require.NoError(t, l.Close())
	require.NoError(t, l.Close())
	_, err = l.Append(from, to, []Usage{voice(1)}, nil)
	require.ErrorIs(t, err, ErrClosed)

	// Reopened, the chain continues.
	l = open(t, dir, "n1", testKey(1), 0, &now)
	defer l.Close()
	require.Nil(t, l.Recovered())
	s2, h2 := l.Head()
	require.Equal(t, seq, s2)
	require.Equal(t, hash, h2)
	appendAt(t, l, 2, []Usage{voice(30)}, nil)
	rep := Verify(inputs("seg", readFile(t, segs[0])), VerifyOptions{})
	require.Empty(t, rep.Problems)
	require.Equal(t, NodeSummary{First: 1, Last: 5, Records: 5, Head: headHash(l), Key: lKey(l), KeyTrust: TrustUnverified}, rep.Nodes["n1"])
}

func headHash(l *Ledger) string { _, h := l.Head(); return h }

func lKey(l *Ledger) string { return string(bytes.TrimSpace(MarshalNodePublicKey(l.PublicKey()))) }

func TestAppendRefuses(t *testing.T) {
	now := t0
	l := open(t, t.TempDir(), "n1", testKey(1), 0, &now)
	defer l.Close()
	f := func(from, to time.Time, u []Usage, w []Witness, want string) {
		t.Helper()
		_, err := l.Append(from, to, u, w)
		require.EqualError(t, err, want)
	}
	from, to := interval(0)
	f(to, from, []Usage{voice(1)}, nil, "cannot append to ledger: interval ends (2025-06-01T00:00:00Z) before it starts (2025-06-01T00:00:10Z)")
	f(from, to, []Usage{{}}, nil, "cannot append to ledger: malformed: service must be 1 to 256 bytes")
	f(from, to, []Usage{{Service: "v", Rejected: map[string]uint64{"caps": 1}}}, nil, `cannot append to ledger: malformed: reject reason "caps" is not [A-Z_]{1,32}`)
	f(from, to, []Usage{{Service: "v", Account: "a", Trunk: "t"}}, nil, "cannot append to ledger: malformed: a record is an account's or a trunk key's, not both")
	f(from, to, []Usage{{Service: "v", Trunk: strings.Repeat("t", 257)}}, nil, "cannot append to ledger: malformed: trunk must be at most 256 bytes")
	f(from, to, nil, []Witness{{Node: "n2", Seq: 1, Hash: "x"}}, "cannot append to ledger: malformed: witness hash is not 64 lowercase hex digits")
	_, err := l.Append(from, to, []Usage{{Service: strings.Repeat("s", 256), Account: strings.Repeat("a", 256),
		Rejected: map[string]uint64{}}}, nil)
	require.NoError(t, err)
	seq, _ := l.Head()
	require.Equal(t, uint64(1), seq)
}

func TestOpenRefuses(t *testing.T) {
	now := t0
	_, err := Open(Options{Dir: t.TempDir(), Node: "n1"})
	require.EqualError(t, err, "invalid ledger options: Key is not an Ed25519 private key (see LoadOrCreateNodeKey)")
	_, err = Open(Options{Key: testKey(1), Node: "n1"})
	require.EqualError(t, err, "invalid ledger options: Dir is empty")
	_, err = Open(Options{Key: testKey(1), Dir: t.TempDir()})
	require.EqualError(t, err, "invalid ledger options: Node must be 1 to 256 bytes (node_name)")

	write := func(t *testing.T) (string, string) {
		dir := t.TempDir()
		l := open(t, dir, "n1", testKey(1), 0, &now)
		for i := range 5 {
			appendAt(t, l, i, []Usage{voice(uint64(i))}, nil)
		}
		require.NoError(t, l.Close())
		return dir, segFiles(t, dir)[0]
	}
	f := func(name string, change func(seg []byte) []byte, node string, key byte, want string) {
		t.Run(name, func(t *testing.T) {
			dir, seg := write(t)
			before := change(readFile(t, seg))
			require.NoError(t, os.WriteFile(seg, before, 0o600))
			_, err := Open(Options{Dir: dir, Node: node, Key: testKey(key)})
			require.EqualError(t, err, strings.ReplaceAll(want, "SEG", seg))
			require.Equal(t, before, readFile(t, seg), "a refused ledger is left as it was")
		})
	}
	edit := func(i int, from, to string) func([]byte) []byte {
		return func(b []byte) []byte {
			ls := lines(b)
			ls[i] = bytes.Replace(ls[i], []byte(from), []byte(to), 1)
			return join(ls...)
		}
	}
	drop := func(i int) func([]byte) []byte {
		return func(b []byte) []byte {
			ls := lines(b)
			return join(append(ls[:i:i], ls[i+1:]...)...)
		}
	}
	f("altered", edit(2, `"admitted":2`, `"admitted":9`), "n1", 1,
		"cannot open ledger: SEG line 3 (seq 3): hash mismatch; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	f("removed", drop(2), "n1", 1, "cannot open ledger: SEG line 3 (seq 4): seq 4 follows seq 2 (a record is missing or out of order)")
	f("other node", func(b []byte) []byte { return b }, "n9", 1,
		`cannot open ledger: SEG line 1 (seq 1): written by node "n1", not "n9" (node_name changed? use another data_dir)`)
	f("other key", func(b []byte) []byte { return b }, "n1", 2,
		"cannot open ledger: SEG line 1 (seq 1): signed with another key than this node's node.key")
	f("torn in the middle", func(b []byte) []byte {
		ls := lines(b)
		ls[1] = ls[1][:40]
		return join(ls...)
	}, "n1", 1, "cannot open ledger: SEG line 2 (seq 2): malformed: bad JSON: invalid character 'v' after object key:value pair; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
}

// TestTorn: a crash in the middle of writing a batch leaves part of a
// line. Verify on the raw file reports the torn line and nothing else;
// Open cuts it off and the chain goes on from the last good record.
func TestTorn(t *testing.T) {
	for _, cut := range []int{1, 100, -1} { // bytes of the torn line kept (-1: all but the newline)
		dir := t.TempDir()
		now := t0
		l := open(t, dir, "n1", testKey(1), 0, &now)
		for i := range 3 {
			appendAt(t, l, i, []Usage{voice(uint64(i))}, nil)
		}
		good := readAll(t, l)
		appendAt(t, l, 3, []Usage{voice(3), voice(4)}, nil)
		require.NoError(t, l.Close())
		seg := segFiles(t, dir)[0]
		all := readFile(t, seg)
		torn := lines(all)[3]
		torn = torn[:len(torn)-1]
		if cut >= 0 {
			torn = torn[:cut]
		}
		raw := join(good, torn)
		require.NoError(t, os.WriteFile(seg, raw, 0o600))

		rep := Verify(inputs("raw.jsonl", raw), VerifyOptions{})
		require.Len(t, rep.Problems, 1)
		p := rep.Problems[0]
		require.Equal(t, "raw.jsonl", p.File)
		require.Equal(t, 4, p.Line)
		require.Equal(t, "torn last line (no newline at the end: cut off mid-write?)", p.Reason)
		if cut == -1 || cut == 100 {
			require.Equal(t, "n1", p.Node)
			require.Equal(t, uint64(4), p.Seq)
		}

		l = open(t, dir, "n1", testKey(1), 0, &now)
		require.Equal(t, &Recovery{File: seg, Offset: int64(len(good)), Bytes: int64(len(torn)), Line: 4, Seq: 4}, l.Recovered())
		require.Contains(t, l.Recovered().String(), "removed a torn record")
		seq, _ := l.Head()
		require.Equal(t, uint64(3), seq)
		require.Equal(t, good, readFile(t, seg))
		appendAt(t, l, 3, []Usage{voice(3)}, nil)
		require.NoError(t, l.Close())
		rep = Verify(inputs("seg", readFile(t, seg)), VerifyOptions{})
		require.Empty(t, rep.Problems)
		require.Equal(t, uint64(4), rep.Nodes["n1"].Last)
	}
}

// TestTornTailOrDamage: what a crash during Append leaves at the end of
// the last segment (a line without its newline, NUL bytes where the file
// grew but its data never reached the disk) is cut off at the next Open;
// a whole line (ending in a newline, without NUL bytes) that is not an
// intact record is damage, at the end as anywhere: Open refuses, naming
// the file and line, and leaves the file as it was.
func TestTornTailOrDamage(t *testing.T) {
	now := t0
	write := func(t *testing.T) (dir, seg string, good, next []byte) {
		dir = t.TempDir()
		l := open(t, dir, "n1", testKey(1), 0, &now)
		for i := range 3 {
			appendAt(t, l, i, []Usage{voice(uint64(i))}, nil)
		}
		good = readAll(t, l)
		appendAt(t, l, 3, []Usage{voice(3)}, nil)
		next = lines(readAll(t, l))[3]
		require.NoError(t, l.Close())
		seg = segFiles(t, dir)[0]
		require.NoError(t, os.WriteFile(seg, good, 0o600))
		return dir, seg, good, next
	}
	nuls := func(n int) string { return strings.Repeat("\x00", n) }
	torn := func(name string, tail func(next []byte) string) {
		t.Run("torn/"+name, func(t *testing.T) {
			dir, seg, good, next := write(t)
			raw := tail(next)
			require.NoError(t, os.WriteFile(seg, append(bytes.Clone(good), raw...), 0o600))
			l := open(t, dir, "n1", testKey(1), 0, &now)
			defer l.Close()
			require.Equal(t, &Recovery{File: seg, Offset: int64(len(good)), Bytes: int64(len(raw)), Line: 4, Seq: 4}, l.Recovered())
			require.Equal(t, good, readFile(t, seg))
			appendAt(t, l, 3, []Usage{voice(3)}, nil)
			require.Equal(t, append(bytes.Clone(good), next...), readFile(t, seg), "the chain goes on from seq 3")
		})
	}
	torn("half a record", func(next []byte) string { return string(next[:len(next)/2]) })
	torn("all but the newline", func(next []byte) string { return string(next[:len(next)-1]) })
	torn("garbage without a newline", func([]byte) string { return "garbage" })
	torn("NUL bytes", func([]byte) string { return nuls(4096) })
	torn("NUL bytes past the longest line", func([]byte) string { return nuls(MaxLineBytes + 10) })
	torn("half a record then NUL bytes", func(next []byte) string { return string(next[:100]) + nuls(300) })
	torn("a record whose start never reached the disk", func(next []byte) string { return nuls(100) + string(next[100:]) })
	torn("NUL bytes then half a record", func(next []byte) string { return nuls(512) + "\n" + string(next[:50]) })

	damaged := func(name, tail, want string) {
		t.Run("damaged/"+name, func(t *testing.T) {
			dir, seg, good, _ := write(t)
			raw := append(bytes.Clone(good), tail...)
			require.NoError(t, os.WriteFile(seg, raw, 0o600))
			_, err := Open(Options{Dir: dir, Node: "n1", Key: testKey(1)})
			require.EqualError(t, err, "cannot open ledger: "+seg+" line 4 (seq 4): "+want)
			require.Equal(t, raw, readFile(t, seg), "a refused ledger is left as it was")
		})
	}
	const whole = "; the line is whole (it ends in a newline), so it was damaged or altered, not torn by a crash (a crash leaves a last line without its newline, or NUL bytes): restore the file or move the ledger directory aside"
	const middle = "; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside"
	damaged("garbage line", "garbage\n", "malformed: bad JSON: invalid character 'g' looking for beginning of value"+whole)
	damaged("blank line", "\n", "malformed: bad JSON: EOF"+whole)
	damaged("garbage line then a torn one", "garbage\n{\"v\":1,\"seq\":4", "malformed: bad JSON: invalid character 'g' looking for beginning of value"+whole)
	damaged("whole line too long", strings.Repeat("x", MaxLineBytes+1)+"\n", "line longer than 65536 bytes"+whole)
	damaged("NUL bytes then a garbage line", nuls(10)+"\ngarbage\n", "malformed: bad JSON: invalid character '\\x00' looking for beginning of value"+middle)
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	now := t0
	l := open(t, dir, "n1", testKey(1), 1000, &now)
	for i := range 6 {
		appendAt(t, l, i, []Usage{voice(uint64(i)), voice(uint64(i))}, nil)
	}
	segs := segFiles(t, dir)
	require.Len(t, segs, 7) // a ~500-byte record: a new segment after every batch (the last one empty)
	require.Empty(t, readFile(t, segs[6]))
	require.Equal(t, "seg-00000000000000000003.jsonl", filepath.Base(segs[1]))
	all := readAll(t, l)
	require.Equal(t, 12, bytes.Count(all, []byte("\n")))
	require.NoError(t, l.Close())

	l = open(t, dir, "n1", testKey(1), 1000, &now)
	defer l.Close()
	seq, _ := l.Head()
	require.Equal(t, uint64(12), seq)
	require.Equal(t, all, readAll(t, l))

	// Segment files in any order verify; a missing one is a gap (the
	// empty last one left out).
	var in []any
	for i := len(segs) - 2; i >= 0; i-- {
		in = append(in, filepath.Base(segs[i]), readFile(t, segs[i]))
	}
	rep := Verify(inputs(in...), VerifyOptions{})
	require.Empty(t, rep.Problems)
	require.Equal(t, 12, rep.Nodes["n1"].Records)
	rep = Verify(inputs(in[:4]...), VerifyOptions{})
	require.Empty(t, rep.Problems)
	require.True(t, rep.Nodes["n1"].Tail)
	rep = Verify(inputs(append(in[:4:4], in[6:]...)...), VerifyOptions{})
	require.Equal(t, []Problem{{Node: "n1", Seq: 9, File: "seg-00000000000000000009.jsonl", Line: 1,
		Reason: "gap: seq 9 follows 6 (records removed)"}}, rep.Problems)

	require.NoError(t, os.Remove(segs[2]))
	_, err := Open(Options{Dir: dir, Node: "n1", Key: testKey(1)})
	require.EqualError(t, err, "cannot open ledger: "+segs[3]+": starts at seq 7 but the ledger is at seq 4 (a segment is missing or misnamed)")
}

func TestConcurrentAppendRead(t *testing.T) {
	now := t0
	l := open(t, t.TempDir(), "n1", testKey(1), 4096, &now)
	defer l.Close()
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := range 20 {
				from, to := interval(i)
				_, err := l.Append(from, to, []Usage{voice(uint64(g))}, nil)
				require.NoError(t, err)
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			var last uint64
			require.NoError(t, l.Read(time.Time{}, time.Time{}, func(_ []byte, r *Record) error {
				require.Equal(t, last+1, r.Seq)
				last = r.Seq
				return nil
			}))
		}
	})
	wg.Wait()
	rep := Verify(inputs("all", readAll(t, l)), VerifyOptions{})
	require.Empty(t, rep.Problems)
	require.Equal(t, uint64(40), rep.Nodes["n1"].Last)
}

func TestLoadOrCreateNodeKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	key, err := LoadOrCreateNodeKey(dir)
	require.NoError(t, err)
	for name, mode := range map[string]os.FileMode{"": 0o700, NodeKeyFile: 0o600, NodePubFile: 0o644} {
		info, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Equal(t, mode, info.Mode().Perm(), name)
	}
	again, err := LoadOrCreateNodeKey(dir)
	require.NoError(t, err)
	require.Equal(t, key, again)
	pub, err := LoadNodePublicKey(filepath.Join(dir, NodePubFile))
	require.NoError(t, err)
	require.Equal(t, key.Public(), pub)

	require.NoError(t, os.Remove(filepath.Join(dir, NodePubFile)))
	_, err = LoadOrCreateNodeKey(dir)
	require.NoError(t, err)
	_, err = LoadNodePublicKey(filepath.Join(dir, NodePubFile))
	require.NoError(t, err)

	require.NoError(t, os.WriteFile(filepath.Join(dir, NodeKeyFile), []byte("nope\n"), 0o600))
	_, err = LoadOrCreateNodeKey(dir)
	require.ErrorContains(t, err, "cannot read node key "+dir+"/node.key: not the base64 of a 32-byte Ed25519 seed")
	_, err = LoadNodePublicKey(filepath.Join(dir, NodeKeyFile))
	require.EqualError(t, err, "cannot read node public key "+dir+"/node.key: malformed: not the base64 of a 32-byte Ed25519 public key")
}
