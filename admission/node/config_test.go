package node

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// files makes a token, a password, a gossip key and a vendor key.
func files(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	write("admin.token", "tok\n")
	write("resp.pass", "pass\r\n")
	write("gossip.key", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n") // 32 bytes
	write("vendor.pub", "key")
	return dir
}

func TestDefaults(t *testing.T) {
	c := DefaultConfig()
	require.Equal(t, ":6390", c.RESP.Addr)
	require.Equal(t, ":8390", c.Admin.Addr)
	require.Equal(t, ":7946", c.Gossip.Addr)
	require.Equal(t, 10*time.Second, c.Ledger.Interval.Duration)
	require.Equal(t, 100*time.Millisecond, c.Admission.Burst.Duration)
	require.Equal(t, 10, c.Priority.HighHeadroomPercent)
	require.Equal(t, 10000, c.RESP.MaxConns)
}

func TestDevDefaults(t *testing.T) {
	c, err := Load([]string{"--dev"}, io.Discard)
	require.NoError(t, err)
	defer os.RemoveAll(c.DataDir)
	require.True(t, c.Dev)
	require.True(t, c.DataDirIsTemp)
	require.DirExists(t, c.DataDir)
	require.Equal(t, "127.0.0.1:6390", c.RESP.Addr)
	require.Equal(t, "127.0.0.1:8390", c.Admin.Addr)
	require.Equal(t, "dev", c.NodeName)
	c, err = Load([]string{"--dev", "--resp-addr", "127.0.0.1:7000", "--data-dir", t.TempDir(), "--max-caps", "5000"}, io.Discard)
	require.NoError(t, err)
	require.False(t, c.DataDirIsTemp)
	require.Equal(t, "127.0.0.1:7000", c.RESP.Addr)
	require.Equal(t, 5000.0, c.Node.MaxCAPS)
}

// TestExampleConfigLoads keeps configs/capsgate.yaml true to the code: it
// must load with only its file paths pointed at real files.
func TestExampleConfigLoads(t *testing.T) {
	dir := files(t)
	b, err := os.ReadFile("../../configs/capsgate.yaml")
	require.NoError(t, err)
	s := strings.ReplaceAll(string(b), "/etc/capsgate/", dir+"/")
	s = strings.ReplaceAll(s, "/var/lib/capsgate", dir)
	path := filepath.Join(dir, "capsgate.yaml")
	require.NoError(t, os.WriteFile(path, []byte(s), 0o600))
	c, err := Load([]string{"--config", path}, io.Discard)
	require.NoError(t, err)
	want := DefaultConfig()
	want.NodeName, want.DataDir = "capsgate-1", dir
	want.Admin.TokenFile, want.Gossip.KeyFile = dir+"/admin.token", dir+"/gossip.key"
	want.Join, want.VendorKeys = []string{}, []string{}
	require.Equal(t, want, c, "the example's values are the defaults")
}

func TestFileAndFlags(t *testing.T) {
	dir := files(t)
	path := filepath.Join(dir, "c.yaml")
	require.NoError(t, os.WriteFile(path, []byte(`
node_name: n1
cluster_id: farm-a
data_dir: `+dir+`
resp: {addr: "10.0.0.1:6390", password_file: `+dir+`/resp.pass, max_conns: 500, idle_timeout: 5m, event_loops: 4}
admin: {addr: "127.0.0.1:9000", token_file: `+dir+`/admin.token}
gossip: {addr: "127.0.0.1:7000", key_file: `+dir+`/gossip.key}
join: ["a:7946", "b:7946"]
vendor_keys: [`+dir+`/vendor.pub]
node: {max_caps: 20000}
ledger: {interval: 30s}
admission: {burst: 50ms, session_ttl: 2h, subscriber_ttl: 30m, idempotency_window: 1h}
priority: {high_headroom_percent: 20}
log: {level: warn}
`), 0o600))
	c, err := Load([]string{"--config", path}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "farm-a", c.ClusterID)
	require.Equal(t, 500, c.RESP.MaxConns)
	require.Equal(t, 5*time.Minute, c.RESP.IdleTimeout.Duration)
	require.Equal(t, []string{"a:7946", "b:7946"}, c.Join)
	require.Equal(t, 20000.0, c.Node.MaxCAPS)
	require.Equal(t, 50*time.Millisecond, c.Admission.Burst.Duration)
	require.Equal(t, time.Hour, c.Admission.IdempotencyWindow.Duration)
	require.Equal(t, 20, c.Priority.HighHeadroomPercent)
	// Flags override only what they name; lists given as flags replace the file's.
	c, err = Load([]string{"--config", path, "--resp-max-conns", "7", "--join", "c:1,d:2", "--join", "e:3",
		"--ledger-interval", "1m", "--node-name", "n2"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 7, c.RESP.MaxConns)
	require.Equal(t, []string{"c:1", "d:2", "e:3"}, c.Join)
	require.Equal(t, time.Minute, c.Ledger.Interval.Duration)
	require.Equal(t, "n2", c.NodeName)
	require.Equal(t, "farm-a", c.ClusterID)
	require.Equal(t, []string{dir + "/vendor.pub"}, c.VendorKeys)
}

func TestLoadErrors(t *testing.T) {
	dir := files(t)
	base := []string{"--data-dir", dir, "--admin-token-file", dir + "/admin.token", "--gossip-key-file", dir + "/gossip.key"}
	f := func(args []string, yaml string, want string) {
		t.Helper()
		if yaml != "" {
			p := filepath.Join(dir, "bad.yaml")
			require.NoError(t, os.WriteFile(p, []byte(yaml), 0o600))
			args = append(args, "--config", p)
		}
		_, err := Load(append(append([]string{}, base...), args...), io.Discard)
		require.Error(t, err)
		require.NotContains(t, err.Error(), "\n", "one line")
		require.Contains(t, err.Error(), want)
	}
	f([]string{"--resp-max-conns", "0"}, "", "invalid config: resp.max_conns (--resp-max-conns) must be between 1 and 1000000, got 0")
	f([]string{"--resp-idle-timeout", "10ms"}, "", "resp.idle_timeout (--resp-idle-timeout) must be 0 (never) or at least 1s")
	f([]string{"--resp-addr", "nowhere"}, "", `resp.addr (--resp-addr) must be host:port, got "nowhere"`)
	f([]string{"--admin-addr", "127.0.0.1:99999"}, "", `admin.addr (--admin-addr) port must be 1..65535`)
	f([]string{"--join", "x"}, "", `join (--join) entry "x"`)
	f([]string{"--node-name", "a b"}, "", `node_name (--node-name) must match`)
	f([]string{"--max-caps", "-1"}, "", "node.max_caps (--max-caps) must be 0 (no limit) or positive")
	f([]string{"--max-caps", "lots"}, "", `invalid value "lots" for flag -max-caps`)
	f([]string{"--admission-burst", "11s"}, "", "admission.burst (--admission-burst) must be between 1ms and 10s")
	f([]string{"--priority-high-headroom-percent", "101"}, "", "priority.high_headroom_percent (--priority-high-headroom-percent) must be between 0 and 100")
	f([]string{"--log-level", "loud"}, "", "log.level (--log-level) must be debug, info, warn or error")
	f([]string{"--ledger-interval", "10"}, "", "want a duration")
	f([]string{"--no-such-flag"}, "", "flag provided but not defined: -no-such-flag")
	f([]string{"stray"}, "", `unexpected argument "stray"`)
	f([]string{"--admin-token-file", ""}, "", "admin.token_file (--admin-token-file) is required outside --dev")
	f([]string{"--gossip-key-file", ""}, "", "gossip.key_file (--gossip-key-file) is required outside --dev")
	f([]string{"--admin-token-file", dir + "/missing"}, "", "admin.token_file (--admin-token-file) cannot be read")
	f([]string{"--resp-password-file", dir + "/empty"}, "", "resp.password_file (--resp-password-file) cannot be read")
	f([]string{"--vendor-key", dir + "/nope.pub"}, "", "vendor_keys (--vendor-key) cannot be read")
	require.NoError(t, os.WriteFile(dir+"/empty", nil, 0o600))
	f([]string{"--admin-token-file", dir + "/empty"}, "", "is empty")
	require.NoError(t, os.WriteFile(dir+"/badkey", []byte("not base64!"), 0o600))
	f([]string{"--gossip-key-file", dir + "/badkey"}, "", "is not base64")
	require.NoError(t, os.WriteFile(dir+"/shortkey", []byte("c2hvcnQ="), 0o600))
	f([]string{"--gossip-key-file", dir + "/shortkey"}, "", "is 5 bytes; want 16, 24 or 32")
	f(nil, "resp:\n  maxconns: 1\n", `line 2: field maxconns not found`)
	f(nil, "nodename: x\n", `line 1: field nodename not found`)
	f(nil, "resp:\n  max_conns: abc\n", "line 2: cannot unmarshal !!str `abc` into int")
	f(nil, "admission:\n  burst: 5\n", `line 2: invalid duration "5"`)
	f(nil, "resp: [\n", "invalid config file")
	f([]string{"--config", dir + "/missing.yaml"}, "", "cannot read config file "+dir+"/missing.yaml: no such file or directory")
	_, err := Load([]string{"--help"}, io.Discard)
	require.ErrorIs(t, err, flag.ErrHelp)
}

func TestGossipInsecureAllowsNoKey(t *testing.T) {
	dir := files(t)
	_, err := Load([]string{"--data-dir", dir, "--admin-token-file", dir + "/admin.token", "--gossip-insecure"}, io.Discard)
	require.NoError(t, err)
}
