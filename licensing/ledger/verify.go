package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Input is one ledger file to verify: segment files, an export of
// GET /v1/ledger, or several nodes' records concatenated.
type Input struct {
	Name string // for problems: "file:line"
	R    io.Reader
}

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// PinnedKeys are the nodes' known public keys (their node.pub). A
	// node's records must be signed by its pinned key; without one, the
	// key most of its records carry is taken as the node's.
	PinnedKeys map[string]ed25519.PublicKey
	// Since are the heads already billed, by node: a node's records must
	// continue from its head (hold it, or start right after it), which
	// proves nothing was cut at the head since. A node in Since with no
	// records is a problem.
	Since map[string]Head
	// TrustOnFirstUse takes an unpinned node's key as authentic when no
	// peer witnessed it (the caller records it: KeyTrust is TrustFirstUse).
	TrustOnFirstUse bool
	// AcceptNoGenesis accepts a ledger that starts at seq 1 without a
	// genesis record (written before genesis records existed) as complete
	// at the head.
	AcceptNoGenesis bool
	// AcceptUnwitnessedTail accepts a node that no peer witnessed (a
	// single-node farm): records removed from its end cannot be detected.
	AcceptUnwitnessedTail bool
	// Expect are nodes whose records must be given (capslicense: the
	// nodes pinned with --node-pub): one with no records is unproven,
	// since nothing proves its ledger.
	Expect []string
}

// Head is a ledger head: the seq and hash of its last record.
type Head struct {
	Seq  uint64
	Hash string
}

// FormatHead writes a node's head as NODE=SEQ:HASH, the form invoices
// print and ParseHeads reads.
func FormatHead(node string, h Head) string {
	return fmt.Sprintf("%s=%d:%s", node, h.Seq, h.Hash)
}

// ParseHeads reads heads written by FormatHead, separated by commas.
func ParseHeads(s string) (map[string]Head, error) {
	out := map[string]Head{}
	for _, part := range strings.Split(s, ",") {
		node, rest, ok := strings.Cut(strings.TrimSpace(part), "=")
		seqText, hash, ok2 := strings.Cut(rest, ":")
		seq, err := strconv.ParseUint(seqText, 10, 64)
		if !ok || !ok2 || node == "" || err != nil || seq == 0 || !isHex64(hash) {
			return nil, fmt.Errorf("want a head NODE=SEQ:HASH (as an invoice prints it), got %q", part)
		}
		if _, dup := out[node]; dup {
			return nil, fmt.Errorf("two heads for node %s", node)
		}
		out[node] = Head{seq, hash}
	}
	return out, nil
}

// How a node's key is trusted (NodeSummary.KeyTrust).
const (
	TrustPinned     = "pinned"
	TrustWitnessed  = "witnessed"
	TrustFirstUse   = "trusted on first use"
	TrustUnverified = "unauthenticated"
)

// NodeSummary describes one node's records in a verified set.
type NodeSummary struct {
	First, Last uint64 // lowest and highest seq of its intact records
	Records     int    // lines attributed to the node, good or bad
	Head        string // hash of the record at Last
	Key         string // the node's key (base64): pinned, or most records'
	// Tail is set when the records start after seq 1: a contiguous tail
	// (e.g. an export filtered by time), checked as such — what came
	// before First is not verified unless Since proves it.
	Tail bool
	// Genesis is set when seq 1, a genesis record, is among the records.
	Genesis bool
	// Since is the billed head the records continue from (0: none given).
	Since uint64
	// KeyTrust says why Key is the node's (Trust*); KeyWitness names the
	// peer that witnessed it.
	KeyTrust, KeyWitness string
	// Witnessed is the highest of its seqs a peer witnessed and found as
	// given (0: none), WitnessBy that peer and WitnessAt when it wrote
	// the witness record. Records after Witnessed are not yet witnessed.
	Witnessed uint64
	WitnessBy string
	WitnessAt time.Time
	// Witness is a peer whose given ledger witnesses this node at all,
	// maybe only seqs before the records given ("" if none): a ledger
	// cut below a later witness of it would be caught.
	Witness string
}

// Problem is a record that does not verify.
type Problem struct {
	Node   string // "" when the line names no node
	Seq    uint64 // 0 when the line names no seq
	File   string
	Line   int
	Reason string
}

func (p Problem) String() string {
	node := p.Node
	if node == "" {
		node = "?"
	}
	return fmt.Sprintf("node %s seq %d (%s:%d): %s", node, p.Seq, p.File, p.Line, p.Reason)
}

// Report is Verify's verdict. No Problems means every record verified;
// no Unproven too means the ledgers are proven complete and authentic as
// far as the inputs can prove it.
type Report struct {
	Nodes    map[string]NodeSummary
	Problems []Problem // grouped by node (sorted by name), in order found
	// Unproven are what the records cannot prove (Seq and File unset
	// unless a record is meant), by node: completeness at the head, the
	// node's key, completeness at the tail; then, by node name, the
	// nodes with no records given whose ledger a given one witnessed or
	// VerifyOptions.Expect names (a whole ledger left out).
	Unproven []Problem
}

// OK reports whether the ledgers verified.
func (r Report) OK() bool { return len(r.Problems) == 0 }

// Proven reports whether the ledgers verified and nothing is unproven.
func (r Report) Proven() bool { return r.OK() && len(r.Unproven) == 0 }

// First returns the first problem of each node, in node order.
func (r Report) First() []Problem {
	var out []Problem
	for i, p := range r.Problems {
		if i == 0 || p.Node != r.Problems[i-1].Node {
			out = append(out, p)
		}
	}
	return out
}

// entry is one line of the inputs.
type entry struct {
	rec  *Record // nil if it did not decode
	node string  // rec.Node, or what a bad line seems to say
	seq  uint64  // rec.Seq, or what a bad line seems to say
	file string
	line int
	bad  string // the line's own problem, if any
}

// Verify checks ledgers as the vendor receives them. Records are grouped
// by node; a node's records may be spread over inputs (each input's part
// is ordered by its first seq, so segment files may come in any order,
// but within an input the records must be in chain order). It finds, per
// node, every record that is altered (not in canonical form, hash
// mismatch, bad signature), signed with another key than the node's
// (pinned, or most of its records'), duplicated, reordered, missing (a
// gap in the seqs or a prev that is not the previous record's hash), a
// torn last line; and across nodes, a ledger that ends before a seq its
// peers witnessed, or whose record at a witnessed seq has another hash
// (restored from an earlier backup), and a ledger left out whole (a node
// its peers witnessed with no records given: unproven). A node's records
// may start after seq 1 if they are a contiguous tail (NodeSummary.Tail).
// Records removed from the end of a ledger that no peer witnessed cannot
// be detected.
func Verify(inputs []Input, opts VerifyOptions) Report {
	byNode := map[string][][]entry{} // node -> runs, one per input
	for _, in := range inputs {
		runs := map[string][]entry{}
		var order []string
		for _, e := range readEntries(in) {
			node := e.node
			if _, ok := runs[node]; !ok {
				order = append(order, node)
			}
			runs[node] = append(runs[node], e)
		}
		for _, node := range order {
			byNode[node] = append(byNode[node], runs[node])
		}
	}
	rep := Report{Nodes: map[string]NodeSummary{}}
	chains := map[string]*chain{}
	nodes := make([]string, 0, len(byNode))
	for node := range byNode {
		nodes = append(nodes, node)
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		runs := byNode[node]
		slices.SortStableFunc(runs, func(a, b []entry) int { return compareUint(firstSeq(a), firstSeq(b)) })
		c := checkChain(node, slices.Concat(runs...), opts.PinnedKeys[node])
		chains[node] = c
		if node != "" {
			rep.Nodes[node] = c.summary
		}
	}
	absent := checkWitnesses(chains, nodes)
	for _, node := range nodes {
		c := chains[node]
		if node != "" {
			c.checkProof(opts)
			rep.Nodes[node] = c.summary
		}
		rep.Problems = append(rep.Problems, c.problems...)
		rep.Unproven = append(rep.Unproven, c.unproven...)
	}
	for _, node := range sortedNodes(opts.Since) {
		if chains[node] == nil {
			h := opts.Since[node]
			rep.Problems = append(rep.Problems, Problem{Node: node, Reason: fmt.Sprintf(
				"no records given, but the ledger was billed up to seq %d", h.Seq)})
		}
	}
	// A whole ledger left out. (One billed before is a problem above.)
	for _, node := range sortedNodes(absent) {
		if _, billed := opts.Since[node]; !billed {
			w := absent[node]
			rep.Unproven = append(rep.Unproven, Problem{Node: node, Reason: fmt.Sprintf(
				"no records given, but peer %s witnessed its ledger (up to seq %d, at %s): its whole ledger is left out, so its usage can be neither verified nor billed (give its ledger: GET /v1/ledger on node %s)",
				w.by, w.seq, w.at.UTC().Format(time.RFC3339), node)})
		}
	}
	expect := slices.Clone(opts.Expect)
	slices.Sort(expect)
	for _, node := range slices.Compact(expect) {
		_, billed := opts.Since[node]
		if _, witnessed := absent[node]; chains[node] == nil && !billed && !witnessed {
			rep.Unproven = append(rep.Unproven, Problem{Node: node, Reason: fmt.Sprintf(
				"no records given, though its key is pinned (--node-pub): nothing proves its ledger or its usage (give its ledger: GET /v1/ledger on node %s)", node)})
		}
	}
	return rep
}

func sortedNodes[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func firstSeq(run []entry) uint64 {
	for _, e := range run {
		if e.seq > 0 {
			return e.seq
		}
	}
	return 0
}

// readEntries reads and checks each line of in on its own.
func readEntries(in Input) []entry {
	var out []entry
	lr := newLineReader(in.R)
	for {
		line, _, n, err := lr.next()
		if err == io.EOF {
			return out
		}
		e := entry{file: in.Name, line: n}
		switch {
		case err == errLineTooLong:
			e.bad = fmt.Sprintf("altered (line longer than %d bytes)", MaxLineBytes)
		case err != nil:
			e.bad = "unreadable: " + err.Error()
			out = append(out, e)
			return out
		case len(bytes.TrimSpace(line)) == 0 && len(line) > 0:
			e.bad = "altered (blank line)"
		case !bytes.HasSuffix(line, []byte("\n")):
			e.bad = "torn last line (no newline at the end: cut off mid-write?)"
			if r, err := Decode(line); err == nil {
				e.rec = r
			}
		default:
			r, err := Decode(line)
			if err != nil {
				e.bad = "altered (" + err.Error() + ")"
				break
			}
			e.rec = r
			if err := r.Check(); errors.Is(err, ErrHashMismatch) {
				e.bad = "altered (hash mismatch)"
			} else if err != nil {
				e.bad = "bad signature"
			}
		}
		if e.rec != nil {
			e.node, e.seq = e.rec.Node, e.rec.Seq
		} else {
			e.node, e.seq = guessNodeLine(line)
		}
		out = append(out, e)
	}
}

// head matches the start of a record line, to name the node and seq of a
// line that does not decode.
var head = regexp.MustCompile(`^\{"v":[0-9]+,"seq":([0-9]{1,20}),"node":"((?:[^"\\]|\\.){1,256})"`)

func guessNodeLine(line []byte) (node string, seq uint64) {
	m := head.FindSubmatch(line)
	if m == nil {
		return "", 0
	}
	seq, _ = strconv.ParseUint(string(m[1]), 10, 64)
	var s string
	if err := json.Unmarshal(append(append([]byte{'"'}, m[2]...), '"'), &s); err != nil {
		return "", seq
	}
	return s, seq
}

// chain is the verification state of one node.
type chain struct {
	node     string
	entries  []entry
	key      string
	pinned   bool
	cluster  string            // the first intact record's cluster
	bySeq    map[uint64]*entry // intact records accepted in the chain
	summary  NodeSummary
	problems []Problem
	unproven []Problem
	// witnessedKey: a peer witnessed the key or a record (whose hash
	// covers the key); keyConflict, genesisConflict: a peer witnessed
	// another (reported once).
	witnessedKey, keyConflict, genesisConflict bool
	genesisKey                                 bool     // key is the genesis record's
	matched                                    []uint64 // seqs witnessed as they are
}

func (c *chain) problem(e *entry, format string, args ...any) {
	c.problems = append(c.problems, Problem{Node: c.node, Seq: e.seq, File: e.file, Line: e.line, Reason: fmt.Sprintf(format, args...)})
}

// first returns the first intact record of the chain, or nil.
func (c *chain) first() *entry { return c.bySeq[c.summary.First] }

// checkProof checks what the records prove of the node beyond each
// record: that its ledger is whole at the head (genesis, or continues
// from the billed head), whose key signed it, how far its tail was
// witnessed. What cannot be proven goes to unproven.
func (c *chain) checkProof(o VerifyOptions) {
	s := &c.summary
	first := c.first()
	if first == nil {
		return
	}
	unproven := func(format string, args ...any) {
		c.unproven = append(c.unproven, Problem{Node: c.node, Reason: fmt.Sprintf(format, args...)})
	}
	s.Genesis = s.First == 1 && first.rec.Genesis != nil
	if h, ok := o.Since[c.node]; ok {
		s.Since = h.Seq
		last := c.bySeq[s.Last]
		switch at, next := c.bySeq[h.Seq], c.bySeq[h.Seq+1]; {
		case s.Last < h.Seq:
			c.problem(last, "ends at seq %d, before the head already billed (seq %d): restored from an older backup or cut at the tail", s.Last, h.Seq)
		case at != nil && at.rec.Hash != h.Hash:
			c.problem(at, "is not the head already billed at seq %d (hash %.12s…): rewritten or restored from an older backup", h.Seq, h.Hash)
		case at == nil && next != nil && s.First == h.Seq+1 && next.rec.Prev != h.Hash:
			c.problem(next, "does not continue from the head already billed (seq %d, hash %.12s…): rewritten or restored from an older backup", h.Seq, h.Hash)
		case at == nil && s.First > h.Seq+1:
			c.problem(first, "cut at the head: the ledger starts at seq %d but was billed up to seq %d (seqs %d-%d missing)", s.First, h.Seq, h.Seq+1, s.First-1)
		}
	} else if !s.Genesis {
		switch {
		case s.First > 1:
			unproven("records before seq %d not given: completeness at the head unproven (give --since with the head billed last)", s.First)
		case !o.AcceptNoGenesis:
			unproven("no genesis: completeness at the head unproven (a ledger written before genesis records; give --since with the head billed last, or --accept-no-genesis)")
		}
	}
	switch {
	case c.pinned:
		s.KeyTrust = TrustPinned
	case c.witnessedKey:
		s.KeyTrust = TrustWitnessed
	case o.TrustOnFirstUse:
		s.KeyTrust = TrustFirstUse
	default:
		s.KeyTrust = TrustUnverified
		unproven("unauthenticated: no pinned key (--node-pub, --trust-on-first-use) and no peer witnessed its key: anyone could have re-signed it")
	}
	if s.Witness == "" && !o.AcceptUnwitnessedTail {
		unproven("tail unproven: no peer's ledger given witnessed this ledger, so records removed from its end cannot be detected (give the peers' ledgers; on a single-node farm, --accept-unwitnessed-tail)")
	}
}

func checkChain(node string, entries []entry, pinned ed25519.PublicKey) *chain {
	c := &chain{node: node, entries: entries, bySeq: map[uint64]*entry{}, pinned: pinned != nil}
	c.summary.Records = len(entries)
	c.key = nodeKey(entries, pinned)
	c.genesisKey = pinned == nil && slices.ContainsFunc(entries, func(e entry) bool { return e.bad == "" && e.rec != nil && e.rec.Genesis != nil })
	c.summary.Key = c.key
	var lastSeq uint64 // last seq walked (good or bad)
	lastHash := ""     // hash of the record at lastSeq if it was good
	started := false
	for i := range entries {
		e := &entries[i]
		if e.bad != "" {
			c.problem(e, "%s", e.bad)
			if e.seq > lastSeq {
				lastSeq, lastHash, started = e.seq, "", true
			}
			continue
		}
		r := e.rec
		switch {
		case r.Key != c.key:
			if pinned != nil {
				c.problem(e, "re-signed with another key (not the pinned key of node %s)", node)
			} else if c.genesisKey {
				c.problem(e, "signed with another key than the node's genesis record (spliced from another node's ledger, or re-signed)")
			} else {
				c.problem(e, "re-signed with another key than the node's other records")
			}
			if r.Seq > lastSeq {
				lastSeq, lastHash, started = r.Seq, "", true
			}
			continue
		case c.bySeq[r.Seq] != nil:
			c.problem(e, "duplicate seq %d", r.Seq)
			continue
		case c.cluster != "" && r.Cluster != c.cluster:
			c.problem(e, "written for cluster %q, not %q like the node's first record (spliced from another ledger?)", r.Cluster, c.cluster)
			if r.Seq > lastSeq {
				lastSeq, lastHash, started = r.Seq, "", true
			}
			continue
		}
		if c.cluster == "" {
			c.cluster = r.Cluster
		}
		switch {
		case !started && r.Seq == 1 && r.Prev != GenesisPrev:
			c.problem(e, "chain broken: seq 1 does not start from the genesis prev")
		case !started && r.Seq > 1:
			c.summary.Tail = true
		case !started:
		case r.Seq <= lastSeq:
			c.problem(e, "reordered: seq %d follows seq %d", r.Seq, lastSeq)
		case r.Seq > lastSeq+1 && c.comesLater(i, lastSeq, r.Seq):
			c.problem(e, "reordered: seq %d comes before seq %d", r.Seq, lastSeq+1)
		case r.Seq > lastSeq+1:
			c.problem(e, "gap: seq %d follows %d (records removed)", r.Seq, lastSeq)
		case lastHash != "" && r.Prev != lastHash:
			c.problem(e, "chain broken: prev is not the hash of seq %d (a record replaced?)", lastSeq)
		}
		started = true
		c.bySeq[r.Seq] = e
		if r.Seq > lastSeq {
			lastSeq, lastHash = r.Seq, r.Hash
		}
		if c.summary.First == 0 || r.Seq < c.summary.First {
			c.summary.First = r.Seq
		}
		if r.Seq > c.summary.Last {
			c.summary.Last, c.summary.Head = r.Seq, r.Hash
		}
	}
	return c
}

// comesLater reports whether a record with a seq in (lo, hi) follows
// entry i.
func (c *chain) comesLater(i int, lo, hi uint64) bool {
	for _, e := range c.entries[i+1:] {
		if e.seq > lo && e.seq < hi {
			return true
		}
	}
	return false
}

// nodeKey returns the pinned key, else the key of an intact genesis
// record, else the key most intact records carry (the earliest of equals).
func nodeKey(entries []entry, pinned ed25519.PublicKey) string {
	if pinned != nil {
		return base64.StdEncoding.EncodeToString(pinned)
	}
	for _, e := range entries {
		if e.bad == "" && e.rec != nil && e.rec.Genesis != nil {
			return e.rec.Key
		}
	}
	counts := map[string]int{}
	best := ""
	for _, e := range entries {
		if e.bad != "" || e.rec == nil {
			continue
		}
		k := e.rec.Key
		counts[k]++
		if counts[k] > counts[best] || best == "" {
			best = k
		}
	}
	return best
}

// witnessOf is the newest witness of a node whose records were not given.
type witnessOf struct {
	by  string
	seq uint64
	at  time.Time
}

// checkWitnesses compares what nodes witnessed of each other with the
// witnessed nodes' records. It returns the nodes witnessed of which no
// record was given, each with its newest witness (the first found of
// equals).
func checkWitnesses(chains map[string]*chain, nodes []string) map[string]witnessOf {
	absent := map[string]witnessOf{}
	type claim struct {
		by   string
		seq  uint64
		hash string
	}
	truncated := map[string]claim{} // node -> highest seq witnessed beyond its end
	type mismatch struct {
		at *entry
		claim
	}
	var differ []mismatch
	for _, by := range nodes {
		for _, e := range chains[by].entries {
			if e.bad != "" || e.rec == nil || e.rec.Witness == nil {
				continue
			}
			w := e.rec.Witness
			peer := chains[w.Node]
			switch {
			case w.Node == by:
				continue
			case peer == nil:
				if a, ok := absent[w.Node]; !ok || w.Seq > a.seq {
					absent[w.Node] = witnessOf{by, w.Seq, e.rec.At}
				}
				continue
			case peer.summary.Last == 0:
				continue
			}
			peer.witnessedBy(by, e.rec)
			if w.Seq > peer.summary.Last {
				if t, ok := truncated[w.Node]; !ok || w.Seq > t.seq {
					truncated[w.Node] = claim{by, w.Seq, w.Hash}
				}
				continue
			}
			if pe := peer.bySeq[w.Seq]; pe != nil && pe.rec.Hash != w.Hash {
				differ = append(differ, mismatch{pe, claim{by, w.Seq, w.Hash}})
			}
		}
	}
	for _, d := range differ {
		c := chains[d.at.node]
		var ok uint64 // the highest seq below witnessed as it is
		for _, s := range c.matched {
			if s < d.seq {
				ok = max(ok, s)
			}
		}
		upTo := "no record of it matches a witness before"
		if ok > 0 {
			upTo = fmt.Sprintf("seq %d is as witnessed, so a record in seq %d-%d was changed", ok, ok+1, d.seq)
		}
		c.problem(d.at, "differs from what peer %s witnessed at seq %d (restored from an earlier backup?); %s", d.by, d.seq, upTo)
	}
	for _, node := range nodes {
		t, ok := truncated[node]
		if !ok {
			continue
		}
		c := chains[node]
		last := c.bySeq[c.summary.Last]
		c.problem(last, "truncated: ends at seq %d but peer %s witnessed seq %d", c.summary.Last, t.by, t.seq)
	}
	return absent
}

// witnessedBy takes in what peer by witnessed of c in record w: the key
// and genesis it saw (a conflict is a problem at c's first record or its
// genesis), and the seq, which proves the tail up to it when the record
// there is the one witnessed.
func (c *chain) witnessedBy(by string, w *Record) {
	wt := w.Witness
	if wt.Key != "" {
		if first := c.first(); wt.Key != c.key && first != nil {
			if !c.keyConflict {
				c.problem(first, "re-signed with another key: peer %s witnessed node %s with key %s (seq %d), not %s", by, c.node, wt.Key, wt.Seq, c.key)
			}
			c.keyConflict = true
		} else if wt.Key == c.key {
			c.witnessKey(by)
		}
	}
	if g := c.bySeq[1]; wt.Genesis != "" && g != nil && g.rec.Genesis != nil {
		if g.rec.Hash == wt.Genesis {
			c.matched = append(c.matched, 1)
		} else if !c.genesisConflict {
			c.genesisConflict = true
			c.problem(g, "not the genesis peer %s witnessed (%.12s…): the ledger was replaced or rewritten from the start", by, wt.Genesis)
		}
	}
	if c.summary.Witness == "" {
		c.summary.Witness = by
	}
	at := c.bySeq[wt.Seq]
	if at == nil || at.rec.Hash != wt.Hash {
		return
	}
	c.witnessKey(by)
	c.matched = append(c.matched, wt.Seq)
	if s := &c.summary; wt.Seq > s.Witnessed || wt.Seq == s.Witnessed && w.At.Before(s.WitnessAt) {
		s.Witnessed, s.WitnessBy, s.WitnessAt = wt.Seq, by, w.At
	}
}

func (c *chain) witnessKey(by string) {
	if !c.witnessedKey {
		c.witnessedKey, c.summary.KeyWitness = true, by
	}
}
