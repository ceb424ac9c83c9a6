package cluster

import (
	"fmt"

	"github.com/VictoriaMetrics/metrics"
	"github.com/zeebo/xxh3"

	"github.com/capsgate/capsgate/admission/cell"
	"github.com/capsgate/capsgate/admission/client"
)

// CL.THROTTLE farm-wide (resp.ThrottleRouter): a key is owned by the live
// member with the highest rendezvous score for it, as a CONSUME ID is
// (route.go), and every node sends the key there, so the owner's bucket is
// the farm's: the farm admits exactly what one redis-cell would. Routed
// commands share the CONSUME IDs' queues to each owner, their pipelines
// and their bound (MaxRouting in flight from this node; one per client
// connection, which waits for the answer).
//
// An owner that does not answer within RouteTimeout, whose RESP port
// failed in the last spillBackoff, or that answers with an error, leaves
// the key to the node it reached:
// each node then decides on a bucket of its own for it, so while an owner
// is unreachable the farm may admit up to one extra bucket (max_burst+1,
// then the key's rate) per member that decides it. When the membership
// changes a key may get a new owner, which starts from a full bucket: at
// most one extra bucket per change of owner.

var throttleOwnerDown = metrics.NewCounter(`capsgate_throttle_routed_skipped_total{why="owner_down"}`)

// throttleHash hashes a CL.THROTTLE key, the same on every node and apart
// from CONSUME IDs' hashes.
func throttleHash(key []byte) uint64 { return mix64(xxh3.Hash(key) ^ 0x5bd1e9955bd1e995) }

// ThrottleRoutes implements resp.ThrottleRouter.
func (c *Cluster) ThrottleRoutes(key []byte) bool {
	addr, down := c.ownerAddr(throttleHash(key))
	if down {
		throttleOwnerDown.Inc()
	}
	return addr != ""
}

// RouteThrottle implements resp.ThrottleRouter: the command goes with its
// quantity (1 when not given) and the route marker, so the owner decides
// it and never sends it on.
func (c *Cluster) RouteThrottle(args [][]byte, done func(cell.Reply, bool)) bool {
	if len(args) != 5 && len(args) != 6 {
		return false
	}
	addr, _ := c.ownerAddr(throttleHash(args[1]))
	if addr == "" {
		return false
	}
	if len(args) == 5 {
		args = append(args[:5:5], []byte("1"))
	}
	return c.sendToOwner(addr, routedCommand(args, c.cfg.NodeName), &throttleAnswer{done: done})
}

// throttleAnswer takes the owner's reply to a routed CL.THROTTLE. An
// error reply (the owner's table full, or a throttle configuration that
// differs from this node's) fails only this command: it is decided here,
// and the owner is not taken for down.
type throttleAnswer struct {
	r      cell.Reply
	refuse bool
	done   func(cell.Reply, bool)
}

func (a *throttleAnswer) read(r *client.Reply) error {
	if r.Kind == client.Err {
		a.refuse = true
		return nil
	}
	if r.Kind != client.Array || len(r.Elems) != 5 {
		return fmt.Errorf("a member answered CL.THROTTLE with a %s of %d elements, not 5 integers", r.Kind, len(r.Elems))
	}
	var v [5]int64
	for i := range v {
		if r.Elems[i].Kind != client.Integer {
			return fmt.Errorf("a member answered CL.THROTTLE with a %s among its integers", r.Elems[i].Kind)
		}
		v[i] = r.Elems[i].Int
	}
	a.r = cell.Reply{Limited: v[0] == 1, Limit: v[1], Remaining: v[2], RetryAfter: v[3], ResetAfter: v[4]}
	return nil
}

func (a *throttleAnswer) answer(ok bool) { a.done(a.r, ok && !a.refuse) }
