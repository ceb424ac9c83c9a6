package bench

import (
	"context"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// schedule is an open loop's timetable: request j is due interval×j ns
// after the start, for j < total.
type schedule struct {
	interval float64 // ns
	total    int64
}

// at returns when request j is due, after the start.
func (s *schedule) at(j int64) time.Duration { return time.Duration(float64(j) * s.interval) }

// pace runs s from start: at every wake it calls send(from, to) with the
// requests due by then, [from, to) — never one before its time — and then
// sleeps until the next is due. It returns how late it woke at worst (for
// the oldest request due) and the first error of send or ctx.
//
// It cannot wake once per request: at 50,000/s they are 20 µs apart and
// a sleep here costs 50–60 µs, so each wake sends the few that fell due
// meanwhile (their latencies count from their intended times anyway).
// It sleeps with nanosleep on a thread of its own with a timer slack of
// 1 µs (the default 50 µs would be a fifth of the p99 target); a Go timer
// would not do, since a runtime with nothing to run sleeps in epoll with
// millisecond resolution.
func pace(ctx context.Context, start time.Time, s *schedule, send func(from, to int64) error) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0) // ns; only this thread
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)  // back to the default
	done := ctx.Done()
	var lag time.Duration
	for next := int64(0); next < s.total; {
		now := time.Since(start)
		if wait := s.at(next) - now; wait > 0 {
			ts := unix.NsecToTimespec(int64(wait))
			for unix.Nanosleep(&ts, &ts) == unix.EINTR {
			}
			continue
		}
		lag = max(lag, now-s.at(next))
		to := next + 1
		for to < s.total && s.at(to) <= now {
			to++
		}
		if done != nil {
			select {
			case <-done:
				return lag, ctx.Err()
			default:
			}
		}
		if err := send(next, to); err != nil {
			return lag, err
		}
		next = to
	}
	return lag, nil
}
