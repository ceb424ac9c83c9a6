package issuer

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing/ledger"
)

// ledgers writes two nodes' ledgers as the node does (data dirs with
// node.key and node.pub) and returns the data dirs and their exports.
func ledgers(t *testing.T) (dirs, exports []string) {
	t.Helper()
	base := t.TempDir()
	var ls []*ledger.Ledger
	for _, node := range []string{"n1", "n2"} {
		dir := filepath.Join(base, node)
		key, err := ledger.LoadOrCreateNodeKey(dir)
		require.NoError(t, err)
		l, err := ledger.Open(ledger.Options{Dir: filepath.Join(dir, "ledger"), Node: node, Cluster: "prod", Key: key,
			Clock: func() time.Time { return now }})
		require.NoError(t, err)
		ls = append(ls, l)
		dirs = append(dirs, dir)
	}
	for i := range 3 {
		from := now.Add(time.Duration(i) * time.Minute)
		for k, l := range ls {
			seq, hash := ls[1-k].Head()
			var w []ledger.Witness
			if seq > 0 {
				w = []ledger.Witness{{Node: []string{"n2", "n1"}[k], Seq: seq, Hash: hash}}
			}
			_, err := l.Append(from, from.Add(time.Minute), []ledger.Usage{{Service: "voice", Attempts: 1000, Admitted: 990,
				Rejected: map[string]uint64{"CAPS": 10}, Emergency: 1, PeakSessions: 20, Tokens: 990}}, w)
			require.NoError(t, err)
		}
	}
	for i, l := range ls {
		var b bytes.Buffer
		require.NoError(t, l.Read(time.Time{}, time.Time{}, func(line []byte, _ *ledger.Record) error {
			b.Write(line)
			return nil
		}))
		require.NoError(t, l.Close())
		exports = append(exports, writeFile(t, []string{"n1", "n2"}[i]+".jsonl", b.String()))
	}
	return dirs, exports
}

func TestUsageVerify(t *testing.T) {
	dirs, files := ledgers(t)
	summary := func(i int, node, records, seqs string) string {
		t.Helper()
		data, err := os.ReadFile(files[i])
		require.NoError(t, err)
		ls := strings.Split(strings.TrimSpace(string(data)), "\n")
		last, err := ledger.Decode([]byte(ls[len(ls)-1]))
		require.NoError(t, err)
		return "node " + node + ": good: " + records + " records, seq " + seqs + ", head " + last.Hash + ", key " + last.Key + "\n"
	}
	good := summary(0, "n1", "5", "1-5") + summary(1, "n2", "6", "1-6")
	f := func(stdin string, wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(t, stdin, args...)
		require.Equal(t, wantCode, code, stderr)
		require.Equal(t, wantOut, stdout)
		require.Equal(t, wantErr, stderr)
	}
	f("", 0, good, "", "usage", "verify", "--ledger", files[0], "--ledger", files[1])
	f("", 0, good, "", "usage", "verify", files[0], files[1])
	f("", 0, good, "", "usage", "verify", files[1], "--node-pub", "n1="+dirs[0]+"/node.pub", files[0], "--node-pub", "n2="+dirs[1]+"/node.pub")
	n2, err := os.ReadFile(files[1])
	require.NoError(t, err)
	f(string(n2), 0, summary(1, "n2", "6", "1-6"), "", "usage", "verify", "-")
	// The segment files in the data dir verify as well.
	segs, err := filepath.Glob(dirs[0] + "/ledger/seg-*.jsonl")
	require.NoError(t, err)
	f("", 0, summary(0, "n1", "5", "1-5"), "", "usage", "verify", segs[0])

	// A pinned key that is not the node's.
	f("", 1, "node n1: BAD: seq 1 ("+files[0]+":1): re-signed with another key (not the pinned key of node n1) (and 4 more problem(s))\n",
		"capslicense usage verify: ledger does not verify: 5 problem(s) in 1 of 1 node(s)\n",
		"usage", "verify", "--node-pub", "n1="+dirs[1]+"/node.pub", files[0])

	// An altered record, and n2 cut short after n1 witnessed its seq 6.
	n1, err := os.ReadFile(files[0])
	require.NoError(t, err)
	altered := writeFile(t, "n1.jsonl", strings.Replace(string(n1), `"admitted":990`, `"admitted":99`, 1))
	ls := strings.SplitAfter(string(n2), "\n")
	cut := writeFile(t, "n2.jsonl", strings.Join(ls[:3], ""))
	f("", 1, "node n1: BAD: seq 1 ("+altered+":1): altered (hash mismatch)\n"+
		"node n2: BAD: seq 3 ("+cut+":3): truncated: ends at seq 3 but peer n1 witnessed seq 4\n",
		"capslicense usage verify: ledger does not verify: 2 problem(s) in 2 of 2 node(s)\n",
		"usage", "verify", altered, cut)
	f("hello\n", 1, "lines naming no node: BAD: -:1: altered (malformed: bad JSON: invalid character 'h' looking for beginning of value)\n",
		"capslicense usage verify: ledger does not verify: 1 problem(s) in 1 of 1 node(s)\n", "usage", "verify", "-")
	f("", 0, "no records\n", "", "usage", "verify", writeFile(t, "empty.jsonl", ""))
	f("", 1, "", "capslicense usage verify: cannot read ledger: open nope.jsonl: no such file or directory\n", "usage", "verify", "nope.jsonl")
	f("", 1, "", "capslicense usage verify: cannot read node public key: open nope.pub: no such file or directory\n", "usage", "verify", "--node-pub", "n1=nope.pub", files[0])
	code, stdout, _ := cli(t, "", "usage", "verify", "--help")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(stdout, "usage: capslicense usage verify --ledger FILE [--ledger FILE ...] [--node-pub NODE=FILE ...] [FILE ...]\n"), stdout)
}

func TestBill(t *testing.T) {
	_, files := ledgers(t)
	sheet := writeFile(t, "sheet.yaml", "currency: EUR\ncustomer: ACME\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.0015\"}\n")
	table := "Invoice for ACME, 2025-06-01T12:00:00Z to 2025-06-01T12:03:00Z, in EUR\n\n" +
		"SERVICE  DESCRIPTION                               QUANTITY  UNIT PRICE  AMOUNT\n" +
		"voice    admitted attempts                             5940      0.0015    8.91\n" +
		"voice    emergency attempts (metered, not billed)         6        0.00    0.00\n" +
		"TOTAL                                                               EUR    8.91\n"
	f := func(wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(t, "", args...)
		require.Equal(t, wantCode, code, stderr)
		require.Equal(t, wantOut, stdout)
		require.Equal(t, wantErr, stderr)
	}
	f(0, table, "", "bill", "--ledger", files[0], "--ledger", files[1], "--price-sheet", sheet)
	f(0, table, "", "bill", "--price-sheet", sheet, files[0], files[1], "--format", "table")
	f(0, "service,description,quantity,unit_price,amount,currency\n"+
		"voice,admitted attempts,1980,0.0015,2.97,EUR\n"+
		"voice,\"emergency attempts (metered, not billed)\",2,0.00,0.00,EUR\n"+
		"TOTAL,,,,2.97,EUR\n", "",
		"bill", "--price-sheet", sheet, files[0], files[1], "--format", "csv", "--from", "2025-06-01T12:01:00Z", "--to", "2025-06-01T12:02:00Z")
	code, stdout, stderr := cli(t, "", "bill", "--price-sheet", sheet, files[0], "--format", "json")
	require.Equal(t, 0, code, stderr)
	var inv struct{ Total, Currency string }
	require.NoError(t, json.Unmarshal([]byte(stdout), &inv))
	require.Equal(t, "4.46", inv.Total) // 2970 × 0.0015 = 4.455, half up
	require.Equal(t, "EUR", inv.Currency)

	// Refused: a ledger that does not verify, a bad sheet.
	n1, err := os.ReadFile(files[0])
	require.NoError(t, err)
	ls := strings.SplitAfter(string(n1), "\n")
	dropped := writeFile(t, "n1.jsonl", ls[0]+ls[2]+ls[3])
	f(1, "", "capslicense bill: cannot bill: the ledger does not verify: node n1 seq 3 ("+dropped+":2): gap: seq 3 follows 1 (records removed) (see capslicense usage verify)\n",
		"bill", "--price-sheet", sheet, dropped)
	bad := writeFile(t, "bad.yaml", "currency: EUR\nplans:\n  - {service: voice, model: flat}\n")
	f(1, "", "capslicense bill: price sheet "+bad+`: plans[0]: unit must be one of attempts, admitted, rejected, tokens, overage, consumed, emergency, peak_caps, peak_sessions, peak_subscribers, got ""`+"\n",
		"bill", "--price-sheet", bad, files[0])
}
