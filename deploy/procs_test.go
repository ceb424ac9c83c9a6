// Package deploy tests the deployment kit in this directory with the real
// programs it is for: Kamailio and sipp in front of capsgate nodes
// (kamailio_e2e_test.go), a real Prometheus scraping them and promtool
// checking the exposition and the alert rules (prometheus_e2e_test.go), and
// every Kubernetes manifest decoded strictly into the Kubernetes API types
// (manifests_test.go).
//
// The programs come from Debian (kamailio, kamailio-redis-modules,
// sip-tester, prometheus; .ci/run installs them). A test that needs one
// that is missing fails under CI=true and is skipped elsewhere; the
// process tests are skipped under go test -short.
package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/capsgate/capsgate/cluster/farm"
)

// needTools returns the paths of the programs a test runs. Missing ones
// fail the test under CI=true (CI installs them) and skip it elsewhere.
func needTools(t *testing.T, names ...string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	var missing []string
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			missing = append(missing, n)
			continue
		}
		paths[n] = p
	}
	if len(missing) > 0 {
		msg := fmt.Sprintf("cannot find %s (Debian packages kamailio, kamailio-redis-modules, sip-tester, prometheus; .ci/run installs them)",
			strings.Join(missing, ", "))
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: " + msg)
		}
		t.Skip(msg)
	}
	return paths
}

// needProcesses skips a test that runs real processes under -short.
func needProcesses(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real capsgate, Kamailio, sipp or Prometheus processes; skipped under -short")
	}
}

// proc is a program the test started, in a process group of its own, its
// output in a file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // path of its stdout and stderr
	done chan struct{}
	err  error // cmd.Wait's result once done is closed
}

// startProc runs argv in dir with its output in dir/<name>.out; the test's
// cleanup stops it (SIGTERM, then SIGKILL to its process group).
func startProc(t *testing.T, dir, name string, argv ...string) *proc {
	t.Helper()
	out, err := os.Create(filepath.Join(dir, name+".out"))
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, log: out.Name(), done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := farm.StartTied(p.cmd); err != nil {
		out.Close()
		t.Fatalf("cannot start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
	return p
}

// running reports whether the process is still up.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits up to d for the process to exit and returns its exit error, or
// an error saying it is still running.
func (p *proc) wait(d time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		return fmt.Errorf("%s still running after %s", p.name, d)
	}
}

// stop sends sig to the process and, if it is still up after grace, kills
// its process group (Kamailio's children, sipp under timeout).
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	if p.wait(grace) == nil || !p.running() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// tail returns the last n lines of the process's output.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// quota returns QUOTA service's fields as node n answers them (integers as
// their decimal text).
func quota(n *farm.Node, service string) (map[string]string, error) {
	v, err := n.Do("QUOTA", service)
	if err != nil {
		return nil, err
	}
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%s: QUOTA answered %v", n.Name, v)
	}
	out := map[string]string{}
	for i := 0; i+1 < len(a); i += 2 {
		out[fmt.Sprint(a[i])] = fmt.Sprint(a[i+1])
	}
	return out, nil
}

// metrics reads node n's /metrics and returns every sample whose name and
// labels (as written, e.g. `capsgate_admissions_total{service="voice",reason="OK"}`)
// start with prefix.
func metrics(n *farm.Node, prefix string) (map[string]float64, error) {
	resp, err := http.Get("http://" + n.AdminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: GET /metrics: %s", n.Name, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad sample %q", n.Name, line)
		}
		out[line[:i]] += v
	}
	return out, sc.Err()
}

// sumMetric adds sample (exact name and labels) over every node.
func sumMetric(nodes []*farm.Node, sample string) (float64, error) {
	var sum float64
	for _, n := range nodes {
		m, err := metrics(n, sample)
		if err != nil {
			return 0, err
		}
		sum += m[sample]
	}
	return sum, nil
}

// freePort returns a loopback port free for both UDP and TCP.
func freePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(farm.FreeAddr(t))
	p, _ := strconv.Atoi(port)
	return p
}

// eventually polls cond every 20 ms until it returns nil or d has passed,
// and returns its last error.
func eventually(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readAll returns the text of every file matching glob, joined.
func readAll(glob string) (string, error) {
	files, err := filepath.Glob(glob)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("no file matches %s", glob)
	}
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		b.Write(data)
	}
	return b.String(), nil
}

// httpGet returns the body of a 200 answer to GET url.
func httpGet(url string) ([]byte, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// errs collects errors from goroutines.
type errs struct {
	mu   sync.Mutex
	list []error
}

func (e *errs) add(err error) {
	if err != nil {
		e.mu.Lock()
		e.list = append(e.list, err)
		e.mu.Unlock()
	}
}

func (e *errs) err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return errors.Join(e.list...)
}
