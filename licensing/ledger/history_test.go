package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestOpenChecksSealedSegmentsAtTheirEnds: Open verifies the last segment
// whole and, of each segment before it, the first and the last record and
// how they join; VerifyHistory then finds what lies between, naming the
// file, line and seq. A break Open can see still refuses it.
func TestOpenChecksSealedSegmentsAtTheirEnds(t *testing.T) {
	now := t0
	// Five segments of three records (seq 1-3, 4-6, 7-9, 10-12, 13-15),
	// then the empty one the next batch would go to.
	write := func(t *testing.T) (string, []string) {
		dir := t.TempDir()
		l := open(t, dir, "n1", testKey(1), 1000, &now)
		for i := range 5 {
			appendAt(t, l, i, []Usage{voice(uint64(3 * i)), voice(uint64(3*i + 1)), voice(uint64(3*i + 2))}, nil)
		}
		require.NoError(t, l.Close())
		segs := segFiles(t, dir)
		require.Len(t, segs, 6)
		require.Empty(t, readFile(t, segs[5]))
		require.Equal(t, "seg-00000000000000000004.jsonl", filepath.Base(segs[1]))
		return dir, segs
	}
	reopen := func(t *testing.T, dir string) (*Ledger, error) {
		return Open(Options{Dir: dir, Node: "n1", Cluster: "prod", Key: testKey(1), SegmentBytes: 1000, Clock: fakeClock(&now)})
	}
	history := func(t *testing.T, l *Ledger) (int, error) {
		var seen int
		err := l.VerifyHistory(context.Background(), 1, func(n int) { seen = n })
		return seen, err
	}
	change := func(t *testing.T, seg string, f func(ls [][]byte) [][]byte) {
		require.NoError(t, os.WriteFile(seg, join(f(lines(readFile(t, seg)))...), 0o600))
	}
	alter := func(i int) func([][]byte) [][]byte {
		return func(ls [][]byte) [][]byte {
			ls[i] = []byte(strings.Replace(string(ls[i]), `"admitted":`, `"admitted":9`, 1))
			return ls
		}
	}

	t.Run("intact", func(t *testing.T) {
		dir, _ := write(t)
		l, err := reopen(t, dir)
		require.NoError(t, err)
		defer l.Close()
		seq, _ := l.Head()
		require.Equal(t, uint64(15), seq)
		seen, err := history(t, l)
		require.NoError(t, err)
		require.Equal(t, 15, seen, "the five segments before the last, every record")
		require.NoError(t, l.VerifyHistory(context.Background(), 0.5, nil))
		appendAt(t, l, 5, []Usage{voice(1)}, nil) // the chain goes on from the head Open read
		seq, _ = l.Head()
		require.Equal(t, uint64(16), seq)
		rep := Verify(inputs(filesOf(t, dir)...), VerifyOptions{})
		require.Empty(t, rep.Problems)
		require.Equal(t, 16, rep.Nodes["n1"].Records)
	})
	t.Run("altered between the ends of a sealed segment", func(t *testing.T) {
		dir, segs := write(t)
		change(t, segs[1], alter(1))
		l, err := reopen(t, dir)
		require.NoError(t, err, "Open reads the ends of a sealed segment only")
		defer l.Close()
		seq, _ := l.Head()
		require.Equal(t, uint64(15), seq)
		seen, err := history(t, l)
		require.ErrorIs(t, err, ErrBrokenChain)
		require.EqualError(t, err, "ledger chain broken: "+segs[1]+" line 2 (seq 5): hash mismatch")
		require.Equal(t, 0, seen, "no batch of 256 was done")
	})
	t.Run("removed between the ends of a sealed segment", func(t *testing.T) {
		dir, segs := write(t)
		change(t, segs[2], func(ls [][]byte) [][]byte { return append(ls[:1:1], ls[2]) })
		l, err := reopen(t, dir)
		require.NoError(t, err)
		defer l.Close()
		_, err = history(t, l)
		require.EqualError(t, err, "ledger chain broken: "+segs[2]+" line 2 (seq 8): seq 9 follows seq 7 (a record is missing or out of order)")
	})
	refused := func(name string, seg int, f func([][]byte) [][]byte, want string) {
		t.Run(name, func(t *testing.T) {
			dir, segs := write(t)
			change(t, segs[seg], f)
			before := readFile(t, segs[seg])
			_, err := reopen(t, dir)
			want := strings.NewReplacer("SEG1", segs[1], "SEG2", segs[2]).Replace(want)
			require.EqualError(t, err, want)
			require.Equal(t, before, readFile(t, segs[seg]), "a refused ledger is left as it was")
		})
	}
	refused("first record altered", 1, alter(0),
		"cannot open ledger: SEG1 line 1 (seq 4): hash mismatch; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	refused("last record altered", 1, alter(2),
		"cannot open ledger: SEG1 last line (seq 6): hash mismatch; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	refused("last record removed", 1, func(ls [][]byte) [][]byte { return ls[:2] },
		"cannot open ledger: SEG2: starts at seq 7 but the ledger is at seq 5 (a segment is missing or misnamed)")
	refused("torn in a sealed segment", 1, func(ls [][]byte) [][]byte { ls[2] = ls[2][:40]; return ls },
		"cannot open ledger: SEG1 last line (a record after seq 4, the segment's first): no newline at the end; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	refused("first record of another node", 2, func(ls [][]byte) [][]byte {
		ls[0] = []byte(strings.Replace(string(ls[0]), `"node":"n1"`, `"node":"n2"`, 1))
		return ls
	}, "cannot open ledger: SEG2 line 1 (seq 7): hash mismatch; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")

	t.Run("verified once", func(t *testing.T) {
		dir, segs := write(t)
		l, err := reopen(t, dir)
		require.NoError(t, err)
		seen, err := history(t, l)
		require.NoError(t, err)
		require.Equal(t, 15, seen)
		require.NoError(t, l.Close())
		noted := string(readFile(t, filepath.Join(dir, verifiedFile)))
		require.Len(t, strings.Split(strings.TrimSpace(noted), "\n"), 5, "the five segments before the last")
		require.True(t, strings.HasPrefix(noted, filepath.Base(segs[0])+" "), noted)

		// A segment noted as verified, with its size and SHA-256, is only
		// hashed again: here one altered and then noted with its new sum
		// passes (what the file vouches for is not verified again) ...
		b := readFile(t, segs[1])
		altered := []byte(strings.Replace(string(b), `"admitted":4,`, `"admitted":7,`, 1))
		require.Len(t, altered, len(b))
		require.NoError(t, os.WriteFile(segs[1], altered, 0o600))
		sum := sha256.Sum256(altered)
		vouched := strings.Replace(noted, strings.Fields(strings.Split(noted, "\n")[1])[2], hex.EncodeToString(sum[:]), 1)
		require.NoError(t, os.WriteFile(filepath.Join(dir, verifiedFile), []byte(vouched), 0o600))
		l, err = reopen(t, dir)
		require.NoError(t, err)
		seen, err = history(t, l)
		require.NoError(t, err)
		require.Equal(t, 15, seen)
		require.NoError(t, l.Close())
		// ... while any change of a byte since it was noted has it verified
		// again, record by record.
		require.NoError(t, os.WriteFile(filepath.Join(dir, verifiedFile), []byte(noted), 0o600))
		l, err = reopen(t, dir)
		require.NoError(t, err)
		defer l.Close()
		_, err = history(t, l)
		require.EqualError(t, err, "ledger chain broken: "+segs[1]+" line 2 (seq 5): hash mismatch")
	})
	t.Run("a malformed note is ignored", func(t *testing.T) {
		dir, _ := write(t)
		require.NoError(t, os.WriteFile(filepath.Join(dir, verifiedFile), []byte("seg-1 x y\n\x00garbage\n"), 0o600))
		l, err := reopen(t, dir)
		require.NoError(t, err)
		defer l.Close()
		seen, err := history(t, l)
		require.NoError(t, err)
		require.Equal(t, 15, seen)
		require.Len(t, strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(dir, verifiedFile)))), "\n"), 5)
	})
	t.Run("last record signed with another key", func(t *testing.T) {
		dir, segs := write(t)
		other := t.TempDir() // the same records, signed with another key
		lo := open(t, other, "n1", testKey(2), 1000, &now)
		for i := range 2 {
			appendAt(t, lo, i, []Usage{voice(uint64(3 * i)), voice(uint64(3*i + 1)), voice(uint64(3*i + 2))}, nil)
		}
		require.NoError(t, lo.Close())
		forged := lines(readFile(t, segFiles(t, other)[1]))[2] // seq 6, intact under key 2
		change(t, segs[1], func(ls [][]byte) [][]byte { ls[2] = forged; return ls })
		_, err := reopen(t, dir)
		require.EqualError(t, err, "cannot open ledger: "+segs[1]+" last line (seq 6): written by another node or signed with another key than its first line; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	})
	t.Run("last record from before the first", func(t *testing.T) {
		dir, segs := write(t)
		earlier := lines(readFile(t, segs[0]))[1] // seq 2, intact
		change(t, segs[1], func(ls [][]byte) [][]byte { ls[2] = earlier; return ls })
		_, err := reopen(t, dir)
		require.EqualError(t, err, "cannot open ledger: "+segs[1]+" last line (seq 2): seq 2 is not after the first line's, 4; the chain is broken in the middle (altered?): restore the file or move the ledger directory aside")
	})
	t.Run("stopped midway, what was verified is kept", func(t *testing.T) {
		dir := t.TempDir()
		l := open(t, dir, "n1", testKey(1), 1, &now) // a segment a batch
		for i := range 3 {
			usage := make([]Usage, 200)
			for j := range usage {
				usage[j] = voice(uint64(j))
			}
			appendAt(t, l, i, usage, nil)
		}
		require.NoError(t, l.Close())
		l, err := Open(Options{Dir: dir, Node: "n1", Cluster: "prod", Key: testKey(1), SegmentBytes: 1, Clock: fakeClock(&now)})
		require.NoError(t, err)
		defer l.Close()
		ctx, cancel := context.WithCancel(context.Background())
		var seen []int
		err = l.VerifyHistory(ctx, 0.5, func(n int) {
			seen = append(seen, n)
			cancel() // at the first batch: in the second segment
		})
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, []int{256}, seen)
		noted := strings.TrimSpace(string(readFile(t, filepath.Join(dir, verifiedFile))))
		require.Len(t, strings.Split(noted, "\n"), 1, "the first segment, verified whole before the stop")
		require.True(t, strings.HasPrefix(noted, "seg-00000000000000000001.jsonl "), noted)
		seen = nil
		require.NoError(t, l.VerifyHistory(context.Background(), 1, func(n int) { seen = append(seen, n) }))
		require.Equal(t, []int{200, 256, 512, 600}, seen, "the first segment counted from the note, the others record by record")
	})
	t.Run("share and stop", func(t *testing.T) {
		dir, _ := write(t)
		l, err := reopen(t, dir)
		require.NoError(t, err)
		defer l.Close()
		for share, want := range map[float64]string{0: "0", -1: "-1", 1.5: "1.5"} {
			require.EqualError(t, l.VerifyHistory(context.Background(), share, nil), "invalid share of a core "+want+": must be in (0, 1]")
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, l.VerifyHistory(ctx, 1, nil), context.Canceled)
	})
}

// filesOf returns inputs' arguments (name, contents) for every segment in dir.
func filesOf(t *testing.T, dir string) []any {
	var in []any
	for _, s := range segFiles(t, dir) {
		in = append(in, filepath.Base(s), readFile(t, s))
	}
	return in
}
