package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
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
)

var (
	routeBusy   = metrics.NewCounter(`capsgate_consume_routed_skipped_total{why="busy"}`)
	routeDown   = metrics.NewCounter(`capsgate_consume_routed_skipped_total{why="owner_down"}`)
	routeFailed = metrics.NewCounter(`capsgate_consume_routed_failed_total`)
	// routeSeconds is how long an owner took to answer a pipeline of
	// routed CONSUMEs (its commit included), routeBatches how many went
	// in one.
	routeSeconds = metrics.NewPrometheusHistogramExt(`capsgate_consume_routed_duration_seconds`, []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25})
	routeBatches = metrics.NewPrometheusHistogramExt(`capsgate_consume_routed_batch_size`, []float64{1, 2, 4, 8, 16, 32, 64, 128, 256})
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
	addr, down := c.ownerAddr(idHash(service, acct, id))
	if down {
		routeDown.Inc()
	}
	return addr
}

// ownerAddr returns the RESP address of the owner of a key of hash h when
// it is another member that may be asked now, else "" (down: it is
// another member, but its RESP port failed lately).
func (c *Cluster) ownerAddr(h uint64) (addr string, down bool) {
	set := c.owners.Load()
	if set == nil || len(*set) < 2 {
		return "", false
	}
	o := set.ownerOf(h)
	if o.resp == "" {
		return "", false
	}
	if c.spill.anyDown.Load() && !c.spill.usable(o.resp, time.Now()) {
		return "", true
	}
	return o.resp, false
}

// Routes implements resp.Router.
func (c *Cluster) Routes(service, acct, id []byte) bool {
	return c.remoteOwner(service, acct, id) != ""
}

// Route implements resp.Router. The CONSUME joins its owner's queue; up to
// routeSenders goroutines per owner send what is queued as pipelines of
// at most routeBatch, so the owner commits a batch's IDs at once.
func (c *Cluster) Route(args [][]byte, done func(admission.Decision, bool)) bool {
	if len(args) != 6 {
		return false
	}
	addr := c.remoteOwner(args[1], args[2], args[5])
	if addr == "" {
		return false
	}
	return c.sendToOwner(addr, routedCommand(args, c.cfg.NodeName), &consumeAnswer{done: done})
}

// routedCommand copies args and appends the route marker with this
// node's name: what the owner decides and never sends on.
func routedCommand(args [][]byte, node string) [][]byte {
	cmd := make([][]byte, 0, len(args)+2)
	for _, a := range args {
		cmd = append(cmd, append([]byte(nil), a...))
	}
	return append(cmd, []byte(resp.RouteMarker), []byte(node))
}

// sendToOwner queues cmd for the owner at addr, which take reads the
// answer of; false: MaxRouting commands are in flight, nothing is sent.
func (c *Cluster) sendToOwner(addr string, cmd [][]byte, take routeTaker) bool {
	if c.routing.Add(1) > MaxRouting {
		c.routing.Add(-1)
		routeBusy.Inc()
		return false
	}
	c.routeQ.mu.Lock()
	if c.routeQ.q == nil {
		c.routeQ.q = map[string]*routeQueue{}
	}
	q := c.routeQ.q[addr]
	if q == nil {
		q = &routeQueue{}
		c.routeQ.q[addr] = q
	}
	q.pending = append(q.pending, routeReq{cmd, take})
	start := q.senders < routeSenders
	if start {
		q.senders++
	}
	c.routeQ.mu.Unlock()
	if start {
		go c.sendRoutes(addr, q)
	}
	return true
}

const (
	// routeSenders bounds the pipelines in flight to one owner, and
	// routeBatch the CONSUMEs in one.
	routeSenders = 2
	routeBatch   = 256
)

// routeQueues are the CONSUMEs waiting to go to each owner.
type routeQueues struct {
	mu sync.Mutex // guards q and every queue's fields
	q  map[string]*routeQueue
}

type routeQueue struct {
	pending []routeReq
	senders int // goroutines sending this queue
}

type routeReq struct {
	cmd  [][]byte
	take routeTaker
}

// routeTaker takes the owner's answer to a routed command: read reads its
// reply (an error fails the pipeline), answer passes on what read took,
// or (ok false) that no answer came.
type routeTaker interface {
	read(r *client.Reply) error
	answer(ok bool)
}

// consumeAnswer takes the owner's decision on a routed CONSUME.
type consumeAnswer struct {
	d    admission.Decision
	done func(admission.Decision, bool)
}

func (a *consumeAnswer) read(r *client.Reply) (err error) {
	a.d, err = decisionOf(r)
	return err
}

func (a *consumeAnswer) answer(ok bool) {
	if !ok {
		a.d = admission.Decision{}
	}
	a.done(a.d, ok)
}

// sendRoutes sends q's CONSUMEs to the owner at addr, a batch at a time,
// until q is empty.
func (c *Cluster) sendRoutes(addr string, q *routeQueue) {
	var batch []routeReq
	for {
		c.routeQ.mu.Lock()
		if len(q.pending) == 0 {
			q.senders--
			if q.senders == 0 && c.routeQ.q[addr] == q {
				delete(c.routeQ.q, addr) // a member gone keeps no queue
			}
			c.routeQ.mu.Unlock()
			return
		}
		n := min(len(q.pending), routeBatch)
		batch = append(batch[:0], q.pending[:n]...)
		rest := copy(q.pending, q.pending[n:])
		clear(q.pending[rest:])
		q.pending = q.pending[:rest]
		c.routeQ.mu.Unlock()
		c.sendRouted(addr, batch)
		clear(batch)
	}
}

// sendRouted sends batch to the owner at addr as one pipeline and passes
// each its answer; on an error every one gets none, and the owner gets no
// routed CONSUME for spillBackoff.
func (c *Cluster) sendRouted(addr string, batch []routeReq) {
	defer c.routing.Add(-int64(len(batch)))
	ctx, cancel := context.WithTimeout(context.Background(), RouteTimeout)
	defer cancel()
	start := time.Now()
	routeBatches.Update(float64(len(batch)))
	cl, err := c.routers.get(ctx, addr, c.memberClient(addr, routeSenders, RouteTimeout))
	if err == nil {
		err = cl.Pipeline(ctx, func(p *client.Pipeline) {
			for _, r := range batch {
				p.Append(r.cmd...)
			}
		}, func(replies []client.Reply) error {
			if len(replies) != len(batch) {
				return fmt.Errorf("%d replies to %d commands", len(replies), len(batch))
			}
			for i := range replies {
				if err := batch[i].take.read(&replies[i]); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		routeFailed.Add(len(batch))
		c.spill.failed(addr, time.Now())
		c.log.Debug("the owner of CONSUME IDs or CL.THROTTLE keys did not answer", "addr", addr, "commands", len(batch), "err", err)
		for _, r := range batch {
			r.take.answer(false)
		}
		return
	}
	routeSeconds.UpdateDuration(start)
	for _, r := range batch {
		r.take.answer(true)
	}
}

// decisionOf converts a member's decision reply.
func decisionOf(r *client.Reply) (admission.Decision, error) {
	d, err := r.Decision()
	if err != nil {
		return admission.Decision{}, err
	}
	reason, ok := admission.ParseReason(d.Reason)
	if !ok {
		return admission.Decision{}, fmt.Errorf("a member answered the unknown reason %q", d.Reason)
	}
	return admission.Decision{Reason: reason, RetryAfterMS: d.RetryAfterMs, Remaining: d.Remaining}, nil
}

// ask sends cmd to the member at addr over the pooled client in pool and
// returns its decision.
func (c *Cluster) ask(ctx context.Context, pool *memberClients, addr string, timeout time.Duration, conns int, cmd [][]byte) (admission.Decision, error) {
	cl, err := pool.get(ctx, addr, c.memberClient(addr, conns, timeout))
	if err != nil {
		return admission.Decision{}, err
	}
	r, err := cl.Do(ctx, cmd...)
	if err != nil {
		return admission.Decision{}, err
	}
	return decisionOf(&r)
}

// memberClient is the configuration of this member's client of another's
// RESP port: authenticated as resp.MemberUser when the farm has a gossip
// key (the markers members send each other are taken from members only),
// else with resp.password_file's password.
func (c *Cluster) memberClient(addr string, conns int, timeout time.Duration) client.Config {
	cfg := client.Config{Addr: addr, PoolSize: conns, Timeout: timeout, Password: c.cfg.RESPPassword}
	if len(c.cfg.Key) > 0 {
		cfg.User, cfg.Password = resp.MemberUser, MemberSecret(c.cfg.Key)
	}
	return cfg
}

// MemberSecret is resp.MemberUser's secret in a farm whose gossip key is
// key: derived from it, so that every member, and only a member, knows it.
func MemberSecret(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("capsgate resp member"))
	return hex.EncodeToString(m.Sum(nil))
}
