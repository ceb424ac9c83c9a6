package billing

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/capsgate/capsgate/licensing/ledger"
)

// Places is the decimal places of amounts: line amounts are rounded to
// cents, half up, and the total is the sum of the rounded lines.
const Places = 2

// Invoice is what a customer owes for a period.
type Invoice struct {
	Currency string    `json:"currency"`
	Customer string    `json:"customer"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Lines    []Line    `json:"lines"`
	Total    Decimal   `json:"total"`
	// Notes say what was metered but not billed.
	Notes []string `json:"notes,omitempty"`
	// BilledUpTo is the head of each node's ledger this invoice covers,
	// as ledger.FormatHead writes them, comma-separated: what the next
	// bill passes to --since.
	BilledUpTo string `json:"billed_up_to"`
}

// Line is one charge.
type Line struct {
	Service     string  `json:"service"`
	Description string  `json:"description"`
	Quantity    Decimal `json:"quantity"`
	UnitPrice   Decimal `json:"unit_price"`
	Amount      Decimal `json:"amount"`
}

// Bill computes the invoice for the usage records in [from, to) (a zero
// bound is open; when open, the invoice's bound is the records'). A record
// belongs to the period its interval starts in. Records must come from
// verified ledgers (ledger.Verify); a record given twice is an error.
//
// Lines follow the sheet's plans in order. Quantities: sums over the
// service's records (Account and Key "" for the service totals, or the
// plan's account or trunk key), of every node; a peak is the largest sum, at any instant, of
// the peaks the nodes metered for the intervals covering it (an upper
// bound of the cluster's peak). Emergency attempts are billed only by a
// plan whose unit is emergency; otherwise they appear as a line at no
// charge. Usage of a service without a plan is noted, not billed.
func Bill(records []ledger.Record, sheet Sheet, from, to time.Time) (Invoice, error) {
	return BillSince(records, sheet, from, to, nil)
}

// BillSince is Bill for records that continue from the heads already
// billed (since, by node): a node's records up to its head there are not
// billed again. The invoice's BilledUpTo is, per node, the last record
// before the first whose interval starts at or after to (or since's head
// when no record is newer).
func BillSince(records []ledger.Record, sheet Sheet, from, to time.Time, since map[string]ledger.Head) (Invoice, error) {
	if err := sheet.validate(); err != nil {
		return Invoice{}, err
	}
	inv := Invoice{Currency: sheet.Currency, Customer: sheet.Customer, From: from, To: to}
	type id struct {
		node string
		seq  uint64
	}
	seen := map[id]bool{}
	var use []*ledger.Record
	for i := range records {
		r := &records[i]
		if seen[id{r.Node, r.Seq}] {
			return Invoice{}, fmt.Errorf("cannot bill: record %d of node %s given twice", r.Seq, r.Node)
		}
		seen[id{r.Node, r.Seq}] = true
		if r.Usage == nil || r.Seq <= since[r.Node].Seq || !from.IsZero() && r.From.Before(from) || !to.IsZero() && !r.From.Before(to) {
			continue
		}
		use = append(use, r)
		if from.IsZero() && (inv.From.IsZero() || r.From.Before(inv.From)) {
			inv.From = r.From
		}
		if to.IsZero() && r.To.After(inv.To) {
			inv.To = r.To
		}
	}

	inv.BilledUpTo = billedUpTo(records, to, since)

	billsEmergency := map[string]bool{}
	for _, p := range sheet.Plans {
		n, err := quantity(use, p.Service, p.Account, p.Trunk, p.Unit)
		if err != nil {
			return Invoice{}, err
		}
		inv.Lines = append(inv.Lines, p.lines(n)...)
		if p.Unit == "emergency" && p.Account == "" && p.Trunk == "" {
			billsEmergency[p.Service] = true
		}
	}
	planned := map[string]bool{}
	for _, p := range sheet.Plans {
		if planned[p.Service] {
			continue
		}
		planned[p.Service] = true
		n, err := quantity(use, p.Service, "", "", "emergency")
		if err != nil {
			return Invoice{}, err
		}
		if n > 0 && !billsEmergency[p.Service] {
			inv.Lines = append(inv.Lines, line(p.Service, "emergency attempts (metered, not billed)", n, Decimal{}.Round(Places)))
		}
	}
	var unplanned []string
	for _, r := range use {
		if s := r.Usage.Service; !planned[s] && !slices.Contains(unplanned, s) {
			unplanned = append(unplanned, s)
		}
	}
	slices.Sort(unplanned)
	for _, s := range unplanned {
		inv.Notes = append(inv.Notes, fmt.Sprintf("service %s: usage metered, but no plan in the price sheet (not billed)", s))
	}
	inv.Total = Decimal{}.Round(Places)
	for _, l := range inv.Lines {
		inv.Total = inv.Total.Add(l.Amount)
	}
	return inv, nil
}

// line prices quantity n at price.
func line(service, desc string, n uint64, price Decimal) Line {
	q := NewDecimal(n)
	return Line{Service: service, Description: desc, Quantity: q, UnitPrice: price, Amount: q.Mul(price).Round(Places)}
}

// lines returns a plan's charges for quantity n of its unit.
func (p *Plan) lines(n uint64) []Line {
	what := units[p.Unit]
	if p.Account != "" {
		what += " of account " + p.Account
	}
	if p.Trunk != "" {
		what += " of trunk " + p.Trunk
	}
	switch p.Model {
	case Prepaid:
		return []Line{
			line(p.Service, fmt.Sprintf("prepaid pool of %d tokens", p.PrepaidTokens), 1, *p.PrepaidPrice),
			line(p.Service, fmt.Sprintf("%s beyond the %d prepaid", what, p.PrepaidTokens), sub(n, uint64(p.PrepaidTokens)), *p.OveragePrice),
		}
	case Hybrid:
		usage := line(p.Service, what, n, *p.Price)
		if p.Included > 0 {
			usage = line(p.Service, fmt.Sprintf("%s beyond the %d included", what, p.Included), sub(n, uint64(p.Included)), *p.Price)
		}
		return []Line{line(p.Service, "fixed fee", 1, *p.FixedFee), usage}
	case Tiered:
		var out []Line
		var lo uint64 // units below this tier
		for _, t := range p.Tiers {
			in, desc := sub(n, lo), fmt.Sprintf("%s above %d", what, lo)
			if t.UpTo != nil {
				in, desc = min(in, uint64(*t.UpTo)-lo), fmt.Sprintf("%s %d to %d", what, lo+1, *t.UpTo)
				lo = uint64(*t.UpTo)
			}
			out = append(out, line(p.Service, desc, in, *t.Price))
		}
		return out
	}
	return []Line{line(p.Service, what, n, *p.Price)}
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// quantity returns how much of unit the records of service (and account,
// or trunk key) show. A sum or a peak past what a uint64 holds (18446744073709551615) is
// an error, never a wrapped or rounded number on an invoice.
func quantity(use []*ledger.Record, service, account, trunk, unit string) (uint64, error) {
	var sum uint64
	var carry uint64
	add := func(n uint64) {
		var c uint64
		sum, c = bits.Add64(sum, n, 0)
		carry |= c
	}
	var peaks []event
	for _, r := range use {
		u := r.Usage
		if u.Service != service || u.Account != account || u.Trunk != trunk {
			continue
		}
		switch unit {
		case "attempts":
			add(u.Attempts)
		case "admitted":
			add(u.Admitted)
		case "rejected":
			for _, n := range u.Rejected {
				add(n)
			}
		case "tokens":
			add(u.Tokens)
		case "overage":
			add(u.Overage)
		case "consumed":
			add(u.Tokens)
			add(u.Overage)
		case "emergency":
			add(u.Emergency)
		case "peak_caps":
			peaks = append(peaks, events(r, u.PeakCAPS)...)
		case "peak_sessions":
			peaks = append(peaks, events(r, u.PeakSessions)...)
		case "peak_subscribers":
			peaks = append(peaks, events(r, u.PeakSubscribers)...)
		}
	}
	if peaks != nil {
		sum, carry = maxOverlap(peaks)
	}
	if carry != 0 {
		what := "service " + service
		if account != "" {
			what += " account " + account
		}
		return 0, fmt.Errorf("cannot bill %s: its %s add up to more than %d", what, units[unit], uint64(math.MaxUint64))
	}
	return sum, nil
}

// event is a node's peak starting or ending at an instant.
type event struct {
	at   time.Time
	end  bool
	peak uint64
}

func events(r *ledger.Record, peak uint64) []event {
	end := r.To
	if !end.After(r.From) {
		end = r.From.Add(time.Nanosecond) // an instant still counts
	}
	return []event{{r.From, false, peak}, {end, true, peak}}
}

// maxOverlap returns the largest sum of the peaks whose intervals overlap,
// and a non-zero carry if that sum passes what a uint64 holds.
func maxOverlap(ev []event) (best, carry uint64) {
	slices.SortFunc(ev, func(a, b event) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		switch { // ends before starts
		case a.end && !b.end:
			return -1
		case !a.end && b.end:
			return 1
		}
		return 0
	})
	var cur uint64
	for _, e := range ev {
		if e.end {
			cur -= e.peak // never below 0: its start came before
			continue
		}
		var c uint64
		if cur, c = bits.Add64(cur, e.peak, 0); c != 0 {
			return 0, c
		}
		best = max(best, cur)
	}
	return best, 0
}

// billedUpTo returns each node's head covered by an invoice up to to:
// the record before the node's first whose interval starts at or after
// to, or since's head if that is later.
func billedUpTo(records []ledger.Record, to time.Time, since map[string]ledger.Head) string {
	heads := map[string]ledger.Head{}
	for n, h := range since {
		heads[n] = h
	}
	cut := map[string]uint64{} // node -> first seq starting at or after to
	for i := range records {
		r := &records[i]
		if !to.IsZero() && !r.From.Before(to) && (cut[r.Node] == 0 || r.Seq < cut[r.Node]) {
			cut[r.Node] = r.Seq
		}
	}
	for i := range records {
		r := &records[i]
		if c := cut[r.Node]; (c == 0 || r.Seq < c) && r.Seq > heads[r.Node].Seq {
			heads[r.Node] = ledger.Head{Seq: r.Seq, Hash: r.Hash}
		}
	}
	nodes := make([]string, 0, len(heads))
	for n := range heads {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = ledger.FormatHead(n, heads[n])
	}
	return strings.Join(parts, ",")
}
