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
// offset, so that wallOf and engineOf are each other's inverse whenever
// they are called; the offset follows a wall clock stepped by more than
// wallStep, not less.
func TestWallOffset(t *testing.T) {
	clk := admission.NewFakeClock()
	wall := time.Unix(1_800_000_000, 0)
	c := &Cluster{cfg: Config{Clock: clk, Now: func() time.Time { return wall }}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	off, ok := c.readWallOff()
	require.True(t, ok)
	c.wallOff.Store(off)
	at := clk.Now()
	require.Equal(t, wall.UnixNano(), c.wallOf(at))

	clk.Advance(time.Second)
	wall = wall.Add(time.Second + 50*time.Millisecond) // drift within wallStep
	c.noteWall()
	require.Equal(t, off, c.wallOff.Load(), "kept")
	require.Equal(t, at, c.engineOf(c.wallOf(at)))
	require.Equal(t, wall.UnixNano()-int64(time.Second+50*time.Millisecond), c.wallOf(at))

	wall = wall.Add(-2 * time.Second) // stepped back
	c.noteWall()
	require.Equal(t, off-int64(2*time.Second)+int64(50*time.Millisecond), c.wallOff.Load(), "followed")
	require.Equal(t, at, c.engineOf(c.wallOf(at)))
	require.Equal(t, wall.UnixNano(), c.wallOf(clk.Now()))
}
