package node

import (
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/idstore"
	"github.com/capsgate/capsgate/cluster/trunks"
)

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
	if c.Admin.MaxConns < 1 || c.Admin.MaxConns > 100000 {
		return bad("admin.max_conns", "must be between 1 and 100000, got %d", c.Admin.MaxConns)
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
	if c.Admission.SubscriberTTL.Duration > admission.MaxTTL*time.Second {
		return bad("admission.subscriber_ttl", "must be at most 168h (7 days, as a REGISTER's TTL), got %s", c.Admission.SubscriberTTL)
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
	if err := c.Throttle.validate(bad); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	if c.Trunks.MaxKeys < 1 || c.Trunks.MaxKeys > 10_000_000 {
		return bad("trunks.max_keys", "must be between 1 and 10000000, got %d", c.Trunks.MaxKeys)
	}
	if _, _, err := c.TrunkSettings(); err != nil {
		return err
	}
	return nil
}

// TrunkPool is a key's token pool as trunks.limits gives it: the
// allocation of the account of the key's name.
type TrunkPool struct {
	Service, Key string
	admission.Allocation
}

// TrunkSettings returns the keys' limits of trunks.limits and their token
// pools, set at TrunkLimitsAt; the error names the entry at fault.
func (c *Config) TrunkSettings() ([]trunks.Setting, []TrunkPool, error) {
	seen := map[string]int{}
	var out []trunks.Setting
	var pools []TrunkPool
	for i, s := range c.Trunks.Limits {
		set, pool, err := parseTrunkEntry(s)
		if err != nil {
			return nil, nil, fmt.Errorf("%s entry %d: %v", name("trunks.limits"), i+1, err)
		}
		id := set.Service + "/" + set.Key
		if j, ok := seen[id]; ok {
			return nil, nil, fmt.Errorf("%s entries %d and %d both set %s", name("trunks.limits"), j+1, i+1, id)
		}
		seen[id] = i
		if len(seen) > c.Trunks.MaxKeys {
			return nil, nil, fmt.Errorf("%s holds more keys than trunks.max_keys (%d)", name("trunks.limits"), c.Trunks.MaxKeys)
		}
		set.Limit.At = c.TrunkLimitsAt.UnixNano()
		out = append(out, set)
		if pool != nil {
			pool.At = set.Limit.At
			pools = append(pools, TrunkPool{Service: set.Service, Key: set.Key, Allocation: *pool})
		}
	}
	return out, pools, nil
}

// parseTrunkEntry reads one entry of trunks.limits: the key's limits
// (trunks.ParseSetting) and its pool, "tokens=N overage=P" (nil: none).
func parseTrunkEntry(entry string) (trunks.Setting, *admission.Allocation, error) {
	var rest []string
	var tokens, overage *string
	for _, f := range strings.Fields(entry) {
		name, v, _ := strings.Cut(f, "=")
		p := map[string]**string{"tokens": &tokens, "overage": &overage}[name]
		if p == nil {
			rest = append(rest, f)
			continue
		}
		if *p != nil {
			return trunks.Setting{}, nil, fmt.Errorf("%q: %s given twice", entry, name)
		}
		*p = &v
	}
	set, err := trunks.ParseSetting(strings.Join(rest, " "))
	if err != nil || tokens == nil {
		if err == nil && overage != nil {
			err = fmt.Errorf("%q: overage is the policy of the key's token pool: give tokens=N with it", entry)
		}
		return set, nil, err
	}
	n, err := strconv.ParseInt(*tokens, 10, 64)
	if err != nil {
		return trunks.Setting{}, nil, fmt.Errorf("%q: tokens must be a number of 0 or more, got %q", entry, *tokens)
	}
	pool, err := keyPool(n, overage)
	if err != nil {
		return trunks.Setting{}, nil, fmt.Errorf("%q: %v", entry, err)
	}
	return set, pool, nil
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
