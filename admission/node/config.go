package node

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration that YAML writes as "10s", "100ms", "3h".
type Duration struct{ time.Duration }

// UnmarshalYAML reads a Go duration string (a bare 0 is also accepted).
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as 10s", n.Line)
	}
	if n.Value == "0" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q: want a number with a unit, such as 100ms, 10s or 3h", n.Line, n.Value)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// Config is a node's configuration: the YAML file's keys, each also a flag.
type Config struct {
	// Dev is --dev: an ephemeral licence for service demo, loopback
	// addresses, a temp data dir and no admin token.
	Dev bool `yaml:"-"`
	// DataDirIsTemp is set when --dev made the data dir (removed on exit).
	DataDirIsTemp bool `yaml:"-"`

	NodeName   string          `yaml:"node_name"`   // default: the host name ("dev" in --dev)
	ClusterID  string          `yaml:"cluster_id"`  // default "default" ("dev" in --dev)
	DataDir    string          `yaml:"data_dir"`    // default /var/lib/capsgate
	RESP       RESPConfig      `yaml:"resp"`        // the RESP front end
	Admin      AdminConfig     `yaml:"admin"`       // the admin HTTP API
	Gossip     GossipConfig    `yaml:"gossip"`      // cluster gossip
	Join       []string        `yaml:"join"`        // host:port of nodes to join
	VendorKeys []string        `yaml:"vendor_keys"` // trusted vendor public key files
	Node       NodeConfig      `yaml:"node"`
	Ledger     LedgerConfig    `yaml:"ledger"`
	Admission  AdmissionConfig `yaml:"admission"`
	Priority   PriorityConfig  `yaml:"priority"`
	Log        LogConfig       `yaml:"log"`
}

// RESPConfig configures the RESP front end.
type RESPConfig struct {
	Addr         string `yaml:"addr"`          // default ":6390", the SPEC's port
	PasswordFile string `yaml:"password_file"` // one line; empty: no AUTH
	// MaxConns: 10000 covers a farm of SIP proxies with pools of
	// connections each while bounding memory.
	MaxConns int `yaml:"max_conns"`
	// IdleTimeout: 0 never closes idle connections, like Redis: SIP proxies
	// keep pooled connections idle at night and must not find them gone.
	IdleTimeout Duration `yaml:"idle_timeout"`
	EventLoops  int      `yaml:"event_loops"` // 0: one per core
}

// AdminConfig configures the admin HTTP API.
type AdminConfig struct {
	Addr      string `yaml:"addr"`       // default ":8390"
	TokenFile string `yaml:"token_file"` // bearer token; required outside --dev
}

// GossipConfig configures cluster gossip.
type GossipConfig struct {
	Addr     string `yaml:"addr"`     // default ":7946", memberlist's port
	KeyFile  string `yaml:"key_file"` // base64 16/24/32-byte key
	Insecure bool   `yaml:"insecure"` // allow a cluster without a gossip key
}

// NodeConfig is this node's own limit.
type NodeConfig struct {
	// MaxCAPS is the node's hardware limit across services (OVERLOAD); 0: none.
	MaxCAPS float64 `yaml:"max_caps"`
}

// LedgerConfig configures usage metering.
type LedgerConfig struct {
	Interval Duration `yaml:"interval"` // default 10s, the SPEC's
}

// AdmissionConfig tunes the decision core; see admission.Config.
type AdmissionConfig struct {
	Burst             Duration `yaml:"burst"`              // 100ms
	SessionTTL        Duration `yaml:"session_ttl"`        // 3h
	SubscriberTTL     Duration `yaml:"subscriber_ttl"`     // 1h
	IdempotencyWindow Duration `yaml:"idempotency_window"` // 10m
}

// PriorityConfig configures PRIORITY high.
type PriorityConfig struct {
	HighHeadroomPercent int `yaml:"high_headroom_percent"` // 10
}

// LogConfig configures logging.
type LogConfig struct {
	Level string `yaml:"level"` // debug, info, warn, error
}

// DefaultConfig returns the defaults (outside --dev).
func DefaultConfig() Config {
	host, _ := os.Hostname()
	if !nameRE.MatchString(host) {
		host = "capsgate"
	}
	return Config{
		NodeName:  host,
		ClusterID: "default",
		DataDir:   "/var/lib/capsgate",
		RESP:      RESPConfig{Addr: ":6390", MaxConns: 10000},
		Admin:     AdminConfig{Addr: ":8390"},
		Gossip:    GossipConfig{Addr: ":7946"},
		Ledger:    LedgerConfig{Interval: Duration{10 * time.Second}},
		Admission: AdmissionConfig{
			Burst:             Duration{100 * time.Millisecond},
			SessionTTL:        Duration{3 * time.Hour},
			SubscriberTTL:     Duration{time.Hour},
			IdempotencyWindow: Duration{10 * time.Minute},
		},
		Priority: PriorityConfig{HighHeadroomPercent: 10},
		Log:      LogConfig{Level: "info"},
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,64}$`)

// listFlag is a repeatable, comma-separated flag.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// durationFlag sets a Duration.
type durationFlag struct{ d *Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}
func (f durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 100ms, 10s or 3h")
	}
	f.d.Duration = v
	return nil
}

// flagKeys maps each config key to its flag, for error messages.
var flagKeys = map[string]string{
	"node_name": "node-name", "cluster_id": "cluster-id", "data_dir": "data-dir",
	"resp.addr": "resp-addr", "resp.password_file": "resp-password-file", "resp.max_conns": "resp-max-conns",
	"resp.idle_timeout": "resp-idle-timeout", "resp.event_loops": "resp-event-loops",
	"admin.addr": "admin-addr", "admin.token_file": "admin-token-file",
	"gossip.addr": "gossip-addr", "gossip.key_file": "gossip-key-file", "gossip.insecure": "gossip-insecure",
	"join": "join", "vendor_keys": "vendor-key", "node.max_caps": "max-caps", "ledger.interval": "ledger-interval",
	"admission.burst": "admission-burst", "admission.session_ttl": "admission-session-ttl",
	"admission.subscriber_ttl": "admission-subscriber-ttl", "admission.idempotency_window": "admission-idempotency-window",
	"priority.high_headroom_percent": "priority-high-headroom-percent", "log.level": "log-level",
}

// flags binds every key to its flag on fs, writing into c.
func flags(fs *flag.FlagSet, c *Config, configFile *string, dev *bool, join, vendor *[]string) {
	str := func(p *string, name, _, usage string) { fs.StringVar(p, name, *p, usage) }
	fs.StringVar(configFile, "config", "", "YAML config file")
	fs.BoolVar(dev, "dev", false, "single dev node: ephemeral licence for service demo, temp data dir, no admin token")
	str(&c.NodeName, "node-name", "node_name", "node name, unique in the cluster")
	str(&c.ClusterID, "cluster-id", "cluster_id", "cluster id (licences may be bound to it)")
	str(&c.DataDir, "data-dir", "data_dir", "data directory")
	str(&c.RESP.Addr, "resp-addr", "resp.addr", "RESP listen address")
	str(&c.RESP.PasswordFile, "resp-password-file", "resp.password_file", "file holding the RESP AUTH password")
	fs.IntVar(&c.RESP.MaxConns, "resp-max-conns", c.RESP.MaxConns, "maximum RESP client connections")
	fs.Var(durationFlag{&c.RESP.IdleTimeout}, "resp-idle-timeout", "close RESP connections idle this long (0: never)")
	fs.IntVar(&c.RESP.EventLoops, "resp-event-loops", c.RESP.EventLoops, "RESP event loops (0: one per core)")
	str(&c.Admin.Addr, "admin-addr", "admin.addr", "admin HTTP listen address")
	str(&c.Admin.TokenFile, "admin-token-file", "admin.token_file", "file holding the admin bearer token")
	str(&c.Gossip.Addr, "gossip-addr", "gossip.addr", "gossip listen address (TCP+UDP)")
	str(&c.Gossip.KeyFile, "gossip-key-file", "gossip.key_file", "file holding the base64 gossip key")
	fs.BoolVar(&c.Gossip.Insecure, "gossip-insecure", c.Gossip.Insecure, "allow a cluster without a gossip key")
	fs.Var(listFlag{join}, "join", "host:port of a node to join (repeatable, comma-separated)")
	fs.Var(listFlag{vendor}, "vendor-key", "trusted vendor public key file (repeatable)")
	fs.Float64Var(&c.Node.MaxCAPS, "max-caps", c.Node.MaxCAPS, "node hardware limit in call attempts per second (0: none)")
	fs.Var(durationFlag{&c.Ledger.Interval}, "ledger-interval", "usage ledger interval")
	fs.Var(durationFlag{&c.Admission.Burst}, "admission-burst", "CAPS bucket depth as time at the licensed rate")
	fs.Var(durationFlag{&c.Admission.SessionTTL}, "admission-session-ttl", "how long an unreleased session is held")
	fs.Var(durationFlag{&c.Admission.SubscriberTTL}, "admission-subscriber-ttl", "REGISTER TTL when none is given")
	fs.Var(durationFlag{&c.Admission.IdempotencyWindow}, "admission-idempotency-window", "how long a CONSUME ID is remembered")
	fs.IntVar(&c.Priority.HighHeadroomPercent, "priority-high-headroom-percent", c.Priority.HighHeadroomPercent, "headroom above the licence for PRIORITY high")
	str(&c.Log.Level, "log-level", "log.level", "debug, info, warn or error")
}

// Load reads the flags in args, the --config file if any (flags win), applies
// --dev defaults and validates. -h prints usage to usage and returns
// flag.ErrHelp.
func Load(args []string, usage io.Writer) (Config, error) {
	// First pass: find --config and --dev, so the file is read before the
	// flags that override it.
	var file string
	var dev bool
	probe := flag.NewFlagSet("capsgate", flag.ContinueOnError)
	probe.SetOutput(io.Discard)
	var scratch Config
	var sj, sv []string
	flags(probe, &scratch, &file, &dev, &sj, &sv)
	if err := probe.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs := flag.NewFlagSet("capsgate", flag.ContinueOnError)
			fs.SetOutput(usage)
			flags(fs, &scratch, &file, &dev, &sj, &sv)
			fs.Usage()
			return Config{}, flag.ErrHelp
		}
		return Config{}, errors.New(oneLine(err.Error()))
	}
	if probe.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q (capsgate takes only flags)", probe.Arg(0))
	}
	c := DefaultConfig()
	if dev {
		c.NodeName, c.ClusterID, c.DataDir = "dev", "dev", ""
		c.RESP.Addr, c.Admin.Addr, c.Gossip.Addr = "127.0.0.1:6390", "127.0.0.1:8390", "127.0.0.1:7946"
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return Config{}, fmt.Errorf("cannot read config file %s: %w", file, errors.Unwrap(err))
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, fmt.Errorf("invalid config file %s: %s", file, yamlError(err))
		}
	}
	// Second pass: the flags that were given override the file.
	fs := flag.NewFlagSet("capsgate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var join, vendor []string
	flags(fs, &c, &file, &dev, &join, &vendor)
	if err := fs.Parse(args); err != nil {
		return Config{}, errors.New(oneLine(err.Error()))
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "join":
			c.Join = join
		case "vendor-key":
			c.VendorKeys = vendor
		}
	})
	c.Dev = dev
	if dev && c.DataDir == "" {
		d, err := os.MkdirTemp("", "capsgate-dev-")
		if err != nil {
			return Config{}, fmt.Errorf("cannot create a temp data dir for --dev: %w", err)
		}
		c.DataDir, c.DataDirIsTemp = d, true
	}
	if err := c.Validate(); err != nil {
		if c.DataDirIsTemp {
			os.RemoveAll(c.DataDir)
		}
		return Config{}, err
	}
	return c, nil
}

// yamlError turns a yaml.v3 error into one line, naming unknown keys
// by their dotted path where yaml.v3 gives only the leaf.
func yamlError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return oneLine(strings.Join(te.Errors, "; "))
	}
	return oneLine(strings.TrimPrefix(err.Error(), "yaml: "))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func invalid(key, format string, args ...any) error {
	name := key
	if f, ok := flagKeys[key]; ok {
		name = fmt.Sprintf("%s (--%s)", key, f)
	}
	return fmt.Errorf("invalid config: %s %s", name, fmt.Sprintf(format, args...))
}

// Validate checks every value and that every file named can be read.
func (c *Config) Validate() error {
	if !nameRE.MatchString(c.NodeName) {
		return invalid("node_name", "must match [A-Za-z0-9._:-]{1,64}, got %q", c.NodeName)
	}
	if !nameRE.MatchString(c.ClusterID) {
		return invalid("cluster_id", "must match [A-Za-z0-9._:-]{1,64}, got %q", c.ClusterID)
	}
	if c.DataDir == "" {
		return invalid("data_dir", "must be set")
	}
	for key, addr := range map[string]string{"resp.addr": c.RESP.Addr, "admin.addr": c.Admin.Addr, "gossip.addr": c.Gossip.Addr} {
		if err := checkAddr(addr); err != nil {
			return invalid(key, "%v", err)
		}
	}
	for _, j := range c.Join {
		if err := checkAddr(j); err != nil {
			return invalid("join", "entry %q: %v", j, err)
		}
	}
	switch {
	case c.RESP.MaxConns < 1 || c.RESP.MaxConns > 1000000:
		return invalid("resp.max_conns", "must be between 1 and 1000000, got %d", c.RESP.MaxConns)
	case c.RESP.IdleTimeout.Duration != 0 && c.RESP.IdleTimeout.Duration < time.Second:
		return invalid("resp.idle_timeout", "must be 0 (never) or at least 1s, got %s", c.RESP.IdleTimeout)
	case c.RESP.EventLoops < 0 || c.RESP.EventLoops > 256:
		return invalid("resp.event_loops", "must be between 0 (one per core) and 256, got %d", c.RESP.EventLoops)
	case c.Node.MaxCAPS < 0:
		return invalid("node.max_caps", "must be 0 (no limit) or positive, got %g", c.Node.MaxCAPS)
	case c.Ledger.Interval.Duration < time.Second:
		return invalid("ledger.interval", "must be at least 1s, got %s", c.Ledger.Interval)
	case c.Admission.Burst.Duration < time.Millisecond || c.Admission.Burst.Duration > 10*time.Second:
		return invalid("admission.burst", "must be between 1ms and 10s, got %s", c.Admission.Burst)
	case c.Admission.SessionTTL.Duration < time.Second:
		return invalid("admission.session_ttl", "must be at least 1s, got %s", c.Admission.SessionTTL)
	case c.Admission.SubscriberTTL.Duration < time.Second:
		return invalid("admission.subscriber_ttl", "must be at least 1s, got %s", c.Admission.SubscriberTTL)
	case c.Admission.IdempotencyWindow.Duration < time.Second:
		return invalid("admission.idempotency_window", "must be at least 1s, got %s", c.Admission.IdempotencyWindow)
	case c.Priority.HighHeadroomPercent < 0 || c.Priority.HighHeadroomPercent > 100:
		return invalid("priority.high_headroom_percent", "must be between 0 and 100, got %d", c.Priority.HighHeadroomPercent)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return invalid("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if !c.Dev {
		if c.Admin.TokenFile == "" {
			return invalid("admin.token_file", "is required outside --dev: the admin API must not run unauthenticated")
		}
		if c.Gossip.KeyFile == "" && !c.Gossip.Insecure {
			return invalid("gossip.key_file", "is required outside --dev (or set gossip.insecure: true): cluster traffic must be encrypted")
		}
	}
	if c.RESP.PasswordFile != "" {
		if _, err := ReadSecretFile("resp.password_file", c.RESP.PasswordFile); err != nil {
			return err
		}
	}
	if c.Admin.TokenFile != "" {
		if _, err := ReadSecretFile("admin.token_file", c.Admin.TokenFile); err != nil {
			return err
		}
	}
	if c.Gossip.KeyFile != "" {
		if _, err := ReadGossipKey(c.Gossip.KeyFile); err != nil {
			return err
		}
	}
	for _, k := range c.VendorKeys {
		if _, err := os.ReadFile(k); err != nil {
			return invalid("vendor_keys", "cannot be read: %v", err)
		}
	}
	return nil
}

func checkAddr(a string) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("must be host:port, got %q", a)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port must be 1..65535, got %q", port)
	}
	return nil
}

// ReadSecretFile reads a one-line secret (token, password); key names the
// config key for the error.
func ReadSecretFile(key, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", invalid(key, "cannot be read: %v", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", invalid(key, "file %s is empty", path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", invalid(key, "file %s must hold one line", path)
	}
	return s, nil
}

// ReadGossipKey reads a base64 gossip key of 16, 24 or 32 bytes.
func ReadGossipKey(path string) ([]byte, error) {
	s, err := ReadSecretFile("gossip.key_file", path)
	if err != nil {
		return nil, err
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, invalid("gossip.key_file", "file %s is not base64 (make one with: head -c 32 /dev/urandom | base64)", path)
	}
	if n := len(k); n != 16 && n != 24 && n != 32 {
		return nil, invalid("gossip.key_file", "key in %s is %d bytes; want 16, 24 or 32", path, n)
	}
	return k, nil
}
