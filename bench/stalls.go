package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stalls is what the machine does to a running thread: a goroutine per
// CPU reads the monotonic clock in a tight loop for a while, and every
// gap between two readings longer than StallMinimum is time its thread
// was not running — taken by the kernel (interrupts, other work), another
// process, the Go runtime or, on a virtual machine, the hypervisor
// descheduling the virtual CPU. A server or load generator thread paused
// with a request in flight delays that request as long, whatever either
// of them does.
type Stalls struct {
	Seconds float64 `json:"seconds"`
	CPUs    int     `json:"cpus"`
	// StalledFraction is the share of the spinners' time lost in pauses
	// longer than StallMinimum; the counts are of pauses longer than 100
	// µs, 250 µs and 1 ms over all CPUs; MaxUs is the longest.
	StalledFraction float64 `json:"stalled_fraction"`
	Over100us       int64   `json:"over_100us"`
	Over250us       int64   `json:"over_250us"`
	Over1ms         int64   `json:"over_1ms"`
	MaxUs           float64 `json:"max_us"`
}

// StallMinimum is the shortest gap Stalls counts as a pause: a clock read
// in the loop takes tens of nanoseconds, so anything this long is the
// thread not running.
const StallMinimum = 20 * time.Microsecond

// stallTally is one spinner's count.
type stallTally struct {
	spun, stalled                 time.Duration
	over100us, over250us, over1ms int64
	longest                       time.Duration
}

// spin reads now until it reaches end, or done is closed, and counts the
// gaps between readings longer than StallMinimum.
func spin(now func() time.Duration, end time.Duration, done <-chan struct{}) stallTally {
	var t stallTally
	start := now()
	last := start
	for i := 0; last < end; i++ {
		if i%4096 == 0 && done != nil {
			select {
			case <-done:
				end = last
				continue
			default:
			}
		}
		n := now()
		gap := n - last
		last = n
		if gap <= StallMinimum {
			continue
		}
		t.stalled += gap
		t.longest = max(t.longest, gap)
		if gap > 100*time.Microsecond {
			t.over100us++
		}
		if gap > 250*time.Microsecond {
			t.over250us++
		}
		if gap > time.Millisecond {
			t.over1ms++
		}
	}
	t.spun = last - start
	return t
}

// sumStalls adds the spinners' tallies into Stalls.
func sumStalls(ts []stallTally) Stalls {
	s := Stalls{CPUs: len(ts)}
	var spun, stalled time.Duration
	for _, t := range ts {
		s.Seconds = max(s.Seconds, t.spun.Seconds())
		spun += t.spun
		stalled += t.stalled
		s.Over100us += t.over100us
		s.Over250us += t.over250us
		s.Over1ms += t.over1ms
		s.MaxUs = max(s.MaxUs, float64(t.longest.Nanoseconds())/1e3)
	}
	if spun > 0 {
		s.StalledFraction = float64(stalled) / float64(spun)
	}
	return s
}

// MeasureStalls spins a goroutine per CPU this process may run on (but
// no more than GOMAXPROCS allows to run at once) for d, keeping those
// CPUs busy, and returns the pauses they saw. GOMAXPROCS is raised to one
// more than the spinners meanwhile, so that nothing else of this process
// (a progress bar, the runtime) needs a spinner's P. The spinners are
// neither locked to threads nor pinned to CPUs: the runtime preempts a
// goroutine running for 10 ms, and a locked one needs two thread
// wake-ups to run again, which would count the runtime's own hand-off as
// the machine's pause; an unlocked one is picked up again at once by its
// thread. ctx ends it early.
func MeasureStalls(ctx context.Context, d time.Duration) Stalls {
	n := runtime.NumCPU()
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil && set.Count() > 0 {
		n = set.Count()
	}
	restore := raiseProcs(func(int) int { return n + 1 })
	defer restore()
	n = max(1, min(n, runtime.GOMAXPROCS(0)-1)) // one P left for the rest
	base := time.Now()
	now := func() time.Duration { return time.Since(base) }
	ts := make([]stallTally, n)
	var wg sync.WaitGroup
	for i := range ts {
		wg.Go(func() { ts[i] = spin(now, d, ctx.Done()) })
	}
	wg.Wait()
	return sumStalls(ts)
}

// processCPU returns the CPU time (user and system, all threads) process
// pid has used, from /proc/PID/stat; pid 0 is this process (getrusage).
func processCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return 0, err
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// userHZ is the unit of /proc/PID/stat's times: fixed at 100 per second
// in Linux's interface to user space, whatever the kernel's own HZ.
const userHZ = 100

// parseStatCPU returns utime + stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and
// may hold spaces and parentheses itself, so fields are counted from the
// last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name in %q", b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("too few fields in %q", b)
	}
	var ticks int64
	for _, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("bad CPU time %q in /proc stat", s)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// cpuMeter adds up the CPU the server (pid) and this process use over
// the spans between start and stop, in cores (CPU seconds per second).
type cpuMeter struct {
	pid                 int
	server, self, spans time.Duration // summed over the spans
	okServer, okSelf    bool          // every reading so far worked
	server0, self0      time.Duration // at the span's start
	at                  time.Time
}

func newCPUMeter(pid int) *cpuMeter { return &cpuMeter{pid: pid, okServer: pid > 0, okSelf: true} }

// readCPU returns process pid's CPU time, and whether ok still holds.
func readCPU(pid int, ok bool) (time.Duration, bool) {
	if !ok {
		return 0, false
	}
	v, err := processCPU(pid)
	return v, err == nil
}

func (m *cpuMeter) start() {
	m.at = time.Now()
	m.server0, m.okServer = readCPU(m.pid, m.okServer)
	m.self0, m.okSelf = readCPU(0, m.okSelf)
}

func (m *cpuMeter) stop() {
	m.spans += time.Since(m.at)
	var v time.Duration
	if v, m.okServer = readCPU(m.pid, m.okServer); m.okServer {
		m.server += v - m.server0
	}
	if v, m.okSelf = readCPU(0, m.okSelf); m.okSelf {
		m.self += v - m.self0
	}
}

// cores returns the server's and this process's CPU use over the spans,
// in cores; 0 where it could not be read.
func (m *cpuMeter) cores() (server, self float64) {
	if m.spans <= 0 {
		return 0, 0
	}
	if m.okServer {
		server = m.server.Seconds() / m.spans.Seconds()
	}
	if m.okSelf {
		self = m.self.Seconds() / m.spans.Seconds()
	}
	return server, self
}
