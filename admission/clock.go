package admission

import (
	"sync/atomic"
	"time"
)

// Clock tells the engine what time it is: nanoseconds on a monotonic scale
// that never goes back. Instants from different clocks are not comparable.
type Clock interface {
	Now() int64
}

// SystemClock is the production Clock: monotonic nanoseconds since it was
// made, immune to wall-clock steps (NTP, an operator's date command), so a
// clock set back never refills or empties a token bucket.
type SystemClock struct{ start time.Time }

// NewSystemClock returns a monotonic clock starting now.
func NewSystemClock() *SystemClock { return &SystemClock{start: time.Now()} }

// Now returns the nanoseconds elapsed since the clock was made.
func (c *SystemClock) Now() int64 { return int64(time.Since(c.start)) }

// Wall converts an instant of this clock to wall-clock time.
func (c *SystemClock) Wall(now int64) time.Time { return c.start.Add(time.Duration(now)) }

// FakeClock is a Clock for tests: it stands still until told to move.
type FakeClock struct{ now atomic.Int64 }

// NewFakeClock returns a fake clock at an arbitrary non-zero instant.
func NewFakeClock() *FakeClock {
	c := &FakeClock{}
	c.now.Store(int64(1000 * time.Hour))
	return c
}

// Now returns the current fake instant.
func (c *FakeClock) Now() int64 { return c.now.Load() }

// Advance moves the clock forward by d.
func (c *FakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// Set moves the clock to the instant t.
func (c *FakeClock) Set(t int64) { c.now.Store(t) }

// At is a Clock that stands at one instant: a reading taken at an instant
// of a test's or a simulator's own. A live engine's readings take its
// clock instead: an instant read earlier counts as owed what its event
// loops decided since (see Service.Bucket).
type At int64

// Now returns the instant.
func (t At) Now() int64 { return int64(t) }

// Repeat runs fn after initial, then again after each wait fn returns,
// until stop is closed. It drives the housekeeping goroutines around the
// engine (expiry, licence states, the cluster's exchange); the decision path
// never uses it.
func Repeat(stop <-chan struct{}, initial time.Duration, fn func() (next time.Duration)) {
	t := time.NewTimer(initial)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		select { // both may be ready: stop wins, fn never runs after it
		case <-stop:
			return
		default:
		}
		t.Reset(max(fn(), 0))
	}
}
