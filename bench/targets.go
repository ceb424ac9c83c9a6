package bench

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
	"github.com/capsgate/capsgate/licensing"
)

// Target is a running server to load and the command to send it.
type Target struct {
	Name  string
	Addr  string
	Frame []byte
	// AdminAddr is capsgate's admin API (host:port), whose
	// /debug/pprof/profile Compare fetches; "" for the other targets.
	// AdminToken is its bearer token ("" for the --dev node Compare
	// starts, whose admin API needs none).
	AdminAddr, AdminToken string
	// pid is the server's process, whose CPU use Compare reports (0:
	// not known).
	pid  int
	stop func() error
}

// Stop stops the target's server.
func (t *Target) Stop() error { return t.stop() }

// Target names, as the JSON has them.
const (
	NameCapsgate = "capsgate"
	NameRedisLua = "redis-lua"
	NameLimit    = "limit"
)

// BenchService is the service the comparison licenses and admits, and
// BenchCAPS its licensed rate: high enough that every decision goes
// through the token bucket and nearly all are admitted.
const (
	BenchService = "bench"
	BenchCAPS    = 100_000_000
)

const startTimeout = 15 * time.Second

// capsgateBinaries finds capsgate beside this executable (as `go build
// ./cmd/...` leaves it), else builds the commands once (inside the module).
func capsgateBinaries() (farm.Binaries, error) {
	if exe, err := os.Executable(); err == nil {
		if b, err := farm.BinariesIn(filepath.Dir(exe)); err == nil {
			return b, nil
		}
	}
	return farm.BuildOnce()
}

// StartCapsgate starts a capsgate --dev process in dir trusting a vendor
// key made there, loads a licence for BenchService at BenchCAPS through
// the admin API, and waits until ADMIT is answered with OK.
func StartCapsgate(dir string) (*Target, error) {
	bin, err := capsgateBinaries()
	if err != nil {
		return nil, err
	}
	key, err := licensing.GenerateVendorKey()
	if err != nil {
		return nil, err
	}
	keys := filepath.Join(dir, "keys")
	if err := licensing.WriteKeyFiles(keys, key); err != nil {
		return nil, err
	}
	lic, err := key.Sign(&licensing.License{Service: BenchService, CAPS: BenchCAPS, Customer: "capsbench"}, time.Now())
	if err != nil {
		return nil, err
	}
	n, err := farm.StartDev(bin, filepath.Join(dir, "data"), "--vendor-key", filepath.Join(keys, licensing.PublicKeyFile))
	if err != nil {
		return nil, err
	}
	t := &Target{Name: NameCapsgate, Addr: n.RESPAddr, Frame: client.AppendCommand(nil, "ADMIT", BenchService),
		AdminAddr: n.AdminAddr, pid: n.Pid(), stop: func() error { n.Kill(); return nil }}
	if err := n.PostLicense(lic); err != nil {
		n.Kill()
		return nil, fmt.Errorf("cannot load the bench licence: %w", err)
	}
	if err := waitAdmitted(t); err != nil {
		n.Kill()
		return nil, fmt.Errorf("capsgate: %w (log: %s)", err, lastLine(n.Log()))
	}
	return t, nil
}

// waitAdmitted waits until t admits its command.
func waitAdmitted(t *Target) error {
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := client.Dial(ctx, t.Addr)
		if err == nil {
			p := c.Pipeline()
			p.AppendFrame(t.Frame, 1)
			if err = p.Exec(ctx); err == nil {
				var d client.Decision
				if d, err = p.Reply(0).Decision(); err == nil && !d.Admitted {
					err = fmt.Errorf("answered %+v", d)
				}
			}
			_ = c.Close()
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s at %s does not admit within %v: %w", t.Name, t.Addr, startTimeout, last)
}

// gcraLua is the limiter Redis runs per request: the same GCRA as
// capsgate's CAPS bucket (rate per second, burst), state in one key,
// time from the server, the reply in capsgate's decision shape.
const gcraLua = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = 1000000 / rate
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if allow_at > now then
  return {0, redis.status_reply('CAPS'), math.ceil((allow_at - now) / 1000), 0}
end
local newtat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', newtat), 'PX', math.ceil(burst * interval / 1000) + 1000)
return {1, redis.status_reply('OK'), 0, math.floor((now - allow_at) / interval)}
`

// RedisServer is the redis-server the comparison runs.
const RedisServer = "/usr/bin/redis-server"

// ErrNoRedis is returned when redis-server is not installed.
var ErrNoRedis = errors.New("redis-server is not installed (Debian: apt-get install redis-server)")

// redisPath finds redis-server: Debian's, else on PATH.
func redisPath() (string, error) {
	if _, err := os.Stat(RedisServer); err == nil {
		return RedisServer, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", ErrNoRedis
}

// StartRedisLua starts redis-server on a free loopback port without
// persistence, loads the GCRA script and returns EVALSHA as the command.
func StartRedisLua(dir string) (*Target, error) {
	path, err := redisPath()
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(path, "--bind", host, "--port", port, "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err := farm.StartTied(cmd); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", path, err)
	}
	stop := func() error { _ = cmd.Process.Kill(); _ = cmd.Wait(); return nil }
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var c *client.Conn
	for {
		if c, err = client.Dial(ctx, addr); err == nil {
			break
		}
		if ctx.Err() != nil {
			_ = stop()
			return nil, fmt.Errorf("redis-server does not answer on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	sha, err := c.Do(ctx, []byte("SCRIPT"), []byte("LOAD"), []byte(gcraLua))
	if err != nil {
		_ = stop()
		return nil, fmt.Errorf("cannot load the GCRA script into redis: %w", err)
	}
	t := &Target{Name: NameRedisLua, Addr: addr, stop: stop, pid: cmd.Process.Pid,
		Frame: client.AppendCommand(nil, "EVALSHA", string(sha.Str), "1", "caps:"+BenchService,
			fmt.Sprint(BenchCAPS), fmt.Sprint(BenchCAPS/10))}
	if err := waitAdmitted(t); err != nil {
		_ = stop()
		return nil, err
	}
	return t, nil
}

// StartLimit runs the Limit server in a process of its own, as capsgate
// and Redis run: this executable with the argument LimitServerArg (the
// caller's main, or TestMain, runs ServeLimitMain for it).
func StartLimit() (*Target, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, LimitServerArg, "--addr", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := farm.StartTied(cmd); err != nil {
		return nil, fmt.Errorf("cannot start the limit server: %w", err)
	}
	stop := func() error { _ = cmd.Process.Kill(); _ = cmd.Wait(); return nil }
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var addr string
	select {
	case addr = <-line:
	case <-time.After(startTimeout):
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		_ = stop()
		return nil, fmt.Errorf("the limit server did not say where it listens (got %q)", addr)
	}
	t := &Target{Name: NameLimit, Addr: addr, stop: stop, pid: cmd.Process.Pid, Frame: client.AppendCommand(nil, "ADMIT", BenchService)}
	if err := waitAdmitted(t); err != nil {
		_ = stop()
		return nil, err
	}
	return t, nil
}

// LimitServerArg is the first argument that makes a capsbench (or a test
// binary) run only the limit server.
const LimitServerArg = "serve-limit"

// ServeLimitMain runs the limit server for `capsbench serve-limit --addr
// A`: it prints the address it listens on, then serves until ctx ends
// (capsbench: SIGINT or SIGTERM) and returns 0 once it has stopped.
func ServeLimitMain(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet(LimitServerArg, flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address to listen on (host:port; port 0 picks one)")
	loops := fs.Int("loops", 0, "event loops, 0..256; 0 = one per CPU core, as capsgate's resp.event_loops")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *loops < 0 || *loops > 256 {
		fmt.Fprintf(os.Stderr, "capsbench serve-limit: want --addr HOST:PORT [--loops 0..256], got %q\n", args)
		return 2
	}
	err := ServeLimit(ctx, *addr, *loops, func(a string) { fmt.Println(a) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "capsbench serve-limit:", err)
		return 1
	}
	return 0
}

// freeAddr returns a free loopback TCP address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cannot find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
