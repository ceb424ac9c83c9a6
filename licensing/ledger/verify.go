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
}

// NodeSummary describes one node's records in a verified set.
type NodeSummary struct {
	First, Last uint64 // lowest and highest seq of its intact records
	Records     int    // lines attributed to the node, good or bad
	Head        string // hash of the record at Last
	Key         string // the node's key (base64): pinned, or most records'
	// Tail is set when the records start after seq 1: a contiguous tail
	// (e.g. an export filtered by time), checked as such — what came
	// before First is not verified.
	Tail bool
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

// Report is Verify's verdict. No Problems means every record verified.
type Report struct {
	Nodes    map[string]NodeSummary
	Problems []Problem // grouped by node (sorted by name), in order found
}

// OK reports whether the ledgers verified.
func (r Report) OK() bool { return len(r.Problems) == 0 }

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
// (restored from an earlier backup). A node's records may start after
// seq 1 if they are a contiguous tail (NodeSummary.Tail). Records removed
// from the end of a ledger that no peer witnessed cannot be detected.
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
	checkWitnesses(chains, nodes)
	for _, node := range nodes {
		rep.Problems = append(rep.Problems, chains[node].problems...)
	}
	return rep
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
	bySeq    map[uint64]*entry // intact records accepted in the chain
	summary  NodeSummary
	problems []Problem
}

func (c *chain) problem(e *entry, format string, args ...any) {
	c.problems = append(c.problems, Problem{Node: c.node, Seq: e.seq, File: e.file, Line: e.line, Reason: fmt.Sprintf(format, args...)})
}

func checkChain(node string, entries []entry, pinned ed25519.PublicKey) *chain {
	c := &chain{node: node, entries: entries, bySeq: map[uint64]*entry{}}
	c.summary.Records = len(entries)
	c.key = nodeKey(entries, pinned)
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

// nodeKey returns the pinned key, else the key most intact records carry
// (the earliest of equals).
func nodeKey(entries []entry, pinned ed25519.PublicKey) string {
	if pinned != nil {
		return base64.StdEncoding.EncodeToString(pinned)
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

// checkWitnesses compares what nodes witnessed of each other with the
// witnessed nodes' records.
func checkWitnesses(chains map[string]*chain, nodes []string) {
	type claim struct {
		by   string
		seq  uint64
		hash string
	}
	truncated := map[string]claim{} // node -> highest seq witnessed beyond its end
	for _, by := range nodes {
		for _, e := range chains[by].entries {
			if e.bad != "" || e.rec == nil || e.rec.Witness == nil {
				continue
			}
			w := e.rec.Witness
			peer := chains[w.Node]
			if peer == nil || w.Node == by || peer.summary.Last == 0 {
				continue
			}
			if w.Seq > peer.summary.Last {
				if t, ok := truncated[w.Node]; !ok || w.Seq > t.seq {
					truncated[w.Node] = claim{by, w.Seq, w.Hash}
				}
				continue
			}
			if pe := peer.bySeq[w.Seq]; pe != nil && pe.rec.Hash != w.Hash {
				peer.problem(pe, "differs from what peer %s witnessed at seq %d (restored from an earlier backup?)", by, w.Seq)
			}
		}
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
}
