package node

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/cell"
	"github.com/capsgate/capsgate/admission/resp"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/trunks"
	"github.com/capsgate/capsgate/licensing/registry"
	"gopkg.in/yaml.v3"
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
	// loopback, with a demo licence and an admin API that needs no token
	// unless --admin-token-file is given. It has no key in the file, and
	// --dev cannot be combined with --config, so a production file can
	// never turn it on.
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

	// Trunks are the operator's own limits of keys inside its licensed
	// services (ADMIT ... TRUNK key).
	Trunks TrunksConfig `yaml:"trunks"`

	// TrunkLimitsAt is when the limits in Trunks.Limits were written: the
	// config file's modification time, or the start for --trunks-limits. Of
	// these and a setting made through the admin API, the later holds.
	TrunkLimitsAt time.Time `yaml:"-"`

	// Log configures logging.
	Log LogConfig `yaml:"log"`

	// Throttle configures CL.THROTTLE, redis-cell's rate limiter.
	Throttle ThrottleConfig `yaml:"throttle"`
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
	// unauthenticated. In --dev it is optional: without it the admin API
	// needs no token, with it (--admin-token-file) the token is required.
	TokenFile string `yaml:"token_file"`

	// TLSCertFile and TLSKeyFile name a PEM certificate (chain) and its
	// private key: with both set the admin API (and /metrics) is served
	// over HTTPS only.
	//
	// Default: none, plain HTTP, for a management network or a sidecar
	// that terminates TLS.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`

	// MaxConns bounds the admin API's connections at once (1..100000). At
	// the bound a new connection closes the one idle longest between
	// requests, or is closed itself when none is idle; one source address
	// holds at most three quarters of them (all of fewer than 4).
	//
	// Default: DefaultAdminMaxConns (1024).
	MaxConns int `yaml:"max_conns"`
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

// TrunksConfig is the `trunks` section.
type TrunksConfig struct {
	// MaxKeys bounds the keys with limits in the farm's book, removals kept
	// for a while included (1..10,000,000).
	//
	// Default: 200,000, twice the 100,000 customer trunks of a large
	// wholesale farm; each key costs about 300 bytes on every node.
	MaxKeys int `yaml:"max_keys"`

	// Limits lists keys' limits, one string each:
	// "SERVICE/KEY caps=N burst=N sessions=N tokens=N overage=P" (CAPS and
	// sessions for the farm; burst the depth of the key's bucket in
	// attempts; a limit left out is not enforced; tokens the key's token
	// pool, the allocation of the account of its name, with its overage
	// policy, none unless given). They are set at start, as if through
	// the admin API when the file was written; the admin API can change
	// them later (PUT /v1/services/{service}/limits/{key}).
	//
	// Default: none.
	Limits []string `yaml:"limits"`
}

// LogConfig is the `log` section.
type LogConfig struct {
	// Level is the least severe level logged: debug, info, warn or error.
	//
	// Default: info, which logs start-up, shutdown and problems but nothing
	// per call.
	Level string `yaml:"level"`
}

// ThrottleConfig is the `throttle` section: CL.THROTTLE key max_burst
// count period [quantity] (redis-cell compatible, farm-wide), and what it
// accepts.
type ThrottleConfig struct {
	// Allow lists the key prefixes CL.THROTTLE accepts: a key must start
	// with one of them ("" accepts every key). Empty, CL.THROTTLE is
	// disabled (-ERR CL.THROTTLE is not enabled).
	//
	// Default: empty: a node keeps no clients' keys unless told which.
	Allow []string `yaml:"allow"`

	// MaxKeys bounds the keys held at once, those whose bucket is not full
	// (1..100,000,000); a new key is refused beyond it, the keys held go
	// on. A key takes about 60 bytes.
	//
	// Default: 1,000,000, about 60 MB.
	MaxKeys int `yaml:"max_keys"`

	// MaxBurst bounds the max_burst argument (0..1,000,000,000).
	//
	// Default: 1,000,000, from cell.DefaultBounds.
	MaxBurst int `yaml:"max_burst"`

	// MaxCount bounds the count argument (1..1,000,000: a million a second
	// is an emission interval of 1 µs, redis-cell's unit).
	//
	// Default: 1,000,000, from cell.DefaultBounds.
	MaxCount int `yaml:"max_count"`

	// MaxPeriod bounds the period argument (whole seconds, 1s..8760h).
	//
	// Default: 24h, from cell.DefaultBounds.
	MaxPeriod Duration `yaml:"max_period"`
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
// gossip.key_file (or gossip.insecure) must be set. Each default comes from
// the package that uses it, where its reason is written: the engine's
// (admission.DefaultConfig), the RESP server's (resp.DefaultMaxConns), the
// registry's (registry.DefaultClockTolerance) and the cluster's
// (cluster.DefaultPolicyConfig); the node's own are below.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	bounds := cell.DefaultBounds()
	eng, policy := admission.DefaultConfig(), cluster.DefaultPolicyConfig()
	return Config{
		NodeName:  host,
		ClusterID: "default",
		DataDir:   "/var/lib/capsgate",
		RESP: RESPConfig{
			Addr:     ":" + strconv.Itoa(DefaultRESPPort),
			MaxConns: resp.DefaultMaxConns,
		},
		Admin:  AdminConfig{Addr: ":" + strconv.Itoa(DefaultAdminPort), MaxConns: DefaultAdminMaxConns},
		Gossip: GossipConfig{Addr: ":" + strconv.Itoa(DefaultGossipPort)},
		// A ledger record every 10 s: a bill to the minute from records
		// that stay a few hundred bytes each, 8,640 a day per service.
		Ledger: LedgerConfig{Interval: Duration{10 * time.Second}},
		Admission: AdmissionConfig{
			Burst:             Duration{eng.Burst},
			SessionTTL:        Duration{eng.SessionTTL},
			SubscriberTTL:     Duration{eng.SubscriberTTL},
			IdempotencyWindow: Duration{eng.IdempotencyWindow},
		},
		Priority:  PriorityConfig{HighHeadroomPercent: eng.HighHeadroomPercent, MaxEmergencySessions: eng.MaxEmergencySessions},
		Licensing: LicensingConfig{ClockTolerance: Duration{registry.DefaultClockTolerance}},
		Cluster: ClusterConfig{PartitionPolicy: policy.Policy.String(), FailOpenFor: Duration{policy.FailOpenFor},
			ReclaimAfter: Duration{policy.ReclaimAfter}},
		Trunks: TrunksConfig{MaxKeys: trunks.DefaultMaxKeys},
		Log:    LogConfig{Level: "info"},
		Throttle: ThrottleConfig{MaxKeys: 1_000_000, MaxBurst: int(bounds.MaxBurst), MaxCount: int(bounds.MaxCount),
			MaxPeriod: Duration{time.Duration(bounds.MaxPeriod) * time.Second}},
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
