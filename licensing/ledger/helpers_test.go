package ledger

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// testKey returns a fixed node key: the same i, the same key.
func testKey(i byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = i
	return ed25519.NewKeyFromSeed(seed)
}

// fakeClock returns a clock standing at *now.
func fakeClock(now *time.Time) func() time.Time { return func() time.Time { return *now } }

func open(t testing.TB, dir, node string, key ed25519.PrivateKey, segBytes int64, now *time.Time) *Ledger {
	t.Helper()
	l, err := Open(Options{Dir: dir, Node: node, Cluster: "prod", Key: key, SegmentBytes: segBytes,
		Clock: fakeClock(now), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	return l
}

// interval returns the i-th 10 s interval after t0.
func interval(i int) (from, to time.Time) {
	from = t0.Add(time.Duration(i) * 10 * time.Second)
	return from, from.Add(10 * time.Second)
}

func appendAt(t testing.TB, l *Ledger, i int, u []Usage, w []Witness) {
	t.Helper()
	from, to := interval(i)
	n, err := l.Append(from, to, u, w)
	require.NoError(t, err)
	require.Equal(t, len(u)+len(w), n)
}

func voice(admitted uint64) Usage {
	return Usage{Service: "voice", Attempts: admitted + 2, Admitted: admitted, Rejected: map[string]uint64{"CAPS": 2, "TOKENS": 0},
		Emergency: 1, PeakCAPS: 12, PeakSessions: 30, PeakSubscribers: 7, Tokens: admitted, Overage: 0}
}

// readAll returns every line of l, as Read gives them.
func readAll(t testing.TB, l *Ledger) []byte {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, l.Read(time.Time{}, time.Time{}, func(line []byte, _ *Record) error {
		b.Write(line)
		return nil
	}))
	return b.Bytes()
}

// sample writes two nodes' ledgers: n2 with 2 records, n1 with 6, one of
// them a witness of n2's head. It returns their exports.
func sample(t testing.TB) (n1, n2 []byte) {
	t.Helper()
	now := t0
	a := open(t, t.TempDir(), "n1", testKey(1), 0, &now)
	b := open(t, t.TempDir(), "n2", testKey(2), 0, &now)
	defer a.Close()
	defer b.Close()
	now = t0.Add(10 * time.Second)
	appendAt(t, a, 0, []Usage{voice(100), {Service: "voice", Account: "acme", Attempts: 40, Admitted: 40, Tokens: 40}}, nil)
	appendAt(t, b, 0, []Usage{voice(50)}, nil)
	now = t0.Add(20 * time.Second)
	appendAt(t, b, 1, []Usage{voice(60)}, nil)
	seq, hash := b.Head()
	appendAt(t, a, 1, []Usage{voice(90)}, []Witness{{Node: "n2", Seq: seq, Hash: hash}})
	now = t0.Add(30 * time.Second)
	appendAt(t, a, 2, []Usage{{Service: "sms", Attempts: 5, Admitted: 5, Tokens: 3, Overage: 2}, voice(80)}, nil)
	return readAll(t, a), readAll(t, b)
}

func inputs(files ...any) []Input {
	var in []Input
	for i := 0; i < len(files); i += 2 {
		in = append(in, Input{Name: files[i].(string), R: bytes.NewReader(files[i+1].([]byte))})
	}
	return in
}

func lines(b []byte) [][]byte {
	return bytes.SplitAfter(b, []byte("\n"))[:bytes.Count(b, []byte("\n"))]
}

func join(ls ...[]byte) []byte { return bytes.Join(ls, nil) }

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
	require.NoError(t, err)
	return names
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
