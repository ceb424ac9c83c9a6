package billing

import (
	"bytes"
	"crypto/ed25519"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing/ledger"
)

var update = flag.Bool("update", false, "rewrite testdata/ledger.jsonl and the golden invoices")

var t0 = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// writeSample writes the sample ledger: two nodes, six hourly intervals of
// voice (service totals and one account) and sms, each node witnessing
// the other.
func writeSample(t testing.TB) []byte {
	now := t0
	clock := func() time.Time { return now }
	open := func(node string, seed byte) *ledger.Ledger {
		s := make([]byte, ed25519.SeedSize)
		s[0] = seed
		l, err := ledger.Open(ledger.Options{Dir: t.TempDir(), Node: node, Cluster: "prod-eu", Key: ed25519.NewKeyFromSeed(s), Clock: clock})
		require.NoError(t, err)
		return l
	}
	n1, n2 := open("n1", 1), open("n2", 2)
	for i := range 6 {
		from := t0.Add(time.Duration(i) * time.Hour)
		now = from.Add(time.Hour)
		for k, l := range []*ledger.Ledger{n1, n2} {
			admitted := uint64(9000 + 100*i + 50*k)
			tokens, over := admitted, uint64(0)
			if i == 5 {
				tokens, over = admitted/4, admitted-admitted/4
			}
			u := []ledger.Usage{{Service: "voice", Attempts: admitted + 25, Admitted: admitted,
				Rejected: map[string]uint64{"CAPS": 20, "SESSIONS": 5}, Emergency: uint64(2 + k),
				PeakCAPS: uint64(5 + i + k), PeakSessions: uint64(40 + 3*i - 10*k), PeakSubscribers: 700,
				Tokens: tokens, Overage: over},
				{Service: "voice", Account: "acme-mobile", Attempts: 1000, Admitted: 1000, Tokens: 1000}}
			if k == 0 {
				u = append(u, ledger.Usage{Service: "sms", Attempts: 333, Admitted: 333})
			}
			if i == 2 {
				u = append(u, ledger.Usage{Service: "fax", Attempts: 1, Admitted: 1})
			}
			peer := []*ledger.Ledger{n2, n1}[k]
			seq, hash := peer.Head()
			var w []ledger.Witness
			if seq > 0 {
				w = []ledger.Witness{{Node: []string{"n2", "n1"}[k], Seq: seq, Hash: hash}}
			}
			_, err := l.Append(from, from.Add(time.Hour), u, w)
			require.NoError(t, err)
		}
	}
	var b bytes.Buffer
	for _, l := range []*ledger.Ledger{n1, n2} {
		require.NoError(t, l.Read(time.Time{}, time.Time{}, func(line []byte, _ *ledger.Record) error {
			b.Write(line)
			return nil
		}))
		require.NoError(t, l.Close())
	}
	return b.Bytes()
}

// sample returns the records of testdata/ledger.jsonl, which must verify.
func sample(t testing.TB) []ledger.Record {
	t.Helper()
	path := filepath.Join("testdata", "ledger.jsonl")
	if *update {
		require.NoError(t, os.WriteFile(path, writeSample(t), 0o644))
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	rep := ledger.Verify([]ledger.Input{{Name: path, R: bytes.NewReader(data)}}, ledger.VerifyOptions{})
	require.True(t, rep.OK(), "%v", rep.Problems)
	var recs []ledger.Record
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		r, err := ledger.Decode(line)
		require.NoError(t, err)
		recs = append(recs, *r)
	}
	return recs
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))
}

// TestGolden bills the sample ledger with each example price sheet.
func TestGolden(t *testing.T) {
	recs := sample(t)
	for _, name := range []string{"pay-per-use", "prepaid-overage", "hybrid", "tiered"} {
		sheet, err := LoadSheet(filepath.Join("..", "..", "configs", "price-sheets", name+".yaml"))
		require.NoError(t, err)
		inv, err := Bill(recs, sheet, t0, t0.Add(6*time.Hour))
		require.NoError(t, err)
		var b bytes.Buffer
		require.NoError(t, inv.WriteTable(&b))
		golden(t, name+".golden", b.Bytes())
		if name == "hybrid" {
			b.Reset()
			require.NoError(t, inv.WriteJSON(&b))
			golden(t, name+".json.golden", b.Bytes())
			b.Reset()
			require.NoError(t, inv.WriteCSV(&b))
			golden(t, name+".csv.golden", b.Bytes())
		}
	}
}

func TestBill(t *testing.T) {
	recs := sample(t)
	sheet := func(plans string) Sheet {
		t.Helper()
		s, err := ParseSheet([]byte("currency: EUR\nplans:\n" + plans))
		require.NoError(t, err)
		return s
	}
	f := func(s Sheet, from, to time.Time, want ...string) {
		t.Helper()
		inv, err := Bill(recs, s, from, to)
		require.NoError(t, err)
		var got []string
		for _, l := range inv.Lines {
			got = append(got, strings.Join([]string{l.Service, l.Description, l.Quantity.String(), l.UnitPrice.String(), l.Amount.String()}, "|"))
		}
		got = append(got, "total "+inv.Total.String())
		require.Equal(t, want, got)
	}
	// Hour 1 to 3: n1 9100+9200, n2 9150+9250 admitted.
	ppu := sheet("  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.001\"}\n")
	f(ppu, t0.Add(time.Hour), t0.Add(3*time.Hour),
		"voice|admitted attempts|36700|0.001|36.70",
		"voice|emergency attempts (metered, not billed)|10|0.00|0.00",
		"total 36.70")
	// Open bounds: all of it.
	f(ppu, time.Time{}, time.Time{},
		"voice|admitted attempts|111300|0.001|111.30",
		"voice|emergency attempts (metered, not billed)|30|0.00|0.00",
		"total 111.30")
	// An account's records; peaks add up across nodes at each instant.
	f(sheet("  - {service: voice, account: acme-mobile, model: pay_per_use, unit: admitted, price: \"0.005\"}\n"+
		"  - {service: voice, model: pay_per_use, unit: peak_caps, price: \"1\"}\n"+
		"  - {service: voice, model: pay_per_use, unit: peak_sessions, price: \"1\"}\n"),
		time.Time{}, time.Time{},
		"voice|admitted attempts of account acme-mobile|12000|0.005|60.00",
		"voice|peak CAPS|21|1|21.00",
		"voice|peak sessions|100|1|100.00",
		"voice|emergency attempts (metered, not billed)|30|0.00|0.00",
		"total 181.00")
	// Rounding half up, per line.
	f(sheet("  - {service: sms, model: pay_per_use, unit: admitted, price: \"0.000015\"}\n"), time.Time{}, time.Time{},
		"sms|admitted attempts|1998|0.000015|0.03", // 0.02997
		"total 0.03")
	f(sheet("  - {service: sms, model: hybrid, unit: admitted, fixed_fee: \"0.005\", price: \"0.0000025\"}\n"), time.Time{}, time.Time{},
		"sms|fixed fee|1|0.005|0.01",
		"sms|admitted attempts|1998|0.0000025|0.00", // 0.004995
		"total 0.01")
	// Tiers not reached are billed at 0.
	f(sheet("  - service: sms\n    model: tiered\n    unit: admitted\n    tiers: [{up_to: 1000, price: \"0.01\"}, {up_to: 5000, price: \"0.005\"}, {price: \"0.001\"}]\n"),
		time.Time{}, time.Time{},
		"sms|admitted attempts 1 to 1000|1000|0.01|10.00",
		"sms|admitted attempts 1001 to 5000|998|0.005|4.99",
		"sms|admitted attempts above 5000|0|0.001|0.00",
		"total 14.99")

	// A record given twice is refused.
	_, err := Bill(append(recs, recs[3]), ppu, time.Time{}, time.Time{})
	require.EqualError(t, err, "cannot bill: record 4 of node n1 given twice")

	// Usage of a service with no plan is noted.
	inv, err := Bill(recs, ppu, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, []string{"service fax: usage metered, but no plan in the price sheet (not billed)",
		"service sms: usage metered, but no plan in the price sheet (not billed)"}, inv.Notes)
	require.Equal(t, t0, inv.From)
	require.Equal(t, t0.Add(6*time.Hour), inv.To)
}

func TestParseSheet(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := ParseSheet([]byte(yaml))
		require.EqualError(t, err, want)
	}
	plan := func(p string) string { return "currency: EUR\nplans:\n  - {service: voice, " + p + "}\n" }
	f("", "empty price sheet")
	f("plans: []\n", "currency is required (e.g. currency: EUR)")
	f("currency: EUR\n", "plans: at least one plan is required")
	f("currency: EUR\ncolour: red\n", "line 2: field colour not found in type billing.Sheet")
	f(plan("model: flat, unit: admitted"), `plans[0]: model must be pay_per_use, prepaid, hybrid or tiered, got "flat"`)
	f(plan("model: pay_per_use, unit: calls, price: \"1\""), `plans[0]: unit must be one of attempts, admitted, rejected, tokens, overage, consumed, emergency, peak_caps, peak_sessions, peak_subscribers, got "calls"`)
	f(plan("model: pay_per_use, unit: admitted"), "plans[0]: price is required for model pay_per_use")
	f(plan("model: pay_per_use, unit: admitted, price: \"1\", fixed_fee: \"2\""), "plans[0]: fixed_fee does not apply to model pay_per_use")
	f(plan("model: pay_per_use, unit: admitted, price: 1e-3"), `line 3: want a decimal number such as 12.50, got "1e-3"`)
	f(plan("model: pay_per_use, unit: admitted, price: \"-1\""), `line 3: want a decimal number such as 12.50, got "-1"`)
	f(plan("model: pay_per_use, unit: admitted, price: \"0.0000000001\""), `line 3: at most 9 decimal places, got "0.0000000001"`)
	f(plan("model: prepaid, prepaid_tokens: 10, prepaid_price: \"1\""), "plans[0]: overage_price is required for model prepaid")
	f(plan("model: hybrid, unit: admitted, price: \"1\""), "plans[0]: fixed_fee is required for model hybrid")
	f(plan("model: tiered, unit: admitted"), "plans[0]: tiers is required for model tiered")
	f(plan("model: tiered, unit: admitted, tiers: [{up_to: 5, price: \"1\"}]"), "plans[0]: tiers[0]: the last tier has no up_to (it takes all the rest)")
	f(plan("model: tiered, unit: admitted, tiers: [{up_to: 5, price: \"1\"}, {up_to: 5, price: \"1\"}, {price: \"1\"}]"), "plans[0]: tiers[1]: up_to must be above the tier before (5), got 5")
	f(plan("model: tiered, unit: admitted, tiers: [{up_to: 5}, {price: \"1\"}]"), "plans[0]: tiers[0]: price is required")
	f("currency: EUR\nplans:\n  - {model: pay_per_use}\n", "plans[0]: service is required")

	_, err := LoadSheet("nope.yaml")
	require.EqualError(t, err, "cannot read price sheet: open nope.yaml: no such file or directory")
}

// The currency is an ISO 4217 code, as the example sheets document it:
// "euro dollars" was printed on invoices.
func TestSheetCurrencyCode(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := ParseSheet([]byte(yaml))
		require.EqualError(t, err, want)
	}
	for _, bad := range []string{"euro dollars", "eur", "EU", "EURO", "E1R", "€", "ÉUR"} {
		f("currency: "+bad+"\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"1\"}\n",
			fmt.Sprintf("currency must be an ISO 4217 code, three upper-case letters such as EUR or USD, got %q", bad))
	}
	for _, good := range []string{"EUR", "USD", "XAU"} {
		_, err := ParseSheet([]byte("currency: " + good + "\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"1\"}\n"))
		require.NoError(t, err, good)
	}
}

// TestSheetRefusesPlansBillingTwice: one plan a unit of a service,
// account or trunk key; two identical plans billed the same units twice.
func TestSheetRefusesPlansBillingTwice(t *testing.T) {
	f := func(yaml, want string) {
		t.Helper()
		_, err := ParseSheet([]byte(yaml))
		require.EqualError(t, err, want)
	}
	twice := "currency: EUR\nplans:\n  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.001\"}\n"
	f(twice+"  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.001\"}\n",
		"plans[1]: service voice: unit admitted already billed by plans[0]; two plans for the same units would bill them twice (merge them into one plan)")
	f(twice+"  - {service: voice, model: pay_per_use, unit: peak_caps, price: \"1\"}\n  - {service: voice, model: tiered, unit: admitted, tiers: [{price: \"1\"}]}\n",
		"plans[2]: service voice: unit admitted already billed by plans[0]; two plans for the same units would bill them twice (merge them into one plan)")
	f("currency: EUR\nplans:\n  - {service: voice, account: acme, model: prepaid, prepaid_tokens: 10, prepaid_price: 1, overage_price: 1}\n"+
		"  - {service: voice, account: acme, model: pay_per_use, unit: consumed, price: \"1\"}\n",
		"plans[1]: service voice: unit consumed of account acme already billed by plans[0]; two plans for the same units would bill them twice (merge them into one plan)")
	f("currency: EUR\nplans:\n  - {service: voice, trunk: a, model: pay_per_use, unit: admitted, price: 1}\n  - {service: voice, trunk: a, model: pay_per_use, unit: admitted, price: 1}\n",
		"plans[1]: service voice: unit admitted of trunk a already billed by plans[0]; two plans for the same units would bill them twice (merge them into one plan)")
	// The same unit of another service, account or trunk key is billed
	// apart.
	_, err := ParseSheet([]byte(twice + "  - {service: sms, model: pay_per_use, unit: admitted, price: \"1\"}\n" +
		"  - {service: voice, account: acme, model: pay_per_use, unit: admitted, price: \"1\"}\n" +
		"  - {service: voice, trunk: acme, model: pay_per_use, unit: admitted, price: \"1\"}\n"))
	require.NoError(t, err)
}

func TestDecimal(t *testing.T) {
	d := func(s string) Decimal {
		t.Helper()
		v, err := ParseDecimal(s)
		require.NoError(t, err)
		return v
	}
	require.Equal(t, "0.0010", d("0.0010").String())
	require.Equal(t, "42", d("42").String())
	require.Equal(t, "0", Decimal{}.String())
	require.Equal(t, "0.00", Decimal{}.Round(2).String())
	require.Equal(t, "1.50", d("1.5").Round(2).String())
	require.Equal(t, "0.01", d("0.005").Round(2).String())
	require.Equal(t, "0.00", d("0.004999999").Round(2).String())
	require.Equal(t, "1.00", d("0.995").Round(2).String())
	require.Equal(t, "3.3375", d("1.5").Mul(d("2.225")).String())
	require.Equal(t, "3.34", d("1.5").Mul(d("2.225")).Round(2).String())
	require.Equal(t, "1.2345", d("1.2").Add(d("0.0345")).String())
	require.Equal(t, 0, d("1.50").Cmp(d("1.5")))
	require.Equal(t, -1, d("0.999").Cmp(d("1")))
	require.True(t, d("0.000").IsZero())
	// Large quantities at small prices stay exact.
	big := NewDecimal(18446744073709551615).Mul(d("0.000000001"))
	require.Equal(t, "18446744073.709551615", big.String())
	require.Equal(t, "18446744073.71", big.Round(2).String())
	for _, bad := range []string{"", ".5", "5.", "1,5", "+1", "-1", "1e3", " 1", "0x10", "1.2.3"} {
		_, err := ParseDecimal(bad)
		require.Error(t, err, bad)
	}
	b, err := d("12.50").MarshalText()
	require.NoError(t, err)
	require.Equal(t, "12.50", string(b))
}

// An operator bills its own customers by trunk key: a plan with trunk
// counts that key's records alone; the service's totals, which hold the
// same attempts, are not counted again.
func TestBillTrunk(t *testing.T) {
	rec := func(seq uint64, node string, u ledger.Usage) ledger.Record {
		return ledger.Record{Seq: seq, Node: node, Cluster: "c", At: t0.Add(time.Hour), From: t0, To: t0.Add(time.Hour), Usage: &u}
	}
	recs := []ledger.Record{
		rec(1, "n1", ledger.Usage{Service: "voice", Attempts: 130, Admitted: 100, Rejected: map[string]uint64{"TRUNK_CAPS": 30}}),
		rec(2, "n1", ledger.Usage{Service: "voice", Trunk: "carrier-a", Attempts: 80, Admitted: 50, Rejected: map[string]uint64{"TRUNK_CAPS": 30},
			PeakSessions: 7}),
		rec(3, "n1", ledger.Usage{Service: "voice", Trunk: "carrier-b", Attempts: 50, Admitted: 50, PeakSessions: 4}),
		rec(1, "n2", ledger.Usage{Service: "voice", Trunk: "carrier-a", Attempts: 20, Admitted: 20, PeakSessions: 5}),
	}
	s, err := ParseSheet([]byte("currency: EUR\nplans:\n" +
		"  - {service: voice, trunk: carrier-a, model: pay_per_use, unit: admitted, price: \"0.01\"}\n" +
		"  - {service: voice, trunk: carrier-a, model: pay_per_use, unit: peak_sessions, price: \"2\"}\n" +
		"  - {service: voice, model: pay_per_use, unit: admitted, price: \"0.001\"}\n"))
	require.NoError(t, err)
	inv, err := Bill(recs, s, time.Time{}, time.Time{})
	require.NoError(t, err)
	var got []string
	for _, l := range inv.Lines {
		got = append(got, strings.Join([]string{l.Service, l.Description, l.Quantity.String(), l.Amount.String()}, "|"))
	}
	require.Equal(t, []string{
		"voice|admitted attempts of trunk carrier-a|70|0.70",
		"voice|peak sessions of trunk carrier-a|12|24.00",
		"voice|admitted attempts|100|0.10",
	}, got)

	for yaml, want := range map[string]string{
		"{service: voice, trunk: a, account: b, model: pay_per_use, unit: admitted, price: \"1\"}": "plans[0]: account and trunk: a plan bills an account's records or a trunk key's, not both",
		"{service: voice, trunk: a, model: pay_per_use, unit: tokens, price: \"1\"}":               "plans[0]: unit tokens: a trunk key's records carry attempts, admitted, rejected and peak_sessions",
	} {
		_, err := ParseSheet([]byte("currency: EUR\nplans:\n  - " + yaml + "\n"))
		require.EqualError(t, err, want)
	}
}
