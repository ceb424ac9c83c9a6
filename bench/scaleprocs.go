package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
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
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/admission/loopback"
	"github.com/capsgate/capsgate/cluster/farm"
)

// scaleServer is one target on its data dir: started, loaded, killed and
// started again with the same command line.
type scaleServer struct {
	name, label string
	// phases are redis-benchmark's two commands (words split on spaces);
	// __rand_int__ is its random key.
	phases     [2]string
	persistent bool
	argv       []string
	addr       string // RESP, host:port
	admin      string // capsgate's admin API; "" for Redis
	logPath    string
	// count returns the entries the server holds.
	count func(ctx context.Context, c *client.Conn) (int64, error)
	// setup runs after the first start (capsgate: the licence).
	setup func(ctx context.Context) error
	proc  *scaleProc
}

// newCapsgateServer prepares a node in dir: a vendor key
// (capslicense keygen), a gossip key, an admin token, a licence for
// scaleService loaded after the start with `capsctl license add`.
func newCapsgateServer(ctx context.Context, bin farm.Binaries, dir string) (*scaleServer, error) {
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return nil, fmt.Errorf("cannot make the key directory: %w", err)
	}
	if _, err := runTool(ctx, toolTimeout, bin.Capslicense, "keygen", "--out", keys); err != nil {
		return nil, err
	}
	gossip, token := make([]byte, 32), make([]byte, 16)
	_, _ = rand.Read(gossip)
	_, _ = rand.Read(token)
	gossipFile, tokenFile := filepath.Join(keys, "gossip.key"), filepath.Join(keys, "admin.token")
	if err := os.WriteFile(gossipFile, []byte(base64.StdEncoding.EncodeToString(gossip)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the gossip key: %w", err)
	}
	if err := os.WriteFile(tokenFile, []byte(hex.EncodeToString(token)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the admin token: %w", err)
	}
	caps := strconv.Itoa(scaleCAPS)
	lic, err := runTool(ctx, toolTimeout, bin.Capslicense, "issue", "--key", filepath.Join(keys, "vendor.key"),
		"--service", scaleService, "--caps", caps, "--sessions", strconv.Itoa(scaleLicenceCap),
		"--subscribers", strconv.Itoa(scaleLicenceCap), "--cluster", "scale", "--id", "S1")
	if err != nil {
		return nil, err
	}
	licFile := filepath.Join(dir, "s.lic")
	if err := os.WriteFile(licFile, lic, 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the licence: %w", err)
	}
	addrs, err := loopback.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	s := &scaleServer{
		name: ScaleCapsgate, label: "capsgate (`REGISTER`, then `ADMIT ... CALL`; journal)",
		phases:     [2]string{"REGISTER " + scaleService + " sub:__rand_int__ TTL 3600", "ADMIT " + scaleService + " CALL call:__rand_int__"},
		persistent: true, addr: addrs[0], admin: addrs[1], logPath: filepath.Join(dir, "capsgate.log"),
		argv: []string{bin.Capsgate, "--node-name", "n1", "--cluster-id", "scale", "--data-dir", filepath.Join(dir, "data"),
			"--resp-addr", addrs[0], "--admin-addr", addrs[1], "--gossip-addr", addrs[2], "--gossip-key-file", gossipFile,
			"--admin-token-file", tokenFile, "--vendor-key", filepath.Join(keys, "vendor.pub")},
		count: capsgateHeld,
	}
	s.setup = func(ctx context.Context) error {
		_, err := runTool(ctx, toolTimeout, bin.Capsctl, "--addr", "http://"+s.admin, "--token-file", tokenFile, "license", "add", licFile)
		return err
	}
	return s, nil
}

// newRedisServer prepares redis-server in dir: no
// snapshots, and an append-only file synced every second (aof) or no
// persistence at all.
func newRedisServer(path, version, dir string, aof bool) (*scaleServer, error) {
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addrs[0])
	s := &scaleServer{
		name: ScaleRedisAOF, label: fmt.Sprintf("Redis %s (`SET ... EX`, twice; AOF, fsync every second)", version),
		phases: [2]string{"SET sub:__rand_int__ v EX 3600", "SET call:__rand_int__ v EX 3600"}, persistent: true,
		addr: addrs[0], logPath: filepath.Join(dir, "redis.log"), count: redisHeld,
		argv: []string{path, "--port", port, "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--daemonize", "no",
			"--appendonly", "yes", "--appendfsync", "everysec"},
	}
	if !aof {
		s.name, s.persistent = ScaleRedis, false
		s.label = fmt.Sprintf("Redis %s (`SET ... EX`, twice; no persistence)", version)
		s.argv = append(s.argv[:len(s.argv)-4], "--appendonly", "no")
	}
	return s, nil
}

// capsgateHeld is QUOTA's sessions_used + subscribers_used.
func capsgateHeld(ctx context.Context, c *client.Conn) (int64, error) {
	q, err := c.Quota(ctx, scaleService)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, k := range []string{"sessions_used", "subscribers_used"} {
		v, err := strconv.ParseInt(q[k], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("QUOTA %s answered %s %q", scaleService, k, q[k])
		}
		n += v
	}
	return n, nil
}

// redisHeld is DBSIZE.
func redisHeld(ctx context.Context, c *client.Conn) (int64, error) {
	r, err := c.Do(ctx, []byte("DBSIZE"))
	if err != nil {
		return 0, err
	}
	if r.Kind != client.Integer {
		return 0, fmt.Errorf("DBSIZE answered %s", r.String())
	}
	return r.Int, nil
}

// start starts the process and waits until it answers PING.
func (s *scaleServer) start(ctx context.Context) error {
	p, err := startScaleProc(s.argv, s.logPath)
	if err != nil {
		return err
	}
	s.proc = p
	deadline := time.Now().Add(startTimeout)
	for pingOnce(s.addr) != nil {
		if err := s.alive(ctx); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("%s does not answer PING on %s within %v: %s", s.name, s.addr, startTimeout, logTail(s.logPath))
		}
		if err := sleepCtx(ctx, restartPoll); err != nil {
			return err
		}
	}
	return nil
}

// alive returns an error once ctx has ended or the process has exited.
func (s *scaleServer) alive(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.proc.exited() {
		return fmt.Errorf("%s exited: %s", s.name, logTail(s.logPath))
	}
	return nil
}

// restart kills the server with SIGKILL, starts it again on the same data
// and waits, polling every restartPoll, for its first PONG, for held
// entries back (a persistent target) and for capsgate's /readyz. What has
// not come back after restartTimeout is the result's Failure.
func (s *scaleServer) restart(ctx context.Context, held int64) (ScaleRestart, error) {
	var r ScaleRestart
	s.proc.kill()
	t0 := time.Now()
	p, err := startScaleProc(s.argv, s.logPath)
	if err != nil {
		return r, err
	}
	s.proc = p
	answered, back, ready := false, false, s.admin == ""
	var c *client.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	hc := &http.Client{Timeout: time.Second}
	for !answered || !back || !ready {
		if err := s.alive(ctx); err != nil {
			return r, fmt.Errorf("during the restart: %w", err)
		}
		if !answered && pingOnce(s.addr) == nil {
			answered, r.FirstAnswerS = true, time.Since(t0).Seconds()
		}
		if answered && !back {
			c, back = s.countBack(ctx, c, held, &r)
			if back && s.persistent {
				r.AllBackS = time.Since(t0).Seconds()
			}
		}
		if !ready && httpStatus(hc, "http://"+s.admin+"/readyz") == http.StatusOK {
			ready, r.ReadyS = true, time.Since(t0).Seconds()
		}
		if time.Since(t0) > restartTimeout {
			r.Failure = notBack(answered, back, ready, r.Back, held)
			return r, nil
		}
		if err := sleepCtx(ctx, restartPoll); err != nil {
			return r, err
		}
	}
	if s.admin != "" {
		if err := restoreGauges(hc, "http://"+s.admin+"/metrics", &r); err != nil {
			return r, err
		}
	}
	return r, nil
}

// countBack counts the entries on c (dialled again if it is nil or
// broken) into r.Back and reports whether they are all back: held of
// them, or any number for a target without persistence.
func (s *scaleServer) countBack(ctx context.Context, c *client.Conn, held int64, r *ScaleRestart) (*client.Conn, bool) {
	if c == nil || c.Err() != nil {
		if c != nil {
			c.Close()
		}
		var err error
		if c, err = dialScale(ctx, s.addr); err != nil {
			return nil, false
		}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	n, err := s.count(cctx, c)
	if err != nil {
		return c, false // not ready to count (no licence yet, loading): look again
	}
	r.Back = n
	return c, !s.persistent || n >= held
}

// notBack says what a restart did not bring back within restartTimeout.
func notBack(answered, back, ready bool, got, held int64) string {
	var what []string
	if !answered {
		what = append(what, "no PONG")
	}
	if answered && !back {
		what = append(what, fmt.Sprintf("%d of %d entries back", got, held))
	}
	if !ready {
		what = append(what, "/readyz not ready")
	}
	return fmt.Sprintf("%s after %v", strings.Join(what, ", "), restartTimeout)
}

// restoreGauges reads capsgate_state_restore_seconds and the restored
// sessions and subscribers from capsgate's /metrics into r.
func restoreGauges(hc *http.Client, url string, r *ScaleRestart) error {
	resp, err := hc.Get(url)
	if err != nil {
		return fmt.Errorf("cannot read the restore gauges: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("cannot read the restore gauges: %w", err)
	}
	text := string(b)
	v, ok := metricValue(text, "capsgate_state_restore_seconds")
	if !ok {
		return fmt.Errorf("no capsgate_state_restore_seconds in %s", url)
	}
	r.RestoreSeconds = v
	sessions, _ := metricValue(text, "capsgate_state_restored_sessions")
	subscribers, _ := metricValue(text, "capsgate_state_restored_subscribers")
	r.Restored = int64(sessions + subscribers)
	return nil
}

// metricValue is the value of the unlabelled sample name in a Prometheus
// text exposition.
func metricValue(text, name string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// httpStatus is GET url's status code, 0 if there is no answer.
func httpStatus(hc *http.Client, url string) int {
	resp, err := hc.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode
}

// scaleProc is one process of a server; its output goes to a log file.
type scaleProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited
}

// startScaleProc starts argv, appending its output to logPath. The
// process is tied to this one (farm.StartTied): it gets SIGKILL if
// capsbench dies without killing it.
func startScaleProc(argv []string, logPath string) (*scaleProc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the server log: %w", err)
	}
	defer f.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := farm.StartTied(cmd); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", argv[0], err)
	}
	p := &scaleProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// kill sends SIGKILL and waits for the process to exit; it is safe to
// call twice.
func (p *scaleProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *scaleProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of a server's log, for an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log: " + err.Error()
	}
	return "log: " + lastLines(string(b), 5)
}

// lastLines is the last n lines of s, joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// readRSS is pid's resident memory in bytes, from /proc/PID/status.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read the server's RSS: %w", err)
	}
	return parseVmRSS(string(b))
}

// parseVmRSS reads the VmRSS line ("VmRSS:	  12345 kB") of a
// /proc/PID/status.
func parseVmRSS(status string) (int64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10, nil
				}
			}
			return 0, fmt.Errorf("cannot read the RSS in %q", line)
		}
	}
	return 0, errors.New("no VmRSS in /proc/PID/status")
}

// scaleBinaries returns the commands in dir, or builds them into tmp
// (`go build -o tmp/ ./cmd/...` of this module) when dir is "".
func scaleBinaries(ctx context.Context, dir, tmp string) (farm.Binaries, error) {
	if dir != "" {
		b, err := farm.BinariesIn(dir)
		if err != nil {
			return b, fmt.Errorf("bad --bin: %w", err)
		}
		return b, nil
	}
	if _, err := runTool(ctx, buildTimeout, "go", "build", "-o", tmp+string(filepath.Separator), modulePath+"/cmd/..."); err != nil {
		return farm.Binaries{}, fmt.Errorf("%w (run capsbench scale inside the capsgate module, or give --bin DIR)", err)
	}
	return farm.BinariesIn(tmp)
}

// modulePath is the module whose commands scaleBinaries builds.
const modulePath = "github.com/capsgate/capsgate"

// runTool runs a short command to its end within timeout and returns its
// output; the error names the command and ends with what it printed.
func runTool(ctx context.Context, timeout time.Duration, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	cmd.WaitDelay = time.Second // a child that keeps the pipes open
	err := farm.StartTied(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return nil, fmt.Errorf("cannot run %s: %w: %s", strings.Join(argv, " "), err, lastLine(stderr.String()+out.String()))
	}
	return out.Bytes(), nil
}

// redisVersion is the version in `redis-server --version`'s output
// ("Redis server v=7.0.15 sha=..."), or "" if it has none.
func redisVersion(out string) string {
	for f := range strings.FieldsSeq(out) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return v
		}
	}
	return ""
}
