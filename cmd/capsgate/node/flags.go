package node

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
)

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
	{key: "admin.max_conns", flag: "admin-max-conns", arg: "N", usage: "most admin API connections at once, 1..100000; at the bound a new one closes the longest idle"},
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
	{key: "trunks.max_keys", flag: "trunks-max-keys", arg: "N", usage: "most keys with limits of their own in the farm (ADMIT ... TRUNK), 1..10000000"},
	{key: "trunks.limits", flag: "trunks-limits", arg: "'SERVICE/KEY caps=N burst=N sessions=N'", usage: "a key's limits inside a licensed service; repeatable or comma-separated, replaces the file's list", def: "none"},
	{key: "log.level", flag: "log-level", arg: "LEVEL", usage: "least severe level logged: debug, info, warn or error"},
	{key: "throttle.allow", flag: "throttle-allow", arg: "PREFIX", usage: "key prefix CL.THROTTLE accepts; repeatable or comma-separated, replaces the file's list", def: "none: CL.THROTTLE is disabled"},
	{key: "throttle.max_keys", flag: "throttle-max-keys", arg: "N", usage: "CL.THROTTLE keys held at once (beyond: a new key is refused), 1..100000000"},
	{key: "throttle.max_burst", flag: "throttle-max-burst", arg: "N", usage: "largest CL.THROTTLE max_burst, 0..1000000000"},
	{key: "throttle.max_count", flag: "throttle-max-count", arg: "N", usage: "largest CL.THROTTLE count, 1..1000000"},
	{key: "throttle.max_period", flag: "throttle-max-period", arg: "DURATION", usage: "longest CL.THROTTLE period, whole seconds, 1s..8760h"},
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
// so -x and --x both work), starts from the defaults (--dev's with
// --dev), reads the --config file over them (--dev with --config is
// refused: a production file must not be run with --dev's relaxations),
// applies every flag given on the command line, creates --dev's temporary
// data directory if needed, and validates. Every error is one line naming
// the key, flag or file at fault. -h or --help writes the usage to usage
// and returns flag.ErrHelp.
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

	if *dev && *configPath != "" {
		// --dev would turn off what a production file sets up (the admin
		// token, loopback-only listeners, the data dir's licences).
		return Config{}, errors.New("invalid command line: --dev cannot be combined with --config: --dev runs a node with no config file; give its settings as flags (see capsgate --help)")
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
		if f.Name == "trunks-limits" {
			cfg.TrunkLimitsAt = time.Now()
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
        a single loopback node with no config file (it cannot be combined
        with --config), a demo licence and an admin API needing no token
        unless --admin-token-file is given; data in a temporary directory
        unless --data-dir is given; the other flags apply as usual
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
