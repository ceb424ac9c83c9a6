// Package capsctl is the capsctl command (cmd/capsctl calls Main): a
// command-line client of a capsgate node's admin HTTP API. Every failure
// ends in one line on stderr and a non-zero exit. It is a package of its
// own so that the node's tests drive it against a running node.
package capsctl

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/licensing/registry"
)

// DefaultAddr is the admin API of a node on this host.
const DefaultAddr = "http://127.0.0.1:8390"

const usage = `usage: capsctl [--addr URL] [--token-file FILE] [--ca-file FILE] [--json] COMMAND [ARGS]

commands:
  status [SERVICE]                 effective limits and usage (all services, or one)
  license add FILE                 load a licence file into the cluster (every
                                   licence and revocation in it, or none)
  license list                     every licence with its state
  cluster                          members, their state and shares
  accounts set SERVICE ACCOUNT --tokens N [--overage none|percent:N|unlimited]
  accounts list SERVICE
  limits set SERVICE KEY [--caps N] [--burst N] [--sessions N] [--tokens N [--overage P]]
                                   a key's own limits inside a service (ADMIT ... TRUNK
                                   KEY), for the farm; a limit left out is not enforced;
                                   --tokens: the key's token pool (account KEY's allocation),
                                   left as it is when not given
  limits list SERVICE [--after KEY] [--limit N]
  limits get SERVICE KEY
  limits rm SERVICE KEY
  usage --service S --from T --to T [--step 1h] [--format table|csv|json]
  usage export --format cloudevents|cloudevents-batch [--service S] [--from T] [--to T]
               [--after SEQ] [--limit N] [--out FILE]
                                   this node's usage records as CloudEvents for
                                   billing tools (OpenMeter, Lago, Stripe): README

--addr defaults to $CAPSGATE_ADDR or ` + DefaultAddr + `; --token-file to $CAPSGATE_TOKEN_FILE;
--ca-file (to trust for an https:// --addr) to $CAPSGATE_CA_FILE.
`

// Main runs capsctl with args (without the program name) and returns the
// exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("capsctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", envOr("CAPSGATE_ADDR", DefaultAddr), "admin API base URL")
	tokenFile := fs.String("token-file", os.Getenv("CAPSGATE_TOKEN_FILE"), "file holding the admin bearer token")
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	timeout := fs.Duration("timeout", 10*time.Second, "request timeout")
	caFile := fs.String("ca-file", os.Getenv("CAPSGATE_CA_FILE"), "PEM certificate(s) to trust for an https --addr, besides the system's")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintln(stderr, "capsctl:", usageError{flagMessage(err)})
		return 2
	}
	c := &client{in: os.Stdin, base: strings.TrimRight(*addr, "/"), http: &http.Client{Timeout: *timeout}, json: *asJSON, out: stdout}
	if *caFile != "" {
		pem, err := bounded.ReadFile(*caFile, bounded.CertFile)
		if err != nil {
			fmt.Fprintf(stderr, "capsctl: cannot read --ca-file: %v\n", err)
			return 2
		}
		pool, _ := x509.SystemCertPool()
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "capsctl: cannot use --ca-file %s: no PEM certificate in it\n", *caFile)
			return 2
		}
		c.http.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	if *tokenFile != "" {
		b, err := bounded.ReadFile(*tokenFile, bounded.KeyFile)
		if err != nil {
			fmt.Fprintf(stderr, "capsctl: cannot read token file: %v\n", err)
			return 2
		}
		c.token = strings.TrimSpace(string(b))
	}
	if err := c.run(fs.Args()); err != nil {
		fmt.Fprintln(stderr, "capsctl:", oneLine(err.Error()))
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + " (capsctl --help)" }

// newFlags returns the flag set of a command (name as typed, e.g.
// "accounts set"); parseFlags reports its errors.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses a command's flags from args, which must hold nothing
// else: a flag the command does not have, or a word left over, is a usage
// error naming it, as capslicense's are.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{fs.Name() + ": " + flagMessage(err)}
	}
	return noMore(fs.Name(), fs.Args(), 0)
}

// noMore refuses args beyond the first n of a command.
func noMore(command string, args []string, n int) error {
	if len(args) > n {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", command, args[n])}
	}
	return nil
}

// flagMessage is package flag's error in capsctl's words: flags written
// --name, as the usage shows them.
func flagMessage(err error) string {
	msg := err.Error()
	for _, r := range [][2]string{
		{"flag provided but not defined: -", "unknown flag --"},
		{"flag needs an argument: -", "a value is missing after --"},
	} {
		if rest, ok := strings.CutPrefix(msg, r[0]); ok {
			return r[1] + strings.TrimPrefix(rest, "-")
		}
	}
	if before, after, ok := strings.Cut(msg, " for flag -"); ok {
		return before + " for --" + strings.TrimPrefix(after, "-")
	}
	return msg
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

type client struct {
	in    io.Reader
	base  string
	token string
	http  *http.Client
	json  bool
	out   io.Writer
}

func (c *client) run(args []string) error {
	if len(args) == 0 {
		return usageError{"no command given"}
	}
	switch args[0] {
	case "status":
		if err := noMore("status", args[1:], 1); err != nil {
			return err
		}
		if len(args) == 1 {
			return c.show("GET", "/v1/services", nil)
		}
		service, err := pathName("service", args[1])
		if err != nil {
			return err
		}
		return c.show("GET", "/v1/services/"+service, nil)
	case "license":
		return c.license(args[1:])
	case "cluster":
		if err := noMore("cluster", args[1:], 0); err != nil {
			return err
		}
		return c.clusterTable()
	case "accounts":
		return c.accounts(args[1:])
	case "limits":
		return c.limits(args[1:])
	case "usage":
		if len(args) > 1 && args[1] == "export" {
			return c.usageExport(args[2:])
		}
		return c.usage(args[1:])
	}
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

// license adds, lists and shows licences.
func (c *client) license(args []string) error {
	const want = "want: license add FILE | license list | license show ID"
	switch {
	case len(args) == 1 && args[0] == "list":
		return c.licenseTable()
	case len(args) >= 1 && args[0] == "list":
		return noMore("license list", args[1:], 0)
	case len(args) >= 2 && (args[0] == "add" || args[0] == "show"):
		if err := noMore("license "+args[0], args[1:], 1); err != nil {
			return err
		}
		if args[0] == "show" {
			return c.show("GET", "/v1/licenses/"+url.PathEscape(args[1]), nil)
		}
		body, err := readFileOrStdin(args[1], c.in)
		if err != nil {
			return fmt.Errorf("cannot read licence file: %w", err)
		}
		return c.addLicense(body)
	}
	return usageError{want}
}

func (c *client) accounts(args []string) error {
	const want = "want: accounts set SERVICE ACCOUNT --tokens N [--overage P] | accounts list SERVICE"
	if len(args) >= 2 && args[0] == "list" {
		if err := noMore("accounts list", args[1:], 1); err != nil {
			return err
		}
		service, err := pathName("service", args[1])
		if err != nil {
			return err
		}
		return c.show("GET", "/v1/services/"+service+"/accounts", nil)
	}
	if len(args) < 3 || args[0] != "set" {
		return usageError{want}
	}
	fs := newFlags("accounts set")
	tokens := fs.Int64("tokens", -1, "tokens allocated")
	overage := fs.String("overage", "none", "overage policy")
	if err := parseFlags(fs, args[3:]); err != nil {
		return err
	}
	if *tokens < 0 {
		return usageError{"accounts set needs --tokens N (N >= 0)"}
	}
	service, err := pathName("service", args[1])
	if err != nil {
		return err
	}
	account, err := pathName("account", args[2])
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"tokens": *tokens, "overage": *overage})
	return c.show("PUT", "/v1/services/"+service+"/accounts/"+account, body)
}

// limits sets, lists, shows and removes keys' limits.
func (c *client) limits(args []string) error {
	const want = "want: limits set SERVICE KEY [--caps N] [--burst N] [--sessions N] [--tokens N [--overage P]] | limits list SERVICE [--after KEY] [--limit N] | limits get SERVICE KEY | limits rm SERVICE KEY"
	if len(args) < 2 {
		return usageError{want}
	}
	service, err := pathName("service", args[1])
	if err != nil {
		return err
	}
	base := "/v1/services/" + service + "/limits"
	if args[0] == "list" {
		fs := newFlags("limits list")
		after := fs.String("after", "", "")
		limit := fs.Int("limit", 0, "")
		if err := parseFlags(fs, args[2:]); err != nil {
			return err
		}
		q := url.Values{}
		if *after != "" {
			q.Set("after", *after)
		}
		if *limit != 0 {
			q.Set("limit", strconv.Itoa(*limit))
		}
		if len(q) > 0 {
			base += "?" + q.Encode()
		}
		return c.show("GET", base, nil)
	}
	if len(args) < 3 {
		return usageError{want}
	}
	key, err := pathName("key", args[2])
	if err != nil {
		return err
	}
	switch args[0] {
	case "get", "rm":
		if err := noMore("limits "+args[0], args[1:], 2); err != nil {
			return err
		}
		if args[0] == "get" {
			return c.show("GET", base+"/"+key, nil)
		}
		return c.show("DELETE", base+"/"+key, nil)
	case "set": // below
	default:
		return usageError{want}
	}
	fs := newFlags("limits set")
	body := map[string]any{}
	for _, name := range []string{"caps", "burst", "sessions", "tokens"} {
		fs.Func(name, "", func(v string) error {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil || n < 0 || (name != "caps" && n != float64(int64(n))) {
				return fmt.Errorf("--%s must be a number of 0 or more", name)
			}
			body[name] = json.Number(v)
			return nil
		})
	}
	fs.Func("overage", "", func(v string) error {
		body["overage"] = v
		return nil
	})
	if err := parseFlags(fs, args[3:]); err != nil {
		return err
	}
	if len(body) == 0 || len(body) == 1 && body["overage"] != nil {
		return usageError{"limits set needs at least one of --caps N, --burst N, --sessions N, --tokens N"}
	}
	b, _ := json.Marshal(body)
	return c.show("PUT", base+"/"+key, b)
}

// pathName checks a service or account name before it goes into a URL,
// where "." or ".." would be taken out of the path on the way.
func pathName(kind, v string) (string, error) {
	if !names.Valid([]byte(v)) {
		return "", usageError{fmt.Sprintf("invalid %s name %q: want [A-Za-z0-9._:-]{1,64}, not . or ..", kind, v)}
	}
	return url.PathEscape(v), nil
}

// usage prints GET /v1/usage as a table, CSV or the JSON itself.
func (c *client) usage(args []string) error {
	fs := newFlags("usage")
	service := fs.String("service", "", "service")
	from := fs.String("from", "", "start (RFC 3339)")
	to := fs.String("to", "", "end (RFC 3339)")
	step := fs.String("step", "", "window")
	format := fs.String("format", "table", "table|csv|json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *format != "table" && *format != "csv" && *format != "json" {
		return usageError{"--format must be table, csv or json"}
	}
	q := url.Values{}
	for k, v := range map[string]string{"service": *service, "from": *from, "to": *to, "step": *step} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *format == "json" {
		c.json = true
	}
	var v struct {
		Usage []struct {
			From, To                      time.Time
			Service, Account, Trunk       string
			Attempts, Admitted, Emergency uint64
			Rejected                      map[string]uint64
			PeakCAPS                      uint64 `json:"peak_caps"`
			PeakSessions                  uint64 `json:"peak_sessions"`
			PeakSubscribers               uint64 `json:"peak_subscribers"`
			Tokens, Overage               uint64
		}
	}
	if printed, err := c.decode("GET", "/v1/usage?"+q.Encode(), nil, &v); printed || err != nil {
		return err
	}
	header := []string{"FROM", "TO", "SERVICE", "ACCOUNT", "TRUNK", "ATTEMPTS", "ADMITTED", "REJECTED", "EMERGENCY", "PEAK CAPS",
		"PEAK SESSIONS", "PEAK SUBSCRIBERS", "TOKENS", "OVERAGE"}
	var rows [][]string
	for _, u := range v.Usage {
		var rejected uint64
		for _, n := range u.Rejected {
			rejected += n
		}
		f := func(n uint64) string { return strconv.FormatUint(n, 10) }
		rows = append(rows, []string{u.From.UTC().Format(time.RFC3339), u.To.UTC().Format(time.RFC3339), u.Service, u.Account, u.Trunk,
			f(u.Attempts), f(u.Admitted), f(rejected), f(u.Emergency), f(u.PeakCAPS), f(u.PeakSessions), f(u.PeakSubscribers),
			f(u.Tokens), f(u.Overage)})
	}
	if *format == "csv" {
		w := csv.NewWriter(c.out)
		_ = w.Write(header)
		_ = w.WriteAll(rows)
		return w.Error()
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func readFileOrStdin(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		return bounded.ReadAll(stdin, bounded.LicenceFile)
	}
	return bounded.ReadFile(name, bounded.LicenceFile)
}

// licenseTable prints GET /v1/licenses as one row per licence.
func (c *client) licenseTable() error {
	var v struct {
		Licenses []registry.View
	}
	if printed, err := c.decode("GET", "/v1/licenses", nil, &v); printed || err != nil {
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tSTATE\tCAPS\tSESSIONS\tSUBSCRIBERS\tTOKENS\tNOT AFTER\tCUSTOMER")
	for _, l := range v.Licenses {
		caps := fmt.Sprint(l.CAPS)
		if l.Unlimited {
			caps = "unlimited"
		}
		until := "never"
		if l.NotAfter != nil {
			until = l.NotAfter.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", l.ID, l.Service, l.State, caps, l.Sessions, l.Subscribers, l.Tokens, until, l.Customer)
	}
	return tw.Flush()
}

// addLicense posts a licence file and says in one line per document (a
// file may hold several: all load or none) what happened.
func (c *client) addLicense(body []byte) error {
	var v struct {
		Result  registry.Result
		Results []registry.Result
	}
	if printed, err := c.decode("POST", "/v1/licenses", body, &v); printed || err != nil {
		return err
	}
	if len(v.Results) == 0 {
		v.Results = []registry.Result{v.Result}
	}
	for _, r := range v.Results {
		c.printResult(r)
	}
	return nil
}

func (c *client) printResult(r registry.Result) {
	switch {
	case r.Kind == "revocation" && r.New:
		fmt.Fprintf(c.out, "loaded revocation %s\n", r.ID)
	case r.Kind == "revocation":
		fmt.Fprintf(c.out, "revocation %s was already loaded\n", r.ID)
	case r.New:
		fmt.Fprintf(c.out, "loaded licence %s for service %s: %s\n", r.ID, r.Service, r.State)
	default:
		fmt.Fprintf(c.out, "licence %s for service %s was already loaded: %s\n", r.ID, r.Service, r.State)
	}
}

// clusterTable prints GET /v1/cluster as one row per member.
func (c *client) clusterTable() error {
	var v struct {
		Policy string `json:"partition_policy"`
		Side   struct {
			State       string
			Fraction    float64
			Live, Known int
		}
		Members []struct {
			Name, Addr, State string
			RESPAddr          string             `json:"resp_addr"`
			Shares            map[string]float64 `json:"shares"`
			Demand            map[string]float64 `json:"demand"`
		}
	}
	if printed, err := c.decode("GET", "/v1/cluster", nil, &v); printed || err != nil {
		return err
	}
	fmt.Fprintf(c.out, "partition policy %s; this side: %s, enforcing %.0f%% of each licence (%d of %d members reachable)\n",
		v.Policy, v.Side.State, 100*v.Side.Fraction, v.Side.Live, v.Side.Known)
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tGOSSIP\tRESP\tCAPS SHARE (DEMAND) BY SERVICE")
	for _, m := range v.Members {
		names := make([]string, 0, len(m.Shares))
		for s := range m.Shares {
			names = append(names, s)
		}
		sort.Strings(names)
		var parts []string
		for _, s := range names {
			parts = append(parts, fmt.Sprintf("%s=%.1f (%.1f)", s, m.Shares[s], m.Demand[s]))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.State, m.Addr, m.RESPAddr, strings.Join(parts, " "))
	}
	return tw.Flush()
}

// decode sends a request; with --json it prints the answer as it is
// (printed), else it decodes it into v for a table.
func (c *client) decode(method, path string, body []byte, v any) (printed bool, err error) {
	b, err := c.do(method, path, body)
	if err != nil {
		return false, err
	}
	if c.json {
		_, err = c.out.Write(b)
		return true, err
	}
	if err := unmarshal(b, v); err != nil {
		return false, fmt.Errorf("cannot read the answer of %s %s: %w", method, path, err)
	}
	return false, nil
}

// unmarshal is json.Unmarshal with the numbers of an interface value
// kept as json.Number: the API's counters and limits are int64 (a sum of
// licences reaches 9223372036854775807), which a float64 would print as
// 9.223372036854776e+18 and round past 2^53.
func unmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// do sends a request and returns the body of a 2xx answer, or the server's
// error reason as an error.
func (c *client) do(method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("bad --addr %q: %w", c.base, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("cannot read the answer of %s: %w", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, answerError(method, path, resp, b)
	}
	return b, nil
}

// answerError is the error of a non-2xx answer whose body is b: the
// server's reason if it gave one.
func answerError(method, path string, resp *http.Response, b []byte) error {
	var e struct{ Error, Reason string }
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, e.Reason, e.Error)
	}
	return fmt.Errorf("%s %s: %s", method, path, resp.Status)
}

// show prints the answer: JSON as is with --json, else as a table.
func (c *client) show(method, path string, body []byte) error {
	b, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	if c.json {
		_, err = c.out.Write(b)
		return err
	}
	var v any
	if err := unmarshal(b, &v); err != nil {
		_, err = c.out.Write(b) // not JSON (e.g. CSV): as is
		return err
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	printTable(tw, "", v)
	return tw.Flush()
}

// printTable flattens JSON into aligned key/value lines, lists of objects
// into one row each.
func printTable(w io.Writer, prefix string, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			printTable(w, join(prefix, k), x[k])
		}
	case []any:
		if len(x) == 0 {
			fmt.Fprintf(w, "%s\t(none)\n", prefix)
		}
		for i, e := range x {
			printTable(w, join(prefix, fmt.Sprint(i)), e)
		}
	default:
		fmt.Fprintf(w, "%s\t%v\n", prefix, x) // a json.Number as the node wrote it
	}
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}
