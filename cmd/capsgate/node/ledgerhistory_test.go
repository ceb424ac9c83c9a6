package node

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing/ledger"
)

// TestLedgerHistoryVerifiedAfterStart: a node starts on a ledger of many
// segments having checked only each earlier segment's ends; the
// background check then verifies every record of them (the counter gives
// the exact count) or, with one altered in the middle, raises
// capsgate_ledger_history_broken while the node keeps serving.
func TestLedgerHistoryVerifiedAfterStart(t *testing.T) {
	// A ledger of 6 segments of 100 records (seq 1-600) written as node n1's,
	// and the empty one its next batch would go to.
	write := func(t *testing.T) (dataDir string, segs []string) {
		dataDir = t.TempDir()
		key, err := ledger.LoadOrCreateNodeKey(dataDir)
		require.NoError(t, err)
		dir := filepath.Join(dataDir, "ledger")
		l, err := ledger.Open(ledger.Options{Dir: dir, Node: "n1", Cluster: "c", Key: key, SegmentBytes: 1})
		require.NoError(t, err)
		at := time.Now().Add(-time.Hour)
		for i := range 6 {
			usage := make([]ledger.Usage, 100)
			for j := range usage {
				usage[j] = ledger.Usage{Service: "voice", Account: fmt.Sprintf("a%03d", j), Tokens: uint64(i*100 + j + 1)}
			}
			from := at.Add(time.Duration(i) * 10 * time.Second)
			_, err := l.Append(from, from.Add(10*time.Second), usage, nil)
			require.NoError(t, err)
		}
		require.NoError(t, l.Close())
		segs, err = filepath.Glob(filepath.Join(dir, "seg-*.jsonl"))
		require.NoError(t, err)
		require.Len(t, segs, 7)
		return dataDir, segs
	}
	metric := func(t *testing.T, n *Node, name string) string {
		_, body := get(t, "http://"+n.AdminAddr()+"/metrics", "")
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				return v
			}
		}
		return ""
	}
	await := func(t *testing.T, n *Node, name, want string) {
		require.Eventually(t, func() bool { return metric(t, n, name) == want }, 60*time.Second, 20*time.Millisecond,
			"%s: %s, not %s", name, metric(t, n, name), want)
	}

	t.Run("intact", func(t *testing.T) {
		dataDir, _ := write(t)
		n := startNode(t, "--dev", "--node-name", "n1", "--cluster-id", "c", "--data-dir", dataDir)
		await(t, n, "capsgate_ledger_history_checked", "1")
		require.Equal(t, "600", metric(t, n, "capsgate_ledger_history_verified_records_total"), "the 6 segments before the last, every record")
		require.Equal(t, "0", metric(t, n, "capsgate_ledger_history_broken"))
		seq, _ := n.ledger.Head()
		require.GreaterOrEqual(t, seq, uint64(600))
	})
	t.Run("altered in the middle of an earlier segment", func(t *testing.T) {
		dataDir, segs := write(t)
		b, err := os.ReadFile(segs[2])
		require.NoError(t, err)
		lines := bytes.SplitAfter(b, []byte("\n"))
		lines[50] = bytes.Replace(lines[50], []byte(`"tokens":251`), []byte(`"tokens":259`), 1)
		require.NoError(t, os.WriteFile(segs[2], bytes.Join(lines, nil), 0o600))
		n := startNode(t, "--dev", "--node-name", "n1", "--cluster-id", "c", "--data-dir", dataDir)
		require.Contains(t, admit(t, n.RESPAddr(), 1), "+OK\r\n", "the node serves meanwhile")
		await(t, n, "capsgate_ledger_history_broken", "1")
		require.Equal(t, "0", metric(t, n, "capsgate_ledger_history_checked"))
		require.Equal(t, "0", metric(t, n, "capsgate_ledger_history_verified_records_total"), "no batch of 256 was done before seq 251")
		// What trusts the ledger without verifying it is refused; the
		// records themselves are still served, for capslicense to verify.
		base := "http://" + n.AdminAddr()
		for _, path := range []string{"/v1/usage?local=1", "/v1/usage/export"} {
			code, body := get(t, base+path, "")
			require.Equal(t, 503, code, path)
			require.Contains(t, body, `"ledger_broken"`, path)
			require.Contains(t, body, "seg-00000000000000000201.jsonl line 51 (seq 251): hash mismatch", path)
		}
		code, body := get(t, base+"/v1/ledger", "")
		require.Equal(t, 200, code)
		require.Contains(t, body, `"tokens":259`)
	})
}
