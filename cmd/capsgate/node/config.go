package node

import (
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/idstore"
)

// Default ports of the three listeners.
const (
	DefaultRESPPort   = 6390
	DefaultAdminPort  = 8390
	DefaultGossipPort = 7946
)

// Config is the configuration of one capsgate node. It is read from a YAML
// file (configs/capsgate.yaml is a commented example of every key) and the
// command line, where every key has a flag and flags win. Build one with
// DefaultConfig or Load, change what you need and call Validate.
type Config struct {
	// Dev is set by --dev: a single node with no config file, listening on
	// loopback, with an unauthenticated admin API and a demo licence. It
	// has no key in the file so a production file can never turn it on.
	Dev bool `yaml:"-"`

	// NodeName names this node in the cluster, in logs and in metrics. It
	// must be unique within the cluster and match [A-Za-z0-9._:-]{1,64}.
	//
	// Default: os.Hostname(), because one node per host is the normal
	// deployment and the host name is then unique for free ("dev" in --dev).
	// An empty value (in the file or --node-name "") also means the default,
	// so one file can be shared by every node.
	NodeName string `yaml:"node_name"`

	// ClusterID names the cluster this node belongs to; a licence issued
	// for a cluster is valid only on it. Same alphabet as NodeName.
	//
	// Default: "default", enough for a site with one cluster ("dev" in --dev).
	ClusterID string `yaml:"cluster_id"`

	// DataDir holds the node's durable state (licences, the usage ledger,
	// the node key). Keep it on local disk.
	//
	// Default: /var/lib/capsgate, the FHS place for a daemon's state. In
	// --dev, unless set, a fresh directory from os.MkdirTemp, so a dev
	// node never touches (or needs) a system directory; DataDirIsTemp then
	// tells the caller to remove it on exit.
	DataDir string `yaml:"data_dir"`

	// DataDirIsTemp reports that Load created DataDir as a temporary
	// directory (--dev without --data-dir).
	DataDirIsTemp bool `yaml:"-"`

	// RESP configures the Redis-protocol front end that SBCs and proxies
	// send ADMIT/RELEASE/... to.
	RESP RESPConfig `yaml:"resp"`

	// Admin configures the admin HTTP API (health, metrics, service views).
	Admin AdminConfig `yaml:"admin"`

	// Gossip configures cluster membership (memberlist).
	Gossip GossipConfig `yaml:"gossip"`

	// Join lists host:port gossip addresses of nodes to join at start-up.
	// Any one reachable member is enough; listing a few survives one being
	// down.
	//
	// Default: empty, a cluster of one.
	Join []string `yaml:"join"`

	// VendorKeys lists files holding the public keys that licences must be
	// signed with. They must be readable at start-up.
	//
	// Default: empty. Start-up is allowed, but then no licence can be loaded
	// and every service is UNLICENSED (emergency calls still pass).
	VendorKeys []string `yaml:"vendor_keys"`

	// Node holds limits of this node alone.
	Node NodeConfig `yaml:"node"`

	// Ledger configures the durable licence-usage ledger.
	Ledger LedgerConfig `yaml:"ledger"`

	// Admission tunes the admission engine.
	Admission AdmissionConfig `yaml:"admission"`

	// Priority tunes PRIORITY high.
	Priority PriorityConfig `yaml:"priority"`

	// Licensing configures how licences are judged.
	Licensing LicensingConfig `yaml:"licensing"`

	// Cluster configures what a node does while members are unreachable.
	Cluster ClusterConfig `yaml:"cluster"`

	// Log configures logging.
	Log LogConfig `yaml:"log"`
}

// RESPConfig is the `resp` section.
type RESPConfig struct {
	// Addr is the host:port the RESP front end listens on.
	//
	// Default: ":6390" (every interface), next to Redis's 6379 so that it is
	// easy to remember but cannot clash with a local Redis. "127.0.0.1:6390"
	// in --dev, which must not be reachable from the network.
	Addr string `yaml:"addr"`

	// PasswordFile names a file holding the password clients must AUTH
	// with (one line).
	//
	// Default: none, no AUTH, like a stock Redis: the front end is meant to
	// sit on a private signalling network.
	PasswordFile string `yaml:"password_file"`

	// MaxConns is the most client connections open at once (1..1000000); one
	// more is told "-ERR max number of clients reached", as Redis does.
	//
	// Default: 10000, Redis's maxclients: far above what a fleet of SBCs
	// opens, low enough to stop a runaway client from exhausting descriptors.
	MaxConns int `yaml:"max_conns"`

	// IdleTimeout closes a client connection idle for this long (0 or ≥ 1s).
	//
	// Default: 0, never, like Redis's `timeout 0`: SBCs keep long-lived
	// pooled connections and reconnecting on the call path costs latency.
	IdleTimeout Duration `yaml:"idle_timeout"`

	// EventLoops is the number of network event loops (0..256).
	//
	// Default: 0, one per CPU core, which is what saturates the cores
	// without contention.
	EventLoops int `yaml:"event_loops"`
}

// AdminConfig is the `admin` section.
type AdminConfig struct {
	// Addr is the host:port of the admin HTTP API.
	//
	// Default: ":8390" (every interface, so Prometheus can scrape it);
	// "127.0.0.1:8390" in --dev.
	Addr string `yaml:"addr"`

	// TokenFile names a file holding the bearer token of the admin API (one
	// line). /healthz, /readyz and /metrics need no token.
	//
	// Default: none, and required outside --dev: the admin API must not run
	// unauthenticated. In --dev the admin API needs no token.
	TokenFile string `yaml:"token_file"`

	// TLSCertFile and TLSKeyFile name a PEM certificate (chain) and its
	// private key: with both set the admin API (and /metrics) is served
	// over HTTPS only.
	//
	// Default: none, plain HTTP, for a management network or a sidecar
	// that terminates TLS.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
}

// GossipConfig is the `gossip` section.
type GossipConfig struct {
	// Addr is the host:port gossip binds (TCP and UDP).
	//
	// Default: ":7946", memberlist's (and Serf's) well-known port;
	// "127.0.0.1:7946" in --dev.
	Addr string `yaml:"addr"`

	// KeyFile names a file holding the base64-encoded 16, 24 or 32-byte key
	// that encrypts and authenticates gossip (AES-128/192/256). Make one with
	// `head -c 32 /dev/urandom | base64`.
	//
	// Default: none, and required outside --dev unless Insecure is set, so
	// that gossip never runs in clear text by accident.
	KeyFile string `yaml:"key_file"`

	// Insecure allows gossip without a key, for lab networks. It cannot be
	// combined with KeyFile.
	//
	// Default: false.
	Insecure bool `yaml:"insecure"`
}

// NodeConfig is the `node` section.
type NodeConfig struct {
	// MaxCAPS is this node's own hardware limit, in call attempts per
	// second across every service (≥ 0). Attempts above it are refused with
	// reason OVERLOAD, the only thing that can refuse an emergency call, so
	// it protects the node when a licence is unlimited or an upstream storm
	// arrives. Set it to what the box sustains.
	//
	// Default: 0, no node limit: a node cannot know what its hardware
	// sustains, and a guessed limit would refuse licensed traffic.
	MaxCAPS float64 `yaml:"max_caps"`
}

// LedgerConfig is the `ledger` section.
type LedgerConfig struct {
	// Interval is the length of one usage-ledger interval (≥ 1s): usage is
	// recorded in DataDir per interval.
	//
	// Default: 10s, the product spec's: fine-grained enough for billing and
	// for a crash to lose little, few enough records to keep the ledger small.
	Interval Duration `yaml:"interval"`
}

// AdmissionConfig is the `admission` section.
type AdmissionConfig struct {
	// Burst is the depth of each service's CAPS token bucket, expressed as
	// that much time at the licensed rate (1ms..10s): 100ms at 1000 CAPS
	// lets 100 attempts through at once.
	//
	// Default: 100ms, which lets a SIP proxy's natural jitter through while
	// keeping any 1 s window within 10% of the licence.
	Burst Duration `yaml:"burst"`

	// SessionTTL is how long an admitted call's session (ADMIT ... CALL) is
	// held without a RELEASE before it is freed (≥ 1s).
	//
	// Default: 3h, longer than nearly every real call, so a lost BYE leaks
	// session capacity for a bounded time only; RELEASE is the normal end.
	SessionTTL Duration `yaml:"session_ttl"`

	// SubscriberTTL is the REGISTER TTL when the client gives none (≥ 1s).
	//
	// Default: 1h, SIP's customary Expires (RFC 3261 suggests 3600 s).
	SubscriberTTL Duration `yaml:"subscriber_ttl"`

	// IdempotencyWindow is how long a CONSUME ID key is remembered, so a
	// retried CONSUME is not counted twice (1s to 35 days: keys are kept on
	// disk under data_dir/ids, memory holds only the last seconds' keys).
	//
	// Default: 10m, which covers every client retry policy seen; a billing
	// system's deduplication window (Stripe 24 h, Metronome 34 days) needs
	// it longer.
	IdempotencyWindow Duration `yaml:"idempotency_window"`
}

// PriorityConfig is the `priority` section.
type PriorityConfig struct {
	// HighHeadroomPercent is what PRIORITY high may use above the licence,
	// in percent (0..100): a second CAPS bucket at that share of the
	// licensed rate once the licensed one is dry, and that many more
	// sessions. 0 turns the headroom off.
	//
	// Default: 10, enough for high-priority calls to get through a busy
	// hour while bounding how far a licence can be exceeded.
	HighHeadroomPercent int `yaml:"high_headroom_percent"`
	// MaxEmergencySessions bounds the emergency sessions (ADMIT ... CALL
	// ... PRIORITY emergency) open on this node: emergency calls are never
	// refused by a licence, so this is what bounds the memory they hold for
	// the session TTL. Beyond it an emergency call with CALL is refused
	// OVERLOAD (1 to 10,000,000).
	//
	// Default: 100,000, far above the emergency calls any node carries at
	// once, and about 10 MB.
	MaxEmergencySessions int `yaml:"max_emergency_sessions"`
}

// LicensingConfig is the `licensing` section.
type LicensingConfig struct {
	// ClockTolerance is how far the wall clock may step back (behind the
	// highest wall time this node has seen) before the rollback alarm, and
	// how far in the future a licence may have been issued before the
	// node's clock is judged wrong (≥ 1s). Licences are always judged at
	// the high-water mark, so a clock set back never revives one.
	//
	// Default: 5m, far beyond what NTP corrects, far below any licence term.
	ClockTolerance Duration `yaml:"clock_tolerance"`
}

// ClusterConfig is the `cluster` section. A node cannot tell a dead member
// from one cut off by a partition; these keys decide how the licence is
// split meanwhile (see the README's "Partitions").
type ClusterConfig struct {
	// PartitionPolicy is "split" or "fail_open". Split: each side enforces
	// the part of every licence its reachable members hold, so the cluster
	// never over-admits; the side with a majority takes over the rest after
	// ReclaimAfter, a minority side admits nothing (but emergency calls)
	// from ReclaimAfter/2 on. Fail_open: each side enforces the whole
	// licence for FailOpenFor, then splits.
	//
	// Default: split, because a licence is what the vendor was paid for.
	PartitionPolicy string `yaml:"partition_policy"`

	// FailOpenFor bounds fail_open (≥ 0).
	//
	// Default: 1m, enough to ride out a switch reboot.
	FailOpenFor Duration `yaml:"fail_open_for"`

	// ReclaimAfter is how long a failed member keeps its part of every
	// licence, with its sessions and registrations still counted, before
	// the majority side takes it over (≥ 1s).
	//
	// Default: 3s: a killed node's capacity is back in use about 4 s after
	// the kill, while a minority side still has 1.5 s of margin to stop
	// admitting before the majority takes over its part.
	ReclaimAfter Duration `yaml:"reclaim_after"`
}

// LogConfig is the `log` section.
type LogConfig struct {
	// Level is the least severe level logged: debug, info, warn or error.
	//
	// Default: info, which logs start-up, shutdown and problems but nothing
	// per call.
	Level string `yaml:"level"`
}

// Duration is a time.Duration that reads from YAML as a string such as
// "10s", "100ms" or "3h" (time.ParseDuration), and writes back the same
// way. A bare number is refused, except 0, because its unit would be a
// guess.
type Duration struct {
	time.Duration
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return errors.New(`must be a duration such as "10s" or "100ms", got ` + describeNode(n))
	}
	if n.ShortTag() != "!!str" {
		if v, err := strconv.ParseFloat(n.Value, 64); err == nil && v == 0 {
			d.Duration = 0
			return nil
		}
		if _, err := strconv.ParseFloat(n.Value, 64); err == nil {
			return fmt.Errorf(`must be a duration with a unit such as "%ss", got the bare number %s`, n.Value, n.Value)
		}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf(`must be a duration such as "10s" or "100ms", got %q`, n.Value)
	}
	d.Duration = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String formats d like time.Duration.String without zero trailing units:
// "3h", "1h30m", "10s", "100ms", "0s".
func (d Duration) String() string {
	s := d.Duration.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// DefaultConfig returns the configuration of a production node with nothing
// configured. It does not pass Validate on its own: admin.token_file and
// gossip.key_file (or gossip.insecure) must be set.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:  host,
		ClusterID: "default",
		DataDir:   "/var/lib/capsgate",
		RESP: RESPConfig{
			Addr:     ":" + strconv.Itoa(DefaultRESPPort),
			MaxConns: 10000,
		},
		Admin:  AdminConfig{Addr: ":" + strconv.Itoa(DefaultAdminPort)},
		Gossip: GossipConfig{Addr: ":" + strconv.Itoa(DefaultGossipPort)},
		Ledger: LedgerConfig{Interval: Duration{10 * time.Second}},
		Admission: AdmissionConfig{
			Burst:             Duration{100 * time.Millisecond},
			SessionTTL:        Duration{3 * time.Hour},
			SubscriberTTL:     Duration{time.Hour},
			IdempotencyWindow: Duration{10 * time.Minute},
		},
		Priority:  PriorityConfig{HighHeadroomPercent: 10, MaxEmergencySessions: 100_000},
		Licensing: LicensingConfig{ClockTolerance: Duration{5 * time.Minute}},
		Cluster:   ClusterConfig{PartitionPolicy: "split", FailOpenFor: Duration{time.Minute}, ReclaimAfter: Duration{3 * time.Second}},
		Log:       LogConfig{Level: "info"},
	}
}

// devConfig is DefaultConfig changed for --dev: loopback listeners, names
// "dev", and an empty DataDir that Load turns into a temporary directory.
func devConfig() Config {
	c := DefaultConfig()
	c.Dev = true
	c.NodeName = "dev"
	c.ClusterID = "dev"
	c.DataDir = ""
	c.RESP.Addr = "127.0.0.1:" + strconv.Itoa(DefaultRESPPort)
	c.Admin.Addr = "127.0.0.1:" + strconv.Itoa(DefaultAdminPort)
	c.Gossip.Addr = "127.0.0.1:" + strconv.Itoa(DefaultGossipPort)
	return c
}

// option is one config key and its flag.
type option struct {
	key   string // dotted YAML key
	flag  string // flag name without dashes
	arg   string // the flag's argument in the usage text
	usage string
	def   string // default shown in the usage text when not derived from DefaultConfig
}

// options lists every config key, in the order of the example file. The
// flag name is the key with '.' and '_' turned into '-', except where the
// product spec names the flag otherwise (--vendor-key, --max-caps).
var options = []option{
	{key: "node_name", flag: "node-name", arg: "NAME", usage: "this node's name in the cluster, [A-Za-z0-9._:-]{1,64}", def: `the host name; "dev" in --dev`},
	{key: "cluster_id", flag: "cluster-id", arg: "ID", usage: "the cluster's id; a licence issued for a cluster is valid only on it", def: `"default"; "dev" in --dev`},
	{key: "data_dir", flag: "data-dir", arg: "DIR", usage: "directory of the node's state (licences, ledger, node key)", def: "/var/lib/capsgate; a temporary directory in --dev"},
	{key: "resp.addr", flag: "resp-addr", arg: "HOST:PORT", usage: "address of the RESP front end", def: `":6390"; "127.0.0.1:6390" in --dev`},
	{key: "resp.password_file", flag: "resp-password-file", arg: "FILE", usage: "file holding the password clients must AUTH with (one line)", def: "none: no AUTH"},
	{key: "resp.max_conns", flag: "resp-max-conns", arg: "N", usage: "most client connections at once, 1..1000000"},
	{key: "resp.idle_timeout", flag: "resp-idle-timeout", arg: "DURATION", usage: "close client connections idle this long; 0 = never, else at least 1s"},
	{key: "resp.event_loops", flag: "resp-event-loops", arg: "N", usage: "network event loops, 0..256; 0 = one per CPU core"},
	{key: "admin.addr", flag: "admin-addr", arg: "HOST:PORT", usage: "address of the admin HTTP API", def: `":8390"; "127.0.0.1:8390" in --dev`},
	{key: "admin.token_file", flag: "admin-token-file", arg: "FILE", usage: "file holding the admin API's bearer token (one line)", def: "none; required outside --dev"},
	{key: "admin.tls_cert_file", flag: "admin-tls-cert-file", arg: "FILE", usage: "PEM certificate: with admin.tls_key_file, the admin API is served over HTTPS", def: "none: HTTP"},
	{key: "admin.tls_key_file", flag: "admin-tls-key-file", arg: "FILE", usage: "PEM private key of admin.tls_cert_file", def: "none"},
	{key: "gossip.addr", flag: "gossip-addr", arg: "HOST:PORT", usage: "address gossip binds (TCP and UDP)", def: `":7946"; "127.0.0.1:7946" in --dev`},
	{key: "gossip.key_file", flag: "gossip-key-file", arg: "FILE", usage: "file holding the base64 16, 24 or 32-byte gossip key (head -c 32 /dev/urandom | base64)", def: "none; required outside --dev unless --gossip-insecure"},
	{key: "gossip.insecure", flag: "gossip-insecure", usage: "allow gossip without a key (lab networks only)"},
	{key: "join", flag: "join", arg: "HOST:PORT", usage: "gossip address of a node to join; repeatable or comma-separated, replaces the file's list", def: "none"},
	{key: "vendor_keys", flag: "vendor-key", arg: "FILE", usage: "public key file licences must be signed with; repeatable or comma-separated, replaces the file's list", def: "none: no licence can be loaded"},
	{key: "node.max_caps", flag: "max-caps", arg: "CAPS", usage: "this node's hardware limit in call attempts per second across every service (reason OVERLOAD); 0 = none"},
	{key: "ledger.interval", flag: "ledger-interval", arg: "DURATION", usage: "length of a usage-ledger interval, at least 1s"},
	{key: "admission.burst", flag: "admission-burst", arg: "DURATION", usage: "CAPS bucket depth as time at the licensed rate, 1ms..10s"},
	{key: "admission.session_ttl", flag: "admission-session-ttl", arg: "DURATION", usage: "how long an admitted call's session is held without RELEASE, at least 1s"},
	{key: "admission.subscriber_ttl", flag: "admission-subscriber-ttl", arg: "DURATION", usage: "REGISTER TTL when none is given, at least 1s"},
	{key: "admission.idempotency_window", flag: "admission-idempotency-window", arg: "DURATION", usage: "how long a CONSUME ID key is remembered, 1s to 35 days (840h)"},
	{key: "priority.high_headroom_percent", flag: "priority-high-headroom-percent", arg: "PERCENT", usage: "what PRIORITY high may use above the licence (CAPS and sessions), in percent, 0..100"},
	{key: "priority.max_emergency_sessions", flag: "priority-max-emergency-sessions", arg: "N", usage: "emergency sessions open on this node at most (beyond: OVERLOAD), 1..10000000"},
	{key: "licensing.clock_tolerance", flag: "licensing-clock-tolerance", arg: "DURATION", usage: "how far the clock may step back before the rollback alarm, and a licence be issued in the future, at least 1s"},
	{key: "cluster.partition_policy", flag: "cluster-partition-policy", arg: "POLICY", usage: "split (each side enforces its reachable members' part; never over-admits) or fail_open (each side enforces the whole licence for cluster.fail_open_for)"},
	{key: "cluster.fail_open_for", flag: "cluster-fail-open-for", arg: "DURATION", usage: "how long fail_open enforces the whole licence on each side of a partition"},
	{key: "cluster.reclaim_after", flag: "cluster-reclaim-after", arg: "DURATION", usage: "how long a failed member keeps its part before the majority side takes it over, at least 1s"},
	{key: "log.level", flag: "log-level", arg: "LEVEL", usage: "least severe level logged: debug, info, warn or error"},
}

// flagOf returns the flag of a config key, for error messages.
func flagOf(key string) string {
	for _, o := range options {
		if o.key == key {
			return "--" + o.flag
		}
	}
	return ""
}

// name is how errors name a key: `resp.max_conns (--resp-max-conns)`.
func name(key string) string {
	if f := flagOf(key); f != "" {
		return key + " (" + f + ")"
	}
	return key
}

var durationType = reflect.TypeOf(Duration{})

// isSection reports whether t is a YAML mapping of further keys.
func isSection(t reflect.Type) bool { return t.Kind() == reflect.Struct && t != durationType }

// yamlName returns the YAML key of a struct field, or "" if it has none.
func yamlName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	if tag == "" {
		return strings.ToLower(f.Name)
	}
	return tag
}

// fieldByName finds the field of struct type t with the YAML key name.
func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// configKeys returns every dotted key of Config, in struct order.
func configKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			n := yamlName(f)
			if n == "" {
				continue
			}
			if isSection(f.Type) {
				walk(f.Type, prefix+n+".")
			} else {
				keys = append(keys, prefix+n)
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
	return keys
}

// field returns the settable field of c named by a dotted key.
func (c *Config) field(key string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for _, part := range strings.Split(key, ".") {
		f, ok := fieldByName(v.Type(), part)
		if !ok {
			panic("capsgate: no config key " + key)
		}
		v = v.FieldByIndex(f.Index)
	}
	return v
}

// setFromString parses s into v according to v's type; the error says what
// was wanted.
func setFromString(v reflect.Value, s string) error {
	switch {
	case v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf(`must be a duration such as "10s" or "100ms", got %q`, s)
		}
		v.Set(reflect.ValueOf(Duration{d}))
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Int:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v.OverflowInt(n) {
			return fmt.Errorf("must be an integer, got %q", s)
		}
		v.SetInt(n)
	case v.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("must be a number, got %q", s)
		}
		v.SetFloat(f)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("must be true or false, got %q", s)
		}
		v.SetBool(b)
	case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
		v.Set(reflect.ValueOf(splitList(s)))
	default:
		panic("capsgate: unsupported config type " + v.Type().String())
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// flagValue is the flag.Value of one option. It checks each value when the
// flag is parsed and keeps them all, so that lists can repeat; Load then
// applies them over the file.
type flagValue struct {
	opt    *option
	typ    reflect.Type
	vals   []string
	failed *error // the first Set error, in our words rather than package flag's
}

func (f *flagValue) isList() bool { return f.typ.Kind() == reflect.Slice }

func (f *flagValue) String() string {
	if f == nil || len(f.vals) == 0 {
		return ""
	}
	if f.isList() {
		return strings.Join(f.vals, ",")
	}
	return f.vals[len(f.vals)-1]
}

func (f *flagValue) IsBoolFlag() bool { return f.typ.Kind() == reflect.Bool }

func (f *flagValue) Set(s string) error {
	if !f.isList() {
		if err := setFromString(reflect.New(f.typ).Elem(), s); err != nil {
			err = fmt.Errorf("invalid flag: --%s (%s) %v", f.opt.flag, f.opt.key, err)
			if *f.failed == nil {
				*f.failed = err
			}
			return err
		}
	}
	f.vals = append(f.vals, s)
	return nil
}

// apply sets the option's key in c: a list flag replaces the list with all
// its values, a scalar flag sets its last value.
func (f *flagValue) apply(c *Config) {
	v := c.field(f.opt.key)
	if f.isList() {
		list := []string{}
		for _, s := range f.vals {
			list = append(list, splitList(s)...)
		}
		v.Set(reflect.ValueOf(list))
		return
	}
	_ = setFromString(v, f.vals[len(f.vals)-1]) // checked by Set
}

// Load builds the configuration from the command line: args are the
// arguments without the program name. It parses the flags (package flag,
// so -x and --x both work), reads the --config file over the defaults
// (--dev's defaults with --dev), applies every flag given on the command
// line over the file, creates --dev's temporary data directory if needed,
// and validates. Every error is one line naming the key, flag or file at
// fault. -h or --help writes the usage to usage and returns flag.ErrHelp.
func Load(args []string, usage io.Writer) (Config, error) {
	if usage == nil {
		usage = io.Discard
	}
	fs := flag.NewFlagSet("capsgate", flag.ContinueOnError)
	// Package flag prints a parse error and the whole usage; start-up
	// errors are one line, so it prints nothing and Load returns the error.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	configPath := fs.String("config", "", "")
	dev := fs.Bool("dev", false, "")
	var failed error
	values := map[string]*flagValue{}
	for i := range options {
		o := &options[i]
		fv := &flagValue{opt: o, typ: new(Config).field(o.key).Type(), failed: &failed}
		values[o.flag] = fv
		fs.Var(fv, o.flag, o.usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(usage)
			return Config{}, flag.ErrHelp
		}
		if failed != nil {
			return Config{}, failed
		}
		msg := err.Error()
		for _, p := range []string{"flag provided but not defined: -", "flag needs an argument: -"} {
			if strings.HasPrefix(msg, p) {
				msg = p + "-" + strings.TrimPrefix(msg, p)
			}
		}
		return Config{}, fmt.Errorf("invalid command line: %s (see capsgate --help)", msg)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q: capsgate takes only flags (see capsgate --help)", fs.Arg(0))
	}

	cfg := DefaultConfig()
	if *dev {
		cfg = devConfig()
	}
	if *configPath != "" {
		if err := cfg.readFile(*configPath); err != nil {
			return Config{}, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		if fv, ok := values[f.Name]; ok {
			fv.apply(&cfg)
		}
	})
	if cfg.NodeName == "" {
		cfg.NodeName = DefaultConfig().NodeName
		if cfg.Dev {
			cfg.NodeName = "dev"
		}
	}
	if cfg.Dev && cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "capsgate-dev-")
		if err != nil {
			return Config{}, fmt.Errorf("cannot create a temporary data_dir for --dev: %w", err)
		}
		cfg.DataDir, cfg.DataDirIsTemp = dir, true
	}
	if err := cfg.Validate(); err != nil {
		if cfg.DataDirIsTemp {
			_ = os.RemoveAll(cfg.DataDir)
		}
		return Config{}, err
	}
	return cfg, nil
}

// printUsage writes the --help text.
func printUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`Usage: capsgate [--dev] [--config FILE] [flags]

Flags override the config file's keys (configs/capsgate.yaml is a commented
example). -flag and --flag are the same.

  --config FILE
        YAML config file; without it, every key has its default
  --dev
        a single loopback node with no config file, a demo licence and an
        admin API needing no token; data in a temporary directory unless
        --data-dir is given
`)
	def := DefaultConfig()
	for _, o := range options {
		fmt.Fprintf(&b, "  --%s", o.flag)
		if o.arg != "" {
			fmt.Fprintf(&b, " %s", o.arg)
		}
		d := o.def
		if d == "" {
			d = formatValue(def.field(o.key))
		}
		b.WriteString("\n" + wrap(fmt.Sprintf("%s: %s (default %s)", o.key, o.usage, d), "        ", 80))
	}
	_, _ = io.WriteString(w, b.String())
}

// wrap breaks text into lines of at most width columns (unless a word is
// longer), each starting with indent and ending with a newline.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := indent
	for _, w := range strings.Fields(text) {
		if line != indent && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if line != indent {
			line += " "
		}
		line += w
	}
	b.WriteString(line + "\n")
	return b.String()
}

// formatValue formats a default for the usage text.
func formatValue(v reflect.Value) string {
	switch {
	case v.Type() == durationType:
		return v.Interface().(Duration).String()
	case v.Kind() == reflect.String:
		return strconv.Quote(v.String())
	case v.Kind() == reflect.Slice:
		return "none"
	}
	return fmt.Sprint(v.Interface())
}

// readFile reads the YAML file at path over c. The keys are checked
// against Config first, so that an unknown or ill-typed key is reported by
// its full dotted name; then the file is decoded with KnownFields.
func (c *Config) readFile(path string) error {
	data, err := bounded.ReadFile(path, bounded.ConfigFile)
	if err != nil {
		return fmt.Errorf("cannot read config file: %w", err)
	}
	if err := c.parse(data); err != nil {
		return fmt.Errorf("invalid config file %s: %w", path, err)
	}
	return nil
}

// parse reads a config file's YAML over c; the error is one line.
func (c *Config) parse(data []byte) error {
	fail := func(err error) error {
		return errors.New(oneLine(err))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil // empty file: all defaults
	case err != nil:
		return fail(err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		if err != nil {
			return fail(err)
		}
		return fail(fmt.Errorf("line %d: a second YAML document; the file must hold one", next.Line))
	}
	if err := bounded.YAML(&doc, bounded.MaxYAMLValues); err != nil {
		return err
	}
	if err := checkNode(&doc, reflect.TypeOf(Config{}), "", 0); err != nil {
		return fail(err)
	}
	dec = yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fail(err)
	}
	return nil
}

// oneLine turns a yaml.v3 error into one line without its "yaml: " prefix.
func oneLine(err error) string { return bounded.YAMLError(err).Error() }

// checkNode checks a YAML node against type t: every mapping key must name
// a field, no key may repeat, and every value must decode into its field.
func checkNode(n *yaml.Node, t reflect.Type, path string, depth int) error {
	if depth > 32 {
		return fmt.Errorf("line %d: nested too deep", n.Line)
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkNode(n.Content[0], t, path, depth+1)
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return checkNode(n.Alias, t, path, depth+1)
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil // no value: the default stays
	}
	if t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode {
		for i, e := range n.Content {
			if e.Kind == yaml.AliasNode && e.Alias != nil {
				e = e.Alias
			}
			var s string
			if e.Kind != yaml.ScalarNode || e.Decode(&s) != nil {
				return fmt.Errorf("line %d: %s entry %d must be a string, got %s", e.Line, path, i+1, describeNode(e))
			}
		}
		return nil
	}
	if !isSection(t) {
		// yaml.v3 would truncate 1.5 into an int: refuse anything but an integer.
		intOK := t.Kind() != reflect.Int || n.Kind != yaml.ScalarNode || n.ShortTag() == "!!int"
		if err := n.Decode(reflect.New(t).Interface()); err != nil || !intOK {
			return fmt.Errorf("line %d: %s %s", n.Line, path, wantOf(t, n, err))
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			return fmt.Errorf("line %d: the file must be a mapping of keys, got %s", n.Line, describeNode(n))
		}
		return fmt.Errorf("line %d: %s must be a mapping of keys, got %s", n.Line, path, describeNode(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			if err := checkMerge(v, t, path, depth+1); err != nil {
				return err
			}
			continue
		}
		key := k.Value
		if path != "" {
			key = path + "." + k.Value
		}
		f, ok := fieldByName(t, k.Value)
		if !ok || k.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: unknown key %q", k.Line, key)
		}
		if first, dup := seen[k.Value]; dup {
			return fmt.Errorf("line %d: key %q repeated (first at line %d)", k.Line, key, first)
		}
		seen[k.Value] = k.Line
		if err := checkNode(v, f.Type, key, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// checkMerge checks the value of a YAML merge key (<<: *anchor).
func checkMerge(v *yaml.Node, t reflect.Type, path string, depth int) error {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			if err := checkNode(m, t, path, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return checkNode(v, t, path, depth)
}

// wantOf says what a key of type t must hold, for a value that did not
// decode.
func wantOf(t reflect.Type, n *yaml.Node, err error) string {
	switch {
	case t == durationType:
		var d Duration
		if e := d.UnmarshalYAML(n); e != nil {
			return e.Error()
		}
		return oneLine(err)
	case t.Kind() == reflect.Int:
		return "must be an integer, got " + describeNode(n)
	case t.Kind() == reflect.Float64:
		return "must be a number, got " + describeNode(n)
	case t.Kind() == reflect.Bool:
		return "must be true or false, got " + describeNode(n)
	case t.Kind() == reflect.String:
		return "must be a string, got " + describeNode(n)
	case t.Kind() == reflect.Slice:
		return "must be a list of strings such as [a, b], got " + describeNode(n)
	}
	return oneLine(err)
}

// describeNode describes a YAML value in an error message.
func describeNode(n *yaml.Node) string { return bounded.DescribeYAML(n) }

var namePattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// Validate checks c and returns the first problem as one line naming the
// key and its flag, such as
//
//	invalid config: resp.max_conns (--resp-max-conns) must be between 1 and 1000000, got 0
//
// It also reads every file the configuration names (resp.password_file,
// admin.token_file, gossip.key_file, vendor_keys), so that a missing or
// malformed file stops start-up rather than a later reload.
func (c *Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("invalid config: %w", err)
	}
	return nil
}

func (c *Config) validate() error {
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%s "+format, append([]any{name(key)}, a...)...)
	}
	for _, k := range []struct{ key, v string }{{"node_name", c.NodeName}, {"cluster_id", c.ClusterID}} {
		if !namePattern.MatchString(k.v) {
			return bad(k.key, "must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -, got %q", k.v)
		}
	}
	if c.DataDir == "" {
		return bad("data_dir", "must be set")
	}

	if err := checkAddr(c.RESP.Addr, false); err != nil {
		return bad("resp.addr", "%v", err)
	}
	if c.RESP.PasswordFile != "" {
		if _, err := ReadSecretFile("resp.password_file", c.RESP.PasswordFile); err != nil {
			return err
		}
	}
	if c.RESP.MaxConns < 1 || c.RESP.MaxConns > 1000000 {
		return bad("resp.max_conns", "must be between 1 and 1000000, got %d", c.RESP.MaxConns)
	}
	if d := c.RESP.IdleTimeout.Duration; d != 0 && d < time.Second {
		return bad("resp.idle_timeout", "must be 0 (never) or at least 1s, got %s", c.RESP.IdleTimeout)
	}
	if c.RESP.EventLoops < 0 || c.RESP.EventLoops > 256 {
		return bad("resp.event_loops", "must be between 0 (one per CPU core) and 256, got %d", c.RESP.EventLoops)
	}

	if err := checkAddr(c.Admin.Addr, false); err != nil {
		return bad("admin.addr", "%v", err)
	}
	switch {
	case c.Admin.TokenFile != "":
		if _, err := ReadSecretFile("admin.token_file", c.Admin.TokenFile); err != nil {
			return err
		}
	case !c.Dev:
		return bad("admin.token_file", "is required outside --dev: the admin API must not run unauthenticated")
	}
	if (c.Admin.TLSCertFile == "") != (c.Admin.TLSKeyFile == "") {
		return bad("admin.tls_cert_file", "and %s must be set together", name("admin.tls_key_file"))
	}
	if c.Admin.TLSCertFile != "" {
		if _, err := loadX509KeyPair(c.Admin.TLSCertFile, c.Admin.TLSKeyFile); err != nil {
			return bad("admin.tls_cert_file", "cannot load the certificate and key (%s): %v", name("admin.tls_key_file"), err)
		}
	}

	if err := checkAddr(c.Gossip.Addr, false); err != nil {
		return bad("gossip.addr", "%v", err)
	}
	switch {
	case c.Gossip.KeyFile != "" && c.Gossip.Insecure:
		return bad("gossip.insecure", "cannot be combined with %s: choose one", name("gossip.key_file"))
	case c.Gossip.KeyFile != "":
		if _, err := ReadGossipKey(c.Gossip.KeyFile); err != nil {
			return err
		}
	case !c.Dev && !c.Gossip.Insecure:
		return bad("gossip.key_file", "is required outside --dev unless %s is true: gossip must not run unencrypted by accident", name("gossip.insecure"))
	}
	for i, j := range c.Join {
		if err := checkAddr(j, true); err != nil {
			return bad("join", "entry %d: %v", i+1, err)
		}
	}
	for i, path := range c.VendorKeys {
		if path == "" {
			return bad("vendor_keys", "entry %d is empty", i+1)
		}
		data, err := bounded.ReadFile(path, bounded.KeyFile)
		if err == nil && len(data) == 0 {
			err = fmt.Errorf("%s is empty", path)
		}
		if err != nil {
			return bad("vendor_keys", "entry %d: %w", i+1, err)
		}
	}

	if m := c.Node.MaxCAPS; !(m >= 0) || math.IsInf(m, 0) {
		return bad("node.max_caps", "must be a number at least 0 (0 = no node limit), got %v", m)
	}
	if c.Ledger.Interval.Duration < time.Second {
		return bad("ledger.interval", "must be at least 1s, got %s", c.Ledger.Interval)
	}
	if b := c.Admission.Burst.Duration; b < time.Millisecond || b > 10*time.Second {
		return bad("admission.burst", "must be between 1ms and 10s, got %s", c.Admission.Burst)
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"admission.session_ttl", c.Admission.SessionTTL},
		{"admission.subscriber_ttl", c.Admission.SubscriberTTL},
		{"admission.idempotency_window", c.Admission.IdempotencyWindow},
		{"licensing.clock_tolerance", c.Licensing.ClockTolerance},
		{"cluster.reclaim_after", c.Cluster.ReclaimAfter},
	} {
		if d.v.Duration < time.Second {
			return bad(d.key, "must be at least 1s, got %s", d.v)
		}
	}
	if w := c.Admission.IdempotencyWindow.Duration; w > idstore.MaxWindow {
		return bad("admission.idempotency_window", "must be at most 840h (35 days), got %s", c.Admission.IdempotencyWindow)
	}
	if c.Cluster.PartitionPolicy != "split" && c.Cluster.PartitionPolicy != "fail_open" {
		return bad("cluster.partition_policy", "must be split or fail_open, got %q", c.Cluster.PartitionPolicy)
	}
	if c.Cluster.FailOpenFor.Duration < 0 {
		return bad("cluster.fail_open_for", "must be at least 0, got %s", c.Cluster.FailOpenFor)
	}
	if p := c.Priority.HighHeadroomPercent; p < 0 || p > 100 {
		return bad("priority.high_headroom_percent", "must be between 0 and 100, got %d", p)
	}
	if m := c.Priority.MaxEmergencySessions; m < 1 || m > 10_000_000 {
		return bad("priority.max_emergency_sessions", "must be between 1 and 10000000, got %d", m)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	return nil
}

// checkAddr checks a host:port address with a numeric port 1..65535; join
// addresses also need a host.
func checkAddr(addr string, needHost bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err == nil {
		p, perr := strconv.Atoi(port)
		if perr != nil || strings.TrimLeft(port, "0123456789") != "" || p < 1 || p > 65535 {
			err = errors.New("port")
		}
	}
	if err == nil && needHost && host == "" {
		err = errors.New("host")
	}
	if err != nil {
		if needHost {
			return fmt.Errorf("must be host:port with a port from 1 to 65535, got %q", addr)
		}
		return fmt.Errorf("must be [host]:port with a port from 1 to 65535, got %q", addr)
	}
	return nil
}

// ReadSecretFile reads a token or password file: one line, surrounding
// white space (and the trailing \r\n) trimmed, not empty. key is the config
// key naming the file (e.g. "admin.token_file"), for the error, which also
// names the file.
func ReadSecretFile(key, path string) (string, error) {
	data, err := bounded.ReadFile(path, bounded.KeyFile)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name(key), err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty; it must hold the secret on one line", name(key), path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("%s: %s holds more than one line; it must hold the secret on one line", name(key), path)
	}
	return s, nil
}

// ReadGossipKey reads the gossip key file: base64 (standard alphabet, with
// or without padding) of a 16, 24 or 32-byte key, as made by
// `head -c 32 /dev/urandom | base64`.
func ReadGossipKey(path string) ([]byte, error) {
	const key = "gossip.key_file"
	s, err := ReadSecretFile(key, path)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %s is not base64 (%v); make a key with: head -c 32 /dev/urandom | base64", name(key), path, err)
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("%s: %s holds a %d-byte key, want 16, 24 or 32 bytes; make one with: head -c 32 /dev/urandom | base64", name(key), path, len(b))
}
