package main

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	return farmLedgers(t, "n1", "n2")
}

// farmLedgers writes the ledgers of a farm of the nodes named: three
// one-minute intervals, each node witnessing every peer's head.
func farmLedgers(t *testing.T, nodes ...string) (dirs, exports []string) {
	t.Helper()
	base := t.TempDir()
	var ls []*ledger.Ledger
	for _, node := range nodes {
		dir := filepath.Join(base, node)
		key, err := ledger.LoadOrCreateNodeKey(dir)
		require.NoError(t, err)
		l, err := ledger.Open(ledger.Options{Dir: filepath.Join(dir, "ledger"), Node: node, Cluster: "prod", Key: key,
			Clock: func() time.Time { return now }, Genesis: true})
		require.NoError(t, err)
		ls = append(ls, l)
		dirs = append(dirs, dir)
	}
	for i := range 3 {
		from := now.Add(time.Duration(i) * time.Minute)
		for k, l := range ls {
			var w []ledger.Witness
			for p, peer := range ls {
				if p != k {
					seq, hash := peer.Head()
					key, genesis := peer.Identity()
					w = append(w, ledger.Witness{Node: nodes[p], Seq: seq, Hash: hash, Key: key, Genesis: genesis})
				}
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
		exports = append(exports, writeFile(t, nodes[i]+".jsonl", b.String()))
	}
	return dirs, exports
}

// verdict is the line usage verify prints for node's whole ledger in
// file, and its proof lines.
func verdict(t *testing.T, file, node string, proof ...string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	ls := strings.Split(strings.TrimSpace(string(data)), "\n")
	last, err := ledger.Decode([]byte(ls[len(ls)-1]))
	require.NoError(t, err)
	out := fmt.Sprintf("node %s: good: %d records, seq 1-%d, head %s, key %s\n", node, len(ls), len(ls), last.Hash, last.Key)
	for _, p := range proof {
		out += "  " + p + "\n"
	}
	return out
}

func TestUsageVerify(t *testing.T) {
	dirs, files := ledgers(t)
	// summary is node's verdict line (export i) and its proof lines.
	summary := func(i int, node string, proof ...string) string {
		t.Helper()
		return verdict(t, files[i], node, proof...)
	}
	const genesis = "head: complete from its genesis record (seq 1)"
	const unauth = "UNPROVEN: unauthenticated: no pinned key (--node-pub, --trust-on-first-use) and no peer witnessed its key: anyone could have re-signed it"
	const unwitnessed = "UNPROVEN: tail unproven: no peer's ledger given witnessed this ledger, so records removed from its end cannot be detected (give the peers' ledgers; on a single-node farm, --accept-unwitnessed-tail)"
	good := summary(0, "n1", genesis, "key: witnessed by peer n2", "tail: newest witness seq 7 by peer n2 at 2025-06-01T12:00:00Z; 0 record(s) after it not yet witnessed") +
		summary(1, "n2", genesis, "key: witnessed by peer n1", "tail: newest witness seq 5 by peer n1 at 2025-06-01T12:00:00Z; 2 record(s) after it not yet witnessed")
	pinnedGood := strings.ReplaceAll(strings.ReplaceAll(good, "key: witnessed by peer n2", "key: pinned"), "key: witnessed by peer n1", "key: pinned")
	f := func(stdin string, wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(t, stdin, args...)
		require.Equal(t, wantCode, code, stderr)
		require.Equal(t, wantOut, stdout)
		require.Equal(t, wantErr, stderr)
	}
	f("", 0, good, "", "usage", "verify", "--ledger", files[0], "--ledger", files[1])
	f("", 0, good, "", "usage", "verify", files[0], files[1])
	f("", 0, pinnedGood, "", "usage", "verify", files[1], "--node-pub", "n1="+dirs[0]+"/node.pub", files[0], "--node-pub", "n2="+dirs[1]+"/node.pub")
	n2, err := os.ReadFile(files[1])
	require.NoError(t, err)

	// One node's ledger of two: its key and tail are unproven, and the
	// peer it witnessed is left out. Every record verifies, so the exit
	// is 0 (the contract: a node's own ledger verifies), with a warning;
	// --require-proof makes it 1.
	leftOut := "UNPROVEN: no records given, but peer n2 witnessed its ledger (up to seq 7, at 2025-06-01T12:00:00Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n1)"
	unproven := "ledger records verify, but 3 fact(s) of 2 node(s) are unproven; first: node n2: " + unauth[len("UNPROVEN: "):]
	f(string(n2), 0, "node n1: "+leftOut+"\n"+summary(1, "n2", genesis, unauth, unwitnessed),
		"capslicense usage verify: warning: "+unproven+" (--require-proof makes this exit 1; capslicense bill refuses it)\n", "usage", "verify", "-")
	f(string(n2), 1, "node n1: "+leftOut+"\n"+summary(1, "n2", genesis, unauth, unwitnessed), "capslicense usage verify: "+unproven+"\n", "usage", "verify", "--require-proof", "-")
	// A single-node farm: the segment files in the data dir verify as
	// well; the pinned key and accepted tail make it proven.
	soloDirs, soloFiles := farmLedgers(t, "n1")
	segs, err := filepath.Glob(soloDirs[0] + "/ledger/seg-*.jsonl")
	require.NoError(t, err)
	f("", 0, verdict(t, soloFiles[0], "n1", genesis, "key: pinned"), "", "usage", "verify", segs[0], "--node-pub", "n1="+soloDirs[0]+"/node.pub", "--accept-unwitnessed-tail")

	// Trust on first use: the first run pins and records the key, a later
	// run checks against it.
	pins := filepath.Join(t.TempDir(), "pins")
	key0 := strings.TrimSpace(string(must(os.ReadFile(soloDirs[0] + "/node.pub"))))
	f("", 0, verdict(t, soloFiles[0], "n1", genesis, "key: trusted on first use")+"node n1: key "+key0+" pinned in "+pins+" (trusted on first use)\n", "",
		"usage", "verify", segs[0], "--trust-on-first-use", pins, "--accept-unwitnessed-tail")
	require.Equal(t, "# capslicense --trust-on-first-use: node keys pinned on first use (NODE BASE64-KEY)\nn1 "+key0+"\n", string(must(os.ReadFile(pins))))
	f("", 0, verdict(t, soloFiles[0], "n1", genesis, "key: pinned"), "", "usage", "verify", segs[0], "--trust-on-first-use", pins, "--accept-unwitnessed-tail")
	// ...so n2's ledger passed off as n1's (re-signed with n2's key) fails.
	forged := writeFile(t, "forged.jsonl", strings.ReplaceAll(string(n2), `"node":"n2"`, `"node":"n1"`))
	code, stdout, _ := cli(t, "", "usage", "verify", "--trust-on-first-use", pins, "--accept-unwitnessed-tail", forged)
	require.Equal(t, 1, code)
	require.Equal(t, "node n1: BAD: seq 1 ("+forged+":1): altered (hash mismatch) (and 6 more problem(s))\n", stdout)

	// A pinned key that is not the node's.
	f("", 1, "node n1: BAD: seq 1 ("+files[0]+":1): re-signed with another key (not the pinned key of node n1) (and 6 more problem(s))\n"+
		"node n2: UNPROVEN: no records given, but peer n1 witnessed its ledger (up to seq 5, at 2025-06-01T12:00:00Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n2)\n",
		"capslicense usage verify: ledger does not verify: 7 problem(s) in 1 of 2 node(s)\n",
		"usage", "verify", "--node-pub", "n1="+dirs[1]+"/node.pub", files[0])

	// An altered record, and n2 cut short after n1 witnessed its seq 5.
	n1, err := os.ReadFile(files[0])
	require.NoError(t, err)
	altered := writeFile(t, "n1.jsonl", strings.Replace(string(n1), `"admitted":990`, `"admitted":99`, 1))
	ls := strings.SplitAfter(string(n2), "\n")
	cut := writeFile(t, "n2.jsonl", strings.Join(ls[:3], ""))
	f("", 1, "node n1: BAD: seq 2 ("+altered+":2): altered (hash mismatch)\n"+
		"node n2: BAD: seq 3 ("+cut+":3): truncated: ends at seq 3 but peer n1 witnessed seq 5\n",
		"capslicense usage verify: ledger does not verify: 2 problem(s) in 2 of 2 node(s)\n",
		"usage", "verify", altered, cut)

	// --since: the ledger must continue from the head billed last.
	r5, err := ledger.Decode([]byte(ls[4]))
	require.NoError(t, err)
	head5 := "n2=5:" + r5.Hash
	tail := writeFile(t, "n2-tail.jsonl", strings.Join(ls[5:], ""))
	n2Tail := strings.Replace(summary(1, "n2", "head: continues from the head billed up to (seq 5)", "key: witnessed by peer n1",
		"tail: peer n1 witnesses this node, but none of the records given yet (2 record(s))"),
		"good: 7 records, seq 1-7", "good: 2 records, seq 6-7 (a contiguous tail: records before seq 6 not given)", 1)
	f("", 0, good[:strings.Index(good, "node n2")]+n2Tail, "", "usage", "verify", "--since", head5, files[0], tail)
	headCut := writeFile(t, "n2-cut.jsonl", strings.Join(ls[6:], ""))
	f("", 1, "node n1: "+leftOut+"\n"+
		"node n2: BAD: seq 7 ("+headCut+":1): cut at the head: the ledger starts at seq 7 but was billed up to seq 5 (seqs 6-6 missing)\n",
		"capslicense usage verify: ledger does not verify: 1 problem(s) in 1 of 2 node(s)\n",
		"usage", "verify", "--since", head5, headCut)
	f("", 1, summary(0, "n1", genesis, unauth, unwitnessed)+"node n2: BAD: no records given, but the ledger was billed up to seq 5\n",
		"capslicense usage verify: ledger does not verify: 1 problem(s) in 1 of 2 node(s)\n",
		"usage", "verify", "--since", head5, files[0])
	f("", 2, "", "capslicense usage verify: --since: want a head NODE=SEQ:HASH (as an invoice prints it), got \"n2=5\"\n",
		"usage", "verify", "--since", "n2=5", files[1])

	f("hello\n", 1, "lines naming no node: BAD: -:1: altered (malformed: bad JSON: invalid character 'h' looking for beginning of value)\n",
		"capslicense usage verify: ledger does not verify: 1 problem(s) in 1 of 1 node(s)\n", "usage", "verify", "-")
	f("", 0, "no records\n", "", "usage", "verify", writeFile(t, "empty.jsonl", ""))
	f("", 1, "", "capslicense usage verify: cannot read ledger: open nope.jsonl: no such file or directory\n", "usage", "verify", "nope.jsonl")
	f("", 1, "", "capslicense usage verify: cannot read node public key: open nope.pub: no such file or directory\n", "usage", "verify", "--node-pub", "n1=nope.pub", files[0])
	code, stdout, _ = cli(t, "", "usage", "verify", "--help")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(stdout, "usage: capslicense usage verify --ledger FILE [--ledger FILE ...] [--node-pub NODE=FILE ...] [--since HEAD]"), stdout)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// headOf returns NODE=SEQ:HASH of the record at seq in the export file.
func headOf(t *testing.T, file string, seq int) string {
	t.Helper()
	ls := strings.Split(strings.TrimSpace(string(must(os.ReadFile(file)))), "\n")
	r, err := ledger.Decode([]byte(ls[seq-1]))
	require.NoError(t, err)
	return ledger.FormatHead(r.Node, ledger.Head{Seq: r.Seq, Hash: r.Hash})
}

func TestBill(t *testing.T) {
	dirs, files := ledgers(t)
	// head returns NODE=SEQ:HASH of export i's record at seq.
	head := func(i int, seq int) string {
		t.Helper()
		return headOf(t, files[i], seq)
	}
	sheet := writeFile(t, "sheet.yaml", "currency: EUR\ncustomer: ACME\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.0015\"}\n")
	table := "Invoice for ACME, 2025-06-01T12:00:00Z to 2025-06-01T12:03:00Z, in EUR\n\n" +
		"SERVICE  DESCRIPTION                               QUANTITY  UNIT PRICE  AMOUNT\n" +
		"voice    admitted attempts                             5940      0.0015    8.91\n" +
		"voice    emergency attempts (metered, not billed)         6        0.00    0.00\n" +
		"TOTAL                                                               EUR    8.91\n" +
		"\nBilled up to: " + head(0, 7) + "," + head(1, 7) + "\n"
	f := cliWants(t)
	f(0, table, "", "bill", "--ledger", files[0], "--ledger", files[1], "--price-sheet", sheet)
	f(0, table, "", "bill", "--price-sheet", sheet, files[0], files[1], "--format", "table")
	f(0, "service,description,quantity,unit_price,amount,currency\n"+
		"voice,admitted attempts,1980,0.0015,2.97,EUR\n"+
		"voice,\"emergency attempts (metered, not billed)\",2,0.00,0.00,EUR\n"+
		"TOTAL,,,,2.97,EUR\n"+
		"BILLED UP TO,\""+head(0, 5)+","+head(1, 5)+"\",,,,\n", "",
		"bill", "--price-sheet", sheet, files[0], files[1], "--format", "csv", "--from", "2025-06-01T12:01:00Z", "--to", "2025-06-01T12:02:00Z")
	// The next bill continues from the heads the last one printed: only
	// the records after them are billed (the interval from 12:02).
	f(0, "service,description,quantity,unit_price,amount,currency\n"+
		"voice,admitted attempts,1980,0.0015,2.97,EUR\n"+
		"voice,\"emergency attempts (metered, not billed)\",2,0.00,0.00,EUR\n"+
		"TOTAL,,,,2.97,EUR\n"+
		"BILLED UP TO,\""+head(0, 7)+","+head(1, 7)+"\",,,,\n", "",
		"bill", "--price-sheet", sheet, files[0], files[1], "--format", "csv", "--since", head(0, 5)+","+head(1, 5))
	// A single-node farm: its key pinned and its tail accepted.
	soloDirs, solo := farmLedgers(t, "n1")
	code, stdout, stderr := cli(t, "", "bill", "--price-sheet", sheet, solo[0], "--format", "json", "--node-pub", "n1="+soloDirs[0]+"/node.pub", "--accept-unwitnessed-tail")
	require.Equal(t, 0, code, stderr)
	var inv struct {
		Total, Currency string
		BilledUpTo      string `json:"billed_up_to"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &inv))
	require.Equal(t, "4.46", inv.Total) // 2970 × 0.0015 = 4.455, half up
	require.Equal(t, "EUR", inv.Currency)
	require.Equal(t, headOf(t, solo[0], 4), inv.BilledUpTo)
	// One node of two, the same way: the peer it witnessed is left out.
	f(1, "", "capslicense bill: cannot bill: ledger records verify, but 1 fact(s) of 1 node(s) are unproven; first: node n2: no records given, but peer n1 witnessed its ledger (up to seq 5, at 2025-06-01T12:00:00Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n2) (see capslicense usage verify)\n",
		"bill", "--price-sheet", sheet, files[0], "--node-pub", "n1="+dirs[0]+"/node.pub", "--accept-unwitnessed-tail")

	// Refused: a ledger that does not verify, one whose key or
	// completeness is unproven, one that does not continue from the
	// billed head, a bad sheet.
	n1, err := os.ReadFile(files[0])
	require.NoError(t, err)
	ls := strings.SplitAfter(string(n1), "\n")
	dropped := writeFile(t, "n1.jsonl", ls[0]+ls[2]+ls[3])
	f(1, "", "capslicense bill: cannot bill: the ledger does not verify: node n1 seq 3 ("+dropped+":2): gap: seq 3 follows 1 (records removed) (see capslicense usage verify)\n",
		"bill", "--price-sheet", sheet, dropped)
	f(1, "", "capslicense bill: cannot bill: ledger records verify, but 3 fact(s) of 2 node(s) are unproven; first: node n1: unauthenticated: no pinned key (--node-pub, --trust-on-first-use) and no peer witnessed its key: anyone could have re-signed it (see capslicense usage verify)\n",
		"bill", "--price-sheet", sheet, files[0])
	headCut := writeFile(t, "n1-cut.jsonl", ls[6])
	f(1, "", "capslicense bill: cannot bill: the ledger does not verify: node n1 seq 7 ("+headCut+":1): cut at the head: the ledger starts at seq 7 but was billed up to seq 5 (seqs 6-6 missing) (see capslicense usage verify)\n",
		"bill", "--price-sheet", sheet, headCut, files[1], "--since", head(0, 5))
	bad := writeFile(t, "bad.yaml", "currency: EUR\nplans:\n  - {service: voice, model: flat}\n")
	f(1, "", "capslicense bill: price sheet "+bad+`: plans[0]: unit must be one of attempts, admitted, rejected, tokens, overage, consumed, emergency, peak_caps, peak_sessions, peak_subscribers, got ""`+"\n",
		"bill", "--price-sheet", bad, files[0])
}

// A whole node's ledger left out of a farm's: the ledgers given witnessed
// it, so usage verify says so (exit 1 with --require-proof) and bill
// refuses it: passing, both would bill the rest.
func TestLedgerLeftOut(t *testing.T) {
	_, files := farmLedgers(t, "n1", "n2", "n3")
	sheet := writeFile(t, "sheet.yaml", "currency: EUR\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.001\"}\n")
	const n3 = "node n3: no records given, but peer n1 witnessed its ledger (up to seq 7, at 2025-06-01T12:00:00Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n3)"
	const unproven = "ledger records verify, but 1 fact(s) of 1 node(s) are unproven; first: " + n3
	genesis := "head: complete from its genesis record (seq 1)"
	out := verdict(t, files[0], "n1", genesis, "key: witnessed by peer n2", "tail: newest witness seq 10 by peer n2 at 2025-06-01T12:00:00Z; 0 record(s) after it not yet witnessed") +
		verdict(t, files[1], "n2", genesis, "key: witnessed by peer n1", "tail: newest witness seq 7 by peer n1 at 2025-06-01T12:00:00Z; 3 record(s) after it not yet witnessed")
	f := cliWants(t)
	leftOut := out + strings.Replace(n3, ": ", ": UNPROVEN: ", 1) + "\n"
	f(0, leftOut, "capslicense usage verify: warning: "+unproven+" (--require-proof makes this exit 1; capslicense bill refuses it)\n",
		"usage", "verify", "--ledger", files[0], "--ledger", files[1])
	f(1, leftOut, "capslicense usage verify: "+unproven+"\n", "usage", "verify", "--require-proof", "--ledger", files[0], "--ledger", files[1])
	f(1, "", "capslicense bill: cannot bill: "+unproven+" (see capslicense usage verify)\n",
		"bill", "--ledger", files[0], "--ledger", files[1], "--price-sheet", sheet)

	// With n3's ledger: proven, and its usage billed.
	code, stdout, stderr := cli(t, "", "usage", "verify", "--require-proof", files[0], files[1], files[2])
	require.Equal(t, 0, code, stderr)
	require.NotContains(t, stdout, "UNPROVEN")
	code, stdout, stderr = cli(t, "", "bill", "--format", "csv", "--price-sheet", sheet, files[0], files[1], files[2])
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "voice,admitted attempts,8910,0.001,8.91,EUR\n") // 3 nodes × 3 intervals × 990
}

// An empty ledger proves nothing: a node pinned with --node-pub whose
// records are not given is unproven, --require-proof with no records at
// all fails, and bill refuses to bill no records.
func TestEmptyLedger(t *testing.T) {
	dirs, _ := farmLedgers(t, "n1")
	empty := writeFile(t, "empty.jsonl", "")
	f := cliWants(t)
	const pinned = "node n1: no records given, though its key is pinned (--node-pub): nothing proves its ledger or its usage (give its ledger: GET /v1/ledger on node n1)"
	const unproven = "no ledger records given, and 1 fact(s) of 1 node(s) are unproven; first: " + pinned
	pinnedOut := strings.Replace(pinned, ": ", ": UNPROVEN: ", 1) + "\n"
	pub := "n1=" + dirs[0] + "/node.pub"
	f(1, pinnedOut, "capslicense usage verify: "+unproven+"\n", "usage", "verify", "--require-proof", "--node-pub", pub, "--ledger", empty)
	f(0, pinnedOut, "capslicense usage verify: warning: "+unproven+" (--require-proof makes this exit 1; capslicense bill refuses it)\n",
		"usage", "verify", "--node-pub", pub, "--ledger", empty)
	f(1, "no records\n", "capslicense usage verify: no records in the ledgers given: nothing is proven (an empty export? give each node's GET /v1/ledger)\n",
		"usage", "verify", "--require-proof", "--ledger", empty)
	f(0, "no records\n", "", "usage", "verify", "--ledger", empty)

	hybrid := filepath.Join("..", "..", "configs", "price-sheets", "hybrid.yaml")
	f(1, "", "capslicense bill: cannot bill: no records in the ledgers given (an empty export? give each node's GET /v1/ledger)\n",
		"bill", "--ledger", empty, "--price-sheet", hybrid)
	f(1, "", "capslicense bill: cannot bill: "+unproven+" (see capslicense usage verify)\n",
		"bill", "--ledger", empty, "--node-pub", pub, "--accept-unwitnessed-tail", "--price-sheet", hybrid)
}

// cliWants returns a check that capslicense, run with args, exits
// wantCode and prints exactly wantOut and wantErr.
func cliWants(t *testing.T) func(wantCode int, wantOut, wantErr string, args ...string) {
	return func(wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(t, "", args...)
		require.Equal(t, wantCode, code, stderr)
		require.Equal(t, wantOut, stdout)
		require.Equal(t, wantErr, stderr)
	}
}
