package bench

import (
	"context"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// pace calls send(j, at) for j = 0..total-1 at at = start + j×interval
// (in ns), never before; it returns how late it was at worst and the first
// error of send or ctx.
//
// It sleeps with nanosleep on a thread of its own with a timer slack of
// 1 µs (the default 50 µs would be a fifth of the p99 target). When it is
// late — the machine gave its core to something else — it sends what is
// due at once; the latencies count from the intended times anyway.
func pace(ctx context.Context, start time.Time, interval float64, total int64, send func(j int64, at time.Time) error) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0) // ns; only this thread
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)  // back to the default
	var lag time.Duration
	for j := range total {
		at := start.Add(time.Duration(float64(j) * interval))
		if wait := time.Until(at); wait > 0 {
			ts := unix.NsecToTimespec(int64(wait))
			for unix.Nanosleep(&ts, &ts) == unix.EINTR {
			}
		} else {
			lag = max(lag, -wait)
		}
		if j%1024 == 0 && ctx.Err() != nil {
			return lag, ctx.Err()
		}
		if err := send(j, at); err != nil {
			return lag, err
		}
	}
	return lag, nil
}
