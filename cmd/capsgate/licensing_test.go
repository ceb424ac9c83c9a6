package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// run runs one of the binaries and returns its output and exit code.
func run(t *testing.T, stdin string, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return string(out), code
}

// vendor makes a vendor key pair, an admin token and a data dir.
type vendor struct{ dir, key, pub, token, data string }

func newVendor(t *testing.T) vendor {
	t.Helper()
	dir := t.TempDir()
	out, code := run(t, "", capslicense, "keygen", "--out", dir)
	require.Zero(t, code, out)
	v := vendor{dir: dir, key: filepath.Join(dir, "vendor.key"), pub: filepath.Join(dir, "vendor.pub"),
		token: filepath.Join(dir, "admin.token"), data: filepath.Join(dir, "data")}
	require.NoError(t, os.WriteFile(v.token, []byte("tok-1\n"), 0o600))
	return v
}

// issue signs a licence and returns its file.
func (v vendor) issue(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, code := run(t, "", capslicense, append([]string{"issue", "--key", v.key}, args...)...)
	require.Zero(t, code, out)
	path := filepath.Join(v.dir, name)
	require.NoError(t, os.WriteFile(path, []byte(out), 0o600))
	return path
}

func (v vendor) node(t *testing.T) *proc {
	return start(t, "--cluster-id", "farm-1", "--data-dir", v.data, "--vendor-key", v.pub,
		"--admin-token-file", v.token, "--gossip-insecure")
}

func (v vendor) ctl(t *testing.T, p *proc, args ...string) (string, int) {
	return run(t, "", capsctl, append([]string{"--addr", "http://" + p.admin, "--token-file", v.token}, args...)...)
}

func TestLicencesStackLiveAndPersist(t *testing.T) {
	v := newVendor(t)
	p := v.node(t)
	c := dial(t, p.resp)
	_, _ = c.c.Write([]byte("ADMIT voice\r\n"))
	_, reason, _, _ := c.decision(t)
	require.Equal(t, "UNLICENSED", reason)

	first := v.issue(t, "a.lic", "--service", "voice", "--caps", "500", "--sessions", "100", "--customer", "ACME Telecom", "--id", "voice-a")
	out, code := v.ctl(t, p, "license", "add", first)
	require.Zero(t, code, out)
	require.Equal(t, "loaded licence voice-a for service voice: active\n", out)
	r := paced(t, p.resp, "ADMIT voice", 1500, time.Second)
	t.Logf("one licence: %s", r)
	requireRate(t, r, 500, 50)

	second := v.issue(t, "b.lic", "--service", "voice", "--caps", "500", "--id", "voice-b")
	out, code = v.ctl(t, p, "license", "add", second)
	require.Zero(t, code, out)
	time.Sleep(100 * time.Millisecond) // the bucket refills to its new burst
	r = paced(t, p.resp, "ADMIT voice", 1500, time.Second)
	t.Logf("two licences: %s", r)
	requireRate(t, r, 1000, 100)
	// The connection opened before the licences is still served.
	_, _ = c.c.Write([]byte("PING\r\n"))
	require.Equal(t, "+PONG", c.line(t))

	// Loading again is idempotent.
	out, code = v.ctl(t, p, "license", "add", second)
	require.Zero(t, code, out)
	require.Equal(t, "licence voice-b for service voice was already loaded: active\n", out)

	// Refused licences change nothing and say why.
	forged, err := os.ReadFile(second)
	require.NoError(t, err)
	forgedPath := filepath.Join(v.dir, "forged.lic")
	require.NoError(t, os.WriteFile(forgedPath, []byte(strings.Replace(string(forged), "voice-b", "voice-c", 1)), 0o600))
	refuse := func(file, reason string) {
		t.Helper()
		out, code := v.ctl(t, p, "license", "add", file)
		require.Equal(t, 1, code, out)
		require.Regexp(t, reason, out)
		require.Equal(t, 1, strings.Count(out, "\n"), "one line: %q", out)
	}
	lines := strings.Split(string(forged), "\n")
	for i, l := range lines { // flip one character of the signed payload
		if len(l) == 64 && !strings.Contains(l, ":") {
			b := []byte(l)
			if b[10] == 'A' {
				b[10] = 'B'
			} else {
				b[10] = 'A'
			}
			lines[i] = string(b)
			break
		}
	}
	require.NoError(t, os.WriteFile(forgedPath, []byte(strings.Join(lines, "\n")), 0o600))
	refuse(forgedPath, `(422 bad_signature|400 malformed)`) // malformed when the flip breaks the JSON
	expired := v.issue(t, "old.lic", "--service", "voice", "--caps", "500", "--not-before", "2020-01-01T00:00:00Z",
		"--not-after", "2021-01-01T00:00:00Z", "--grace", "72h")
	refuse(expired, "422 expired")
	foreign := v.issue(t, "foreign.lic", "--service", "voice", "--caps", "500", "--cluster", "farm-2")
	refuse(foreign, "422 wrong_cluster")
	other := newVendor(t)
	refuse(other.issue(t, "other.lic", "--service", "voice", "--caps", "500"), "422 unknown_key")

	out, code = v.ctl(t, p, "license", "list")
	require.Zero(t, code, out)
	require.Regexp(t, `(?m)^voice-a\s+voice\s+active\s+500\s+100\s+0\s+0\s+never\s+ACME Telecom$`, out)
	require.Regexp(t, `(?m)^voice-b\s+voice\s+active\s+500\s`, out)
	require.Equal(t, 3, strings.Count(out, "\n"), out)

	// kill -9 and restart: the licences come back, re-verified.
	require.NoError(t, p.cmd.Process.Kill())
	<-p.done
	p.done <- nil
	// An altered stored file is refused while the others load.
	stored := filepath.Join(v.data, "licenses", "voice-a.lic")
	b, err := os.ReadFile(stored)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(stored, []byte(strings.Replace(string(b), "A", "B", 1)), 0o600))
	p = v.node(t)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "refusing a stored licence") }, 5*time.Second, 10*time.Millisecond)
	require.Contains(t, p.out.String(), "voice-a.lic")
	out, code = v.ctl(t, p, "license", "list")
	require.Zero(t, code, out)
	require.Contains(t, out, "voice-b")
	require.NotContains(t, out, "voice-a")
	c = dial(t, p.resp)
	time.Sleep(100 * time.Millisecond)
	r = paced(t, p.resp, "ADMIT voice", 1500, 500*time.Millisecond)
	requireRate(t, r, 500, 50)

	resp, err := http.Get("http://" + p.admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body := new(strings.Builder)
	_, _ = io.Copy(body, resp.Body)
	require.Contains(t, body.String(), `capsgate_license_state{license="voice-b",service="voice",state="active"} 1`)
	require.Contains(t, body.String(), `capsgate_licensed_caps{service="voice"} 500`)
	require.Contains(t, body.String(), "capsgate_clock_rollback 0")
}
