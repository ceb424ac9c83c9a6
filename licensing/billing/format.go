package billing

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// WriteTable prints the invoice for people: a heading, one row per line,
// the total.
func (inv Invoice) WriteTable(w io.Writer) error {
	rows := [][]string{{"SERVICE", "DESCRIPTION", "QUANTITY", "UNIT PRICE", "AMOUNT"}}
	for _, l := range inv.Lines {
		rows = append(rows, []string{l.Service, l.Description, l.Quantity.String(), l.UnitPrice.String(), l.Amount.String()})
	}
	rows = append(rows, []string{"TOTAL", "", "", inv.Currency, inv.Total.String()})
	width := make([]int, 5)
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Invoice for %s, %s to %s, in %s\n\n", orDash(inv.Customer), stamp(inv.From), stamp(inv.To), inv.Currency)
	for _, r := range rows {
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			switch {
			case i < 2:
				b.WriteString(c + pad + "  ")
			case i < 4:
				b.WriteString(pad + c + "  ")
			default:
				b.WriteString(pad + c + "\n")
			}
		}
	}
	if inv.BilledUpTo != "" {
		b.WriteString("\nBilled up to: " + inv.BilledUpTo + "\n")
	}
	for _, n := range inv.Notes {
		b.WriteString("\nNote: " + n)
	}
	if len(inv.Notes) > 0 {
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteCSV writes a header, one record per line and a TOTAL record.
func (inv Invoice) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"service", "description", "quantity", "unit_price", "amount", "currency"})
	for _, l := range inv.Lines {
		_ = cw.Write([]string{l.Service, l.Description, l.Quantity.String(), l.UnitPrice.String(), l.Amount.String(), inv.Currency})
	}
	_ = cw.Write([]string{"TOTAL", "", "", "", inv.Total.String(), inv.Currency})
	if inv.BilledUpTo != "" {
		_ = cw.Write([]string{"BILLED UP TO", inv.BilledUpTo, "", "", "", ""})
	}
	cw.Flush()
	return cw.Error()
}

// WriteJSON writes the invoice as indented JSON; numbers are strings.
func (inv Invoice) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(inv)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
