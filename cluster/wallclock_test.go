package cluster

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// TestWallOffset: instants cross the farm as wall-clock time through one
// offset, which follows a wall clock stepped by more than wallStep, not
// one that drifts less, nor a reading held up between the clocks.
func TestWallOffset(t *testing.T) {
	clk := admission.NewFakeClock()
	wall := time.Unix(1_800_000_000, 0)
	c := &Cluster{cfg: Config{Clock: clk, Now: func() time.Time { return wall }}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	off, ok := c.readWallOff()
	require.True(t, ok)
	c.wallOff.Store(off)
	at := clk.Now()
	require.Equal(t, wall.UnixNano(), c.wallOf(at))
	require.Equal(t, at, c.engineOf(wall.UnixNano()))

	clk.Advance(time.Second)
	wall = wall.Add(time.Second + 50*time.Millisecond) // drift within wallStep
	c.noteWall()
	require.Equal(t, off, c.wallOff.Load(), "kept")
	require.Equal(t, wall.UnixNano()-int64(time.Second+50*time.Millisecond), c.wallOf(at))

	wall = wall.Add(-2 * time.Second) // stepped back
	c.noteWall()
	require.Equal(t, off-int64(2*time.Second)+int64(50*time.Millisecond), c.wallOff.Load(), "followed")
	require.Equal(t, wall.UnixNano(), c.wallOf(clk.Now()))
	require.Equal(t, clk.Now(), c.engineOf(wall.UnixNano()))

	// A reading held up between the two clocks (2 ms a read of the
	// engine's) is not taken, however far it says the wall clock moved.
	slow := &slowClock{FakeClock: clk}
	c.cfg.Clock = slow
	wall = wall.Add(time.Hour)
	before := c.wallOff.Load()
	_, ok = c.readWallOff()
	require.False(t, ok)
	c.noteWall()
	require.Equal(t, before, c.wallOff.Load())
}

// slowClock moves 2 ms at each reading.
type slowClock struct{ *admission.FakeClock }

func (c *slowClock) Now() int64 {
	c.Advance(2 * time.Millisecond)
	return c.FakeClock.Now()
}
