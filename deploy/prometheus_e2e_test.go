package deploy

// A real Prometheus (Debian's prometheus) scraping real capsgate nodes every
// second, with deploy/prometheus/capsgate-alerts.yml loaded: the admitted
// rate PromQL computes agrees with capsgate's own counters, every rule
// evaluates, the capacity alerts go pending under overload, and every query
// of the Grafana dashboard runs. promtool checks the configuration, the
// rules (and their unit tests) and each node's exposition.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsgate/capsgate/bench/openloop"
	"github.com/capsgate/capsgate/cluster/farm"
)

const (
	// promNodes is how many capsgate nodes Prometheus scrapes.
	promNodes = 3
	// promCAPS is the licence; promOffered is offered against it.
	promCAPS, promOffered = 200, 300
	// promLoad is how long the load lasts.
	promLoad = 10 * time.Second
)

// TestPromtoolRules checks the alert rules and runs their unit tests, and
// checks the example Prometheus configuration.
func TestPromtoolRules(t *testing.T) {
	tools := needTools(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "capsgate-alerts.yml"},
		{"test", "rules", "capsgate-alerts.test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		cmd := exec.Command(tools["promtool"], args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			continue
		}
		t.Logf("promtool %s: %s", strings.Join(args, " "), strings.Join(strings.Fields(string(out)), " "))
	}
}

// TestPromtoolCheckMetrics lints each node's /metrics with promtool check
// metrics, on a cluster that has spread a licence and answered calls (so
// every metric family has samples).
func TestPromtoolCheckMetrics(t *testing.T) {
	needProcesses(t)
	tools := needTools(t, "promtool")
	c := promCluster(t)
	tally := openloop.PacedVia(c.Dial(), c.RESPAddrs(), nil, promOffered, 2*time.Second, "ADMIT "+service)
	if tally.Total.Err != nil {
		t.Fatal(tally.Total.Err)
	}
	for _, n := range c.Nodes() {
		body, err := httpGet("http://" + n.AdminAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(tools["promtool"], "check", "metrics")
		cmd.Stdin = strings.NewReader(string(body))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: promtool check metrics on %d lines of /metrics: %v\n%s", n.Name, strings.Count(string(body), "\n"), err, out)
			continue
		}
		t.Logf("%s: promtool check metrics: no problem in %d lines", n.Name, strings.Count(string(body), "\n"))
	}
}

// promCluster starts the nodes with a licence for service that sets every
// limit (so every gauge has a value) and an end date.
func promCluster(t *testing.T) *farm.Cluster {
	t.Helper()
	c := farm.New(t, promNodes)
	c.WaitMembers(promNodes, 10*time.Second)
	c.LoadLicense(1, c.Issue("--service", service, "--caps", strconv.Itoa(promCAPS),
		"--sessions", "1000", "--subscribers", "1000", "--tokens", "100000000",
		"--not-after", time.Now().Add(90*24*time.Hour).UTC().Format(time.RFC3339), "--grace", "72h"))
	c.WaitCAPS(service, promCAPS, 5*time.Second)
	return c
}

func TestPrometheusScrape(t *testing.T) {
	needProcesses(t)
	tools := needTools(t, "prometheus")
	start := time.Now()
	c := promCluster(t)
	nodes := c.Nodes()

	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join("prometheus", "capsgate-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, n := range nodes {
		targets = append(targets, `"`+n.AdminAddr+`"`)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: capsgate
    static_configs:
      - targets: [%s]
`, rules, strings.Join(targets, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := farm.FreeAddr(t)
	prom := startProc(t, dir, "prometheus", tools["prometheus"],
		"--config.file="+filepath.Join(dir, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	api := "http://" + promAddr
	if err := eventually(20*time.Second, func() error {
		if !prom.running() {
			return fmt.Errorf("prometheus exited: %v", prom.err)
		}
		_, err := httpGet(api + "/-/ready")
		return err
	}); err != nil {
		t.Fatalf("Prometheus on %s not ready: %v\n%s", promAddr, err, prom.tail(20))
	}
	if err := eventually(10*time.Second, func() error {
		v, err := promScalar(api, `count(up{job="capsgate"} == 1)`, time.Time{})
		if err == nil && v != promNodes {
			err = fmt.Errorf("%g of %d targets up", v, promNodes)
		}
		return err
	}); err != nil {
		t.Fatalf("Prometheus scraping the nodes: %v\n%s", err, prom.tail(20))
	}
	t.Logf("Prometheus on %s scraping %d nodes every second, ready after %s", promAddr, promNodes, time.Since(start).Round(time.Millisecond))

	// A little of everything the dashboard shows, then the overload.
	for _, n := range nodes {
		for _, args := range [][]string{
			{"ADMIT", service, "PRIORITY", "emergency"}, {"ADMIT", service, "PRIORITY", "high"},
			{"ADMIT", "unknown-service"}, {"REGISTER", service, "sub-" + n.Name}, {"CONSUME", service, "acme", "5"},
		} {
			if _, err := n.Do(args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	okSample := fmt.Sprintf(`capsgate_admissions_total{service="%s",reason="OK"}`, service)
	var (
		mu       sync.Mutex
		readings []reading
		failed   errs
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	wg.Go(func() { // capsgate's own counters every 250 ms
		for {
			v, err := sumMetric(nodes, okSample)
			failed.add(err)
			mu.Lock()
			readings = append(readings, reading{time.Now(), v})
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	})
	loadStart := time.Now()
	tally := openloop.PacedVia(c.Dial(), c.RESPAddrs(), nil, promOffered, promLoad, "ADMIT "+service)
	loadEnd := time.Now()
	if tally.Total.Err != nil {
		t.Fatal(tally.Total.Err)
	}
	t.Logf("load: %d/s offered against %d licensed for %s over %d nodes: %s", promOffered, promCAPS, promLoad, promNodes, tally)

	// The admitted rate over the last 6 s of the load, as PromQL computes
	// it from the scrapes and as the counters read directly say.
	at := loadEnd.Add(-500 * time.Millisecond)
	window := 8 * time.Second
	if err := eventually(5*time.Second, func() error { // the scrape after `at` is in
		_, err := promScalar(api, `sum(capsgate_admissions_total)`, at.Add(1500*time.Millisecond))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	promRate, err := promScalar(api, fmt.Sprintf(`sum(rate(%s[%ds]))`, okSample, int(window.Seconds())), at)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	own := within(readings, at.Add(-window), at)
	mu.Unlock()
	if len(own) < 2 {
		t.Fatalf("too few direct readings of the counters")
	}
	first, last := own[0], own[len(own)-1]
	ownRate := (last.sum - first.sum) / last.at.Sub(first.at).Seconds()
	t.Logf("admitted rate over the %s to %s: PromQL sum(rate(...[%s])) = %.1f/s; capsgate's counters read directly = %.1f/s (%.0f admitted in %.2f s); licensed %d",
		at.Add(-window).Sub(loadStart).Round(time.Millisecond), at.Sub(loadStart).Round(time.Millisecond), window,
		promRate, ownRate, last.sum-first.sum, last.at.Sub(first.at).Seconds(), promCAPS)
	if math.Abs(promRate-ownRate) > 0.05*ownRate {
		t.Errorf("PromQL says %.1f admitted/s, capsgate's counters %.1f/s: more than 5 %% apart", promRate, ownRate)
	}
	if math.Abs(ownRate-promCAPS) > 0.1*promCAPS {
		t.Errorf("admitted %.1f/s under %d/s offered, want about the licence, %d/s", ownRate, promOffered, promCAPS)
	}

	// Once the counters stand still, Prometheus's last scrape equals them.
	close(stop)
	wg.Wait()
	if err := failed.err(); err != nil {
		t.Fatal(err)
	}
	direct, err := sumMetric(nodes, okSample)
	if err != nil {
		t.Fatal(err)
	}
	if err := eventually(5*time.Second, func() error {
		v, err := promScalar(api, fmt.Sprintf(`sum(%s)`, okSample), time.Time{})
		if err == nil && v != direct {
			err = fmt.Errorf("Prometheus has %g admitted, the nodes' /metrics %g", v, direct)
		}
		return err
	}); err != nil {
		t.Error(err)
	}
	t.Logf("after the load: Prometheus and the nodes both count %g admitted (the load generator saw %d)", direct, tally.Total.Admitted+3)

	// Every alert rule evaluates on the real series; the capacity alerts
	// are pending (their for: is minutes) under the overload.
	var rulesResp struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Query     string `json:"query"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
				State     string `json:"state"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := promGet(api+"/api/v1/rules", &rulesResp); err != nil {
		t.Fatal(err)
	}
	nrules := 0
	states, queries := map[string]string{}, map[string]string{}
	for _, g := range rulesResp.Groups {
		for _, r := range g.Rules {
			nrules++
			states[r.Name], queries[r.Name] = r.State, r.Query
			if r.Health != "ok" {
				t.Errorf("rule %s: health %q: %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	t.Logf("%d alert rules loaded and evaluated; states: %v", nrules, states)
	if nrules < 10 {
		t.Errorf("only %d rules loaded from %s", nrules, rules)
	}
	// The capacity alerts' conditions held at the end of the load: as
	// written over 5 minutes (the rate then includes the idle start) and over
	// the last 5 seconds. CapsgateCAPSExhausted, a ratio, is pending already.
	for _, name := range []string{"CapsgateCAPSExhausted", "CapsgateLicensedCAPSNearlyUsedUp"} {
		q := strings.ReplaceAll(queries[name], "[5m]", "[5s]")
		if n, err := promCount(api, q, at); err != nil || n == 0 {
			t.Errorf("%s's condition over 5 s at the end of %s of %d/s against %d CAPS: %d series, %v; want it to hold (%s)",
				name, promLoad, promOffered, promCAPS, n, err, q)
		}
	}
	if states["CapsgateCAPSExhausted"] != "pending" {
		t.Errorf("CapsgateCAPSExhausted is %q, want pending", states["CapsgateCAPSExhausted"])
	}
	for _, name := range []string{"CapsgateNodeDown", "CapsgateClockRollback", "CapsgateLicenseInGrace", "CapsgatePartitioned", "CapsgateServiceUnlicensed"} {
		if states[name] != "inactive" {
			t.Errorf("%s is %q on a healthy cluster", name, states[name])
		}
	}

	// Every query of the Grafana dashboard runs; those without a "> 0"
	// filter return series.
	exprs, err := dashboardQueries(filepath.Join("grafana", "capsgate-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	empty := 0
	for _, e := range exprs {
		q := strings.NewReplacer("$__rate_interval", "5s", "$service", ".*", "$instance", ".*").Replace(e)
		n, err := promCount(api, q, loadEnd)
		if err != nil {
			t.Errorf("dashboard query %s: %v", e, err)
			continue
		}
		if n == 0 {
			if filtered.MatchString(e) {
				empty++
				continue
			}
			t.Errorf("dashboard query %s: no series at the end of the load", e)
		}
	}
	t.Logf("%d dashboard queries run against the live Prometheus (%d filtered ones empty)", len(exprs), empty)
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))
}

// filtered matches queries that keep only non-zero rates.
var filtered = regexp.MustCompile(`\) > 0$`)

// reading is the sum of a counter over the nodes at an instant.
type reading struct {
	at  time.Time
	sum float64
}

// within returns the readings taken from from to to.
func within(rs []reading, from, to time.Time) []reading {
	var out []reading
	for _, r := range rs {
		if !r.at.Before(from) && !r.at.After(to) {
			out = append(out, r)
		}
	}
	return out
}

// promGet decodes the data of a Prometheus API answer into v.
func promGet(u string, v any) error {
	body, err := httpGet(u)
	if err != nil {
		return err
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("%s: %w", u, err)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s: %s", u, env.Status, env.Error)
	}
	return json.Unmarshal(env.Data, v)
}

// promVector runs an instant query (at now when at is zero) and returns
// its samples' values.
func promVector(api, query string, at time.Time) ([]float64, error) {
	u := api + "/api/v1/query?query=" + url.QueryEscape(query)
	if !at.IsZero() {
		u += "&time=" + strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)
	}
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := promGet(u, &data); err != nil {
		return nil, err
	}
	var out []float64
	for _, r := range data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: value %v", query, r.Value[1])
		}
		out = append(out, v)
	}
	return out, nil
}

// promScalar runs a query that must return one sample.
func promScalar(api, query string, at time.Time) (float64, error) {
	vs, err := promVector(api, query, at)
	if err != nil {
		return 0, err
	}
	if len(vs) != 1 {
		return 0, fmt.Errorf("%s: %d samples, want 1", query, len(vs))
	}
	return vs[0], nil
}

// promCount runs a query and returns how many series it returned.
func promCount(api, query string, at time.Time) (int, error) {
	vs, err := promVector(api, query, at)
	return len(vs), err
}

// dashboardQueries returns every PromQL expression of a Grafana dashboard's
// panels, in order.
func dashboardQueries(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr != "" {
				out = append(out, tg.Expr)
			}
		}
	}
	return out, nil
}
