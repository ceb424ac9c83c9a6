package main

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/licensing/billing"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// ledgerFlags are the flags usage verify and bill share.
type ledgerFlags struct {
	files []string
	pubs  []string
	since []string
	tofu  string
	opts  ledger.VerifyOptions
	// pinFile are the keys read from the --trust-on-first-use file;
	// pinned says which keys verify added to it.
	pinFile map[string]ed25519.PublicKey
	pinned  []string
}

func (l *ledgerFlags) add(f *flags) {
	f.Var(list{&l.files}, "ledger", "a ledger `file` (segment files, GET /v1/ledger exports; repeat for several, or give them as arguments; - for standard input)")
	f.Var(list{&l.pubs}, "node-pub", "pin a node's key: `NODE=FILE` with FILE that node's node.pub (repeat for several)")
	f.Var(list{&l.since}, "since", "the `HEAD` the last invoice billed up to (NODE=SEQ:HASH, comma-separated, as the invoice prints it): each node's ledger must continue from it; with bill, records up to it are not billed again (repeatable)")
	f.StringVar(&l.tofu, "trust-on-first-use", "", "a `file` of pinned node keys the vendor keeps: the keys of nodes it names are pinned; nodes it does not name are trusted and added to it")
	f.BoolVar(&l.opts.AcceptNoGenesis, "accept-no-genesis", false, "accept ledgers that start at seq 1 without a genesis record (written by versions before genesis records) as complete at the head")
	f.BoolVar(&l.opts.AcceptUnwitnessedTail, "accept-unwitnessed-tail", false, "accept nodes no peer witnessed (a single-node farm), whose records removed from the end cannot be detected")
}

// verify reads the ledger files, pinned keys and billed heads and
// verifies them. It returns the report and the files' contents.
func (l *ledgerFlags) verify(e *env, f *flags, pos []string) (ledger.Report, [][]byte, error) {
	files := append(l.files, pos...)
	if len(files) == 0 {
		return ledger.Report{}, nil, usagef("want at least one ledger FILE (--ledger FILE or FILE; see capslicense %s --help)", f.Name())
	}
	pins := map[string]ed25519.PublicKey{}
	if l.tofu != "" {
		var err error
		if l.pinFile, err = ledger.LoadPins(l.tofu); err != nil {
			return ledger.Report{}, nil, err
		}
		for node, pub := range l.pinFile {
			pins[node] = pub
		}
		l.opts.TrustOnFirstUse = true
	}
	for _, p := range l.pubs {
		node, file, ok := strings.Cut(p, "=")
		if !ok || node == "" || file == "" {
			return ledger.Report{}, nil, usagef("--node-pub wants NODE=FILE, got %q", p)
		}
		pub, err := ledger.LoadNodePublicKey(file)
		if err != nil {
			return ledger.Report{}, nil, err
		}
		if old, ok := l.pinFile[node]; ok && !old.Equal(pub) {
			return ledger.Report{}, nil, fmt.Errorf("--node-pub %s is not the key %s pins for node %s", file, l.tofu, node)
		}
		pins[node] = pub
		// A node named on the command line is one whose ledger is
		// meant to be given; the --trust-on-first-use file may name
		// nodes long gone.
		l.opts.Expect = append(l.opts.Expect, node)
	}
	l.opts.PinnedKeys = pins
	l.opts.Since = map[string]ledger.Head{}
	for _, s := range l.since {
		heads, err := ledger.ParseHeads(s)
		if err != nil {
			return ledger.Report{}, nil, usagef("--since: %v", err)
		}
		for node, h := range heads {
			if _, dup := l.opts.Since[node]; dup {
				return ledger.Report{}, nil, usagef("--since: two heads for node %s", node)
			}
			l.opts.Since[node] = h
		}
	}
	var inputs []ledger.Input
	var data [][]byte
	for _, name := range files {
		b, err := readInput(e, name, "ledger", bounded.LedgerFile)
		if err != nil {
			return ledger.Report{}, nil, err
		}
		data = append(data, b)
		inputs = append(inputs, ledger.Input{Name: name, R: bytes.NewReader(b)})
	}
	rep := ledger.Verify(inputs, l.opts)
	return rep, data, l.pinFirstUse(rep)
}

// pinFirstUse adds to the --trust-on-first-use file the keys of the nodes
// it did not name whose records all verified.
func (l *ledgerFlags) pinFirstUse(rep ledger.Report) error {
	if l.tofu == "" {
		return nil
	}
	bad := map[string]bool{}
	for _, p := range rep.Problems {
		bad[p.Node] = true
	}
	var add []string
	for _, node := range sortedKeys(rep.Nodes) {
		if _, ok := l.pinFile[node]; !ok && !bad[node] {
			add = append(add, node)
		}
	}
	if len(add) == 0 {
		return nil
	}
	keys := map[string]string{}
	for _, node := range add {
		keys[node] = rep.Nodes[node].Key
	}
	if err := ledger.AddPins(l.tofu, add, keys); err != nil {
		return err
	}
	for _, node := range add {
		l.pinned = append(l.pinned, fmt.Sprintf("node %s: key %s pinned in %s (trusted on first use)", node, rep.Nodes[node].Key, l.tofu))
	}
	return nil
}

// usageVerify checks usage ledgers: exit 0 and a summary per node when
// every record verifies, else 1 and each node's first problem.
func usageVerify(e *env, args []string) error {
	f := newFlags("usage verify", "--ledger FILE [--ledger FILE ...] [--node-pub NODE=FILE ...] [--since HEAD] [--trust-on-first-use FILE] [--accept-no-genesis] [--accept-unwitnessed-tail] [--require-proof] [FILE ...]")
	var lf ledgerFlags
	lf.add(f)
	requireProof := f.Bool("require-proof", false, "exit 1 when a node's head, key or tail is unproven, not only when a record is bad (capslicense bill always requires the proof)")
	pos, err := f.parse(e, args)
	if err != nil {
		return err
	}
	rep, _, err := lf.verify(e, f, pos)
	if err != nil {
		return err
	}
	first := map[string]ledger.Problem{}
	count := map[string]int{}
	unproven := map[string][]string{}
	for _, p := range rep.Unproven {
		unproven[p.Node] = append(unproven[p.Node], p.Reason)
	}
	for _, p := range rep.First() {
		first[p.Node] = p
	}
	for _, p := range rep.Problems {
		count[p.Node]++
	}
	if p, ok := first[""]; ok {
		fmt.Fprintf(e.stdout, "lines naming no node: BAD: %s:%d: %s%s\n", p.File, p.Line, p.Reason, more(count[""]))
	}
	nodes := sortedKeys(rep.Nodes)
	// Nodes with no records: billed before (--since), witnessed by a
	// given ledger or pinned with --node-pub, but not given.
	for _, node := range append(sortedKeys(first), sortedKeys(unproven)...) {
		if _, ok := rep.Nodes[node]; !ok && node != "" && !slices.Contains(nodes, node) {
			nodes = append(nodes, node)
		}
	}
	slices.Sort(nodes)
	for _, node := range nodes {
		s, given := rep.Nodes[node]
		if p, ok := first[node]; ok && p.File == "" {
			fmt.Fprintf(e.stdout, "node %s: BAD: %s%s\n", node, p.Reason, more(count[node]))
			continue
		} else if ok {
			fmt.Fprintf(e.stdout, "node %s: BAD: seq %d (%s:%d): %s%s\n", node, p.Seq, p.File, p.Line, p.Reason, more(count[node]))
			continue
		}
		if !given {
			for _, reason := range unproven[node] {
				fmt.Fprintf(e.stdout, "node %s: UNPROVEN: %s\n", node, reason)
			}
			continue
		}
		tail := ""
		if s.Tail {
			tail = fmt.Sprintf(" (a contiguous tail: records before seq %d not given)", s.First)
		}
		fmt.Fprintf(e.stdout, "node %s: good: %d records, seq %d-%d%s, head %s, key %s\n", node, s.Records, s.First, s.Last, tail, s.Head, s.Key)
		for _, line := range proofLines(s) {
			fmt.Fprintf(e.stdout, "  %s\n", line)
		}
		for _, reason := range unproven[node] {
			fmt.Fprintf(e.stdout, "  UNPROVEN: %s\n", reason)
		}
	}
	if len(nodes) == 0 && rep.OK() {
		fmt.Fprintln(e.stdout, "no records")
	}
	for _, p := range lf.pinned {
		fmt.Fprintln(e.stdout, p)
	}
	if !rep.OK() {
		return fmt.Errorf("ledger does not verify: %d problem(s) in %d of %d node(s)", len(rep.Problems), len(first), max(len(nodes), len(first)))
	}
	if len(rep.Nodes) == 0 && len(rep.Unproven) == 0 && *requireProof {
		return errors.New("no records in the ledgers given: nothing is proven (an empty export? give each node's GET /v1/ledger)")
	}
	if !rep.Proven() {
		// Every record verifies: the contract's exit 0 (a node's own
		// ledger verifies), with what is unproven said on stdout above
		// and here; --require-proof, and bill, make it a failure.
		if *requireProof {
			return unprovenError(rep)
		}
		fmt.Fprintf(e.stderr, "capslicense usage verify: warning: %s (--require-proof makes this exit 1; capslicense bill refuses it)\n", unprovenError(rep))
	}
	return nil
}

// unprovenError is the failure of ledgers whose records verify but whose
// completeness or key is unproven.
func unprovenError(rep ledger.Report) error {
	nodes := map[string]bool{}
	for _, p := range rep.Unproven {
		nodes[p.Node] = true
	}
	what := "ledger records verify, but"
	if len(rep.Nodes) == 0 {
		what = "no ledger records given, and"
	}
	return fmt.Errorf("%s %d fact(s) of %d node(s) are unproven; first: node %s: %s",
		what, len(rep.Unproven), len(nodes), rep.Unproven[0].Node, rep.Unproven[0].Reason)
}

// proofLines say what a node's ledger is proven by: its head, key and
// tail.
func proofLines(s ledger.NodeSummary) []string {
	var out []string
	switch {
	case s.Since > 0:
		out = append(out, fmt.Sprintf("head: continues from the head billed up to (seq %d)", s.Since))
	case s.Genesis:
		out = append(out, "head: complete from its genesis record (seq 1)")
	}
	switch s.KeyTrust {
	case ledger.TrustPinned:
		out = append(out, "key: pinned")
	case ledger.TrustWitnessed:
		out = append(out, "key: witnessed by peer "+s.KeyWitness)
	case ledger.TrustFirstUse:
		out = append(out, "key: trusted on first use")
	}
	if s.Witnessed > 0 {
		out = append(out, fmt.Sprintf("tail: newest witness seq %d by peer %s at %s; %d record(s) after it not yet witnessed",
			s.Witnessed, s.WitnessBy, s.WitnessAt.UTC().Format(time.RFC3339), s.Last-s.Witnessed))
	} else if s.Witness != "" {
		out = append(out, fmt.Sprintf("tail: peer %s witnesses this node, but none of the records given yet (%d record(s))", s.Witness, s.Records))
	}
	return out
}

func more(n int) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(" (and %d more problem(s))", n-1)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// bill prints the invoice for verified ledgers and a price sheet.
func bill(e *env, args []string) error {
	f := newFlags("bill", "--ledger FILE [--ledger FILE ...] --price-sheet FILE [--from T] [--to T] [--format table|json|csv] [--node-pub NODE=FILE ...] [--since HEAD] [--trust-on-first-use FILE] [--accept-no-genesis] [--accept-unwitnessed-tail]")
	var lf ledgerFlags
	lf.add(f)
	sheetFile := f.String("price-sheet", "", "the customer's price sheet `file` (YAML; see configs/price-sheets)")
	var from, to time.Time
	f.Var(instant{&from}, "from", "bill the records whose interval starts at or after `T` (RFC 3339; default: the first)")
	f.Var(instant{&to}, "to", "bill the records whose interval starts before `T` (RFC 3339; default: all)")
	format := f.String("format", "table", "output `format`: table, json or csv")
	pos, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.require("price-sheet"); err != nil {
		return err
	}
	write := map[string]func(billing.Invoice, io.Writer) error{
		"table": billing.Invoice.WriteTable, "json": billing.Invoice.WriteJSON, "csv": billing.Invoice.WriteCSV,
	}[*format]
	if write == nil {
		return usagef("--format must be table, json or csv, got %q", *format)
	}
	if !from.IsZero() && !to.IsZero() && !to.After(from) {
		return usagef("--to must be after --from")
	}
	sheet, err := billing.LoadSheet(*sheetFile)
	if err != nil {
		return err
	}
	rep, data, err := lf.verify(e, f, pos)
	if err != nil {
		return err
	}
	for _, p := range lf.pinned {
		fmt.Fprintln(e.stderr, p)
	}
	if !rep.OK() {
		return fmt.Errorf("cannot bill: the ledger does not verify: %s (see capslicense usage verify)", rep.Problems[0])
	}
	if !rep.Proven() {
		return fmt.Errorf("cannot bill: %v (see capslicense usage verify)", unprovenError(rep))
	}
	if len(rep.Nodes) == 0 {
		return errors.New("cannot bill: no records in the ledgers given (an empty export? give each node's GET /v1/ledger)")
	}
	var records []ledger.Record
	for _, b := range data {
		for _, line := range bytes.SplitAfter(b, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			r, err := ledger.Decode(line)
			if err != nil { // cannot happen: Verify decoded it
				return errors.New("cannot bill: " + err.Error())
			}
			records = append(records, *r)
		}
	}
	inv, err := billing.BillSince(records, sheet, from, to, lf.opts.Since)
	if err != nil {
		return err
	}
	return write(inv, e.stdout)
}
