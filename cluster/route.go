package cluster

import (
	"context"
	"sort"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/zeebo/xxh3"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/admission/resp"
)

// Routing (resp.Router): a CONSUME with ID is decided by the member that
// owns the ID, the live member with the highest rendezvous score for the
// ID (service, account and ID hashed, mixed with each member's name). Every
// node that sees the same members picks the same owner, so a repeat
// through any node, however soon after the first charge, gets the first
// decision, uncharged: without an owner a repeat through a second node
// within the notice's flight (a few ms) was charged there too.
//
// The owner charges from its own part of the pool, remembers the ID in its
// key store and acknowledges once the ID is on disk; it passes the ID on
// to every member as before (Consumed), so a repeat is answered by the
// node it reaches once the notice has come, and the IDs stay known when
// the owner changes. Owners change only with the membership: while two
// nodes see different members, each may pick another owner for an ID, and
// a repeat sent within the notice's flight may be charged twice
// (capsgate_consume_id_conflicts_total counts it where it lands).
//
// An owner that does not answer within RouteTimeout makes the CONSUME
// answer OVERLOAD (it may have been charged there: the client retries
// with its ID) and gets no routed CONSUME for spillBackoff; meanwhile this
// node decides the IDs it owns.
const (
	// RouteTimeout bounds the wait for the owner's answer, which waits for
	// the owner's key store to commit (at once when asked: an fsync).
	RouteTimeout = 250 * time.Millisecond
	// MaxRouting bounds the CONSUMEs in flight to owners at once; beyond
	// it a CONSUME is decided here.
	MaxRouting = 1024
	// routeConns bounds the connections to one owner.
	routeConns = 32
)

var (
	routeBusy   = metrics.NewCounter(`capsgate_consume_routed_skipped_total{why="busy"}`)
	routeDown   = metrics.NewCounter(`capsgate_consume_routed_skipped_total{why="owner_down"}`)
	routeFailed = metrics.NewCounter(`capsgate_consume_routed_failed_total`)
)

// owner is a live member that may own IDs.
type owner struct {
	name string
	resp string // its RESP address; "" for this node
	seed uint64 // xxh3 of its name
}

// ownerSet is the live members, sorted by name, this node among them;
// replaced whole when the membership changes, read without a lock.
type ownerSet []owner

// refreshOwners rebuilds the live members from c.peers. Called with c.mu
// held.
func (c *Cluster) refreshOwners() {
	set := ownerSet{{name: c.cfg.NodeName, seed: xxh3.HashString(c.cfg.NodeName)}}
	for name, p := range c.peers {
		if name != c.cfg.NodeName && p.alive && p.resp != "" {
			set = append(set, owner{name: name, resp: p.resp, seed: xxh3.HashString(name)})
		}
	}
	sort.Slice(set, func(i, j int) bool { return set[i].name < set[j].name })
	c.owners.Store(&set)
}

// mix64 is splitmix64's finaliser.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// idHash hashes a CONSUME ID with its service and account, the same on
// every node.
func idHash(service, acct, id []byte) uint64 {
	h := mix64(xxh3.Hash(service) ^ mix64(xxh3.Hash(acct)+0x9e3779b97f4a7c15))
	return mix64(h ^ xxh3.Hash(id))
}

// ownerOf returns the owner of an ID of hash h among set.
func (set ownerSet) ownerOf(h uint64) *owner {
	var best *owner
	var top uint64
	for i := range set {
		if s := mix64(h ^ set[i].seed); best == nil || s > top {
			best, top = &set[i], s
		}
	}
	return best
}

// remoteOwner returns the RESP address of the ID's owner when it is
// another member that may be asked now, else "".
func (c *Cluster) remoteOwner(service, acct, id []byte) string {
	set := c.owners.Load()
	if set == nil || len(*set) < 2 {
		return ""
	}
	o := set.ownerOf(idHash(service, acct, id))
	if o.resp == "" {
		return ""
	}
	if c.spill.anyDown.Load() && !c.spill.usable(o.resp, time.Now()) {
		routeDown.Inc()
		return ""
	}
	return o.resp
}

// Routes implements resp.Router.
func (c *Cluster) Routes(service, acct, id []byte) bool {
	return c.remoteOwner(service, acct, id) != ""
}

// Route implements resp.Router.
func (c *Cluster) Route(args [][]byte, done func(admission.Decision, bool)) bool {
	if len(args) != 6 {
		return false
	}
	addr := c.remoteOwner(args[1], args[2], args[5])
	if addr == "" {
		return false
	}
	if c.routing.Add(1) > MaxRouting {
		c.routing.Add(-1)
		routeBusy.Inc()
		return false
	}
	cmd := make([][]byte, 0, len(args)+2)
	for _, a := range args {
		cmd = append(cmd, append([]byte(nil), a...))
	}
	cmd = append(cmd, []byte(resp.RouteMarker), []byte(c.cfg.NodeName))
	go func() {
		defer c.routing.Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), RouteTimeout)
		defer cancel()
		d, err := c.ask(ctx, &c.routers, addr, RouteTimeout, routeConns, cmd)
		if err != nil {
			routeFailed.Inc()
			c.spill.failed(addr, time.Now())
			c.log.Debug("the owner of a CONSUME ID did not answer", "addr", addr, "err", err)
			done(admission.Decision{}, false)
			return
		}
		done(d, true)
	}()
	return true
}

// ask sends cmd to the member at addr over the pooled client in pool and
// returns its decision.
func (c *Cluster) ask(ctx context.Context, pool *memberClients, addr string, timeout time.Duration, conns int, cmd [][]byte) (admission.Decision, error) {
	cl, err := pool.get(ctx, addr, client.Config{Addr: addr, PoolSize: conns, Timeout: timeout, Password: c.cfg.RESPPassword})
	if err != nil {
		return admission.Decision{}, err
	}
	r, err := cl.Do(ctx, cmd...)
	if err != nil {
		return admission.Decision{}, err
	}
	d, err := r.Decision()
	if err != nil {
		return admission.Decision{}, err
	}
	reason, ok := admission.ParseReason(d.Reason)
	if !ok {
		reason = admission.OVERLOAD
	}
	return admission.Decision{Reason: reason, RetryAfterMS: d.RetryAfterMs, Remaining: d.Remaining}, nil
}
