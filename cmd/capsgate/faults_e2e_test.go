package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// smallFS mounts a tmpfs of size bytes on a fresh directory for the test,
// or fails under CI=true and skips elsewhere when it cannot (not root).
func smallFS(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount a small tmpfs (CI runs as root): %v", err)
		}
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes a file until the file system is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	require.NoError(t, err)
	defer f.Close()
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			require.True(t, errors.Is(err, syscall.ENOSPC), "filling the file system: %v", err)
			break
		}
	}
	_ = f.Sync()
	return path
}

// metric returns the value of a metric line of the node's /metrics.
func metric(t *testing.T, n *farm.Node, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + n.AdminAddr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestFullDisk runs a node whose data_dir is on a 8 MiB file system and
// fills it: the node keeps answering; token charges go on while their
// reservations can be written (the token log appends a few dozen bytes a
// reservation into the last page it has: room for about a hundred), and
// any refused is refused with OVERLOAD (meter.TestAwait: once the token
// log cannot be written, charges beyond what was reserved are refused);
// the failed ledger writes count in capsgate_metering_errors_total; once
// there is room again the usage of the full-disk time is written and the
// ledger verifies.
func TestFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	root := smallFS(t, 8<<20)
	bin, err := farm.BuildOnce()
	require.NoError(t, err)
	c, err := farm.Start(farm.Config{Nodes: 1, Dir: root, Bin: bin, Args: []string{"--ledger-interval", "1s"}})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	n := c.Node(1)
	lic, err := bin.Issue(c.VendorKey, "--service", meterService, "--caps", "100000", "--tokens", "100000000", "--tokens-per-attempt", "1")
	require.NoError(t, err)
	require.NoError(t, n.AddLicense(lic))
	admit := func(k int) (ok int, reasons map[string]int) {
		reasons = map[string]int{}
		for range k {
			adm, reason, _, err := n.Decision("ADMIT", meterService)
			require.NoError(t, err, "the node answers")
			if adm {
				ok++
			} else {
				reasons[reason]++
			}
		}
		return ok, reasons
	}
	time.Sleep(200 * time.Millisecond)
	ok, _ := admit(100)
	require.Equal(t, 100, ok)

	filler := fill(t, root)
	t.Log("data_dir's file system is full")
	// Up to the reservation made before (1000 tokens) charges go on, and
	// beyond it as far as the token log can still append; what is refused
	// is refused OVERLOAD, and the node keeps answering.
	ok, reasons := admit(1500)
	t.Logf("1500 ADMITs with the disk full: %d admitted, refused %v", ok, reasons)
	require.GreaterOrEqual(t, ok, 800, "what was reserved before the disk filled is used")
	require.Equal(t, 1500-ok, reasons["OVERLOAD"])
	refused := 1500 - ok
	pong, err := n.Do("PING")
	require.NoError(t, err)
	require.Equal(t, "PONG", pong)
	// The ledger and the token log append until the last page each has is
	// full (a record a second while there is usage): charges keep coming
	// until a write fails and raises the alarm.
	var errs string
	require.Eventually(t, func() bool {
		more, why := admit(100)
		ok, refused = ok+more, refused+100-more
		require.Equal(t, 100-more, why["OVERLOAD"])
		errs = metric(t, n, "capsgate_metering_errors_total")
		return errs != "" && errs != "0"
	}, 60*time.Second, 100*time.Millisecond, "the failed writes raise the alarm metric")
	t.Logf("capsgate_metering_errors_total with the disk full: %s (%d admitted in all)", errs, ok)

	require.NoError(t, os.Remove(filler))
	t.Log("room again")
	want := int64(100 + ok)
	_, s := awaitLedger(t, c, n, 10*time.Second, func(s ledgerSum) error {
		if s.Tokens != uint64(want) {
			return fmt.Errorf("ledger has %d tokens, want %d", s.Tokens, want)
		}
		return nil
	})
	t.Logf("after the disk had room again the ledger holds %d records, %d tokens (the full-disk time's included)", s.Records, s.Tokens)
	file := filepath.Join(t.TempDir(), "ledger.jsonl")
	require.NoError(t, os.WriteFile(file, fetchLedger(t, c, n), 0o600))
	out, code := usageVerify(t, c, file)
	require.Equal(t, 0, code, "the ledger verifies: %s", out)
	// The reserver tries again every 50 ms; once it has written, every
	// charge goes through.
	if refused > 0 {
		require.Eventually(t, func() bool { return strings.Contains(n.Log(), "token reservations are written again") },
			5*time.Second, 20*time.Millisecond, "the node reserves tokens again once the disk has room")
	}
	ok, reasons = admit(100)
	require.Equal(t, 100, ok, "charges go on once reservations can be written; refused: %v", reasons)
}

// TestSecretsStayOutOfLogs runs a node at debug level with every secret
// configured, goes through the paths that log (start, wrong AUTH, a wrong
// bearer token, a licence load, a stop), and finds none of the secrets in
// what it printed.
func TestSecretsStayOutOfLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	dir := t.TempDir()
	password := "resp-pass-7f3a9c"
	pwFile := filepath.Join(dir, "resp.password")
	require.NoError(t, os.WriteFile(pwFile, []byte(password+"\n"), 0o600))
	c := farm.New(t, 1, farm.WithArgs("--log-level", "debug", "--resp-password-file", pwFile))
	n := c.Node(1)
	tok, err := os.ReadFile(c.TokenFile)
	require.NoError(t, err)
	gossip, err := os.ReadFile(c.GossipKeyFile)
	require.NoError(t, err)
	vendor, err := os.ReadFile(c.VendorKey)
	require.NoError(t, err)

	_, err = n.Do("AUTH", "wrong-"+password)
	require.Error(t, err)
	_, err = n.Do("ADMIT", "x")
	require.ErrorContains(t, err, "NOAUTH")
	req, _ := http.NewRequest("GET", "http://"+n.AdminAddr+"/v1/services", nil)
	req.Header.Set("Authorization", "Bearer not-"+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 401, resp.StatusCode)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "10"))
	require.NoError(t, n.Stop())

	logs := n.Log()
	require.Contains(t, logs, "licence loaded", "the log is there")
	secrets := map[string]string{
		"RESP password": password, "admin token": strings.TrimSpace(string(tok)), "gossip key": strings.TrimSpace(string(gossip)),
	}
	// The vendor's private key file (never given to the node) stands for
	// key material in general: none of its lines may show.
	for i, line := range strings.Split(strings.TrimSpace(string(vendor)), "\n") {
		if len(line) >= 16 {
			secrets[fmt.Sprintf("vendor key line %d", i)] = line
		}
	}
	for what, secret := range secrets {
		require.NotContains(t, logs, secret, "the %s is in the log", what)
	}
	t.Logf("%d bytes of debug log, none of %d secrets in it", len(logs), len(secrets))
}

// TestDataDirModes: after a node ran with every kind of state, its data
// dir and sub-directories are 0700, key files 0600, and nothing is
// writable by group or others.
func TestDataDirModes(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := farm.New(t, 1, farm.WithArgs("--ledger-interval", "1s"))
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "100", "--tokens", "1000"))
	_, err := n.Do("ADMIT", "voice", "CALL", "c1")
	require.NoError(t, err)
	_, err = n.Do("REGISTER", "voice", "sip:a@b")
	require.NoError(t, err)
	time.Sleep(1500 * time.Millisecond) // a ledger interval, a journal flush
	var seen []string
	require.NoError(t, filepath.Walk(n.DataDir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mode := fi.Mode().Perm()
		rel, _ := filepath.Rel(n.DataDir, path)
		seen = append(seen, fmt.Sprintf("%s %o", rel, mode))
		switch {
		case fi.IsDir():
			require.Equal(t, os.FileMode(0o700), mode, rel)
		case strings.HasSuffix(path, ".key"):
			require.Equal(t, os.FileMode(0o600), mode, rel)
		default:
			require.Zero(t, mode&0o022, "%s is writable by others (%o)", rel, mode)
		}
		return nil
	}))
	t.Logf("data dir: %s", strings.Join(seen, ", "))
	require.GreaterOrEqual(t, len(seen), 10, "licences, ledger, state, tokens and keys are all there")
}

// TestTornLedgerRecord: a node killed while it wrote a ledger record
// leaves half a line; the next start cuts it off, says so in its log, and
// the ledger goes on and verifies.
func TestTornLedgerRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := farm.New(t, 1, farm.WithArgs("--ledger-interval", "1s"))
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", meterService, "--caps", "1000", "--tokens", "100000", "--tokens-per-attempt", "1"))
	for range 50 {
		_, _, _, err := n.Decision("ADMIT", meterService)
		require.NoError(t, err)
	}
	awaitLedger(t, c, n, 5*time.Second, func(s ledgerSum) error {
		if s.Tokens < 50 {
			return fmt.Errorf("%d tokens in the ledger", s.Tokens)
		}
		return nil
	})
	n.Kill()
	// The crash tore the record being written: half of a copy of the last
	// line, no newline.
	segs, err := filepath.Glob(filepath.Join(n.DataDir, "ledger", "seg-*.jsonl"))
	require.NoError(t, err)
	require.NotEmpty(t, segs)
	last := segs[len(segs)-1]
	b, err := os.ReadFile(last)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	torn := lines[len(lines)-1][:len(lines[len(lines)-1])/2]
	f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(torn)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	require.NoError(t, n.Restart())
	require.Contains(t, n.Log(), "torn", "the start reports the torn record")
	for range 20 {
		_, _, _, err := n.Decision("ADMIT", meterService)
		require.NoError(t, err)
	}
	b, s := awaitLedger(t, c, n, 5*time.Second, func(s ledgerSum) error {
		if s.Tokens < 70 {
			return fmt.Errorf("%d tokens in the ledger", s.Tokens)
		}
		return nil
	})
	file := filepath.Join(t.TempDir(), "ledger.jsonl")
	require.NoError(t, os.WriteFile(file, b, 0o600))
	out, code := usageVerify(t, c, file)
	t.Logf("after a torn record and a restart: %d records, %d tokens; verify: %s", s.Records, s.Tokens, strings.TrimSpace(out))
	require.Equal(t, 0, code, out)
}

// TestWallClockJumps moves a real node's wall clock (CAPSGATE_WALL_OFFSET_FILE)
// forward past its licence's end, then back: the licence expires on time,
// the step back raises the rollback alarm, and the licence stays expired.
func TestWallClockJumps(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	offset := filepath.Join(t.TempDir(), "offset")
	require.NoError(t, os.WriteFile(offset, []byte("0s"), 0o600))
	t.Setenv("CAPSGATE_WALL_OFFSET_FILE", offset)
	c := farm.New(t, 1)
	n := c.Node(1)
	end := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "100", "--not-after", end, "--grace", "10m"))
	reason := func() string {
		_, r, _, err := n.Decision("ADMIT", "voice")
		require.NoError(t, err)
		return r
	}
	require.Equal(t, "OK", reason())
	await := func(what string, cond func() bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		for time.Since(t0) < 10*time.Second {
			if cond() {
				return time.Since(t0)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s: not within 10 s", what)
		return 0
	}
	// Forward 2 h: past not_after and its 10 min of grace.
	require.NoError(t, os.WriteFile(offset, []byte("2h"), 0o600))
	took := await("the licence expires", func() bool { return reason() == "UNLICENSED" })
	t.Logf("clock moved 2 h forward: the licence expired %v later", took.Round(time.Millisecond))
	// Back to the real time: the alarm, and no revival.
	require.NoError(t, os.WriteFile(offset, []byte("0s"), 0o600))
	took = await("the rollback alarm", func() bool { return metric(t, n, "capsgate_clock_rollback") == "1" })
	t.Logf("clock moved back 2 h: capsgate_clock_rollback 1 after %v", took.Round(time.Millisecond))
	time.Sleep(1500 * time.Millisecond)
	require.Equal(t, "UNLICENSED", reason(), "a clock set back never revives an expired licence")
}
