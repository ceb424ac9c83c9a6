package ledger

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecode: no line makes Decode panic, and what decodes re-encodes to
// exactly its bytes. The seed corpus in testdata/fuzz/FuzzDecode holds
// the sample ledger's lines (usage, account, witness) and mangled ones.
func FuzzDecode(f *testing.F) {
	n1, _ := sample(f)
	for _, l := range lines(n1) {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := Decode(line)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			return
		}
		again, err := r.Line()
		require.NoError(t, err)
		require.Equal(t, string(bytes.TrimSuffix(line, []byte("\n"))), string(bytes.TrimSuffix(again, []byte("\n"))))
		_ = r.Check()
	})
}

// FuzzVerify: no input makes Verify panic, and a ledger it passes is
// made of intact records only. The seed corpus in
// testdata/fuzz/FuzzVerify holds the two-node sample and broken variants.
func FuzzVerify(f *testing.F) {
	n1, n2 := sample(f)
	f.Add(n1, n2)
	f.Fuzz(func(t *testing.T, a, b []byte) {
		rep := Verify(inputs("a", a, "b", b), VerifyOptions{})
		if !rep.OK() {
			require.NotEmpty(t, rep.First())
			return
		}
		for _, data := range [][]byte{a, b} {
			for _, l := range bytes.SplitAfter(data, []byte("\n")) {
				if len(l) == 0 {
					continue
				}
				r, err := Decode(l)
				require.NoError(t, err)
				require.NoError(t, r.Check())
				require.Contains(t, rep.Nodes, r.Node)
			}
		}
	})
}

// TestWriteFuzzCorpus rewrites the seed corpora in testdata/fuzz from the
// sample ledger: CAPSGATE_WRITE_CORPUS=1 go test -run TestWriteFuzzCorpus.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("CAPSGATE_WRITE_CORPUS") == "" {
		t.Skip("set CAPSGATE_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	n1, n2 := sample(t)
	l1, l2 := lines(n1), lines(n2)
	write := func(target, name string, values ...[]byte) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, v := range values {
			b.WriteString("[]byte(" + strconvQuote(v) + ")\n")
		}
		dir := filepath.Join("testdata", "fuzz", target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644))
	}
	write("FuzzDecode", "usage", l1[0])
	write("FuzzDecode", "account", l1[1])
	write("FuzzDecode", "witness", l1[3])
	write("FuzzDecode", "no-newline", bytes.TrimSuffix(l1[4], []byte("\n")))
	write("FuzzDecode", "spaced", bytes.Replace(l1[0], []byte(`,"`), []byte(`, "`), 3))
	write("FuzzDecode", "torn", l1[2][:200])
	write("FuzzVerify", "two-nodes", n1, n2)
	write("FuzzVerify", "mixed", join(l1[0], l2[0], l1[1]), join(l2[1], l1[2], l1[3]))
	write("FuzzVerify", "reordered", join(l1[1], l1[0]), nil)
	write("FuzzVerify", "truncated", n1, l2[0])
	write("FuzzVerify", "torn", n1[:len(n1)-30], nil)
}

func strconvQuote(b []byte) string { return strconv.Quote(string(b)) }
