package billing

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// A price sheet file is refused in one line when it is a FIFO, a
// directory, a device or over bounded.PriceSheet: one from /dev/zero ran
// out of memory.
func TestSheetFileBounded(t *testing.T) {
	boundedtest.Refused(t, bounded.PriceSheet, "cannot read price sheet: ", func(path string) error {
		_, err := LoadSheet(path)
		return err
	})
}

// tiers is a tiered plan of n tiers.
func tiers(n int) string {
	var b strings.Builder
	b.WriteString("  - service: voice\n    model: tiered\n    unit: admitted\n    tiers:\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "      - {up_to: %d, price: \"0.01\"}\n", i)
	}
	b.WriteString("      - {price: \"0.01\"}\n")
	return b.String()
}

// plans are n pay-per-use plans of voice's admitted attempts, each for
// its own account (one plan a unit: the same twice is refused).
func plans(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "  - {service: voice, account: a%d, model: pay_per_use, unit: admitted, price: 1}\n", i)
	}
	return b.String()
}

// tieredPlans are n plans of tiers(MaxTiers), each for its own account.
func tieredPlans(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(strings.Replace(tiers(MaxTiers), "service: voice\n", fmt.Sprintf("service: voice\n    account: a%d\n", i), 1))
	}
	return b.String()
}

// Every bound of a price sheet, at its edge and one past it: each refusal
// names the bound it met, so the sheet was not parsed past it (10^6 tiers
// took 11 s and 1.5 GB; the times are in the README, not asserted here).
func TestSheetBounds(t *testing.T) {
	f := func(sheet, want string) {
		t.Helper()
		_, err := ParseSheet([]byte(sheet))
		if want == "" {
			require.NoError(t, err)
			return
		}
		require.EqualError(t, err, want)
	}
	head := "currency: EUR\nplans:\n"
	f(head+tiers(MaxTiers), "")
	f(head+tiers(MaxTiers+1), "plans[0]: tiers: at most 1000 tiers, got 1001")
	f(head+plans(MaxPlans), "")
	f(head+plans(MaxPlans+1), "plans: at most 1000 plans, got 1001")
	// The largest sheet the bounds let through: 19 plans of 1000 tiers
	// (100000 values would be 20; 700 KB).
	f(head+tieredPlans(19), "")
	f(head+tieredPlans(20), "line 3: the document expands to more than 100000 values (aliases and merge keys followed); write the values out")
	million := head + tiers(1000000)
	f(million, fmt.Sprintf("file too large (%d bytes; the limit is 1 MiB)", len(million)))
	f(boundedtest.Bomb("currency: EUR\nplans: [{service: voice, model: pay_per_use, unit: admitted, price: 1}]\nx", "a: b"),
		"line 10: the document expands to more than 100000 values (aliases and merge keys followed); write the values out")
	f(head+"  - "+strings.Repeat("[", 20000)+strings.Repeat("]", 20000)+"\n", "line 3: exceeded max depth of 10000")

	// Counts: whole numbers in decimal digits up to 2^64-1, never rounded
	// through a float (2^64 was read as 2^63, 1.5 as 1).
	prepaid := func(n string) string {
		return head + "  - {service: voice, model: prepaid, prepaid_tokens: " + n + ", prepaid_price: 1, overage_price: 1}\n"
	}
	f(prepaid("18446744073709551615"), "")
	f(prepaid("18446744073709551616"), "line 3: 18446744073709551616 is more than 18446744073709551615, the largest count a price sheet takes")
	f(prepaid("99999999999999999999999999"), "line 3: 99999999999999999999999999 is more than 18446744073709551615, the largest count a price sheet takes")
	f(prepaid("1.5"), `line 3: want a whole number such as 1000, got "1.5"`)
	f(prepaid("1e3"), `line 3: want a whole number such as 1000, got "1e3"`)
	f(prepaid("-1"), `line 3: want a whole number such as 1000, got "-1"`)
	f(prepaid("0x10"), `line 3: want a whole number such as 1000, got "0x10"`)
	f(prepaid("[1]"), `line 3: want a whole number such as 1000, got a list`)
	f(head+"  - {service: voice, model: tiered, unit: admitted, tiers: [{up_to: 18446744073709551616, price: 1}, {price: 1}]}\n",
		"line 3: 18446744073709551616 is more than 18446744073709551615, the largest count a price sheet takes")
}

// Quantities at the end of their range are billed exactly, and a sum past
// 2^64-1 is an error rather than a wrapped number.
func TestBillExtremes(t *testing.T) {
	const max = uint64(1<<64 - 1)
	rec := func(seq uint64, u ledger.Usage) ledger.Record {
		from := t0.Add(time.Duration(seq) * time.Hour)
		return ledger.Record{Seq: seq, Node: "n1", From: from, To: from.Add(time.Hour), Usage: &u}
	}
	sheet, err := ParseSheet([]byte("currency: EUR\nplans:\n  - {service: voice, model: prepaid, prepaid_tokens: 18446744073709551615, prepaid_price: 1, overage_price: 1}\n"))
	require.NoError(t, err)
	inv, err := Bill([]ledger.Record{rec(1, ledger.Usage{Service: "voice", Tokens: max})}, sheet, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, "prepaid pool of 18446744073709551615 tokens", inv.Lines[0].Description)
	require.Equal(t, "0", inv.Lines[1].Quantity.String())

	// One more token than a uint64 holds, over two records.
	_, err = Bill([]ledger.Record{rec(1, ledger.Usage{Service: "voice", Tokens: max}), rec(2, ledger.Usage{Service: "voice", Overage: 1})},
		sheet, time.Time{}, time.Time{})
	require.EqualError(t, err, "cannot bill service voice: its tokens consumed add up to more than 18446744073709551615")

	// Peaks of two nodes at once past 2^64-1; one after the other, fine.
	peaks, err := ParseSheet([]byte("currency: EUR\nplans:\n  - {service: voice, account: a, model: pay_per_use, unit: peak_sessions, price: 1}\n"))
	require.NoError(t, err)
	r1, r2 := rec(1, ledger.Usage{Service: "voice", Account: "a", PeakSessions: max}), rec(1, ledger.Usage{Service: "voice", Account: "a", PeakSessions: 1})
	r2.Node = "n2"
	_, err = Bill([]ledger.Record{r1, r2}, peaks, time.Time{}, time.Time{})
	require.EqualError(t, err, "cannot bill service voice account a: its peak sessions add up to more than 18446744073709551615")
	r2 = rec(2, ledger.Usage{Service: "voice", Account: "a", PeakSessions: max})
	inv, err = Bill([]ledger.Record{r1, r2}, peaks, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, "18446744073709551615", inv.Lines[0].Quantity.String())
}
