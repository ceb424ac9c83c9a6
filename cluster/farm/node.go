package farm

import (
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/admission/loopback"
)

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

// start runs the process joining join and waits until it answers PING
// and /readyz; a process that does not is killed.
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
	if err := n.awaitStart(r, deadline, 20*time.Millisecond, n.Ping); err != nil {
		return fmt.Errorf("%s did not answer PING on %s within %s (%w): %s", n.Name, n.RESPAddr, n.startTimeout, err, lastLines(n.Log(), 5))
	}
	// Ready: a node joining a farm admits nothing before the cluster's
	// first plan.
	if err := n.awaitStart(r, deadline, 5*time.Millisecond, func() error { _, err := n.GetRaw("/readyz"); return err }); err != nil {
		return fmt.Errorf("%s was not ready within %s (%w): %s", n.Name, n.startTimeout, err, lastLines(n.Log(), 5))
	}
	return nil
}

// awaitStart calls up, every every, until it returns nil, the process of run
// r exits (an error) or deadline passes (the process is killed; up's last
// error).
func (n *Node) awaitStart(r *run, deadline time.Time, every time.Duration, up func() error) error {
	for {
		err := up()
		if err == nil {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("exited during start-up: %v", r.err)
		case <-time.After(every):
		}
		if time.Now().After(deadline) {
			n.Kill()
			return err
		}
	}
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
// waits until it answers PING and /readyz.
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
