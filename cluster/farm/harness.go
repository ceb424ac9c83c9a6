// Package farm runs real capsgate processes on loopback ports and drives
// them the way the vendor, the operator and a SIP platform do:
// capslicense issues licences, capsctl and the admin API load and read
// them, and RESP commands go through admission/client's encoder and
// parser. The tests and capsbench share it; it does not import testing
// (a test passes its *testing.T as a TB), so capsbench does not link it.
//
// In a test:
//
//	c := farm.New(t, 3)                // n1, then n2 and n3 joining n1
//	c.WaitMembers(3, 5*time.Second)
//	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "1000"))
//	c.WaitCAPS("voice", 1000, 2*time.Second)
//	tally := openloop.Paced(c.RESPAddrs(), []float64{70, 20, 10}, 2000, 10*time.Second, "ADMIT voice")
//	t.Log(tally)
//	c.Node(3).Kill()
//
// Nodes are numbered from 1, like their names (n1, n2, ...). The commands
// are built once per process (BuildOnce). New, NewDev and the Cluster
// methods that return no error (Issue, LoadLicense, Ctl, Members, Service,
// WaitMembers, WaitCAPS) fail the test; everything else returns errors, so
// a program (`capsbench cluster`) can use BinariesIn, Start, StartDev and
// Node without a test.
//
// Every process is started with a per-node data dir and the cluster's
// vendor key, gossip key and admin token.
package farm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/admission/loopback"
	"github.com/capsgate/capsgate/cluster"
)

// TB is what New, NewDev and the Cluster methods that fail a test need of
// it: *testing.T and *testing.B are TBs.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Log(args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

// modulePath is the module whose commands Build builds.
const modulePath = "github.com/capsgate/capsgate"

const (
	// DefaultStartTimeout is how long a node may take to answer PING after
	// it is started: a cold start on a loaded CI machine takes seconds.
	DefaultStartTimeout = 15 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before SIGKILL; a
	// drain answers what was received and flushes the ledger, well below.
	stopTimeout = 20 * time.Second
	// httpTimeout bounds one admin API request; loopback answers in ms.
	httpTimeout = 5 * time.Second
	// pollInterval is how often the Wait and Await methods look again.
	pollInterval = 10 * time.Millisecond
)

// StartTied starts cmd so that its process gets SIGKILL when this
// process dies, however it dies (a test binary's timeout, kill -9 of
// capsbench): no node or server outlives it holding ports and CPU.
//
// Linux sends that signal (Pdeathsig) when the thread that started the
// child ends, not the process, and Go ends a thread whenever a goroutine
// locked to it returns (the harness's namespace dialer does, on whichever
// thread it got). So every tied process is started from one thread kept
// for it, locked and never released, which lives as long as the process.
func StartTied(cmd *exec.Cmd) error {
	tied.once.Do(func() {
		tied.starts = make(chan tiedStart)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread must outlive every child
			for s := range tied.starts {
				s.done <- s.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	s := tiedStart{cmd: cmd, done: make(chan error, 1)}
	tied.starts <- s
	return <-s.done
}

// tied is StartTied's thread: it takes the commands to start.
var tied struct {
	once   sync.Once
	starts chan tiedStart
}

type tiedStart struct {
	cmd  *exec.Cmd
	done chan error
}

// Binaries are the paths of the capsgate commands.
type Binaries struct {
	Capsgate, Capsctl, Capslicense string
}

// BinariesIn returns the commands in dir (for a program, the directory of
// os.Executable()) after checking that they are there.
func BinariesIn(dir string) (Binaries, error) {
	b := Binaries{
		Capsgate:    filepath.Join(dir, "capsgate"),
		Capsctl:     filepath.Join(dir, "capsctl"),
		Capslicense: filepath.Join(dir, "capslicense"),
	}
	for _, p := range []string{b.Capsgate, b.Capsctl, b.Capslicense} {
		if _, err := os.Stat(p); err != nil {
			return Binaries{}, fmt.Errorf("cannot find the capsgate commands: %w", err)
		}
	}
	return b, nil
}

// Build builds every command of the module into dir with the go tool. It
// must run inside the module, as tests do.
func Build(dir string) (Binaries, error) {
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), modulePath+"/cmd/...")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("cannot build %s/cmd/...: %w\n%s", modulePath, err, out)
	}
	return BinariesIn(dir)
}

// built holds BuildOnce's result for the life of the process.
var built struct {
	once sync.Once
	bin  Binaries
	err  error
}

// buildDirPrefix names BuildOnce's directories: the prefix, the pid, a
// random suffix.
const buildDirPrefix = "capsgate-farm-"

// BuildOnce builds the commands on its first call, into a temporary
// directory of this process, and returns the same binaries afterwards. A
// library has no hook at process exit, so the directory outlives the
// process; BuildOnce removes those of earlier processes that have exited.
func BuildOnce() (Binaries, error) {
	built.once.Do(func() {
		removeStaleBuilds()
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, os.Getpid()))
		if err != nil {
			built.err = fmt.Errorf("cannot make a directory for the binaries: %w", err)
			return
		}
		built.bin, built.err = Build(dir)
	})
	return built.bin, built.err
}

// removeStaleBuilds removes BuildOnce directories whose process is gone.
func removeStaleBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*-*"))
	for _, d := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), buildDirPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil && errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
			_ = os.RemoveAll(d)
		}
	}
}

// Issue runs `capslicense issue --key vendorKey args...` and returns the
// armored licence it prints.
func (b Binaries) Issue(vendorKey string, args ...string) ([]byte, error) {
	cmd := exec.Command(b.Capslicense, append([]string{"issue", "--key", vendorKey}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("cannot issue a licence (capslicense issue %s): %w: %s",
			strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ctl runs capsctl against the admin API at addr (host:port) with stdin and
// returns its combined output and exit code; err is only for a capsctl
// that could not run.
func (b Binaries) ctl(stdin []byte, addr, tokenFile string, args ...string) (string, int, error) {
	argv := []string{"--addr", "http://" + addr}
	if tokenFile != "" {
		argv = append(argv, "--token-file", tokenFile)
	}
	cmd := exec.Command(b.Capsctl, append(argv, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode(), nil
	}
	if err != nil {
		return string(out), -1, fmt.Errorf("cannot run capsctl: %w", err)
	}
	return string(out), 0, nil
}

// Config describes a cluster for Start.
type Config struct {
	// Nodes is how many capsgate processes to run (≥ 1).
	Nodes int
	// Dir holds the keys, the token and a data dir per node; it must exist.
	Dir string
	// Bin are the commands to run.
	Bin Binaries
	// ClusterID is every node's --cluster-id; default "clustertest".
	ClusterID string
	// Args are extra capsgate flags for every node.
	Args []string
	// NodeArgs are extra flags for one node, by number (from 1).
	NodeArgs map[int][]string
	// StartTimeout bounds each node's start; default DefaultStartTimeout.
	StartTimeout time.Duration
	// NodeCommand is a command line to run node i (from 1) under, e.g.
	// ip netns exec NAME; the capsgate command and its flags follow it.
	NodeCommand map[int][]string
	// NodeAddrs are node i's addresses (from 1) instead of free loopback
	// ports: each is both the flag capsgate listens on and where the
	// harness reaches it (through Dial).
	NodeAddrs map[int]Addrs
	// Dial, when set, is how the harness reaches the nodes' RESP and admin
	// addresses (PING, RESP commands, the admin API; Cluster.Dial), e.g. from another
	// network namespace; nil: net.Dialer.
	Dial DialFunc
}

// Addrs are one node's listening addresses (host:port).
type Addrs struct {
	RESP, Admin, Gossip string
}

// DialFunc dials a node's address, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialTimeout dials addr over TCP with dial (nil: net.Dialer) within
// timeout.
func DialTimeout(dial DialFunc, addr string, timeout time.Duration) (net.Conn, error) {
	if dial == nil {
		return net.DialTimeout("tcp", addr, timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return dial(ctx, "tcp", addr)
}

// Option adjusts the Config New starts.
type Option func(*Config)

// WithArgs adds capsgate flags to every node.
func WithArgs(args ...string) Option {
	return func(c *Config) { c.Args = append(c.Args, args...) }
}

// WithNodeArgs adds capsgate flags to node i (from 1).
func WithNodeArgs(i int, args ...string) Option {
	return func(c *Config) {
		if c.NodeArgs == nil {
			c.NodeArgs = map[int][]string{}
		}
		c.NodeArgs[i] = append(c.NodeArgs[i], args...)
	}
}

// WithNodeCommand runs node i (from 1) under the command line prefix
// (Config.NodeCommand).
func WithNodeCommand(i int, prefix ...string) Option {
	return func(c *Config) {
		if c.NodeCommand == nil {
			c.NodeCommand = map[int][]string{}
		}
		c.NodeCommand[i] = slices.Clone(prefix)
	}
}

// WithNodeAddrs gives node i (from 1) fixed addresses (Config.NodeAddrs).
func WithNodeAddrs(i int, a Addrs) Option {
	return func(c *Config) {
		if c.NodeAddrs == nil {
			c.NodeAddrs = map[int]Addrs{}
		}
		c.NodeAddrs[i] = a
	}
}

// WithDial makes the harness reach the nodes with dial (Config.Dial).
func WithDial(dial DialFunc) Option {
	return func(c *Config) { c.Dial = dial }
}

// WithClusterID sets every node's --cluster-id.
func WithClusterID(id string) Option {
	return func(c *Config) { c.ClusterID = id }
}

// Cluster is a running farm of capsgate processes sharing one vendor key,
// gossip key, admin token and cluster id.
type Cluster struct {
	Bin       Binaries
	Dir       string
	ClusterID string
	// VendorKey and VendorPub are the vendor's key pair (capslicense keygen).
	VendorKey, VendorPub string
	// GossipKeyFile and TokenFile are every node's gossip key and admin token.
	GossipKeyFile, TokenFile string

	nodes     []*Node
	cfg       Config // as started, for Add
	token     string // the admin token
	transport *http.Transport
	dial      DialFunc // nil: net.Dialer
	t         TB       // nil for a Cluster from Start
}

// New starts an n-node cluster for a test: it builds the commands once per
// test binary, makes the keys in a temporary directory and starts the nodes
// (Start). The test fails if any of it fails; when the test ends the nodes
// are killed, and their logs are printed if it failed.
func New(t TB, n int, opts ...Option) *Cluster {
	t.Helper()
	bin, err := BuildOnce()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Nodes: n, Dir: t.TempDir(), Bin: bin}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.t = t
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			for _, nd := range c.nodes {
				t.Logf("%s log, last %d lines:\n%s", nd.Name, logTail, lastLines(nd.Log(), logTail))
			}
		}
	})
	return c
}

// logTail is how many lines of each node's log a failed test shows.
const logTail = 60

// Start makes the keys and token in cfg.Dir and starts cfg.Nodes capsgate
// processes on free loopback ports: n1 first, then the others joining n1's
// gossip address, each one after the previous answers PING. On an error
// what was started is killed. Close kills them all.
func Start(cfg Config) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("cannot start a cluster of %d nodes: Config.Nodes must be at least 1", cfg.Nodes)
	}
	if cfg.ClusterID == "" {
		cfg.ClusterID = "clustertest"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	keys := filepath.Join(cfg.Dir, "keys")
	c := &Cluster{
		Bin:           cfg.Bin,
		Dir:           cfg.Dir,
		ClusterID:     cfg.ClusterID,
		VendorKey:     filepath.Join(keys, "vendor.key"),
		VendorPub:     filepath.Join(keys, "vendor.pub"),
		GossipKeyFile: filepath.Join(keys, "gossip.key"),
		TokenFile:     filepath.Join(keys, "admin.token"),
		transport:     &http.Transport{MaxIdleConnsPerHost: 4},
		dial:          cfg.Dial,
	}
	if cfg.Dial != nil {
		c.transport.DialContext = cfg.Dial
	}
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return nil, fmt.Errorf("cannot make the key directory: %w", err)
	}
	if out, err := exec.Command(cfg.Bin.Capslicense, "keygen", "--out", keys).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cannot make the vendor key (capslicense keygen): %w: %s", err, out)
	}
	gossipKey, token := make([]byte, 32), make([]byte, 16)
	_, _ = rand.Read(gossipKey)
	_, _ = rand.Read(token)
	if err := os.WriteFile(c.GossipKeyFile, []byte(base64.StdEncoding.EncodeToString(gossipKey)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the gossip key: %w", err)
	}
	if err := os.WriteFile(c.TokenFile, []byte(hex.EncodeToString(token)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("cannot write the admin token: %w", err)
	}
	free := 0
	for i := 1; i <= cfg.Nodes; i++ {
		if _, fixed := cfg.NodeAddrs[i]; !fixed {
			free += 3
		}
	}
	addrs, err := loopback.FreeAddrs(free)
	if err != nil {
		return nil, err
	}
	c.cfg, c.token = cfg, hex.EncodeToString(token)
	for i := range cfg.Nodes {
		a, fixed := cfg.NodeAddrs[i+1]
		if !fixed {
			a, addrs = Addrs{RESP: addrs[0], Admin: addrs[1], Gossip: addrs[2]}, addrs[3:]
		}
		c.nodes = append(c.nodes, c.newNode(i+1, a))
	}
	for i, n := range c.nodes {
		var join []string
		if i > 0 {
			join = []string{c.nodes[0].GossipAddr}
		}
		if err := n.start(join); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// newNode makes (does not start) the node numbered i (named "ni").
func (c *Cluster) newNode(i int, a Addrs) *Node {
	cfg := c.cfg
	name := fmt.Sprintf("n%d", i)
	n := &Node{
		Name:         name,
		RESPAddr:     a.RESP,
		AdminAddr:    a.Admin,
		GossipAddr:   a.Gossip,
		prefix:       slices.Clone(cfg.NodeCommand[i]),
		dial:         cfg.Dial,
		DataDir:      filepath.Join(cfg.Dir, name),
		bin:          cfg.Bin,
		token:        c.token,
		tokenFile:    c.TokenFile,
		startTimeout: cfg.StartTimeout,
		log:          &LogBuffer{},
		http:         &http.Client{Timeout: httpTimeout, Transport: c.transport},
		joins:        c.joinsFor,
	}
	n.args = append([]string{
		"--node-name", name, "--cluster-id", cfg.ClusterID, "--data-dir", n.DataDir,
		"--resp-addr", n.RESPAddr, "--admin-addr", n.AdminAddr, "--gossip-addr", n.GossipAddr,
		"--gossip-key-file", c.GossipKeyFile, "--admin-token-file", c.TokenFile,
		"--vendor-key", c.VendorPub,
	}, append(slices.Clone(cfg.Args), cfg.NodeArgs[i]...)...)
	return n
}

// Add starts a new member (the next number, on free ports) joining the
// running nodes, and returns it.
func (c *Cluster) Add() (*Node, error) {
	addrs, err := loopback.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	n := c.newNode(len(c.nodes)+1, Addrs{RESP: addrs[0], Admin: addrs[1], Gossip: addrs[2]})
	if err := n.start(c.joinsFor(n)); err != nil {
		return nil, err
	}
	c.nodes = append(c.nodes, n)
	return n, nil
}

// joinsFor is what node n joins at a restart: every other running node.
func (c *Cluster) joinsFor(n *Node) []string {
	var join []string
	for _, o := range c.nodes {
		if o != n && o.Running() {
			join = append(join, o.GossipAddr)
		}
	}
	return join
}

// Close kills every node; it is safe to call twice.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(n.Kill)
	}
	wg.Wait()
	c.transport.CloseIdleConnections()
}

// Node returns node i, numbered from 1 like its name.
func (c *Cluster) Node(i int) *Node {
	if i < 1 || i > len(c.nodes) {
		panic(fmt.Sprintf("farm: no node %d: nodes are numbered 1..%d", i, len(c.nodes)))
	}
	return c.nodes[i-1]
}

// Nodes returns every node in order (n1 first).
func (c *Cluster) Nodes() []*Node { return slices.Clone(c.nodes) }

// RESPAddrs returns every node's RESP address in order, for a load.
func (c *Cluster) RESPAddrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.RESPAddr
	}
	return addrs
}

// Dial is how the harness reaches the nodes (Config.Dial; nil:
// net.Dialer), for a load that must reach them the same way.
func (c *Cluster) Dial() DialFunc { return c.dial }

// AwaitMembers waits until every running node's GET /v1/cluster shows n
// alive members.
func (c *Cluster) AwaitMembers(n int, timeout time.Duration) error {
	return c.await(timeout, func(nd *Node) error {
		ms, err := nd.Members()
		if err != nil {
			return err
		}
		var alive []string
		for _, m := range ms {
			if m.State == "alive" {
				alive = append(alive, m.Name)
			}
		}
		if len(alive) != n {
			return fmt.Errorf("%d alive members %v, want %d", len(alive), alive, n)
		}
		return nil
	})
}

// AwaitCAPS waits until every running node's GET /v1/services/{service}
// shows licensed CAPS caps.
func (c *Cluster) AwaitCAPS(service string, caps float64, timeout time.Duration) error {
	return c.await(timeout, func(nd *Node) error {
		s, err := nd.Service(service)
		if err != nil {
			return err
		}
		if math.Abs(s.Limits.CAPS-caps) > 1e-9 {
			return fmt.Errorf("caps %g, want %g", s.Limits.CAPS, caps)
		}
		return nil
	})
}

// AwaitShares waits until the parts of service's CAPS that the running
// nodes enforce are all planned (none of them 0) and sum to caps within
// 0.1 %: the farm holds the licence as it does before traffic comes, not
// in the first exchanges after the licence arrived.
func (c *Cluster) AwaitShares(service string, caps float64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var sum float64
		var err error
		for _, n := range c.Nodes() {
			if !n.Running() {
				continue
			}
			s, serr := n.Service(service)
			if serr != nil {
				err = serr
				break
			}
			if s.Limits.CAPSShare <= 0 {
				err = fmt.Errorf("%s enforces no part of %s yet", n.Name, service)
				break
			}
			sum += s.Limits.CAPSShare
		}
		if err == nil && math.Abs(sum-caps) > caps/1000 {
			err = fmt.Errorf("the parts of %s sum to %.1f, not %g", service, sum, caps)
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// await polls cond on every running node until it holds on all of them at
// once, or returns what the first node still failing said at timeout.
func (c *Cluster) await(timeout time.Duration, cond func(*Node) error) error {
	deadline := time.Now().Add(timeout)
	for {
		var last error
		for _, n := range c.nodes {
			if !n.Running() {
				continue
			}
			if err := cond(n); err != nil {
				last = fmt.Errorf("%s: %w", n.Name, err)
				break
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", timeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// tb returns the test of a Cluster from New; method names the caller.
func (c *Cluster) tb(method string) TB {
	if c.t == nil {
		panic("farm: Cluster." + method + " fails a test: use it on a Cluster from New, or its error-returning form")
	}
	return c.t
}

// Issue issues a licence signed with the cluster's vendor key
// (`capslicense issue --key vendor.key args...`) and returns it armored.
func (c *Cluster) Issue(args ...string) []byte {
	t := c.tb("Issue")
	t.Helper()
	lic, err := c.Bin.Issue(c.VendorKey, args...)
	if err != nil {
		t.Fatal(err)
	}
	return lic
}

// LoadLicense loads lic on node i with `capsctl license add -`.
func (c *Cluster) LoadLicense(i int, lic []byte) {
	t := c.tb("LoadLicense")
	t.Helper()
	if err := c.Node(i).AddLicense(lic); err != nil {
		t.Fatal(err)
	}
}

// Ctl runs capsctl against node i's admin API with the cluster's token and
// returns its combined output and exit code.
func (c *Cluster) Ctl(i int, args ...string) (string, int) {
	t := c.tb("Ctl")
	t.Helper()
	out, code, err := c.Node(i).Ctl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out, code
}

// Members returns the members node i shows in GET /v1/cluster.
func (c *Cluster) Members(i int) []cluster.Member {
	t := c.tb("Members")
	t.Helper()
	ms, err := c.Node(i).Members()
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// Service returns what node i shows in GET /v1/services/{service}.
func (c *Cluster) Service(i int, service string) Service {
	t := c.tb("Service")
	t.Helper()
	s, err := c.Node(i).Service(service)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// WaitMembers fails the test unless every running node sees n alive
// members within timeout.
func (c *Cluster) WaitMembers(n int, timeout time.Duration) {
	t := c.tb("WaitMembers")
	t.Helper()
	if err := c.AwaitMembers(n, timeout); err != nil {
		t.Fatalf("cluster of %d alive members: %v", n, err)
	}
}

// WaitCAPS fails the test unless every running node shows licensed CAPS
// caps for service within timeout.
func (c *Cluster) WaitCAPS(service string, caps float64, timeout time.Duration) {
	t := c.tb("WaitCAPS")
	t.Helper()
	if err := c.AwaitCAPS(service, caps, timeout); err != nil {
		t.Fatalf("%s licensed at %g CAPS on every node: %v", service, caps, err)
	}
}

// Node is one capsgate process. Its addresses and data dir stay the same
// across restarts; its log collects every run's output.
type Node struct {
	Name                            string
	RESPAddr, AdminAddr, GossipAddr string // host:port on 127.0.0.1 unless Config.NodeAddrs
	DataDir                         string

	prefix []string // command line the process runs under (Config.NodeCommand)
	dial   DialFunc // how PING reaches RESPAddr; nil: net.Dialer

	bin          Binaries
	token        string // admin bearer token; "" for a --dev node
	tokenFile    string
	args         []string             // every flag but --join
	joins        func(*Node) []string // what to join at a restart; nil: nothing
	startTimeout time.Duration
	log          *LogBuffer
	http         *http.Client

	mu     sync.Mutex // guards the following fields
	run    *run       // the latest process; nil before the first start
	starts int
}

// run is one process of a node.
type run struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited
	err  error         // cmd.Wait's result; read it after done is closed
}

// StartDev starts one `capsgate --dev` process on free loopback ports with
// its data in dir and extra flags args, and waits until it answers PING.
// Its admin API needs no token.
func StartDev(bin Binaries, dir string, args ...string) (*Node, error) {
	addrs, err := loopback.FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name: "dev", RESPAddr: addrs[0], AdminAddr: addrs[1], GossipAddr: addrs[2], DataDir: dir,
		bin: bin, startTimeout: DefaultStartTimeout, log: &LogBuffer{},
		http: &http.Client{Timeout: httpTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
	}
	n.args = append([]string{"--dev", "--node-name", "dev", "--data-dir", dir,
		"--resp-addr", n.RESPAddr, "--admin-addr", n.AdminAddr, "--gossip-addr", n.GossipAddr}, args...)
	if err := n.start(nil); err != nil {
		return nil, err
	}
	return n, nil
}

// NewDev starts a `capsgate --dev` node for a test (StartDev) and kills it
// when the test ends, printing its log if the test failed.
func NewDev(t TB, args ...string) *Node {
	t.Helper()
	bin, err := BuildOnce()
	if err != nil {
		t.Fatal(err)
	}
	n, err := StartDev(bin, t.TempDir(), args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Kill()
		if t.Failed() {
			t.Logf("%s log, last %d lines:\n%s", n.Name, logTail, lastLines(n.Log(), logTail))
		}
	})
	return n
}

// start runs the process joining join and waits until it answers PING;
// a process that does not is killed.
func (n *Node) start(join []string) error {
	n.mu.Lock()
	if n.run != nil && !isDone(n.run) {
		n.mu.Unlock()
		return fmt.Errorf("cannot start %s: it is running (pid %d); Kill or Stop it first", n.Name, n.run.cmd.Process.Pid)
	}
	args := slices.Clone(n.args)
	for _, j := range join {
		args = append(args, "--join", j)
	}
	argv := append(slices.Clone(n.prefix), n.bin.Capsgate)
	cmd := exec.Command(argv[0], append(argv[1:], args...)...)
	cmd.Stdout, cmd.Stderr = n.log, n.log
	n.starts++
	fmt.Fprintf(n.log, "=== farm: start %d of %s: %scapsgate %s\n", n.starts, n.Name,
		strings.Join(append(slices.Clone(n.prefix), ""), " "), strings.Join(args, " "))
	if err := StartTied(cmd); err != nil {
		n.mu.Unlock()
		return fmt.Errorf("cannot start %s: %w", n.Name, err)
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	n.run = r
	n.mu.Unlock()
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()

	deadline := time.Now().Add(n.startTimeout)
	for n.Ping() != nil {
		select {
		case <-r.done:
			return fmt.Errorf("%s exited during start-up (%v): %s", n.Name, r.err, lastLines(n.Log(), 5))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.Kill()
			return fmt.Errorf("%s did not answer PING on %s within %s: %s", n.Name, n.RESPAddr, n.startTimeout, lastLines(n.Log(), 5))
		}
	}
	return nil
}

func isDone(r *run) bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// current returns the latest process, or nil.
func (n *Node) current() *run {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.run
}

// Running reports whether the node's process is up.
func (n *Node) Running() bool {
	r := n.current()
	return r != nil && !isDone(r)
}

// Pid returns the process id of the latest run, or 0.
func (n *Node) Pid() int {
	if r := n.current(); r != nil {
		return r.cmd.Process.Pid
	}
	return 0
}

// Kill sends SIGKILL and waits for the process to exit; it does nothing
// to a node that is not running.
func (n *Node) Kill() {
	r := n.current()
	if r == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Stop sends SIGTERM, waits for the drain and returns the exit error (nil
// for exit 0). A process still up after 20 s is killed and that is the
// error.
func (n *Node) Stop() error {
	r := n.current()
	if r == nil {
		return fmt.Errorf("cannot stop %s: it was never started", n.Name)
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return r.err
	case <-time.After(stopTimeout):
		_ = r.cmd.Process.Kill()
		<-r.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed it", n.Name, stopTimeout)
	}
}

// Restart starts a node that was killed or stopped again, with the same
// ports and data dir, joining every other running node of its cluster, and
// waits until it answers PING.
func (n *Node) Restart() error {
	var join []string
	if n.joins != nil {
		join = n.joins(n)
	}
	return n.start(join)
}

// Log returns everything the node's processes wrote, each run after a
// "=== farm: start" line.
func (n *Node) Log() string { return n.log.String() }

// Ping sends PING on a new RESP connection and wants PONG (or NOAUTH: a
// node with a password is up too).
func (n *Node) Ping() error {
	conn, err := n.Dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	v, err := conn.do(time.Second, []string{"PING"})
	if se := (*client.ServerError)(nil); errors.As(err, &se) && se.Prefix() == "NOAUTH" {
		return nil
	}
	if err != nil {
		return err
	}
	if v != "PONG" {
		return fmt.Errorf("PING answered %v", v)
	}
	return nil
}

// Ctl runs capsctl against the node's admin API with its token and returns
// the combined output and exit code; err is only for a capsctl that could
// not run.
func (n *Node) Ctl(args ...string) (out string, code int, err error) {
	return n.bin.ctl(nil, n.AdminAddr, n.tokenFile, args...)
}

// AddLicense loads lic with `capsctl license add -`.
func (n *Node) AddLicense(lic []byte) error {
	out, code, err := n.bin.ctl(lic, n.AdminAddr, n.tokenFile, "license", "add", "-")
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("capsctl license add on %s exited %d: %s", n.Name, code, strings.TrimSpace(out))
	}
	return nil
}

// PostLicense loads lic with POST /v1/licenses directly, without the time
// capsctl takes to start; 200 and 201 are success.
func (n *Node) PostLicense(lic []byte) error {
	_, err := n.request("POST", "/v1/licenses", lic, nil)
	return err
}

// Members returns the members the node shows in GET /v1/cluster.
func (n *Node) Members() ([]cluster.Member, error) {
	var v cluster.View
	if _, err := n.request("GET", "/v1/cluster", nil, &v); err != nil {
		return nil, err
	}
	return v.Members, nil
}

// ClusterView returns the node's GET /v1/cluster: its partition policy,
// its side and the members.
func (n *Node) ClusterView() (cluster.View, error) {
	var v cluster.View
	_, err := n.request("GET", "/v1/cluster", nil, &v)
	return v, err
}

// Service is the part of GET /v1/services/{service} the tests read.
type Service struct {
	Service  string   `json:"service"`
	Licensed bool     `json:"licensed"`
	State    string   `json:"state"`
	Licenses []string `json:"licenses"`
	Limits   Limits   `json:"limits"`
}

// Limits are a service's effective limits and this node's share; -1 means
// unlimited.
type Limits struct {
	CAPS      float64 `json:"caps"`
	CAPSShare float64 `json:"caps_share"`
	Burst     int64   `json:"burst"`
	Sessions  int64   `json:"sessions"`
	Tokens    int64   `json:"tokens"`
}

// Service returns GET /v1/services/{service}; a service no licence covers
// is an error (404).
func (n *Node) Service(service string) (Service, error) {
	var s Service
	_, err := n.request("GET", "/v1/services/"+service, nil, &s)
	return s, err
}

// StatusError is an admin API answer other than 200 or 201.
type StatusError struct {
	Request string // "GET http://..."
	Code    int
	Body    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.Request, e.Code, e.Body)
}

// request sends one admin API request with the node's token and decodes a
// 200 or 201 JSON answer into v (when not nil).
func (n *Node) request(method, path string, body []byte, v any) (int, error) {
	url := "http://" + n.AdminAddr + path
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	if n.token != "" {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return resp.StatusCode, &StatusError{Request: method + " " + url, Code: resp.StatusCode, Body: strings.Join(strings.Fields(string(b)), " ")}
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: cannot decode the answer: %w", method, url, err)
		}
	}
	return resp.StatusCode, nil
}

// FreeAddr returns a loopback host:port whose TCP and UDP ports are free
// (any capsgate listener, gossip included, can take it), failing t if
// there is none.
func FreeAddr(t TB) string {
	t.Helper()
	addrs, err := loopback.FreeAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	return addrs[0]
}

// LogBuffer collects a process's output; exec writes it from other goroutines.
type LogBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
