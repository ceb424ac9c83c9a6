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

	"github.com/capsgate/capsgate/cluster/farm"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// TestLedgersWitnessEachOther runs two real nodes: each ledger opens with
// a genesis record, each node witnesses the other's head, key and
// genesis, and capslicense proves both ledgers whole and authentic from
// the two exports alone (no pinned key); a ledger cut at the tail, one
// re-signed with a fresh key and one cut at the billed head are caught,
// naming the record.
func TestLedgersWitnessEachOther(t *testing.T) {
	began := time.Now()
	c := farm.New(t, 2, farm.WithArgs("--ledger-interval", ledgerInterval.String()))
	c.WaitMembers(2, 10*time.Second)
	c.LoadLicense(1, c.Issue("--service", meterService, "--caps", "1000"))
	for i := 1; i <= 2; i++ {
		for range 20 {
			_, err := c.Node(i).Do("ADMIT", meterService)
			require.NoError(t, err)
		}
	}
	// witnessed returns the records of a node's ledger and the highest seq
	// of the peer it witnessed with the peer's key and genesis.
	witnessed := func(b []byte, peer string) (recs []*ledger.Record, seq uint64) {
		for _, line := range bytes.SplitAfter(b, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			r, err := ledger.Decode(line)
			require.NoError(t, err)
			recs = append(recs, r)
			if w := r.Witness; w != nil && w.Node == peer && w.Key != "" && w.Genesis != "" {
				seq = max(seq, w.Seq)
			}
		}
		return recs, seq
	}
	// Wait until n2 witnessed a head of n1 that has usage before it, and
	// n1 a head of n2.
	var n1, n2 []byte
	deadline := time.Now().Add(15 * time.Second)
	for {
		n1, n2 = fetchLedger(t, c, c.Node(1)), fetchLedger(t, c, c.Node(2))
		_, s1 := witnessed(n1, "n2")
		_, s2 := witnessed(n2, "n1")
		if s1 > 1 && s2 > 2 {
			break
		}
		require.True(t, time.Now().Before(deadline), "no witnesses within 15 s:\n%s\n%s", n1, n2)
		time.Sleep(200 * time.Millisecond)
	}
	// n1's export is fetched after n2's witnesses: n2's newest witness of
	// n1 is in n1's export.
	n1 = fetchLedger(t, c, c.Node(1))
	recs1, _ := witnessed(n1, "n2")
	require.Equal(t, ledger.KindGenesis, recs1[0].Kind())
	require.Equal(t, "n1", recs1[0].Node)

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, b, 0o600))
		return path
	}
	f1, f2 := write("n1.jsonl", n1), write("n2.jsonl", n2)
	verify := func(args ...string) (string, int) {
		return run(t, "", c.Bin.Capslicense, append([]string{"usage", "verify"}, args...)...)
	}
	out, code := verify(f1, f2)
	t.Logf("both ledgers: exit %d\n%s", code, out)
	require.Zero(t, code, out)
	for _, n := range []string{"n1", "n2"} {
		peer := map[string]string{"n1": "n2", "n2": "n1"}[n]
		block := out[strings.Index(out, "node "+n+": good"):]
		require.Contains(t, block, "head: complete from its genesis record (seq 1)")
		require.Contains(t, block, "key: witnessed by peer "+peer)
		require.Contains(t, block, "tail: newest witness seq ")
	}
	// Alone, a ledger's key and tail are unproven: said, and with
	// --require-proof a failure (without, every record verifies: exit 0).
	out, code = verify(f1)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "UNPROVEN: unauthenticated")
	out, code = verify("--require-proof", f1)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "UNPROVEN: unauthenticated")

	// Cut at the tail below what n2 witnessed.
	_, seen := witnessed(n2, "n1")
	cut := write("n1-cut.jsonl", joinRecords(t, recs1[:seen-1]))
	out, code = verify(cut, f2)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, fmt.Sprintf("node n1: BAD: seq %d (%s:%d): truncated: ends at seq %d but peer n2 witnessed seq ", seen-1, cut, seen-1, seen-1))

	// Re-signed with a fresh key, admitted zeroed.
	fresh := t.TempDir()
	key, err := ledger.LoadOrCreateNodeKey(fresh)
	require.NoError(t, err)
	forger, err := ledger.Open(ledger.Options{Dir: filepath.Join(fresh, "ledger"), Node: "n1", Cluster: recs1[0].Cluster, Key: key, Genesis: true})
	require.NoError(t, err)
	for _, r := range recs1[1:] {
		var u []ledger.Usage
		var w []ledger.Witness
		if r.Usage != nil {
			z := *r.Usage
			z.Admitted = 0
			u = append(u, z)
		} else {
			w = append(w, *r.Witness)
		}
		_, err := forger.Append(r.From, r.To, u, w)
		require.NoError(t, err)
	}
	var forged bytes.Buffer
	require.NoError(t, forger.Read(time.Time{}, time.Time{}, func(line []byte, _ *ledger.Record) error { forged.Write(line); return nil }))
	require.NoError(t, forger.Close())
	resigned := write("n1-resigned.jsonl", forged.Bytes())
	out, code = verify(resigned, f2)
	t.Logf("re-signed: exit %d\n%s", code, out)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, fmt.Sprintf("node n1: BAD: seq 1 (%s:1): re-signed with another key: peer n2 witnessed node n1 with key %s", resigned, recs1[0].Key))

	// Billed up to a head; the next export cut at the head is refused.
	sheet := write("sheet.yaml", []byte("currency: EUR\ncustomer: ACME\nplans:\n  - {service: "+meterService+", model: pay_per_use, unit: admitted, price: \"0.01\"}\n"))
	js, code := run(t, "", c.Bin.Capslicense, "bill", "--price-sheet", sheet, "--format", "json", f1, f2)
	require.Zero(t, code, js)
	var inv struct {
		Total      string `json:"total"`
		BilledUpTo string `json:"billed_up_to"`
	}
	require.NoError(t, json.Unmarshal([]byte(js), &inv), js)
	heads, err := ledger.ParseHeads(inv.BilledUpTo)
	require.NoError(t, err, js)
	require.Equal(t, recs1[len(recs1)-1].Hash, heads["n1"].Hash)
	t.Logf("invoice total %s, billed up to %s", inv.Total, inv.BilledUpTo)
	// n1 meters more usage: two more records at least.
	var recsLater []*ledger.Record
	for deadline := time.Now().Add(10 * time.Second); len(recsLater) < len(recs1)+2; time.Sleep(200 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "n1 wrote no more records within 10 s")
		_, err := c.Node(1).Do("ADMIT", meterService)
		require.NoError(t, err)
		recsLater, _ = witnessed(fetchLedger(t, c, c.Node(1)), "n2")
	}
	headCut := write("n1-later-cut.jsonl", joinRecords(t, recsLater[len(recs1)+1:]))
	out, code = verify("--since", inv.BilledUpTo, headCut, f2)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, fmt.Sprintf("node n1: BAD: seq %d (%s:1): cut at the head: the ledger starts at seq %d but was billed up to seq %d",
		len(recs1)+2, headCut, len(recs1)+2, len(recs1)))
	// n2's export fetched after n1's holds every head of n2 that n1
	// witnessed.
	f2later := write("n2-later.jsonl", fetchLedger(t, c, c.Node(2)))
	out, code = verify("--since", inv.BilledUpTo, write("n1-later.jsonl", joinRecords(t, recsLater[len(recs1):])), f2later)
	require.Zero(t, code, out)
	require.Contains(t, out, fmt.Sprintf("head: continues from the head billed up to (seq %d)", len(recs1)))
	t.Logf("run time %s", time.Since(began).Round(time.Millisecond))
}

func joinRecords(t *testing.T, recs []*ledger.Record) []byte {
	var b bytes.Buffer
	for _, r := range recs {
		line, err := r.Line()
		require.NoError(t, err)
		b.Write(line)
	}
	return b.Bytes()
}
