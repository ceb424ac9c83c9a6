package registry

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
)

// clockGuard keeps the high-water mark of the wall clock in data_dir, so
// that a clock set back (by mistake, or to revive an expired licence) never
// makes a licence count again. Licences are judged at the guard's effective
// time: the wall clock, or the mark when the wall clock is behind it.
//
// A clock set forward by mistake ages licences until it is fixed; the mark
// then stays ahead and the node reports the rollback alarm until the wall
// clock catches up (README: "Clock").
type clockGuard struct {
	path      string
	tolerance time.Duration
	mark      time.Time // the latest wall time seen
	saved     time.Time // the mark last written to disk
	behind    time.Duration
}

const markFile = "clock.hwm"

// openClockGuard reads the mark in dir (none yet: the wall clock now).
func openClockGuard(dir string, tolerance time.Duration, wall time.Time) (*clockGuard, error) {
	g := &clockGuard{path: filepath.Join(dir, markFile), tolerance: tolerance}
	b, err := bounded.ReadFile(g.path, bounded.StateFile)
	switch {
	case os.IsNotExist(err):
		g.mark = wall
	case err != nil:
		return nil, fmt.Errorf("cannot read the clock high-water mark: %w", err)
	default:
		t, perr := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(b)))
		if perr != nil {
			return nil, fmt.Errorf("cannot read the clock high-water mark %s: %q is not an RFC 3339 time (remove the file only after checking the clock)", g.path, strings.TrimSpace(string(b)))
		}
		g.mark, g.saved = t, t
	}
	g.observe(wall)
	return g, g.save()
}

// observe moves the mark on and returns the effective time.
func (g *clockGuard) observe(wall time.Time) time.Time {
	if wall.After(g.mark) {
		g.mark = wall
	}
	g.behind = g.mark.Sub(wall)
	return g.mark
}

// rolledBack reports whether the wall clock is behind the mark by more
// than the tolerance (the alarm), and by how much.
func (g *clockGuard) rolledBack() (bool, time.Duration) {
	return g.behind > g.tolerance, g.behind
}

// save writes the mark if it moved: a temp file, fsync, rename.
func (g *clockGuard) save() error {
	if g.mark.Equal(g.saved) {
		return nil
	}
	if err := writeFileAtomic(g.path, []byte(g.mark.UTC().Format(time.RFC3339Nano)+"\n")); err != nil {
		return fmt.Errorf("cannot save the clock high-water mark: %w", err)
	}
	g.saved = g.mark
	return nil
}

// writeFileAtomic replaces path with data so that a crash leaves the old or
// the new content, never a torn file.
func writeFileAtomic(path string, data []byte) error {
	return durable.WriteTemp(path, "."+filepath.Base(path)+".tmp*", data, 0o600)
}
