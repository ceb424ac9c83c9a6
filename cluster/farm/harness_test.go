package farm_test

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// One real node: a licence through capslicense and capsctl, kill -9 and a
// restart on the same ports and data dir, SIGTERM exits 0.
func TestOneNodeLifecycle(t *testing.T) {
	c := farm.New(t, 1)
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "500", "--id", "life-1"))
	c.WaitCAPS("voice", 500, time.Second)
	out, code := c.Ctl(1, "--json", "status", "voice")
	require.Zero(t, code, out)
	require.Contains(t, out, `"caps": 500`)

	pid := n.Pid()
	n.Kill()
	require.False(t, n.Running())
	require.Error(t, n.Ping())
	require.NoError(t, n.Restart())
	require.NotEqual(t, pid, n.Pid())
	require.Equal(t, 500.0, c.Service(1, "voice").Limits.CAPS, "the licence is back from the data dir")
	require.Error(t, n.Restart(), "a running node is not started twice")

	require.NoError(t, n.Stop())
	require.Contains(t, n.Log(), "=== farm: start 2 of n1")
}

// A tied process outlives the goroutine, and the thread, that asked for
// it: only this process's death kills it. Started with Pdeathsig from a
// goroutine locked to its thread, it would die when that goroutine ends
// (unless the thread is the main one, which the runtime keeps: hence
// three, from three such goroutines).
func TestStartTiedOutlivesTheCallersThread(t *testing.T) {
	for i := range 3 {
		cmd := exec.Command("sleep", "30")
		started := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
			started <- farm.StartTied(cmd)
		}()
		require.NoError(t, <-started)
		var waitErr error
		exited := make(chan struct{})
		go func() { waitErr = cmd.Wait(); close(exited) }()
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
		select {
		case <-exited:
			t.Fatalf("tied process %d ended with the caller's thread: %v", i, waitErr)
		case <-time.After(300 * time.Millisecond):
		}
		require.NoError(t, cmd.Process.Signal(syscall.Signal(0)), "still running")
		require.Equal(t, syscall.SIGKILL, cmd.SysProcAttr.Pdeathsig, "dies with this process")
	}
}
