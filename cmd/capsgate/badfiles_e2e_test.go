package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// exitsInOneLine runs bin with args and checks that it exits with code
// within 5 s, printing nothing on stdout and exactly want on stderr.
// It returns the process's peak RSS in KiB (at least the test's own at
// the fork, which Linux counts in the child's).
func exitsInOneLine(t *testing.T, code int, want string, bin string, args ...string) int64 {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	start := time.Now()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s %q still running after 5 s; stderr %q", filepath.Base(bin), args, stderr.String())
	}
	took := time.Since(start)
	require.Equal(t, code, cmd.ProcessState.ExitCode(), "%q: %s", args, stderr.String())
	require.Empty(t, stdout.String(), "%q", args)
	require.Equal(t, want+"\n", stderr.String(), "%q: one line", args)
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	t.Logf("%s %s: %v, %d MiB RSS", filepath.Base(bin), strings.Join(args, " "), took.Round(time.Millisecond), rss>>10)
	return rss
}

// Bad files given to the real binaries stop them in one line within 5 s
// and a few MiB: a key flag at /dev/zero grew capsgate to 2 GB, a 1.3 KB
// config of aliases kept it busy past 40 s, a FIFO as config hung it, and
// capslicense bill ran out of memory on a price sheet from /dev/zero and
// took 11 s and 1.5 GB on 10^6 tiers.
func TestBadFilesExitInOneLine(t *testing.T) {
	const maxRSS = 100 << 10 // KiB
	dir := t.TempDir()
	for bad, why := range boundedtest.BadFiles(t, bounded.ConfigFile) {
		rss := exitsInOneLine(t, 2, "capsgate: cannot read config file: "+why, binary, "--config", bad)
		require.Less(t, rss, int64(maxRSS))
	}
	bomb := filepath.Join(dir, "bomb.yaml")
	require.NoError(t, os.WriteFile(bomb, []byte(boundedtest.Bomb("resp", `addr: ":6390"`)), 0o600))
	exitsInOneLine(t, 2, "capsgate: invalid config file "+bomb+": "+boundedtest.BombError, binary, "--config", bomb)
	for bad, why := range boundedtest.BadFiles(t, bounded.KeyFile) {
		exitsInOneLine(t, 2, "capsgate: invalid config: vendor_keys (--vendor-key) entry 1: "+why, binary, "--dev", "--vendor-key", bad)
		exitsInOneLine(t, 2, "capsgate: invalid config: admin.token_file (--admin-token-file): "+why, binary, "--dev", "--admin-token-file", bad)
	}

	ledger := filepath.Join(dir, "none.jsonl")
	for bad, why := range boundedtest.BadFiles(t, bounded.PriceSheet) {
		rss := exitsInOneLine(t, 1, "capslicense bill: cannot read price sheet: "+why, capslicense, "bill", "--price-sheet", bad, "--ledger", ledger)
		require.Less(t, rss, int64(maxRSS))
	}
	million := filepath.Join(dir, "million.yaml")
	f, err := os.Create(million)
	require.NoError(t, err)
	w := bufio.NewWriter(f) // not built in memory: the child's RSS counts the parent's at fork
	fmt.Fprint(w, "currency: EUR\nplans:\n  - {service: voice, model: tiered, unit: admitted, tiers: [\n")
	for i := 1; i < 1000000; i++ {
		fmt.Fprintf(w, "    {up_to: %d, price: 1},\n", i)
	}
	fmt.Fprint(w, "    {price: 1}]}\n")
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())
	fi, err := os.Stat(million)
	require.NoError(t, err)
	rss := exitsInOneLine(t, 1, fmt.Sprintf("capslicense bill: cannot read price sheet: %s: file too large (%d bytes; the limit is 1 MiB)", million, fi.Size()),
		capslicense, "bill", "--price-sheet", million, "--ledger", ledger)
	require.Less(t, rss, int64(maxRSS))
	sheetBomb := filepath.Join(dir, "bomb-sheet.yaml")
	require.NoError(t, os.WriteFile(sheetBomb, []byte(boundedtest.Bomb("x", "a: b")), 0o600))
	exitsInOneLine(t, 1, "capslicense bill: price sheet "+sheetBomb+": "+boundedtest.BombError, capslicense, "bill", "--price-sheet", sheetBomb, "--ledger", ledger)
}
