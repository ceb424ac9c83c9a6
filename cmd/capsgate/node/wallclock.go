package node

import (
	"os"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
)

// WallOffsetEnv names a file holding a duration ("36h", "-2h") added to the
// wall clock by which licences are judged: the way tests move a real
// node's clock forward and back without touching the machine's. It is read
// at most once a second. Unset: the wall clock as it is.
const WallOffsetEnv = "CAPSGATE_WALL_OFFSET_FILE"

// wallClock returns the wall clock licences are judged by.
func wallClock() func() time.Time {
	path := os.Getenv(WallOffsetEnv)
	if path == "" {
		return time.Now
	}
	var mu sync.Mutex // guards the fields below
	var offset time.Duration
	var read time.Time
	return func() time.Time {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if now.Sub(read) >= time.Second || read.IsZero() {
			read = now
			if b, err := bounded.ReadFile(path, bounded.StateFile); err == nil {
				if d, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil {
					offset = d
				}
			}
		}
		return now.Add(offset)
	}
}
