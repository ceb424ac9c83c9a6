package farm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// modulePath is the module whose commands Build builds.
const modulePath = "github.com/capsgate/capsgate"

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
