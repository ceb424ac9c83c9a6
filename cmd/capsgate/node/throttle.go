package node

import (
	"time"

	"github.com/capsgate/capsgate/admission/cell"
	"github.com/capsgate/capsgate/admission/resp"
)

// validate checks the throttle section (bad names the key at fault).
func (t ThrottleConfig) validate(bad func(key, format string, a ...any) error) error {
	switch p := t.MaxPeriod.Duration; {
	case t.MaxKeys < 1 || t.MaxKeys > 100_000_000:
		return bad("throttle.max_keys", "must be between 1 and 100000000, got %d", t.MaxKeys)
	case t.MaxBurst < 0 || t.MaxBurst > 1_000_000_000:
		return bad("throttle.max_burst", "must be between 0 and 1000000000, got %d", t.MaxBurst)
	case t.MaxCount < 1 || t.MaxCount > cell.MaxCountLimit:
		return bad("throttle.max_count", "must be between 1 and %d, got %d", cell.MaxCountLimit, t.MaxCount)
	case p < time.Second || p > 8760*time.Hour || p%time.Second != 0:
		return bad("throttle.max_period", "must be whole seconds between 1s and 8760h, got %s", t.MaxPeriod)
	}
	for i, p := range t.Allow {
		if len(p) > cell.MaxKeyLen {
			return bad("throttle.allow", "entry %d is longer than a key (%d bytes)", i+1, cell.MaxKeyLen)
		}
	}
	return nil
}

// setThrottle enables CL.THROTTLE when throttle.allow lists prefixes:
// the node's table of keys, swept by stepThrottle.
func (n *Node) setThrottle() {
	t := n.cfg.Throttle
	if len(t.Allow) == 0 {
		return
	}
	n.cells = cell.NewTable(t.MaxKeys)
	n.handler.SetThrottle(resp.Throttle{Allow: t.Allow, Table: n.cells, Bounds: cell.Bounds{
		MaxBurst: int64(t.MaxBurst), MaxCount: int64(t.MaxCount), MaxPeriod: int64(t.MaxPeriod.Duration / time.Second)}})
}

// stepThrottle removes the CL.THROTTLE keys whose buckets are full again,
// on the engine's clock.
func (n *Node) stepThrottle(time.Time) time.Duration {
	if n.cells != nil {
		n.cells.Sweep(n.clk.Now())
	}
	return tickInterval
}
