package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing"
)

var now = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// cli runs capslicense in-process at the fixed instant now.
func cli(t *testing.T, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = dispatch(&env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, now: func() time.Time { return now }}, args)
	return code, out.String(), errOut.String()
}

// keys runs keygen into a fresh directory and returns it.
func keys(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "vendor")
	code, stdout, stderr := cli(t, "", "keygen", "--out", dir)
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stderr)
	pub, err := licensing.LoadVendorPublicKey(filepath.Join(dir, "vendor.pub"))
	require.NoError(t, err)
	require.Equal(t, "wrote "+dir+"/vendor.key (secret, mode 0600) and "+dir+"/vendor.pub\nkey id "+licensing.KeyID(pub)+"\n", stdout)
	return dir
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(data), 0o644))
	return path
}

func TestKeygen(t *testing.T) {
	dir := keys(t)
	info, err := os.Stat(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	before, err := os.ReadFile(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)

	code, stdout, stderr := cli(t, "", "keygen", "--out", dir)
	require.Equal(t, 1, code)
	require.Empty(t, stdout)
	require.Equal(t, "capslicense keygen: cannot write "+dir+"/vendor.key: file already exists (refusing to overwrite a vendor key)\n", stderr)
	after, err := os.ReadFile(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.Equal(t, before, after)
}

func TestIssueVerifyInspect(t *testing.T) {
	dir := keys(t)
	key, err := licensing.LoadVendorKey(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)

	code, armored, stderr := cli(t, "", "issue", "--key", dir+"/vendor.key", "--service", "vpn",
		"--caps", "500", "--sessions", "200", "--subscribers", "10000", "--tokens", "1000000",
		"--tokens-per-attempt", "1", "--tokens-per-minute", "2", "--overage", "percent:10", "--unlimited",
		"--not-before", "2025-06-01T00:00:00Z", "--not-after", "2026-06-01T00:00:00+02:00", "--grace", "72h",
		"--customer", "ACME Telecom", "--cluster", "prod-eu", "--id", "lic-0001", "--period", "monthly")
	require.Equal(t, 0, code, stderr)
	require.Empty(t, stderr)
	require.True(t, strings.HasPrefix(armored, "-----BEGIN CAPSGATE LICENSE-----\n"))

	ring, err := licensing.LoadKeyring(dir + "/vendor.pub")
	require.NoError(t, err)
	l, err := ring.Verify([]byte(armored))
	require.NoError(t, err)
	require.Equal(t, &licensing.License{
		ID: "lic-0001", IssuedAt: now, Customer: "ACME Telecom", Cluster: "prod-eu", Service: "vpn",
		CAPS: 500, Sessions: 200, Subscribers: 10000, Tokens: 1000000, TokensPerAttempt: 1, TokensPerMinute: 2,
		Overage: "percent:10", Period: "monthly", Unlimited: true,
		NotBefore: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2026, 5, 31, 22, 0, 0, 0, time.UTC),
		Grace: 72 * time.Hour, KeyID: key.ID(),
	}, l)

	file := writeFile(t, "acme.license", armored)
	fields := "" +
		"Id:                 lic-0001\n" +
		"Issued-At:          2025-06-01T12:00:00Z\n" +
		"Customer:           ACME Telecom\n" +
		"Cluster:            prod-eu\n" +
		"Service:            vpn\n" +
		"Caps:               unlimited\n" +
		"Sessions:           200\n" +
		"Subscribers:        10000\n" +
		"Tokens:             1000000\n" +
		"Tokens-Per-Attempt: 1\n" +
		"Tokens-Per-Minute:  2\n" +
		"Overage:            percent:10\n" +
		"Period:             monthly\n" +
		"Not-Before:         2025-06-01T00:00:00Z\n" +
		"Not-After:          2026-05-31T22:00:00Z\n" +
		"Grace:              72h0m0s\n" +
		"Key-Id:             " + key.ID() + "\n" +
		"State:              active at 2025-06-01T12:00:00Z (revocations not checked)\n"

	f := func(stdin string, args []string, wantCode int, wantOut, wantErr string) {
		t.Helper()
		code, stdout, stderr := cli(t, stdin, args...)
		require.Equal(t, wantCode, code, stderr)
		require.Equal(t, wantOut, stdout)
		require.Equal(t, wantErr, stderr)
	}
	good := "Signature: good, licence signed by key " + key.ID() + "\n" + fields
	f("", []string{"verify", "--pub", dir + "/vendor.pub", file}, 0, good, "")
	f("", []string{"verify", file, "--pub", dir + "/vendor.pub"}, 0, good, "")
	f(armored, []string{"verify", "--pub", dir + "/vendor.pub", "-"}, 0, good, "")
	f("", []string{"inspect", file}, 0, "NOT VERIFIED: the signature was not checked (use capslicense verify)\n"+fields, "")
	f("mail body\r\n"+strings.ReplaceAll(armored, "\n", "\r\n"), []string{"inspect", "-"}, 0,
		"NOT VERIFIED: the signature was not checked (use capslicense verify)\n"+fields, "")

	// Key rotation: the old key and a new one both trusted.
	other := keys(t)
	f("", []string{"verify", "--pub", other + "/vendor.pub", "--pub", dir + "/vendor.pub", file}, 0, good, "")

	// Failures: exit 1, one line naming the reason.
	otherKey, err := licensing.LoadVendorKey(other + "/vendor.key")
	require.NoError(t, err)
	f("", []string{"verify", "--pub", other + "/vendor.pub", file}, 1, "",
		"capslicense verify: "+file+`: unknown vendor key: licence is signed by key "`+key.ID()+`", which is not among the trusted keys [`+otherKey.ID()+"]\n")
	tampered := flipPayloadChar(armored, `"caps":500`, `"caps":900`)
	f(tampered, []string{"verify", "--pub", dir + "/vendor.pub", "-"}, 1, "",
		"capslicense verify: -: bad signature: licence does not verify with key "+key.ID()+" (altered, or signed by another key)\n")
	f("hello", []string{"verify", "--pub", dir + "/vendor.pub", "-"}, 1, "",
		"capslicense verify: -: malformed: no -----BEGIN CAPSGATE LICENSE----- line\n")
	f(armored[:len(armored)-40], []string{"inspect", "-"}, 1, "",
		"capslicense inspect: -: malformed: no -----END CAPSGATE LICENSE----- line (truncated?)\n")
	f("", []string{"verify", "--pub", dir + "/vendor.pub", dir + "/missing"}, 1, "",
		"capslicense verify: cannot read licence: open "+dir+"/missing: no such file or directory\n")
	f("", []string{"verify", "--pub", file, file}, 1, "",
		"capslicense verify: cannot read key "+file+": malformed: no -----BEGIN CAPSGATE VENDOR PUBLIC KEY----- line\n")
}

// flipPayloadChar re-encodes an armored licence with one substitution in
// its decoded payload, keeping the signature.
func flipPayloadChar(armored, from, to string) string {
	lines := strings.Split(armored, "\n")
	var b64 strings.Builder
	i := 0
	for i < len(lines) && lines[i] != "" {
		i++
	}
	for _, line := range lines[i+1:] {
		if strings.HasPrefix(line, "-----END") {
			break
		}
		b64.WriteString(line)
	}
	payload, _ := decodeB64(b64.String())
	payload = strings.Replace(payload, from, to, 1)
	return "-----BEGIN CAPSGATE LICENSE-----\n\n" + encodeB64(payload) + "\n-----END CAPSGATE LICENSE-----\n"
}

func TestRevoke(t *testing.T) {
	dir := keys(t)
	code, armored, stderr := cli(t, "", "revoke", "--key", dir+"/vendor.key", "--id", "lic-1", "--id", "lic-2", "--reason", "refund")
	require.Equal(t, 0, code, stderr)
	require.True(t, strings.HasPrefix(armored, "-----BEGIN CAPSGATE LICENSE REVOCATION-----\n"))
	ring, err := licensing.LoadKeyring(dir + "/vendor.pub")
	require.NoError(t, err)
	r, err := ring.VerifyRevocation([]byte(armored))
	require.NoError(t, err)
	require.Equal(t, []string{"lic-1", "lic-2"}, r.Revokes)
	require.Equal(t, "refund", r.Reason)
	require.Equal(t, now, r.IssuedAt)

	code, stdout, stderr := cli(t, armored, "verify", "--pub", dir+"/vendor.pub", "-")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "Signature: good, revocation signed by key "+r.KeyID+"\n"+
		"Id:                 "+r.ID+"\n"+
		"Issued-At:          2025-06-01T12:00:00Z\n"+
		"Revokes:            lic-1, lic-2\n"+
		"Reason:             refund\n"+
		"Key-Id:             "+r.KeyID+"\n", stdout)
	code, stdout, _ = cli(t, armored, "inspect", "-")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(stdout, "NOT VERIFIED"))
}

func TestUsageErrors(t *testing.T) {
	dir := keys(t)
	key := dir + "/vendor.key"
	f := func(wantErr string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(t, "", args...)
		require.Equal(t, 2, code)
		require.Empty(t, stdout)
		require.Equal(t, wantErr+"\n", stderr)
	}
	f("capslicense: unknown command \"sign\" (see capslicense --help)", "sign")
	f("capslicense usage: want a subcommand: usage verify (see capslicense --help)", "usage")
	f("capslicense usage: want a subcommand: usage verify (see capslicense --help)", "usage", "check")
	f("capslicense usage verify: want at least one ledger FILE (--ledger FILE or FILE; see capslicense usage verify --help)", "usage", "verify")
	f(`capslicense usage verify: --node-pub wants NODE=FILE, got "n1"`, "usage", "verify", "--node-pub", "n1", "x")
	f("capslicense bill: --price-sheet is required (see capslicense bill --help)", "bill", "--ledger", "x")
	f(`capslicense bill: --format must be table, json or csv, got "xml"`, "bill", "--ledger", "x", "--price-sheet", "y", "--format", "xml")
	f("capslicense bill: --to must be after --from", "bill", "--ledger", "x", "--price-sheet", "y", "--from", "2025-01-02T00:00:00Z", "--to", "2025-01-01T00:00:00Z")
	f("capslicense keygen: --out is required (see capslicense keygen --help)", "keygen")
	f("capslicense keygen: unexpected argument \"x\" (see capslicense keygen --help)", "keygen", "--out", dir, "x")
	f("capslicense issue: flag provided but not defined: -bogus", "issue", "--bogus")
	f("capslicense issue: --key is required (see capslicense issue --help)", "issue", "--service", "vpn")
	f("capslicense issue: --service is required (see capslicense issue --help)", "issue", "--key", key)
	f("capslicense issue: flag needs an argument: -caps", "issue", "--key", key, "--service", "vpn", "--caps")
	f(`capslicense issue: invalid value "-5" for flag -caps: must be >= 0`, "issue", "--key", key, "--service", "vpn", "--caps", "-5")
	f(`capslicense issue: invalid value "1k" for flag -sessions: want a whole number`, "issue", "--key", key, "--service", "vpn", "--sessions", "1k")
	f(`capslicense issue: invalid value "99999999999999999999" for flag -tokens: want a whole number`, "issue", "--key", key, "--service", "vpn", "--tokens", "99999999999999999999")
	f(`capslicense issue: invalid value "2025-13-01" for flag -not-after: want an RFC 3339 time such as 2026-01-31T00:00:00Z`, "issue", "--key", key, "--service", "vpn", "--not-after", "2025-13-01")
	f(`capslicense issue: invalid value "3d" for flag -grace: want a duration such as 72h or 90m`, "issue", "--key", key, "--service", "vpn", "--grace", "3d")
	f(`capslicense issue: invalid value "-1h" for flag -grace: must be >= 0`, "issue", "--key", key, "--service", "vpn", "--grace", "-1h")
	f(`capslicense issue: cannot sign licence: invalid field overage: must be none, percent:N (0 <= N <= 1000) or unlimited, got "percent:2000"`, "issue", "--key", key, "--service", "vpn", "--overage", "percent:2000")
	f(`capslicense issue: cannot sign licence: invalid field period: must be none or monthly, got "yearly"`, "issue", "--key", key, "--service", "vpn", "--period", "yearly")
	f(`capslicense issue: cannot sign licence: invalid field service: must match [A-Za-z0-9._:-]{1,64}, got "my vpn"`, "issue", "--key", key, "--service", "my vpn")
	f(`capslicense issue: cannot sign licence: invalid field not_after: must be after not_before (2026-01-01T00:00:00Z), got 2025-01-01T00:00:00Z`,
		"issue", "--key", key, "--service", "vpn", "--not-before", "2026-01-01T00:00:00Z", "--not-after", "2025-01-01T00:00:00Z")
	f("capslicense verify: --pub is required (see capslicense verify --help)", "verify", "x")
	f("capslicense verify: want exactly one FILE (or - for standard input), got 0 (see capslicense verify --help)", "verify", "--pub", "p")
	f("capslicense verify: want exactly one FILE (or - for standard input), got 2 (see capslicense verify --help)", "verify", "--pub", "p", "a", "b")
	f("capslicense inspect: want exactly one FILE (or - for standard input), got 0 (see capslicense inspect --help)", "inspect")
	f("capslicense revoke: --id is required (see capslicense revoke --help)", "revoke", "--key", key)
	f(`capslicense revoke: invalid value "" for flag -id: must not be empty`, "revoke", "--key", key, "--id", "")
	f(`capslicense revoke: cannot sign revocation: invalid field revokes: "a b" is not a licence id`, "revoke", "--key", key, "--id", "a b")

	// A key that cannot be read is a failure (1), not a usage error.
	code, _, stderr := cli(t, "", "issue", "--key", dir+"/nope.key", "--service", "vpn")
	require.Equal(t, 1, code)
	require.Equal(t, "capslicense issue: cannot read key: open "+dir+"/nope.key: no such file or directory\n", stderr)

	// No command: the usage on stderr.
	code, stdout, stderr := cli(t, "")
	require.Equal(t, 2, code)
	require.Empty(t, stdout)
	require.Equal(t, usage, stderr)
}

func TestHelp(t *testing.T) {
	f := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := cli(t, "", args...)
		require.Equal(t, 0, code)
		require.Empty(t, stderr)
		return stdout
	}
	require.Equal(t, usage, f("--help"))
	require.Equal(t, usage, f("-h"))
	require.Equal(t, usage, f("help"))
	out := f("issue", "--help")
	require.True(t, strings.HasPrefix(out, "usage: capslicense issue --key vendor.key --service S"))
	require.Contains(t, out, "  -caps N\n    \tadd N call attempts per second\n")
	require.True(t, strings.HasPrefix(f("verify", "-h"), "usage: capslicense verify --pub vendor.pub [--pub other.pub ...] FILE\n"))
	require.True(t, strings.HasPrefix(f("keygen", "--help"), "usage: capslicense keygen --out DIR\n"))
	require.True(t, strings.HasPrefix(f("revoke", "--help"), "usage: capslicense revoke --key vendor.key --id ID"))
	require.True(t, strings.HasPrefix(f("inspect", "--help"), "usage: capslicense inspect FILE\n"))
}

func TestRun(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, run([]string{"--help"}, strings.NewReader(""), &out, &errOut))
	require.Equal(t, usage, out.String())
}

func TestDashDashEndsFlags(t *testing.T) {
	dir := keys(t)
	code, _, stderr := cli(t, "", "verify", "--pub", dir+"/vendor.pub", "--", "--weird-name")
	require.Equal(t, 1, code)
	require.Equal(t, "capslicense verify: cannot read licence: open --weird-name: no such file or directory\n", stderr)
}
