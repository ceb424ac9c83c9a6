//go:build linux

package farm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Net is a private network for a farm, made of Linux network namespaces so
// that a test can cut one node's gossip and keep its clients: a hub
// namespace holds two bridges, the gossip net (10.201.0.0/24) and the
// client net (10.202.0.0/24, where the hub is 10.202.0.254), and node i
// (from 1) runs in a namespace of its own with one veth on each bridge, at
// 10.201.0.i and 10.202.0.i. Nothing is added to the namespace the test
// runs in: the harness reaches the nodes' RESP and admin ports by dialling
// from the hub (Dial). It needs root and iproute2's ip. capsctl runs in
// the test's namespace and cannot reach the nodes: use the Node methods
// that call the admin API directly (PostLicense, Members, ...), not
// Cluster.LoadLicense or Ctl.
//
//	nw, err := farm.NewNet(3)  // t.Cleanup(func() { nw.Close() })
//	c := farm.New(t, 3, nw.Options()...)
//	nw.Cut(3)                           // n3 loses the gossip net
//	nw.Heal(3)
type Net struct {
	// Hub and Nodes are the namespaces' names (Nodes[0] is n1's).
	Hub   string
	Nodes []string

	ip    string
	hubNS *os.File // the hub namespace, for Dial
}

// netPrefix starts every namespace name NewNet makes: the prefix, the
// pid, a number, then "h" or "n" and the node: cgpt1234-1n2.
const netPrefix = "cgpt"

// Ports every node listens on, each in its own namespace.
const (
	netRESPPort   = 6379
	netAdminPort  = 8080
	netGossipPort = 7946
)

var netSeq atomic.Int64

// NetPrereq says why NewNet cannot work here (not root, no ip command),
// or returns nil.
func NetPrereq() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("network namespaces need root (euid %d)", os.Geteuid())
	}
	_, err := ipCommand()
	return err
}

// ipCommand finds iproute2's ip, also in the sbin directories a non-login
// PATH may lack.
func ipCommand() (string, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("cannot find iproute2's ip command (install iproute2)")
}

// NewNet makes the namespaces, bridges and veths for n nodes (1..253). On an
// error it removes what it made. Close removes everything; namespaces that
// an earlier process of this harness left behind (it was killed) are
// removed first.
func NewNet(n int) (*Net, error) {
	if n < 1 || n > 253 {
		return nil, fmt.Errorf("cannot make a network for %d nodes: want 1..253", n)
	}
	if err := NetPrereq(); err != nil {
		return nil, err
	}
	ip, _ := ipCommand()
	removeStaleNets(ip)
	base := fmt.Sprintf("%s%d-%d", netPrefix, os.Getpid(), netSeq.Add(1))
	nw := &Net{Hub: base + "h", ip: ip}
	for i := 1; i <= n; i++ {
		nw.Nodes = append(nw.Nodes, fmt.Sprintf("%sn%d", base, i))
	}
	if err := nw.make(); err != nil {
		nw.Close()
		return nil, err
	}
	return nw, nil
}

func (nw *Net) make() error {
	hub := nw.Hub
	cmds := [][]string{
		{"netns", "add", hub},
		{"-n", hub, "link", "set", "lo", "up"},
		{"-n", hub, "link", "add", "gbr", "type", "bridge"},
		{"-n", hub, "link", "add", "cbr", "type", "bridge"},
		{"-n", hub, "addr", "add", "10.202.0.254/24", "dev", "cbr"},
		{"-n", hub, "link", "set", "gbr", "up"},
		{"-n", hub, "link", "set", "cbr", "up"},
	}
	for i, ns := range nw.Nodes {
		i++
		g, c := "g"+strconv.Itoa(i), "c"+strconv.Itoa(i)
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			// Both ends are made in the hub; one goes to the node at once.
			[]string{"-n", hub, "link", "add", g, "type", "veth", "peer", "name", "gossip", "netns", ns},
			[]string{"-n", hub, "link", "add", c, "type", "veth", "peer", "name", "client", "netns", ns},
			[]string{"-n", hub, "link", "set", g, "master", "gbr", "up"},
			[]string{"-n", hub, "link", "set", c, "master", "cbr", "up"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("10.201.0.%d/24", i), "dev", "gossip"},
			[]string{"-n", ns, "addr", "add", fmt.Sprintf("10.202.0.%d/24", i), "dev", "client"},
			[]string{"-n", ns, "link", "set", "gossip", "up"},
			[]string{"-n", ns, "link", "set", "client", "up"},
		)
	}
	for _, args := range cmds {
		if err := nw.run(args...); err != nil {
			return err
		}
	}
	f, err := os.Open(filepath.Join("/run/netns", hub))
	if err != nil {
		return fmt.Errorf("cannot open the hub namespace: %w", err)
	}
	nw.hubNS = f
	return nil
}

func (nw *Net) run(args ...string) error {
	out, err := exec.Command(nw.ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close deletes the namespaces (and with them the veths and bridges). The
// nodes must be stopped first: a process keeps its namespace alive.
func (nw *Net) Close() error {
	if nw.hubNS != nil {
		nw.hubNS.Close()
		nw.hubNS = nil
	}
	var errs []error
	for _, ns := range append([]string{nw.Hub}, nw.Nodes...) {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
			continue
		}
		errs = append(errs, nw.run("netns", "del", ns))
	}
	return errors.Join(errs...)
}

// removeStaleNets deletes the namespaces NewNet made in processes that
// have exited.
func removeStaleNets(ip string) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if p, err := os.FindProcess(pid); err == nil && errors.Is(p.Signal(syscall.Signal(0)), os.ErrProcessDone) {
			_ = exec.Command(ip, "netns", "del", e.Name()).Run()
		}
	}
}

// GossipIP and ClientIP are node i's (from 1) addresses.
func (nw *Net) GossipIP(i int) string { return fmt.Sprintf("10.201.0.%d", i) }
func (nw *Net) ClientIP(i int) string { return fmt.Sprintf("10.202.0.%d", i) }

// Addrs are node i's listening addresses: RESP and admin on its client IP,
// gossip on its gossip IP.
func (nw *Net) Addrs(i int) Addrs {
	return Addrs{
		RESP:   net.JoinHostPort(nw.ClientIP(i), strconv.Itoa(netRESPPort)),
		Admin:  net.JoinHostPort(nw.ClientIP(i), strconv.Itoa(netAdminPort)),
		Gossip: net.JoinHostPort(nw.GossipIP(i), strconv.Itoa(netGossipPort)),
	}
}

// Options run each node in its namespace at its addresses, reached from
// the hub: pass them to New.
func (nw *Net) Options() []Option {
	opts := []Option{WithDial(nw.Dial)}
	for i, ns := range nw.Nodes {
		opts = append(opts, WithNodeCommand(i+1, nw.ip, "netns", "exec", ns), WithNodeAddrs(i+1, nw.Addrs(i+1)))
	}
	return opts
}

// Cut takes node i's gossip veth down on the hub side: it neither reaches
// nor is reached by the others' gossip; its clients still reach it.
func (nw *Net) Cut(i int) error {
	return nw.run("-n", nw.Hub, "link", "set", "g"+strconv.Itoa(i), "down")
}

// Heal brings node i's gossip veth up again.
func (nw *Net) Heal(i int) error {
	return nw.run("-n", nw.Hub, "link", "set", "g"+strconv.Itoa(i), "up")
}

// Dial connects from the hub namespace (implements DialFunc). A socket
// keeps the namespace it was made in, so the connection is made on an OS
// thread of its own that enters the hub first; that thread stays locked
// and is discarded when its goroutine ends, so no other goroutine ever
// runs in the hub.
func (nw *Net) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if nw.hubNS == nil {
		return nil, errors.New("cannot dial from the hub namespace: the network is closed")
	}
	fd := nw.hubNS.Fd()
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Setns(int(fd), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("cannot enter the hub namespace %s: %w", nw.Hub, err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		done <- result{conn, err}
	}()
	r := <-done // DialContext gives up when ctx ends
	return r.conn, r.err
}
