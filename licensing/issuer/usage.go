package issuer

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
}

func (l *ledgerFlags) add(f *flags) {
	f.Var(list{&l.files}, "ledger", "a ledger `file` (segment files, GET /v1/ledger exports; repeat for several, or give them as arguments; - for standard input)")
	f.Var(list{&l.pubs}, "node-pub", "pin a node's key: `NODE=FILE` with FILE that node's node.pub (repeat for several)")
}

// verify reads the ledger files and pinned keys and verifies them. It
// returns the report and the files' contents.
func (l *ledgerFlags) verify(e *env, f *flags, pos []string) (ledger.Report, [][]byte, error) {
	files := append(l.files, pos...)
	if len(files) == 0 {
		return ledger.Report{}, nil, usagef("want at least one ledger FILE (--ledger FILE or FILE; see capslicense %s --help)", f.Name())
	}
	pins := map[string]ed25519.PublicKey{}
	for _, p := range l.pubs {
		node, file, ok := strings.Cut(p, "=")
		if !ok || node == "" || file == "" {
			return ledger.Report{}, nil, usagef("--node-pub wants NODE=FILE, got %q", p)
		}
		pub, err := ledger.LoadPublicKey(file)
		if err != nil {
			return ledger.Report{}, nil, err
		}
		pins[node] = pub
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
	return ledger.Verify(inputs, ledger.VerifyOptions{PinnedKeys: pins}), data, nil
}

// usageVerify checks usage ledgers: exit 0 and a summary per node when
// every record verifies, else 1 and each node's first problem.
func usageVerify(e *env, args []string) error {
	f := newFlags("usage verify", "--ledger FILE [--ledger FILE ...] [--node-pub NODE=FILE ...] [FILE ...]")
	var lf ledgerFlags
	lf.add(f)
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
	for _, p := range rep.First() {
		first[p.Node] = p
	}
	for _, p := range rep.Problems {
		count[p.Node]++
	}
	if p, ok := first[""]; ok {
		fmt.Fprintf(e.stdout, "lines naming no node: BAD: %s:%d: %s%s\n", p.File, p.Line, p.Reason, more(count[""]))
	}
	for _, node := range sortedKeys(rep.Nodes) {
		s := rep.Nodes[node]
		if p, ok := first[node]; ok {
			fmt.Fprintf(e.stdout, "node %s: BAD: seq %d (%s:%d): %s%s\n", node, p.Seq, p.File, p.Line, p.Reason, more(count[node]))
			continue
		}
		tail := ""
		if s.Tail {
			tail = fmt.Sprintf(" (a contiguous tail: records before seq %d not given)", s.First)
		}
		fmt.Fprintf(e.stdout, "node %s: good: %d records, seq %d-%d%s, head %s, key %s\n", node, s.Records, s.First, s.Last, tail, s.Head, s.Key)
	}
	if len(rep.Nodes) == 0 && rep.OK() {
		fmt.Fprintln(e.stdout, "no records")
	}
	if !rep.OK() {
		return fmt.Errorf("ledger does not verify: %d problem(s) in %d of %d node(s)", len(rep.Problems), len(first), max(len(rep.Nodes), len(first)))
	}
	return nil
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
	f := newFlags("bill", "--ledger FILE [--ledger FILE ...] --price-sheet FILE [--from T] [--to T] [--format table|json|csv] [--node-pub NODE=FILE ...]")
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
	if !rep.OK() {
		return fmt.Errorf("cannot bill: the ledger does not verify: %s (see capslicense usage verify)", rep.Problems[0])
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
	inv, err := billing.Bill(records, sheet, from, to)
	if err != nil {
		return err
	}
	return write(inv, e.stdout)
}
