package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// Every file capslicense reads is refused in one line, exit 1, when it is a
// FIFO, a directory, a device or over its limit, and never read to its
// end: a price sheet from /dev/zero ran out of memory.
func TestBadFilesRefused(t *testing.T) {
	vendor := keys(t)
	_, ledgers := ledgers(t)
	code, lic, stderr := cli(t, "", "issue", "--key", filepath.Join(vendor, "vendor.key"), "--service", "voice", "--caps", "10")
	require.Zero(t, code, stderr)
	licence := writeFile(t, "voice.lic", lic)
	sheet := writeFile(t, "sheet.yaml", "currency: EUR\nplans: [{service: voice, model: pay_per_use, unit: admitted, price: 1}]\n")
	f := func(cmd string, limit int64, what string, args func(bad string) []string) {
		t.Helper()
		for bad, why := range boundedtest.BadFiles(t, limit) {
			code, stdout, stderr := cli(t, "", args(bad)...)
			require.Equal(t, 1, code, stderr)
			require.Empty(t, stdout)
			require.Equal(t, "capslicense "+cmd+": "+what+why+"\n", stderr)
		}
	}
	f("issue", bounded.KeyFile, "cannot read key: ", func(bad string) []string {
		return []string{"issue", "--key", bad, "--service", "voice", "--caps", "10"}
	})
	f("verify", bounded.KeyFile, "cannot read key: ", func(bad string) []string {
		return []string{"verify", "--pub", bad, licence}
	})
	f("verify", bounded.LicenceFile, "cannot read licence: ", func(bad string) []string {
		return []string{"verify", "--pub", filepath.Join(vendor, "vendor.pub"), bad}
	})
	f("inspect", bounded.LicenceFile, "cannot read licence: ", func(bad string) []string { return []string{"inspect", bad} })
	f("usage verify", bounded.LedgerFile, "cannot read ledger: ", func(bad string) []string {
		return []string{"usage", "verify", ledgers[0], bad}
	})
	f("usage verify", bounded.KeyFile, "cannot read node public key: ", func(bad string) []string {
		return []string{"usage", "verify", "--node-pub", "n1=" + bad, ledgers[0]}
	})
	f("bill", bounded.PriceSheet, "cannot read price sheet: ", func(bad string) []string {
		return []string{"bill", "--price-sheet", bad, "--ledger", ledgers[0]}
	})
	f("bill", bounded.LedgerFile, "cannot read ledger: ", func(bad string) []string {
		return []string{"bill", "--price-sheet", sheet, "--ledger", bad}
	})

	// Standard input is bounded the same way.
	code, _, stderr = cli(t, strings.Repeat("x", bounded.LicenceFile+1), "inspect", "-")
	require.Equal(t, 1, code)
	require.Equal(t, "capslicense inspect: cannot read licence from standard input: file too large (more than 1 MiB)\n", stderr)
}
