package node

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/capsgate/capsgate/admission/bounded"
)

// gossipKey32 is base64 of the 32 bytes "0123456789abcdef0123456789abcdef".
const gossipKey32 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// secretsDir holds the files a production node needs: admin.token,
// resp.password, gossip.key (32 bytes) and vendor.pub, vendor2.pub.
func secretsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"admin.token":   "t0ken\n",
		"resp.password": "s3cret\r\n",
		"gossip.key":    gossipKey32 + "\n",
		"vendor.pub":    "vendor key\n",
		"vendor2.pub":   "another vendor key\n",
	} {
		writeTestFile(t, dir, name, content)
	}
	cert, key := selfSigned(t)
	writeTestFile(t, dir, "admin.crt", string(cert))
	writeTestFile(t, dir, "admin.key", string(key))
	return dir
}

// selfSigned returns a PEM certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "capsgate test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(priv)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// prodArgs are the least flags with which a non --dev node loads.
func prodArgs(dir string) []string {
	return []string{"--data-dir", dir, "--admin-token-file", dir + "/admin.token", "--gossip-key-file", dir + "/gossip.key"}
}

// prodConfig is what Load returns for prodArgs(dir).
func prodConfig(dir string) Config {
	c := DefaultConfig()
	c.DataDir = dir
	c.Admin.TokenFile = dir + "/admin.token"
	c.Gossip.KeyFile = dir + "/gossip.key"
	return c
}

// requireOneLine checks that err is exactly want: one line.
func requireOneLine(t *testing.T, err error, want string) {
	t.Helper()
	require.Error(t, err)
	require.NotContains(t, err.Error(), "\n", "an error is one line")
	require.Equal(t, want, err.Error())
}

func TestDefaultConfig(t *testing.T) {
	host, err := os.Hostname()
	require.NoError(t, err)
	c := DefaultConfig()
	require.Equal(t, Config{
		NodeName:  host,
		ClusterID: "default",
		DataDir:   "/var/lib/capsgate",
		RESP:      RESPConfig{Addr: ":6390", MaxConns: 10000},
		Admin:     AdminConfig{Addr: ":8390", MaxConns: 1024},
		Gossip:    GossipConfig{Addr: ":7946"},
		Node:      NodeConfig{MaxCAPS: 0},
		Ledger:    LedgerConfig{Interval: Duration{10 * time.Second}},
		Admission: AdmissionConfig{
			Burst:             Duration{100 * time.Millisecond},
			SessionTTL:        Duration{3 * time.Hour},
			SubscriberTTL:     Duration{time.Hour},
			IdempotencyWindow: Duration{10 * time.Minute},
		},
		Priority:  PriorityConfig{HighHeadroomPercent: 10, MaxEmergencySessions: 100_000},
		Licensing: LicensingConfig{ClockTolerance: Duration{5 * time.Minute}},
		Cluster:   ClusterConfig{PartitionPolicy: "split", FailOpenFor: Duration{time.Minute}, ReclaimAfter: Duration{3 * time.Second}},
		Trunks:    TrunksConfig{MaxKeys: 200_000},
		Log:       LogConfig{Level: "info"},
		Throttle:  ThrottleConfig{MaxKeys: 1_000_000, MaxBurst: 1_000_000, MaxCount: 1_000_000, MaxPeriod: Duration{24 * time.Hour}},
	}, c)

	// The defaults alone are not a production node: the admin API needs a token.
	requireOneLine(t, c.Validate(), "invalid config: admin.token_file (--admin-token-file) is required outside --dev: the admin API must not run unauthenticated")
	_, err = Load(nil, nil)
	requireOneLine(t, err, "invalid config: admin.token_file (--admin-token-file) is required outside --dev: the admin API must not run unauthenticated")

	dir := secretsDir(t)
	c, err = Load(prodArgs(dir), nil)
	require.NoError(t, err)
	require.Equal(t, prodConfig(dir), c)
}

func TestLoadFullFile(t *testing.T) {
	dir := secretsDir(t)
	path := writeTestFile(t, dir, "full.yaml", `
node_name: edge-1.fra
cluster_id: "eu:west-2"
data_dir: `+dir+`
resp:
  addr: 10.0.0.1:6391
  password_file: `+dir+`/resp.password
  max_conns: 500
  idle_timeout: 5m
  event_loops: 4
admin:
  addr: 127.0.0.1:9000
  token_file: `+dir+`/admin.token
  max_conns: 64
gossip:
  addr: "[::1]:7000"
  key_file: `+dir+`/gossip.key
  insecure: false
join: ["a.example:7946", "10.0.0.2:7946"]
vendor_keys:
  - `+dir+`/vendor.pub
node: {max_caps: 20000.5}
ledger: {interval: 30s}
admission: {burst: 50ms, session_ttl: 2h, subscriber_ttl: 30m, idempotency_window: 1h}
priority: {high_headroom_percent: 20, max_emergency_sessions: 5000}
licensing: {clock_tolerance: 1m}
cluster: {partition_policy: fail_open, fail_open_for: 30s, reclaim_after: 5s}
log: {level: warn}
throttle: {allow: ["user:", ""], max_keys: 500, max_burst: 0, max_count: 1, max_period: 1s}
trunks: {max_keys: 7, limits: ["voice/carrier-a caps=100 burst=20 sessions=300"]}
`)
	c, err := Load([]string{"--config", path}, nil)
	require.NoError(t, err)
	want := Config{
		NodeName:  "edge-1.fra",
		ClusterID: "eu:west-2",
		DataDir:   dir,
		RESP: RESPConfig{Addr: "10.0.0.1:6391", PasswordFile: dir + "/resp.password", MaxConns: 500,
			IdleTimeout: Duration{5 * time.Minute}, EventLoops: 4},
		Admin:      AdminConfig{Addr: "127.0.0.1:9000", TokenFile: dir + "/admin.token", MaxConns: 64},
		Gossip:     GossipConfig{Addr: "[::1]:7000", KeyFile: dir + "/gossip.key"},
		Join:       []string{"a.example:7946", "10.0.0.2:7946"},
		VendorKeys: []string{dir + "/vendor.pub"},
		Node:       NodeConfig{MaxCAPS: 20000.5},
		Ledger:     LedgerConfig{Interval: Duration{30 * time.Second}},
		Admission: AdmissionConfig{Burst: Duration{50 * time.Millisecond}, SessionTTL: Duration{2 * time.Hour},
			SubscriberTTL: Duration{30 * time.Minute}, IdempotencyWindow: Duration{time.Hour}},
		Priority:  PriorityConfig{HighHeadroomPercent: 20, MaxEmergencySessions: 5000},
		Licensing: LicensingConfig{ClockTolerance: Duration{time.Minute}},
		Cluster:   ClusterConfig{PartitionPolicy: "fail_open", FailOpenFor: Duration{30 * time.Second}, ReclaimAfter: Duration{5 * time.Second}},
		Log:       LogConfig{Level: "warn"},
		Throttle:  ThrottleConfig{Allow: []string{"user:", ""}, MaxKeys: 500, MaxBurst: 0, MaxCount: 1, MaxPeriod: Duration{time.Second}},
		Trunks:    TrunksConfig{MaxKeys: 7, Limits: []string{"voice/carrier-a caps=100 burst=20 sessions=300"}},
	}
	st, err := os.Stat(path)
	require.NoError(t, err)
	want.TrunkLimitsAt = st.ModTime()
	require.Equal(t, want, c)

	// Written back as YAML, it reads the same.
	out, err := yaml.Marshal(c)
	require.NoError(t, err)
	require.Contains(t, string(out), "idle_timeout: 5m\n")
	require.Contains(t, string(out), "session_ttl: 2h\n")
	require.NotContains(t, string(out), "dev")
	c2, err := Load([]string{"--config", writeTestFile(t, dir, "again.yaml", string(out))}, nil)
	require.NoError(t, err)
	want.TrunkLimitsAt = c2.TrunkLimitsAt // that file's time
	require.Equal(t, want, c2)
}

func TestLoadPartialFileKeepsDefaults(t *testing.T) {
	dir := secretsDir(t)
	f := func(file string, edit func(c *Config)) {
		t.Helper()
		c, err := Load(append(prodArgs(dir), "--config", writeTestFile(t, dir, "p.yaml", file)), nil)
		require.NoError(t, err, file)
		want := prodConfig(dir)
		edit(&want)
		want.TrunkLimitsAt = c.TrunkLimitsAt // the file's time
		require.Equal(t, want, c, file)
	}
	f("", func(*Config) {})
	f("# only a comment\n", func(*Config) {})
	f("~\n", func(*Config) {})
	f("resp:\n", func(*Config) {})
	f("resp:\n  max_conns: 7\n", func(c *Config) { c.RESP.MaxConns = 7 })
	f("resp:\n  idle_timeout: 0\n", func(*Config) {})
	f("node_name: \"\"\n", func(*Config) {}) // empty: the host name
	f("node_name: 123\n", func(c *Config) { c.NodeName = "123" })
	f("node:\n  max_caps: 3\n", func(c *Config) { c.Node.MaxCAPS = 3 })
	f("join: []\n", func(c *Config) { c.Join = []string{} })
}

func TestFlagsOverrideFile(t *testing.T) {
	dir := secretsDir(t)
	path := writeTestFile(t, dir, "c.yaml", `
node_name: n1
cluster_id: farm-a
resp: {max_conns: 500, password_file: `+dir+`/resp.password}
join: [a:1, b:2]
vendor_keys: [`+dir+`/vendor.pub]
ledger: {interval: 30s}
log: {level: warn}
`)
	fromFile := prodConfig(dir)
	fromFile.NodeName, fromFile.ClusterID = "n1", "farm-a"
	fromFile.RESP.MaxConns, fromFile.RESP.PasswordFile = 500, dir+"/resp.password"
	fromFile.Join, fromFile.VendorKeys = []string{"a:1", "b:2"}, []string{dir + "/vendor.pub"}
	fromFile.Ledger.Interval = Duration{30 * time.Second}
	fromFile.Log.Level = "warn"
	st, err := os.Stat(path)
	require.NoError(t, err)
	fromFile.TrunkLimitsAt = st.ModTime()

	c, err := Load(append(prodArgs(dir), "--config", path), nil)
	require.NoError(t, err)
	require.Equal(t, fromFile, c)

	// Only the flags given change anything; flags may come before --config.
	c, err = Load(append([]string{"--resp-max-conns", "7", "--ledger-interval=1m", "-node-name", "n2", "--config", path},
		prodArgs(dir)...), nil)
	require.NoError(t, err)
	want := fromFile
	want.RESP.MaxConns, want.Ledger.Interval, want.NodeName = 7, Duration{time.Minute}, "n2"
	require.Equal(t, want, c)

	// A list flag replaces the file's list; the last of a scalar flag wins.
	c, err = Load(append(prodArgs(dir), "--config", path, "--join", "c:3", "--log-level", "debug", "--log-level", "error"), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"c:3"}, c.Join)
	require.Equal(t, []string{dir + "/vendor.pub"}, c.VendorKeys)
	require.Equal(t, "error", c.Log.Level)

	// An empty list flag empties the list; a bool flag can be turned off.
	c, err = Load(append(prodArgs(dir), "--config", path, "--join=", "--gossip-insecure=false"), nil)
	require.NoError(t, err)
	require.Empty(t, c.Join)
	require.False(t, c.Gossip.Insecure)
}

// TestEveryFlagSetsItsKey sets each key through its flag alone.
func TestEveryFlagSetsItsKey(t *testing.T) {
	dir := secretsDir(t)
	values := map[string]string{
		"node_name":                       "n-7",
		"cluster_id":                      "c.9",
		"data_dir":                        dir + "/data",
		"resp.addr":                       "127.0.0.1:16390",
		"resp.password_file":              dir + "/resp.password",
		"resp.max_conns":                  "123",
		"resp.idle_timeout":               "90s",
		"resp.event_loops":                "3",
		"admin.addr":                      "127.0.0.1:18390",
		"admin.token_file":                dir + "/admin.token",
		"admin.tls_cert_file":             dir + "/admin.crt",
		"admin.tls_key_file":              dir + "/admin.key",
		"admin.max_conns":                 "9",
		"gossip.addr":                     "127.0.0.1:17946",
		"gossip.key_file":                 dir + "/gossip.key",
		"gossip.insecure":                 "true",
		"join":                            "h:1",
		"vendor_keys":                     dir + "/vendor.pub",
		"node.max_caps":                   "1500.5",
		"ledger.interval":                 "1m",
		"admission.burst":                 "20ms",
		"admission.session_ttl":           "4h",
		"admission.subscriber_ttl":        "2h",
		"admission.idempotency_window":    "1h",
		"priority.high_headroom_percent":  "0",
		"priority.max_emergency_sessions": "1",
		"licensing.clock_tolerance":       "30s",
		"cluster.partition_policy":        "fail_open",
		"cluster.fail_open_for":           "2m",
		"cluster.reclaim_after":           "4s",
		"trunks.max_keys":                 "5",
		"trunks.limits":                   "voice/a caps=1 sessions=2",
		"log.level":                       "debug",
		"throttle.allow":                  "user:,api:",
		"throttle.max_keys":               "1000",
		"throttle.max_burst":              "10",
		"throttle.max_count":              "100",
		"throttle.max_period":             "1h",
	}
	require.Len(t, values, len(options))
	for _, o := range options {
		v, ok := values[o.key]
		require.True(t, ok, o.key)
		args := []string{"--admin-token-file", dir + "/admin.token", "--data-dir", dir}
		if o.key == "gossip.insecure" {
			args = append(args, "--gossip-key-file=")
		} else {
			args = append(args, "--gossip-key-file", dir+"/gossip.key")
		}
		// The TLS files go in pairs: the other one of the pair is given too.
		switch o.key {
		case "admin.tls_cert_file":
			args = append(args, "--admin-tls-key-file", dir+"/admin.key")
		case "admin.tls_key_file":
			args = append(args, "--admin-tls-cert-file", dir+"/admin.crt")
		}
		c, err := Load(append(args, "--"+o.flag+"="+v), nil)
		require.NoError(t, err, o.flag)
		want := prodConfig(dir)
		switch o.key {
		case "gossip.insecure":
			want.Gossip.KeyFile = ""
		case "admin.tls_cert_file", "admin.tls_key_file":
			want.Admin.TLSCertFile, want.Admin.TLSKeyFile = dir+"/admin.crt", dir+"/admin.key"
		}
		require.NoError(t, setFromString(want.field(o.key), v))
		if o.key == "trunks.limits" {
			require.False(t, c.TrunkLimitsAt.IsZero(), "the start's time")
			want.TrunkLimitsAt = c.TrunkLimitsAt
		}
		require.Equal(t, want, c, o.flag)
		def := DefaultConfig()
		require.NotEqual(t, def.field(o.key).Interface(), c.field(o.key).Interface(), "%s: pick a value other than the default", o.flag)
	}
}

func TestListFlags(t *testing.T) {
	dir := secretsDir(t)
	c, err := Load(append(prodArgs(dir), "--join", "a:1,b:2", "--join", "c:3", "--join", " d:4 , ,e:5",
		"--vendor-key", dir+"/vendor.pub", "--vendor-key="+dir+"/vendor2.pub,"+dir+"/vendor.pub"), nil)
	require.NoError(t, err)
	require.Equal(t, []string{"a:1", "b:2", "c:3", "d:4", "e:5"}, c.Join)
	require.Equal(t, []string{dir + "/vendor.pub", dir + "/vendor2.pub", dir + "/vendor.pub"}, c.VendorKeys)
}

func TestDev(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	c, err := Load([]string{"--dev"}, nil)
	require.NoError(t, err)
	require.True(t, c.Dev)
	require.True(t, c.DataDirIsTemp)
	require.DirExists(t, c.DataDir)
	require.Equal(t, tmp, filepath.Dir(c.DataDir))
	require.True(t, strings.HasPrefix(filepath.Base(c.DataDir), "capsgate-dev-"), c.DataDir)
	want := DefaultConfig()
	want.Dev, want.DataDirIsTemp, want.DataDir = true, true, c.DataDir
	want.NodeName, want.ClusterID = "dev", "dev"
	want.RESP.Addr, want.Admin.Addr, want.Gossip.Addr = "127.0.0.1:6390", "127.0.0.1:8390", "127.0.0.1:7946"
	require.Equal(t, want, c, "no token, no gossip key needed")
	require.NoError(t, c.Validate())

	// The flags still apply, so several dev nodes can run side by side.
	data := t.TempDir()
	c, err = Load([]string{"--dev", "--resp-addr", "127.0.0.1:7000", "--admin-addr", "127.0.0.1:7001",
		"--gossip-addr", "127.0.0.1:7002", "--data-dir", data, "--node-name", "dev2", "--max-caps", "5000",
		"--join", "127.0.0.1:7946"}, nil)
	require.NoError(t, err)
	require.False(t, c.DataDirIsTemp)
	require.Equal(t, data, c.DataDir)
	require.Equal(t, "127.0.0.1:7000", c.RESP.Addr)
	require.Equal(t, "127.0.0.1:7001", c.Admin.Addr)
	require.Equal(t, "127.0.0.1:7002", c.Gossip.Addr)
	require.Equal(t, "dev2", c.NodeName)
	require.Equal(t, "dev", c.ClusterID)
	require.Equal(t, 5000.0, c.Node.MaxCAPS)
	require.Equal(t, []string{"127.0.0.1:7946"}, c.Join)

	// --dev takes no config file: a production file's token, addresses
	// and data dir would be run with --dev's relaxations.
	path := writeTestFile(t, data, "dev.yaml", "node_name: \"\"\nresp: {addr: \"127.0.0.1:7100\"}\nadmin: {addr: \"127.0.0.1:7101\"}\n")
	for _, args := range [][]string{{"--dev", "--config", path}, {"--config", path, "--dev", "--admin-addr", "127.0.0.1:7201"}} {
		_, err = Load(args, nil)
		requireOneLine(t, err, "invalid command line: --dev cannot be combined with --config: --dev runs a node with no config file; give its settings as flags (see capsgate --help)")
	}

	// An explicit --admin-token-file is kept in --dev (Start then
	// requires the token).
	token := writeTestFile(t, data, "admin.token", "s3cret\n")
	c, err = Load([]string{"--dev", "--data-dir", data, "--admin-token-file", token}, nil)
	require.NoError(t, err)
	require.True(t, c.Dev)
	require.Equal(t, token, c.Admin.TokenFile)

	// Files named are still checked in --dev.
	_, err = Load([]string{"--dev", "--admin-token-file", data + "/missing"}, nil)
	requireOneLine(t, err, "invalid config: admin.token_file (--admin-token-file): open "+data+"/missing: no such file or directory")

	// A dev config that fails leaves no temp dir behind.
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Len(t, entries, 1, "only the first Load's temp dir")
}

func TestValidateErrors(t *testing.T) {
	dir := secretsDir(t)
	writeTestFile(t, dir, "empty", "")
	writeTestFile(t, dir, "blank", " \r\n\n")
	writeTestFile(t, dir, "two-lines", "one\ntwo\n")
	writeTestFile(t, dir, "not-base64", "not base64!\n")
	writeTestFile(t, dir, "short-key", "c2hvcnQ=\n")
	f := func(args []string, want string) {
		t.Helper()
		_, err := Load(append(prodArgs(dir), args...), nil)
		requireOneLine(t, err, want)
		if strings.HasPrefix(want, "invalid config: ") {
			key, rest, _ := strings.Cut(strings.TrimPrefix(want, "invalid config: "), " ")
			require.True(t, strings.HasPrefix(rest, "("+flagOf(key)+")"), "%q names the key and its flag", want)
		}
	}
	f([]string{"--node-name", "a b"}, `invalid config: node_name (--node-name) must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -, got "a b"`)
	f([]string{"--node-name", strings.Repeat("n", 65)}, `invalid config: node_name (--node-name) must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -, got "`+strings.Repeat("n", 65)+`"`)
	f([]string{"--cluster-id", ""}, `invalid config: cluster_id (--cluster-id) must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -, got ""`)
	f([]string{"--cluster-id", "é"}, `invalid config: cluster_id (--cluster-id) must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -, got "é"`)
	f([]string{"--data-dir", ""}, `invalid config: data_dir (--data-dir) must be set`)

	f([]string{"--resp-addr", "nowhere"}, `invalid config: resp.addr (--resp-addr) must be [host]:port with a port from 1 to 65535, got "nowhere"`)
	f([]string{"--resp-addr", ":0"}, `invalid config: resp.addr (--resp-addr) must be [host]:port with a port from 1 to 65535, got ":0"`)
	f([]string{"--resp-addr", ":redis"}, `invalid config: resp.addr (--resp-addr) must be [host]:port with a port from 1 to 65535, got ":redis"`)
	f([]string{"--resp-addr", ":+80"}, `invalid config: resp.addr (--resp-addr) must be [host]:port with a port from 1 to 65535, got ":+80"`)
	f([]string{"--admin-addr", "127.0.0.1:99999"}, `invalid config: admin.addr (--admin-addr) must be [host]:port with a port from 1 to 65535, got "127.0.0.1:99999"`)
	f([]string{"--gossip-addr", "::1:7946"}, `invalid config: gossip.addr (--gossip-addr) must be [host]:port with a port from 1 to 65535, got "::1:7946"`)
	f([]string{"--join", "a:1,x"}, `invalid config: join (--join) entry 2: must be host:port with a port from 1 to 65535, got "x"`)
	f([]string{"--join", ":7946"}, `invalid config: join (--join) entry 1: must be host:port with a port from 1 to 65535, got ":7946"`)

	f([]string{"--resp-max-conns", "0"}, "invalid config: resp.max_conns (--resp-max-conns) must be between 1 and 1000000, got 0")
	f([]string{"--resp-max-conns", "1000001"}, "invalid config: resp.max_conns (--resp-max-conns) must be between 1 and 1000000, got 1000001")
	f([]string{"--admin-max-conns", "0"}, "invalid config: admin.max_conns (--admin-max-conns) must be between 1 and 100000, got 0")
	f([]string{"--admin-max-conns", "100001"}, "invalid config: admin.max_conns (--admin-max-conns) must be between 1 and 100000, got 100001")
	f([]string{"--resp-idle-timeout", "500ms"}, "invalid config: resp.idle_timeout (--resp-idle-timeout) must be 0 (never) or at least 1s, got 500ms")
	f([]string{"--resp-idle-timeout", "-1s"}, "invalid config: resp.idle_timeout (--resp-idle-timeout) must be 0 (never) or at least 1s, got -1s")
	f([]string{"--resp-event-loops", "257"}, "invalid config: resp.event_loops (--resp-event-loops) must be between 0 (one per CPU core) and 256, got 257")
	f([]string{"--resp-event-loops", "-1"}, "invalid config: resp.event_loops (--resp-event-loops) must be between 0 (one per CPU core) and 256, got -1")

	f([]string{"--admin-token-file", ""}, "invalid config: admin.token_file (--admin-token-file) is required outside --dev: the admin API must not run unauthenticated")
	f([]string{"--gossip-key-file", ""}, "invalid config: gossip.key_file (--gossip-key-file) is required outside --dev unless gossip.insecure (--gossip-insecure) is true: gossip must not run unencrypted by accident")
	f([]string{"--gossip-insecure"}, "invalid config: gossip.insecure (--gossip-insecure) cannot be combined with gossip.key_file (--gossip-key-file): choose one")

	f([]string{"--resp-password-file", dir + "/missing"}, "invalid config: resp.password_file (--resp-password-file): open "+dir+"/missing: no such file or directory")
	f([]string{"--resp-password-file", dir + "/blank"}, "invalid config: resp.password_file (--resp-password-file): "+dir+"/blank is empty; it must hold the secret on one line")
	f([]string{"--admin-token-file", dir + "/missing"}, "invalid config: admin.token_file (--admin-token-file): open "+dir+"/missing: no such file or directory")
	f([]string{"--admin-token-file", dir + "/empty"}, "invalid config: admin.token_file (--admin-token-file): "+dir+"/empty is empty; it must hold the secret on one line")
	f([]string{"--admin-token-file", dir + "/two-lines"}, "invalid config: admin.token_file (--admin-token-file): "+dir+"/two-lines holds more than one line; it must hold the secret on one line")
	f([]string{"--admin-token-file", dir}, "invalid config: admin.token_file (--admin-token-file): "+dir+": not a regular file (a directory)")
	f([]string{"--gossip-key-file", dir + "/missing"}, "invalid config: gossip.key_file (--gossip-key-file): open "+dir+"/missing: no such file or directory")
	f([]string{"--gossip-key-file", dir + "/not-base64"}, "invalid config: gossip.key_file (--gossip-key-file): "+dir+"/not-base64 is not base64 (illegal base64 data at input byte 3); make a key with: head -c 32 /dev/urandom | base64")
	f([]string{"--gossip-key-file", dir + "/short-key"}, "invalid config: gossip.key_file (--gossip-key-file): "+dir+"/short-key holds a 5-byte key, want 16, 24 or 32 bytes; make one with: head -c 32 /dev/urandom | base64")
	f([]string{"--vendor-key", dir + "/vendor.pub," + dir + "/nope.pub"}, "invalid config: vendor_keys (--vendor-key) entry 2: open "+dir+"/nope.pub: no such file or directory")
	f([]string{"--vendor-key", dir + "/empty"}, "invalid config: vendor_keys (--vendor-key) entry 1: "+dir+"/empty is empty")
	f([]string{"--vendor-key", dir}, "invalid config: vendor_keys (--vendor-key) entry 1: "+dir+": not a regular file (a directory)")

	f([]string{"--max-caps", "-1"}, "invalid config: node.max_caps (--max-caps) must be a number at least 0 (0 = no node limit), got -1")
	f([]string{"--max-caps", "NaN"}, "invalid config: node.max_caps (--max-caps) must be a number at least 0 (0 = no node limit), got NaN")
	f([]string{"--max-caps", "+Inf"}, "invalid config: node.max_caps (--max-caps) must be a number at least 0 (0 = no node limit), got +Inf")
	f([]string{"--ledger-interval", "999ms"}, "invalid config: ledger.interval (--ledger-interval) must be at least 1s, got 999ms")
	f([]string{"--admission-burst", "0"}, "invalid config: admission.burst (--admission-burst) must be between 1ms and 10s, got 0s")
	f([]string{"--admission-burst", "11s"}, "invalid config: admission.burst (--admission-burst) must be between 1ms and 10s, got 11s")
	f([]string{"--admission-session-ttl", "0s"}, "invalid config: admission.session_ttl (--admission-session-ttl) must be at least 1s, got 0s")
	f([]string{"--admission-subscriber-ttl", "100ms"}, "invalid config: admission.subscriber_ttl (--admission-subscriber-ttl) must be at least 1s, got 100ms")
	f([]string{"--admission-subscriber-ttl", "168h0m1s"}, "invalid config: admission.subscriber_ttl (--admission-subscriber-ttl) must be at most 168h (7 days, as a REGISTER's TTL), got 168h0m1s")
	c, err := Load(append(prodArgs(dir), "--admission-subscriber-ttl", "168h"), nil)
	require.NoError(t, err, "7 days is allowed")
	require.Equal(t, 168*time.Hour, c.Admission.SubscriberTTL.Duration)
	f([]string{"--admission-idempotency-window", "-5m"}, "invalid config: admission.idempotency_window (--admission-idempotency-window) must be at least 1s, got -5m")
	f([]string{"--admission-idempotency-window", "841h"}, "invalid config: admission.idempotency_window (--admission-idempotency-window) must be at most 840h (35 days), got 841h")
	f([]string{"--priority-high-headroom-percent", "101"}, "invalid config: priority.high_headroom_percent (--priority-high-headroom-percent) must be between 0 and 100, got 101")
	f([]string{"--priority-high-headroom-percent", "-1"}, "invalid config: priority.high_headroom_percent (--priority-high-headroom-percent) must be between 0 and 100, got -1")
	f([]string{"--priority-max-emergency-sessions", "0"}, "invalid config: priority.max_emergency_sessions (--priority-max-emergency-sessions) must be between 1 and 10000000, got 0")
	f([]string{"--priority-max-emergency-sessions", "10000001"}, "invalid config: priority.max_emergency_sessions (--priority-max-emergency-sessions) must be between 1 and 10000000, got 10000001")
	f([]string{"--log-level", "loud"}, `invalid config: log.level (--log-level) must be debug, info, warn or error, got "loud"`)
	f([]string{"--cluster-partition-policy", "open"}, `invalid config: cluster.partition_policy (--cluster-partition-policy) must be split or fail_open, got "open"`)
	f([]string{"--cluster-fail-open-for", "-1s"}, `invalid config: cluster.fail_open_for (--cluster-fail-open-for) must be at least 0, got -1s`)
	f([]string{"--cluster-reclaim-after", "500ms"}, `invalid config: cluster.reclaim_after (--cluster-reclaim-after) must be at least 1s, got 500ms`)
	f([]string{"--admin-tls-cert-file", dir + "/admin.crt"}, "invalid config: admin.tls_cert_file (--admin-tls-cert-file) and admin.tls_key_file (--admin-tls-key-file) must be set together")
	f([]string{"--log-level", "INFO"}, `invalid config: log.level (--log-level) must be debug, info, warn or error, got "INFO"`)
	f([]string{"--throttle-max-keys", "0"}, "invalid config: throttle.max_keys (--throttle-max-keys) must be between 1 and 100000000, got 0")
	f([]string{"--throttle-max-keys", "100000001"}, "invalid config: throttle.max_keys (--throttle-max-keys) must be between 1 and 100000000, got 100000001")
	f([]string{"--throttle-max-burst", "-1"}, "invalid config: throttle.max_burst (--throttle-max-burst) must be between 0 and 1000000000, got -1")
	f([]string{"--throttle-max-burst", "1000000001"}, "invalid config: throttle.max_burst (--throttle-max-burst) must be between 0 and 1000000000, got 1000000001")
	f([]string{"--throttle-max-count", "0"}, "invalid config: throttle.max_count (--throttle-max-count) must be between 1 and 1000000, got 0")
	f([]string{"--throttle-max-count", "1000001"}, "invalid config: throttle.max_count (--throttle-max-count) must be between 1 and 1000000, got 1000001")
	f([]string{"--throttle-max-period", "0"}, "invalid config: throttle.max_period (--throttle-max-period) must be whole seconds between 1s and 8760h, got 0s")
	f([]string{"--throttle-max-period", "999ms"}, "invalid config: throttle.max_period (--throttle-max-period) must be whole seconds between 1s and 8760h, got 999ms")
	f([]string{"--throttle-max-period", "1500ms"}, "invalid config: throttle.max_period (--throttle-max-period) must be whole seconds between 1s and 8760h, got 1.5s")
	f([]string{"--throttle-max-period", "8761h"}, "invalid config: throttle.max_period (--throttle-max-period) must be whole seconds between 1s and 8760h, got 8761h")
	f([]string{"--throttle-allow", "user:," + strings.Repeat("k", 257)}, "invalid config: throttle.allow (--throttle-allow) entry 2 is longer than a key (256 bytes)")

	// The boundaries themselves are valid.
	for _, args := range [][]string{
		{"--resp-max-conns", "1"}, {"--resp-max-conns", "1000000"}, {"--resp-idle-timeout", "1s"},
		{"--resp-event-loops", "256"}, {"--admission-burst", "1ms"}, {"--admission-burst", "10s"},
		{"--ledger-interval", "1s"}, {"--priority-high-headroom-percent", "100"}, {"--priority-max-emergency-sessions", "10000000"}, {"--resp-addr", "[::1]:65535"},
		{"--node-name", strings.Repeat("n", 64)}, {"--node-name", "a.b_c:d-E9"},
		{"--throttle-max-keys", "1"}, {"--throttle-max-keys", "100000000"}, {"--throttle-max-burst", "0"},
		{"--throttle-max-burst", "1000000000"}, {"--throttle-max-count", "1"}, {"--throttle-max-count", "1000000"},
		{"--throttle-max-period", "1s"}, {"--throttle-max-period", "8760h"}, {"--throttle-allow", strings.Repeat("k", 256)},
	} {
		_, err := Load(append(prodArgs(dir), args...), nil)
		require.NoError(t, err, args)
	}
}

func TestFlagErrors(t *testing.T) {
	dir := secretsDir(t)
	f := func(args []string, want string) {
		t.Helper()
		var usage bytes.Buffer
		_, err := Load(append(prodArgs(dir), args...), &usage)
		requireOneLine(t, err, want)
		require.Empty(t, usage.String(), "a bad command line prints nothing: the caller prints the one line")
	}
	f([]string{"--max-caps", "lots"}, `invalid flag: --max-caps (node.max_caps) must be a number, got "lots"`)
	f([]string{"--resp-max-conns", "many"}, `invalid flag: --resp-max-conns (resp.max_conns) must be an integer, got "many"`)
	f([]string{"--resp-max-conns", "99999999999999999999"}, `invalid flag: --resp-max-conns (resp.max_conns) must be an integer, got "99999999999999999999"`)
	f([]string{"--ledger-interval", "10"}, `invalid flag: --ledger-interval (ledger.interval) must be a duration such as "10s" or "100ms", got "10"`)
	f([]string{"--gossip-insecure=maybe"}, `invalid flag: --gossip-insecure (gossip.insecure) must be true or false, got "maybe"`)
	f([]string{"--no-such-flag"}, "invalid command line: flag provided but not defined: --no-such-flag (see capsgate --help)")
	f([]string{"--resp-addr"}, "invalid command line: flag needs an argument: --resp-addr (see capsgate --help)")
	f([]string{"stray"}, `unexpected argument "stray": capsgate takes only flags (see capsgate --help)`)
}

func TestFileErrors(t *testing.T) {
	dir := secretsDir(t)
	path := filepath.Join(dir, "bad.yaml")
	f := func(file, want string) {
		t.Helper()
		require.NoError(t, os.WriteFile(path, []byte(file), 0o600))
		_, err := Load(append(prodArgs(dir), "--config", path), nil)
		requireOneLine(t, err, "invalid config file "+path+": "+want)
	}
	f("nodename: x\n", `line 1: unknown key "nodename"`)
	f("node_name: a\nresp:\n  maxconns: 5\n", `line 3: unknown key "resp.maxconns"`)
	f("resp: {maxconns: 1}\n", `line 1: unknown key "resp.maxconns"`)
	f("log: {level: info, colour: true}\n", `line 1: unknown key "log.colour"`)
	f("dev: true\n", `line 1: unknown key "dev"`)
	f("data_dir_is_temp: true\n", `line 1: unknown key "data_dir_is_temp"`)
	f("resp:\n  max_conns: abc\n", `line 2: resp.max_conns must be an integer, got "abc"`)
	f("resp:\n  max_conns: 1.5\n", `line 2: resp.max_conns must be an integer, got "1.5"`)
	f("node: {max_caps: lots}\n", `line 1: node.max_caps must be a number, got "lots"`)
	f("gossip: {insecure: maybe}\n", `line 1: gossip.insecure must be true or false, got "maybe"`)
	f("node_name: {a: b}\n", `line 1: node_name must be a string, got a mapping`)
	f("join: a:1\n", `line 1: join must be a list of strings such as [a, b], got "a:1"`)
	f("join:\n  - a:1\n  - [b]\n", `line 3: join entry 2 must be a string, got a list`)
	f("resp: 5\n", `line 1: resp must be a mapping of keys, got "5"`)
	f("- a\n- b\n", `line 1: the file must be a mapping of keys, got a list`)
	f("log:\n  level: info\n  level: warn\n", `line 3: key "log.level" repeated (first at line 2)`)
	f("admission:\n  burst: 5\n", `line 2: admission.burst must be a duration with a unit such as "5s", got the bare number 5`)
	f("admission:\n  burst: soon\n", `line 2: admission.burst must be a duration such as "10s" or "100ms", got "soon"`)
	f("ledger: {interval: [1s]}\n", `line 1: ledger.interval must be a duration such as "10s" or "100ms", got a list`)

	// Syntax errors are yaml.v3's, on one line.
	f("resp: [\n", "line 1: did not find expected node content")
	f("resp:\n\taddr: x\n", "line 2: found character that cannot start any token")
	f("log: {level: info}\n---\nlog: {level: warn}\n", "line 2: a second YAML document; the file must hold one")

	// A value of the right type but out of range is the same error as from a flag.
	require.NoError(t, os.WriteFile(path, []byte("resp:\n  max_conns: -4\n"), 0o600))
	_, err := Load(append(prodArgs(dir), "--config", path), nil)
	requireOneLine(t, err, "invalid config: resp.max_conns (--resp-max-conns) must be between 1 and 1000000, got -4")

	_, err = Load([]string{"--config", dir + "/missing.yaml"}, nil)
	requireOneLine(t, err, "cannot read config file: open "+dir+"/missing.yaml: no such file or directory")
	_, err = Load([]string{"--config", dir}, nil)
	requireOneLine(t, err, "cannot read config file: "+dir+": not a regular file (a directory)")
	require.ErrorIs(t, err, bounded.ErrNotRegular)
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"tok":            "tok",
		"tok\n":          "tok",
		"tok\r\n":        "tok",
		"  tok \t\n\n":   "tok",
		"a b c\n":        "a b c",
		"\xe2\x82\xac\n": "\u20ac",
	} {
		got, err := ReadSecretFile("admin.token_file", writeTestFile(t, dir, "s", content))
		require.NoError(t, err, "%q", content)
		require.Equal(t, want, got, "%q", content)
	}
	_, err := ReadSecretFile("resp.password_file", writeTestFile(t, dir, "e", "\r\n"))
	requireOneLine(t, err, "resp.password_file (--resp-password-file): "+dir+"/e is empty; it must hold the secret on one line")
	_, err = ReadSecretFile("resp.password_file", writeTestFile(t, dir, "big", strings.Repeat("x", 64<<10+1)))
	requireOneLine(t, err, "resp.password_file (--resp-password-file): "+dir+"/big: file too large (65537 bytes; the limit is 64 KiB)")
	_, err = ReadSecretFile("some.key", dir+"/none")
	requireOneLine(t, err, "some.key: open "+dir+"/none: no such file or directory")
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestReadGossipKey(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{16, 24, 32} {
		raw := bytes.Repeat([]byte{byte(n)}, n)
		enc := base64.StdEncoding.EncodeToString(raw)
		got, err := ReadGossipKey(writeTestFile(t, dir, "k", enc+"\n"))
		require.NoError(t, err)
		require.Equal(t, raw, got)
		got, err = ReadGossipKey(writeTestFile(t, dir, "k", strings.TrimRight(enc, "=")))
		require.NoError(t, err, "unpadded")
		require.Equal(t, raw, got)
	}
	for _, n := range []int{0, 1, 15, 17, 31, 33, 64} {
		path := writeTestFile(t, dir, "k", base64.StdEncoding.EncodeToString(make([]byte, n))+"\n")
		_, err := ReadGossipKey(path)
		if n == 0 {
			requireOneLine(t, err, "gossip.key_file (--gossip-key-file): "+path+" is empty; it must hold the secret on one line")
			continue
		}
		requireOneLine(t, err, "gossip.key_file (--gossip-key-file): "+path+" holds a "+strconv.Itoa(n)+"-byte key, want 16, 24 or 32 bytes; make one with: head -c 32 /dev/urandom | base64")
	}
	path := writeTestFile(t, dir, "k", "MDEy*zQ1\n")
	_, err := ReadGossipKey(path)
	requireOneLine(t, err, "gossip.key_file (--gossip-key-file): "+path+" is not base64 (illegal base64 data at input byte 4); make a key with: head -c 32 /dev/urandom | base64")
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		var usage bytes.Buffer
		_, err := Load([]string{"--dev", arg}, &usage)
		require.ErrorIs(t, err, flag.ErrHelp)
		out := usage.String()
		require.True(t, strings.HasPrefix(out, "Usage: capsgate "), out)
		require.Contains(t, out, "\n  --config FILE\n")
		require.Contains(t, out, "\n  --dev\n")
		for _, o := range options {
			head := "\n  --" + o.flag
			if o.arg != "" {
				head += " " + o.arg
			}
			require.Contains(t, out, head+"\n        "+o.key+": ", o.flag)
		}
		for _, line := range strings.Split(out, "\n") {
			require.LessOrEqual(t, len(line), 80, line)
		}
		require.Contains(t, out, "\n        resp.max_conns: most client connections at once, 1..1000000 (default\n        10000)\n")
		require.Contains(t, out, "(default 100ms)")
		require.Contains(t, out, `(default "info")`)
	}
	_, err := Load([]string{"--help"}, nil)
	require.ErrorIs(t, err, flag.ErrHelp, "a nil usage writer is allowed")
}

// TestOptionsCoverEveryKey: every key of Config has exactly one flag, named
// after the key except where the product spec says otherwise.
func TestOptionsCoverEveryKey(t *testing.T) {
	var keys, flags []string
	for _, o := range options {
		keys = append(keys, o.key)
		flags = append(flags, o.flag)
		want := strings.NewReplacer(".", "-", "_", "-").Replace(o.key)
		switch o.key {
		case "node.max_caps":
			want = "max-caps"
		case "vendor_keys":
			want = "vendor-key"
		}
		require.Equal(t, want, o.flag, o.key)
		require.NotEmpty(t, o.usage, o.key)
	}
	require.Equal(t, configKeys(), keys, "options follow Config, in its order")
	require.Len(t, configKeys(), 38)
	for _, f := range []string{"node-name", "cluster-id", "data-dir", "resp-addr", "admin-addr", "admin-token-file",
		"gossip-addr", "gossip-key-file", "join", "vendor-key", "max-caps", "ledger-interval"} {
		require.Contains(t, flags, f, "the product spec's flag")
	}
}

// TestExampleConfig keeps configs/capsgate.yaml true to the code: it sets
// every key Load accepts, to its default, and loads with only its file paths
// pointed at real files.
func TestExampleConfig(t *testing.T) {
	example, err := os.ReadFile("../../../configs/capsgate.yaml")
	require.NoError(t, err)

	var doc yaml.Node
	require.NoError(t, yaml.Unmarshal(example, &doc))
	var inFile []string
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind == yaml.MappingNode {
				walk(v, prefix+k.Value+".")
			} else {
				inFile = append(inFile, prefix+k.Value)
			}
		}
	}
	walk(doc.Content[0], "")
	require.Equal(t, configKeys(), inFile, "the example sets every key, in Config's order")

	dir := secretsDir(t)
	s := strings.ReplaceAll(string(example), "/etc/capsgate/", dir+"/")
	s = strings.ReplaceAll(s, "/var/lib/capsgate", dir+"/data")
	require.NotContains(t, s, "/etc/", "every path in the example is rewritten")
	c, err := Load([]string{"--config", writeTestFile(t, dir, "capsgate.yaml", s)}, nil)
	require.NoError(t, err)
	want := DefaultConfig()
	want.DataDir = dir + "/data"
	want.Admin.TokenFile, want.Gossip.KeyFile = dir+"/admin.token", dir+"/gossip.key"
	want.Join, want.VendorKeys, want.Trunks.Limits = []string{}, []string{}, []string{}
	require.False(t, c.TrunkLimitsAt.IsZero(), "the file's time")
	want.TrunkLimitsAt = c.TrunkLimitsAt
	want.Throttle.Allow = []string{}
	require.Equal(t, want, c, "the example's values are the defaults")

	// --dev refuses the example like any file.
	_, err = Load([]string{"--dev", "--config", writeTestFile(t, dir, "capsgate.yaml", s)}, nil)
	require.ErrorContains(t, err, "--dev cannot be combined with --config")
}

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 100 * time.Millisecond: "100ms", 10 * time.Second: "10s", 5 * time.Minute: "5m",
		3 * time.Hour: "3h", 90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 1500 * time.Microsecond: "1.5ms",
	} {
		require.Equal(t, want, Duration{d}.String())
		out, err := yaml.Marshal(struct{ D Duration }{Duration{d}})
		require.NoError(t, err)
		require.Equal(t, "d: "+want+"\n", string(out))
		var back struct{ D Duration }
		require.NoError(t, yaml.Unmarshal(out, &back))
		require.Equal(t, d, back.D.Duration)
	}
	for in, want := range map[string]string{
		"5":      `must be a duration with a unit such as "5s", got the bare number 5`,
		"0.5":    `must be a duration with a unit such as "0.5s", got the bare number 0.5`,
		`"5"`:    `must be a duration such as "10s" or "100ms", got "5"`,
		"true":   `must be a duration such as "10s" or "100ms", got "true"`,
		"{a: 1}": `must be a duration such as "10s" or "100ms", got a mapping`,
	} {
		var v struct{ D Duration }
		err := yaml.Unmarshal([]byte("d: "+in), &v)
		require.EqualError(t, err, want, in)
	}
	for _, in := range []string{"0", "0.0", `"0"`, "0s"} {
		v := struct{ D Duration }{Duration{time.Hour}}
		require.NoError(t, yaml.Unmarshal([]byte("d: "+in), &v), in)
		require.Zero(t, v.D.Duration, in)
	}
}
