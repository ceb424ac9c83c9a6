package bench

import (
	"os"
	"runtime"
	"sync"
)

// procs tracks the runs that have raised GOMAXPROCS, so that overlapping
// runs restore it only when the last one ends.
var procs struct {
	sync.Mutex
	users int
	saved int // GOMAXPROCS before the first of them
}

// raiseProcs raises GOMAXPROCS to want(base), where base is its value
// before any run raised it, unless it is that high already or the
// environment sets GOMAXPROCS (the operator's choice wins). The returned
// restore puts it back when no other run needs it raised; call it once.
func raiseProcs(want func(base int) int) (restore func()) {
	if os.Getenv("GOMAXPROCS") != "" {
		return func() {}
	}
	procs.Lock()
	defer procs.Unlock()
	if procs.users == 0 {
		procs.saved = runtime.GOMAXPROCS(0)
	}
	procs.users++
	if n := want(procs.saved); runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
	}
	return sync.OnceFunc(func() {
		procs.Lock()
		defer procs.Unlock()
		if procs.users--; procs.users == 0 {
			runtime.GOMAXPROCS(procs.saved)
		}
	})
}

// openLoopProcs raises GOMAXPROCS by two for an open loop. The pacer's
// thread (in nanosleep) and netpoll's poller (in epoll_wait) each keep a
// P while blocked in their system calls; with only one P per CPU, a
// receiver the poller has woken can wait until the runtime's monitor
// takes a P back from one of them — measured on a 2-CPU machine: replies
// 20 ms late in every run, on connections whose round trip is 100 µs.
// Two more Ps leave the receivers room.
func openLoopProcs() (restore func()) {
	return raiseProcs(func(base int) int { return base + 2 })
}
