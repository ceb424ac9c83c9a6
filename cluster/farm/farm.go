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
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

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
