package ledger

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// farm is a cluster of nodes writing ledgers as capsgate does: a genesis
// record each, usage every interval, and witnesses of the peers' heads
// with their keys and genesis.
type farm struct {
	t     *testing.T
	now   time.Time
	names []string
	dirs  map[string]string
	keys  map[string]ed25519.PrivateKey
	l     map[string]*Ledger
	step  int
}

func newFarm(t *testing.T, names ...string) *farm {
	f := &farm{t: t, now: t0, names: names, dirs: map[string]string{}, keys: map[string]ed25519.PrivateKey{}, l: map[string]*Ledger{}}
	for i, n := range names {
		f.dirs[n] = t.TempDir()
		f.keys[n] = testKey(byte(i + 1))
		f.open(n)
	}
	t.Cleanup(func() {
		for _, l := range f.l {
			l.Close()
		}
	})
	return f
}

func (f *farm) open(n string) {
	if f.l[n] != nil {
		f.l[n].Close()
	}
	l, err := Open(Options{Dir: f.dirs[n], Node: n, Cluster: "prod", Key: f.keys[n], Clock: func() time.Time { return f.now }, Genesis: true})
	require.NoError(f.t, err)
	f.l[n] = l
}

// run writes k intervals on every node: one usage record each, then a
// witness of every peer's head.
func (f *farm) run(k int) {
	for range k {
		from, to := interval(f.step)
		f.now = to
		f.step++
		for _, n := range f.names {
			var w []Witness
			for _, p := range f.names {
				if p != n {
					seq, hash := f.l[p].Head()
					key, gen := f.l[p].Identity()
					w = append(w, Witness{Node: p, Seq: seq, Hash: hash, Key: key, Genesis: gen})
				}
			}
			_, err := f.l[n].Append(from, to, []Usage{voice(uint64(100 + f.step))}, w)
			require.NoError(f.t, err)
		}
	}
}

func (f *farm) export(n string) []byte { return readAll(f.t, f.l[n]) }

func (f *farm) head(n string) Head {
	seq, hash := f.l[n].Head()
	return Head{seq, hash}
}

// reseal re-signs records with key as a forger would: renumbered from
// seq first (after prev), each changed by edit first.
func reseal(t *testing.T, recs [][]byte, key ed25519.PrivateKey, node string, first uint64, prev string, edit func(*Record)) [][]byte {
	var out [][]byte
	for i, line := range recs {
		r, err := Decode(line)
		require.NoError(t, err)
		r.Node, r.Seq, r.Prev = node, first+uint64(i), prev
		if r.Genesis != nil {
			r.Genesis.Key = string(MarshalNodePublicKey(key.Public().(ed25519.PublicKey))[:44])
		}
		if edit != nil {
			edit(r)
		}
		b, err := r.seal(key)
		require.NoError(t, err)
		out = append(out, b)
		prev = r.Hash
	}
	return out
}

func zeroAdmitted(r *Record) {
	if r.Usage != nil {
		r.Usage.Admitted = 0
	}
}

// firsts returns each node's first problem as printed.
func firsts(rep Report) []string {
	var out []string
	for _, p := range rep.First() {
		out = append(out, p.String())
	}
	return out
}

func unprovenReasons(rep Report) []string {
	var out []string
	for _, p := range rep.Unproven {
		out = append(out, p.Node+": "+p.Reason)
	}
	return out
}

func TestGenesisOpensTheLedger(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(3)
	n1 := lines(f.export("n1"))
	g, err := Decode(n1[0])
	require.NoError(t, err)
	require.Equal(t, KindGenesis, g.Kind())
	require.Equal(t, &Genesis{Key: lKey(f.l["n1"]), Cluster: "prod", First: "2025-06-01T00:00:00Z"}, g.Genesis)
	key, gen := f.l["n1"].Identity()
	require.Equal(t, lKey(f.l["n1"]), key)
	require.Equal(t, g.Hash, gen)
	// Reopened: no second genesis; the identity is read back.
	f.open("n1")
	_, gen2 := f.l["n1"].Identity()
	require.Equal(t, gen, gen2)
	require.Equal(t, len(n1), len(lines(f.export("n1"))))

	rep := Verify(inputs("n1", f.export("n1"), "n2", f.export("n2")), VerifyOptions{})
	require.True(t, rep.Proven(), "%v %v", rep.Problems, rep.Unproven)
	s := rep.Nodes["n1"]
	require.True(t, s.Genesis)
	require.Equal(t, TrustWitnessed, s.KeyTrust)
	require.Equal(t, "n2", s.KeyWitness)
	// n2 wrote its last witness of n1 after n1's last record: seq 7 (1
	// genesis + 3 × (usage, witness)).
	require.Equal(t, uint64(7), s.Last)
	require.Equal(t, uint64(7), s.Witnessed)
	require.Equal(t, "n2", s.WitnessBy)
	require.Equal(t, t0.Add(30*time.Second), s.WitnessAt)

	// A genesis record elsewhere than seq 1, or saying another key, is
	// malformed.
	bad := *g
	bad.Seq = 2
	_, err = bad.seal(testKey(1))
	require.NoError(t, err)
	line, err := bad.Line()
	require.NoError(t, err)
	_, err = Decode(line)
	require.EqualError(t, err, "malformed: a genesis record must be seq 1")
}

// One node alone: nothing proves its key or its tail unless the vendor
// pins the key and accepts the unwitnessed tail.
func TestSingleNodeUnproven(t *testing.T) {
	f := newFarm(t, "solo")
	f.run(3)
	led := f.export("solo")
	rep := Verify(inputs("solo.jsonl", led), VerifyOptions{})
	require.True(t, rep.OK())
	require.False(t, rep.Proven())
	require.Equal(t, []string{
		"solo: unauthenticated: no pinned key (--node-pub, --trust-on-first-use) and no peer witnessed its key: anyone could have re-signed it",
		"solo: tail unproven: no peer's ledger given witnessed this ledger, so records removed from its end cannot be detected (give the peers' ledgers; on a single-node farm, --accept-unwitnessed-tail)",
	}, unprovenReasons(rep))
	pins := map[string]ed25519.PublicKey{"solo": f.l["solo"].PublicKey()}
	rep = Verify(inputs("solo.jsonl", led), VerifyOptions{PinnedKeys: pins, AcceptUnwitnessedTail: true})
	require.True(t, rep.Proven(), "%v", rep.Unproven)
	rep = Verify(inputs("solo.jsonl", led), VerifyOptions{TrustOnFirstUse: true, AcceptUnwitnessedTail: true})
	require.True(t, rep.Proven(), "%v", rep.Unproven)
	require.Equal(t, TrustFirstUse, rep.Nodes["solo"].KeyTrust)

	// A ledger written before genesis records: unproven at the head
	// unless accepted or continued from a billed head.
	old := t.TempDir()
	now := t0
	l := open(t, old, "solo", testKey(9), 0, &now)
	appendAt(t, l, 0, []Usage{voice(5)}, nil)
	appendAt(t, l, 1, []Usage{voice(6)}, nil)
	h1 := Head{1, ""}
	rep2 := Verify(inputs("old", readAll(t, l)), VerifyOptions{TrustOnFirstUse: true, AcceptUnwitnessedTail: true})
	require.Equal(t, []string{"solo: no genesis: completeness at the head unproven (a ledger written before genesis records; give --since with the head billed last, or --accept-no-genesis)"},
		unprovenReasons(rep2))
	rep2 = Verify(inputs("old", readAll(t, l)), VerifyOptions{TrustOnFirstUse: true, AcceptUnwitnessedTail: true, AcceptNoGenesis: true})
	require.True(t, rep2.Proven())
	r1, err := Decode(lines(readAll(t, l))[0])
	require.NoError(t, err)
	h1.Hash = r1.Hash
	rep2 = Verify(inputs("old", readAll(t, l)), VerifyOptions{TrustOnFirstUse: true, AcceptUnwitnessedTail: true, Since: map[string]Head{"solo": h1}})
	require.True(t, rep2.Proven())
	require.Equal(t, uint64(1), rep2.Nodes["solo"].Since)
	l.Close()
}

// The tamper suite: each case fails verification, naming the first bad
// record.
func TestTamperHeadTruncation(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(2)
	billed := f.head("n1") // seq 5: the last invoice billed up to here
	f.run(3)
	n1 := lines(f.export("n1"))

	// Records removed at the head: a tail is unproven without the billed
	// head...
	cut := join(n1[7:]...)
	rep := Verify(inputs("n1.jsonl", cut, "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.Equal(t, []string{"n1: records before seq 8 not given: completeness at the head unproven (give --since with the head billed last)"}, unprovenReasons(rep))
	// ...and caught with it.
	since := map[string]Head{"n1": billed}
	rep = Verify(inputs("n1.jsonl", cut, "n2.jsonl", f.export("n2")), VerifyOptions{Since: since})
	require.Equal(t, []string{"node n1 seq 8 (n1.jsonl:1): cut at the head: the ledger starts at seq 8 but was billed up to seq 5 (seqs 6-7 missing)"}, firsts(rep))
	// The whole ledger, or exactly what follows the billed head: proven.
	for _, whole := range [][]byte{join(n1...), join(n1[5:]...)} {
		rep = Verify(inputs("n1.jsonl", whole, "n2.jsonl", f.export("n2")), VerifyOptions{Since: since})
		require.True(t, rep.Proven(), "%v %v", rep.Problems, rep.Unproven)
	}

	// Records removed at the head and the rest renumbered from a new
	// genesis, re-signed with the node's own key: the peer witnessed
	// other records and another genesis.
	forged := reseal(t, append([][]byte{n1[0]}, n1[7:]...), f.keys["n1"], "n1", 1, GenesisPrev, nil)
	rep = Verify(inputs("n1.jsonl", join(forged...), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.Equal(t, []string{"node n1 seq 3 (n1.jsonl:3): differs from what peer n2 witnessed at seq 3 (restored from an earlier backup?); seq 1 is as witnessed, so a record in seq 2-3 was changed"}, firsts(rep))
	rep = Verify(inputs("n1.jsonl", join(forged...)), VerifyOptions{Since: since, TrustOnFirstUse: true, AcceptUnwitnessedTail: true})
	require.Equal(t, []string{"node n1 seq 5 (n1.jsonl:5): is not the head already billed at seq 5 (hash " + billed.Hash[:12] + "…): rewritten or restored from an older backup"}, firsts(rep))
}

// A whole node's ledger left out: the given ledgers witnessed it, so it
// is unproven (and capslicense bill refuses), not silently unbilled.
func TestTamperLedgerLeftOut(t *testing.T) {
	f := newFarm(t, "n1", "n2", "n3")
	f.run(3)
	all := Verify(inputs("n1.jsonl", f.export("n1"), "n2.jsonl", f.export("n2"), "n3.jsonl", f.export("n3")), VerifyOptions{})
	require.True(t, all.Proven(), "%v %v", all.Problems, all.Unproven)
	// n3 wrote seqs 1-10 (genesis, then a usage record and two witnesses
	// an interval); n1 and n2 last saw its head at seq 7, before its
	// third interval.
	rep := Verify(inputs("n1.jsonl", f.export("n1"), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.False(t, rep.Proven())
	require.Equal(t, []string{"n3: no records given, but peer n1 witnessed its ledger (up to seq 7, at 2025-06-01T00:00:30Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n3)"},
		unprovenReasons(rep))
	require.NotContains(t, rep.Nodes, "n3")
	// Billed before: a problem, said once.
	rep = Verify(inputs("n1.jsonl", f.export("n1"), "n2.jsonl", f.export("n2")), VerifyOptions{Since: map[string]Head{"n3": f.head("n3")}})
	require.Equal(t, []string{"node n3 seq 0 (:0): no records given, but the ledger was billed up to seq 10"}, firsts(rep))
	require.Empty(t, rep.Unproven)

	// A node pinned (--node-pub) with no records proves nothing; a pinned
	// node a given ledger witnessed is said once, as witnessed.
	pins := map[string]ed25519.PublicKey{"n1": f.l["n1"].PublicKey()}
	rep = Verify(nil, VerifyOptions{PinnedKeys: pins, Expect: []string{"n1"}})
	require.True(t, rep.OK())
	require.Equal(t, []string{"n1: no records given, though its key is pinned (--node-pub): nothing proves its ledger or its usage (give its ledger: GET /v1/ledger on node n1)"}, unprovenReasons(rep))
	rep = Verify(inputs("empty.jsonl", []byte{}), VerifyOptions{PinnedKeys: pins, Expect: []string{"n1", "n1"}, AcceptUnwitnessedTail: true})
	require.Len(t, unprovenReasons(rep), 1)
	rep = Verify(inputs("n1.jsonl", f.export("n1"), "n2.jsonl", f.export("n2")), VerifyOptions{PinnedKeys: pins, Expect: []string{"n1", "n3"}})
	require.Equal(t, []string{"n3: no records given, but peer n1 witnessed its ledger (up to seq 7, at 2025-06-01T00:00:30Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n3)"},
		unprovenReasons(rep))
}

func TestTamperTailTruncation(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(4)
	// n1 writes one more record, which n2 has not witnessed yet.
	from, to := interval(f.step)
	_, err := f.l["n1"].Append(from, to, []Usage{voice(1)}, nil)
	require.NoError(t, err)
	n1 := lines(f.export("n1"))
	require.Len(t, n1, 10)
	// n2 last witnessed n1's seq 9.
	rep := Verify(inputs("n1.jsonl", join(n1[:6]...), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.Equal(t, []string{"node n1 seq 6 (n1.jsonl:6): truncated: ends at seq 6 but peer n2 witnessed seq 9"}, firsts(rep))
	rep = Verify(inputs("n1.jsonl", join(n1...), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.True(t, rep.Proven())
	require.Equal(t, uint64(9), rep.Nodes["n1"].Witnessed)
	require.Equal(t, uint64(10), rep.Nodes["n1"].Last)
	// Cut after the newest witness: not detectable; what is witnessed is
	// reported.
	rep = Verify(inputs("n1.jsonl", join(n1[:9]...), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.True(t, rep.Proven())
	require.Equal(t, uint64(9), rep.Nodes["n1"].Witnessed)
	require.Equal(t, uint64(9), rep.Nodes["n1"].Last)
}

func TestTamperResignedWithFreshKey(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(3)
	n1 := lines(f.export("n1"))
	fresh := testKey(77)
	forged := join(reseal(t, n1, fresh, "n1", 1, GenesisPrev, zeroAdmitted)...)
	freshKey := lKeyOf(fresh)
	// With the peer: its witnesses carry n1's key.
	rep := Verify(inputs("n1.jsonl", forged, "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.Equal(t, []string{fmt.Sprintf("node n1 seq 1 (n1.jsonl:1): re-signed with another key: peer n2 witnessed node n1 with key %s (seq 3), not %s",
		lKey(f.l["n1"]), freshKey)}, firsts(rep))
	// Alone: unauthenticated, so not proven (nor is the peer it
	// witnessed, whose ledger is left out).
	rep = Verify(inputs("n1.jsonl", forged), VerifyOptions{AcceptUnwitnessedTail: true})
	require.True(t, rep.OK())
	require.Equal(t, []string{"n1: unauthenticated: no pinned key (--node-pub, --trust-on-first-use) and no peer witnessed its key: anyone could have re-signed it",
		"n2: no records given, but peer n1 witnessed its ledger (up to seq 5, at 2025-06-01T00:00:30Z): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node n2)"}, unprovenReasons(rep))
	// Alone with the key pinned (on first use, or node.pub).
	rep = Verify(inputs("n1.jsonl", forged), VerifyOptions{PinnedKeys: map[string]ed25519.PublicKey{"n1": f.l["n1"].PublicKey()}})
	require.Equal(t, []string{"node n1 seq 1 (n1.jsonl:1): re-signed with another key (not the pinned key of node n1)"}, firsts(rep))
}

func lKeyOf(k ed25519.PrivateKey) string {
	return strings.TrimSpace(string(MarshalNodePublicKey(k.Public().(ed25519.PublicKey))))
}

func TestTamperSpliced(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(4)
	n1, n2 := lines(f.export("n1")), lines(f.export("n2"))
	// n2's smaller usage records put in n1's ledger from seq 4 on, as n1's,
	// signed with n2's key (the operator has both keys).
	r3, err := Decode(n1[2])
	require.NoError(t, err)
	spliced := append(append([][]byte{}, n1[:3]...), reseal(t, n2[3:], f.keys["n2"], "n1", 4, r3.Hash, nil)...)
	rep := Verify(inputs("n1.jsonl", join(spliced...), "n2.jsonl", join(n2...)), VerifyOptions{})
	require.Equal(t, "node n1 seq 4 (n1.jsonl:4): signed with another key than the node's genesis record (spliced from another node's ledger, or re-signed)", firsts(rep)[0])
	// Signed with n1's own key: the chain holds, but n2 witnessed other
	// records at those seqs.
	spliced = append(append([][]byte{}, n1[:3]...), reseal(t, n2[3:], f.keys["n1"], "n1", 4, r3.Hash, nil)...)
	rep = Verify(inputs("n1.jsonl", join(spliced...), "n2.jsonl", join(n2...)), VerifyOptions{})
	require.Equal(t, []string{"node n1 seq 5 (n1.jsonl:5): differs from what peer n2 witnessed at seq 5 (restored from an earlier backup?); seq 3 is as witnessed, so a record in seq 4-5 was changed"}, firsts(rep))
	// Records of a ledger of another cluster under the same node name.
	other, err := Open(Options{Dir: t.TempDir(), Node: "n1", Cluster: "lab", Key: f.keys["n1"], Clock: func() time.Time { return f.now }})
	require.NoError(t, err)
	defer other.Close()
	appendAt(t, other, 0, []Usage{voice(1)}, nil)
	lab := reseal(t, lines(readAll(t, other)), f.keys["n1"], "n1", uint64(len(n1)+1), f.head("n1").Hash, nil)
	rep = Verify(inputs("n1.jsonl", join(append(n1, lab...)...)), VerifyOptions{TrustOnFirstUse: true, AcceptUnwitnessedTail: true})
	require.Equal(t, []string{fmt.Sprintf(`node n1 seq %d (n1.jsonl:%d): written for cluster "lab", not "prod" like the node's first record (spliced from another ledger?)`, len(n1)+1, len(n1)+1)}, firsts(rep))
}

func TestTamperRestoredFromBackup(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(2)
	billed := f.head("n1") // seq 5
	backup := t.TempDir()
	copyDir(t, f.dirs["n1"], backup)
	f.run(3) // n2 witnesses n1 up to seq 9
	// The operator restores the backup (losing seqs 6-11) and the node goes
	// on writing from seq 6.
	f.l["n1"].Close()
	require.NoError(t, os.RemoveAll(f.dirs["n1"]))
	copyDir(t, backup, f.dirs["n1"])
	f.open("n1")
	f.run(1)
	rep := Verify(inputs("n1.jsonl", f.export("n1"), "n2.jsonl", f.export("n2")), VerifyOptions{})
	require.Equal(t, []string{"node n1 seq 7 (n1.jsonl:7): differs from what peer n2 witnessed at seq 7 (restored from an earlier backup?); seq 5 is as witnessed, so a record in seq 6-7 was changed"}, firsts(rep))
	// Without the peer's ledger, the billed head catches a restore from
	// before it.
	f.l["n1"].Close()
	require.NoError(t, os.RemoveAll(f.dirs["n1"]))
	copyDir(t, backup, f.dirs["n1"])
	f.open("n1")
	n1 := lines(f.export("n1"))
	rep = Verify(inputs("n1.jsonl", join(n1[:3]...)), VerifyOptions{Since: map[string]Head{"n1": billed}, TrustOnFirstUse: true, AcceptUnwitnessedTail: true})
	require.Equal(t, []string{"node n1 seq 3 (n1.jsonl:3): ends at seq 3, before the head already billed (seq 5): restored from an older backup or cut at the tail"}, firsts(rep))
	// A node billed before but given no records at all.
	rep = Verify(inputs("n2.jsonl", f.export("n2")), VerifyOptions{Since: map[string]Head{"n1": billed}})
	require.Equal(t, []string{"node n1 seq 0 (:0): no records given, but the ledger was billed up to seq 5"}, firsts(rep))
}

func copyDir(t *testing.T, from, to string) {
	require.NoError(t, os.MkdirAll(to, 0o700))
	names, err := filepath.Glob(filepath.Join(from, "*"))
	require.NoError(t, err)
	for _, n := range names {
		require.NoError(t, os.WriteFile(filepath.Join(to, filepath.Base(n)), readFile(t, n), 0o600))
	}
}

func TestParseHeads(t *testing.T) {
	h := strings.Repeat("ab", 32)
	got, err := ParseHeads("n1=5:" + h + ", n2=7:" + h)
	require.NoError(t, err)
	require.Equal(t, map[string]Head{"n1": {5, h}, "n2": {7, h}}, got)
	require.Equal(t, "n1=5:"+h, FormatHead("n1", got["n1"]))
	for _, bad := range []string{"", "n1", "n1=5", "n1=0:" + h, "=5:" + h, "n1=5:abc", "n1=x:" + h} {
		_, err := ParseHeads(bad)
		require.Error(t, err, bad)
	}
	_, err = ParseHeads("n1=5:" + h + ",n1=6:" + h)
	require.EqualError(t, err, "two heads for node n1")
}

// A ledger started over (a new genesis, the node's own key) in place of
// the one the peers witnessed.
func TestTamperReplacedFromGenesis(t *testing.T) {
	f := newFarm(t, "n1", "n2")
	f.run(3)
	f.now = f.now.Add(time.Hour)
	other, err := Open(Options{Dir: t.TempDir(), Node: "n1", Cluster: "prod", Key: f.keys["n1"], Clock: func() time.Time { return f.now }, Genesis: true})
	require.NoError(t, err)
	defer other.Close()
	appendAt(t, other, 0, []Usage{voice(1)}, nil)
	rep := Verify(inputs("n1.jsonl", readAll(t, other), "n2.jsonl", f.export("n2")), VerifyOptions{})
	_, gen := f.l["n1"].Identity()
	require.Equal(t, []string{"node n1 seq 1 (n1.jsonl:1): not the genesis peer n2 witnessed (" + gen[:12] + "…): the ledger was replaced or rewritten from the start"}, firsts(rep))
}
