package cluster

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/cluster/trunks"
)

// consumeConflicts counts CONSUME IDs charged on two members at once (a
// repeat that reached a second member before the first one's notice).
var consumeConflicts = metrics.NewCounter(`capsgate_consume_id_conflicts_total`)

// Operations forwarded to the other members.
const (
	opRelease    = 'r' // RELEASE of a call this node does not hold
	opDeregister = 'u' // DEREGISTER of a subscriber this node does not hold
	opClaim      = 'c' // a subscriber newly registered here: others let it go
	opConsumed   = 'i' // a CONSUME ID charged here: others remember it
	opAllocation = 'a' // an account allocation made here: others take it
	opTrunk      = 't' // a key's limits set here: others take them
	// opConsumedKey is opConsumed with the ID as its key (16 bytes,
	// admission.AccountIDKey, big-endian halves): what a member that was
	// down is sent of the IDs charged meanwhile.
	opConsumedKey = 'k'
)

// op is one forwarded operation.
type op struct {
	Kind    byte   `json:"o"`
	Service string `json:"s"`
	Key     []byte `json:"k"` // bytes (base64 in JSON): a call-id need not be UTF-8
	Seconds int64  `json:"t,omitempty"`
	// At is when a claim was made (ns), to break a tie between two
	// members that registered the same subscriber at once.
	At int64 `json:"a,omitempty"`
	// Account and Remaining: a CONSUME ID's account, and what its
	// decision said was left.
	Account   string `json:"c,omitempty"`
	Remaining int64  `json:"m,omitempty"`
	// Trunk is a key's limits (opTrunk).
	Trunk *trunks.Setting `json:"trunk,omitempty"`
	// Allocation is an account's allocation (opAllocation).
	Allocation *admission.Allocation `json:"al,omitempty"`
	// queued counts the operation for the connection it came from until
	// it is sent (resp.Forwarder); nil for the node's own.
	queued *atomic.Int64
}

type opsMsg struct {
	Node string `json:"n"`
	Ops  []op   `json:"ops"`
}

// forwardQueue bounds the operations waiting to go out. A client
// connection may have resp.MaxForwardQueued of them waiting, and none
// when fewer than forwardSlack places are left (ForwardRoom): it waits
// instead, so they are not dropped. The node's own (account allocations)
// and a race for the last places may still find it full: those are
// dropped and counted rather than block an event loop (the session or
// registration then ends by its TTL).
const (
	forwardQueue = 65536
	forwardSlack = 1024
)

// ForwardRoom reports whether the queue has room for one more operation
// from a client connection (implements resp.Forwarder).
func (c *Cluster) ForwardRoom() bool { return len(c.forward) < forwardQueue-forwardSlack }

// forwardBatch bounds the operations in one message; forwardLinger is how
// long the first operation of a batch waits for others to join it.
const (
	forwardBatch  = 256
	forwardLinger = 2 * time.Millisecond
)

// ForwardRelease sends a RELEASE this node could not do to every member
// (implements resp.Forwarder; never blocks).
func (c *Cluster) ForwardRelease(service, call []byte, seconds int64, queued *atomic.Int64) {
	c.enqueue(op{Kind: opRelease, Service: string(service), Key: append([]byte(nil), call...), Seconds: seconds, At: time.Now().UnixNano(),
		queued: queued})
}

// ForwardDeregister sends a DEREGISTER made here at instant at of the
// engine's clock to every member: one holding the subscriber from a
// registration before it lets it go (admission.Engine.DeregisterBefore).
// It carries wall-clock nanoseconds.
func (c *Cluster) ForwardDeregister(service, sub []byte, at int64, queued *atomic.Int64) {
	c.enqueue(op{Kind: opDeregister, Service: string(service), Key: append([]byte(nil), sub...), At: c.wallOf(at), queued: queued})
}

// wallOf turns an instant of the engine's clock (this process's own) into
// wall-clock nanoseconds, as the operations members exchange carry them;
// engineOf turns one back. Both add one offset (wallOff), so that they
// are each other's inverse: a member compares its own instant with
// another's as that member compares them. Reading both clocks at each
// use would not be: the reads are apart by a few microseconds, or by
// milliseconds when the thread is preempted between them, and two members
// registering one subscriber in the same millisecond could then each find
// its own claim the later one.
func (c *Cluster) wallOf(at int64) int64 { return at + c.wallOff.Load() }

func (c *Cluster) engineOf(wall int64) int64 { return wall - c.wallOff.Load() }

// wallStep is how far the wall clock must move against the engine's
// before the offset follows it: a step (NTP correcting a clock at boot, an
// operator's date command), not the jitter of reading two clocks.
const wallStep = 100 * time.Millisecond

// readWallOff reads the wall clock's offset from the engine's, or reports
// false when the thread was held up between the reads.
func (c *Cluster) readWallOff() (int64, bool) {
	e0 := c.cfg.Clock.Now()
	w := c.cfg.Now().UnixNano()
	e1 := c.cfg.Clock.Now()
	return w - e0/2 - e1/2, e1-e0 <= int64(time.Millisecond)
}

// noteWall follows a wall clock stepped by more than wallStep since the
// offset was read (the exchange calls it ten times a second).
func (c *Cluster) noteWall() {
	if c.cfg.Clock == nil {
		return
	}
	off, ok := c.readWallOff()
	if d := off - c.wallOff.Load(); ok && (d > int64(wallStep) || d < -int64(wallStep)) {
		c.wallOff.Store(off)
		c.log.Warn("the wall clock moved against the monotonic one: claims and DEREGISTERs passed on from now on carry the new time",
			"by", time.Duration(d).Round(time.Millisecond))
	}
}

// ClaimSubscriber tells every member that a subscriber was newly
// registered here at instant at of the engine's clock (the engine
// remembers the claim, admission.Engine.TrackClaims): a member still
// holding it from an earlier registration through it lets it go, so a
// subscriber counts once in the cluster. A claim carries wall-clock
// nanoseconds.
func (c *Cluster) ClaimSubscriber(service, sub []byte, at int64, queued *atomic.Int64) {
	if !c.hadPeer.Load() {
		return // alone: nobody holds it elsewhere
	}
	c.enqueue(op{Kind: opClaim, Service: string(service), Key: append([]byte(nil), sub...), At: c.wallOf(at), queued: queued})
}

// Consumed tells every member about a CONSUME ID charged here, so that a
// repeat through any node gets the same decision and is not charged again.
func (c *Cluster) Consumed(service, account, id []byte, d admission.Decision, queued *atomic.Int64) {
	c.enqueue(op{Kind: opConsumed, Service: string(service), Account: string(account), Key: append([]byte(nil), id...),
		Remaining: d.Remaining, At: time.Now().UnixNano(), queued: queued})
}

// SpreadAllocation sends an account allocation made here to every member.
func (c *Cluster) SpreadAllocation(service, account string, a admission.Allocation) {
	c.enqueue(op{Kind: opAllocation, Service: service, Account: account, Allocation: &a, At: time.Now().UnixNano()})
}

// SpreadTrunk sends a key's limits set here to every member.
func (c *Cluster) SpreadTrunk(s trunks.Setting) {
	c.enqueue(op{Kind: opTrunk, Service: s.Service, Trunk: &s, At: time.Now().UnixNano()})
}

// applyTrunks takes keys' limits set on a member.
func (c *Cluster) applyTrunks(all []trunks.Setting) {
	if c.cfg.Trunks == nil {
		return
	}
	if _, err := c.cfg.Trunks.Merge(all); err != nil {
		c.log.Warn("cannot take keys' limits from a member", "err", err)
	}
}

// applyAllocations takes the allocations of a member's state.
func (c *Cluster) applyAllocations(all map[string]map[string]admission.Allocation) {
	if c.cfg.Accounts == nil {
		return
	}
	for service, accounts := range all {
		for account, a := range accounts {
			if err := c.cfg.Accounts.Apply(service, account, a); err != nil {
				c.log.Warn("cannot take an account allocation from a member", "service", service, "account", account, "err", err)
			}
		}
	}
}

func (c *Cluster) enqueue(o op) {
	if !c.hadPeer.Load() {
		// No other member was ever seen: nobody to tell, nobody to
		// replay to (a node that never had a peer forwards nothing; each
		// send would wake the forwarder on the event loop's core).
		return
	}
	if o.queued != nil {
		o.queued.Add(1)
	}
	select {
	case c.forward <- o:
	default:
		// Counted, not logged: logging here would put I/O on the event
		// loop exactly when a flood fills the queue.
		forwardDropped.Inc()
		if o.queued != nil {
			o.queued.Add(-1)
		}
	}
}

// forwarder sends queued operations to every live member in batches, over
// memberlist's reliable (TCP) channel: a lost RELEASE would hold a session
// until its TTL.
func (c *Cluster) forwarder() {
	defer c.wg.Done()
	batch := make([]op, 0, forwardBatch)
	for {
		select {
		case <-c.stop:
			return
		case o := <-c.forward:
			batch = append(batch[:0], o)
			linger := time.NewTimer(forwardLinger)
		fill:
			for len(batch) < forwardBatch {
				select {
				case o := <-c.forward:
					batch = append(batch, o)
				case <-linger.C:
					break fill
				}
			}
			linger.Stop()
			c.sendOps(batch)
		}
	}
}

func (c *Cluster) sendOps(batch []op) {
	var sent []*atomic.Int64
	for i := range batch {
		if q := batch[i].queued; q != nil {
			sent = append(sent, q)
			batch[i].queued = nil // the replay log keeps no connection
		}
	}
	c.replay.keep(batch)
	c.sendBatch(batch)
	for _, q := range sent {
		q.Add(-1)
	}
}

func (c *Cluster) sendBatch(batch []op) {
	msg, _ := json.Marshal(opsMsg{Node: c.cfg.NodeName, Ops: batch})
	failed := c.sendAll(append([]byte{msgOps}, msg...))
	forwardSent.Add(len(c.ml.Members()) - 1 - failed)
	forwardDropped.Add(failed * len(batch))
}

// sendAll sends msg to every other live member over the reliable channel,
// at once, and returns how many sends failed.
func (c *Cluster) sendAll(plain []byte) (failed int) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	pk := &packing{plain: plain}
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.NodeName {
			continue
		}
		wg.Go(func() {
			msg := c.packedFor(m, pk)
			if err := c.ml.SendReliable(m, msg); err != nil {
				c.log.Debug("cannot send to a member", "member", m.Name, "kind", string(plain[:1]), "err", err)
				mu.Lock()
				failed++
				mu.Unlock()
				return
			}
			sentBytes(msg)
		})
	}
	wg.Wait()
	return failed
}

// apply does what a member forwarded.
func (c *Cluster) apply(b []byte) {
	var m opsMsg
	if json.Unmarshal(b, &m) != nil || c.cfg.Clock == nil || m.Node == c.cfg.NodeName {
		return
	}
	now := c.cfg.Clock.Now()
	var again []op // claims made again (reclaim)
	for _, o := range m.Ops {
		switch o.Kind {
		case opRelease:
			c.cfg.Engine.Release(now, []byte(o.Service), o.Key, o.Seconds)
		case opDeregister:
			// Not a registration here made after it (a phone moving
			// between proxies deregisters through one, then registers
			// through the next). A member of an early release sent no
			// instant.
			if o.At == 0 {
				c.cfg.Engine.Deregister(now, []byte(o.Service), o.Key)
			} else {
				c.cfg.Engine.DeregisterBefore(now, []byte(o.Service), o.Key, c.engineOf(o.At))
			}
		case opConsumed:
			d := admission.Decision{Reason: admission.OK, Remaining: o.Remaining}
			if !c.cfg.Engine.RecordConsumed(now, []byte(o.Service), []byte(o.Account), o.Key, d) {
				consumeConflicts.Inc()
				c.log.Warn("a CONSUME ID was charged on two members before either heard of the other", "service", o.Service,
					"account", o.Account, "from", m.Node)
			}
		case opConsumedKey:
			if len(o.Key) == 16 {
				k := admission.KeyFromParts(binary.BigEndian.Uint64(o.Key[:8]), binary.BigEndian.Uint64(o.Key[8:]))
				c.cfg.Engine.RecordConsumedKey(now, []byte(o.Service), k, admission.Decision{Reason: admission.OK, Remaining: o.Remaining})
			}
		case opTrunk:
			if o.Trunk != nil {
				c.applyTrunks([]trunks.Setting{*o.Trunk})
			}
		case opAllocation:
			if o.Allocation != nil {
				c.applyAllocations(map[string]map[string]admission.Allocation{o.Service: {o.Account: *o.Allocation}})
			}
		case opClaim:
			// Of two claims the later keeps the subscriber; of two in
			// the same instant, the first member name's.
			let, at, reclaim := c.cfg.Engine.YieldSubscriber(now, []byte(o.Service), o.Key, c.engineOf(o.At), m.Node > c.cfg.NodeName)
			if let {
				claimsTaken.Inc()
			}
			if reclaim {
				// Kept for a registration (a refresh) the claimer has not
				// heard of: claim it again, at that instant.
				claimsRenewed.Inc()
				again = append(again, op{Kind: opClaim, Service: o.Service, Key: o.Key, At: c.wallOf(at)})
			}
		}
	}
	c.reclaim(again)
}

// reclaim sends every member the claims a message had made again, in one
// batch, off memberlist's handler. Not through the forward queue, which
// the event loops' RELEASEs and DEREGISTERs fill, nor into the replay log,
// kept in the order operations were sent: a claim made again carries its
// registration's instant, which may be hours old. At most reclaimSends
// batches go at once; one more is dropped and counted
// (capsgate_gossip_forward_dropped_total), its subscribers then held on
// two members until one registration ends or is claimed.
func (c *Cluster) reclaim(again []op) {
	if len(again) == 0 {
		return
	}
	select {
	case c.reclaiming <- struct{}{}:
		go func() { // not in c.wg: a message may come while Stop waits
			defer func() { <-c.reclaiming }()
			c.sendBatch(again)
		}()
	default:
		forwardDropped.Add(len(again))
	}
}

// reclaimSends bounds the batches of claims made again sent at once.
const reclaimSends = 4

// replayLog keeps the operations sent lately, so that a member that was
// down when they went out gets them when it comes back: it restores its
// sessions and registrations from disk, and without them would hold calls
// released and subscribers re-registered elsewhere meanwhile, and charge
// again a repeat of a CONSUME ID charged elsewhere.
type replayLog struct {
	mu  sync.Mutex // guards the fields below
	ops ring[op]   // in the order sent; At ascending
	// ids are the CONSUME IDs charged here, kept apart (they come at up to
	// 1 M/s and would crowd out the rest) and compactly: 48 bytes each.
	ids      ring[idRecord]
	services map[string]string // service names, interned for ids
	// asked is the last replay each member asked for (replayAsked).
	asked map[string]replayAnswer
	// pending are the requests of names not (yet) members, by name.
	pending map[string]pendingReplay
	// answering counts the replays being answered (replayAnswering).
	answering int
}

// idRecord is a CONSUME ID charged here, as replayed.
type idRecord struct {
	at        int64
	service   string
	key       admission.Key // admission.AccountIDKey
	remaining int64
}

// Bounds of the replay log: a member down longer than replayFor, or while
// more than replayMax operations (replayIDsMax IDs) went out, gets only
// the latest (what it misses then ends by its TTL; an ID it misses is
// charged again if repeated through it).
const (
	replayFor    = time.Hour
	replayMax    = 500_000 // a million re-registrations an hour, over two members or more
	replayIDsMax = 1_000_000
)

// ring keeps the last max values pushed, in order, overwriting the oldest:
// bounded, and never copied once full (a log trimmed by copying its tail
// moved hundreds of MB an hour under a million re-registrations).
type ring[T any] struct {
	buf  []T
	head int // the oldest once full
	max  int
}

func (r *ring[T]) push(x T) {
	if len(r.buf) < r.max {
		r.buf = append(r.buf, x)
		return
	}
	r.buf[r.head] = x
	r.head = (r.head + 1) % r.max
}

func (r *ring[T]) len() int    { return len(r.buf) }
func (r *ring[T]) at(i int) *T { return &r.buf[(r.head+i)%len(r.buf)] }

// from returns the index of the first value at or after t (ns), by at.
func (r *ring[T]) from(t int64, at func(*T) int64) int {
	return sort.Search(r.len(), func(i int) bool { return at(r.at(i)) >= t })
}

func (r *replayLog) keep(batch []op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops.max, r.ids.max = replayMax, replayIDsMax
	for _, o := range batch {
		if o.Kind != opConsumed {
			r.ops.push(o)
			continue
		}
		name, ok := r.services[o.Service]
		if !ok {
			if r.services == nil {
				r.services = map[string]string{}
			}
			name = o.Service // services with a licence only: a few
			r.services[name] = name
		}
		r.ids.push(idRecord{at: o.At, service: name, key: admission.AccountIDKey([]byte(o.Account), o.Key), remaining: o.Remaining})
	}
}

// since returns the operations sent at or after t (ns) and within
// replayFor of now, the CONSUME IDs as opConsumedKey, and whether that is
// every one sent since need (false: need is beyond replayFor, or a ring
// dropped some since).
func (r *replayLog) since(t, need int64) ([]op, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// Every ID the ring holds since t goes (its bound is the ring's size);
	// other operations only within replayFor. Whole unless the IDs' ring
	// dropped some charged since need.
	whole := !(r.ids.len() == r.ids.max && r.ids.len() > 0 && r.ids.at(0).at > need)
	idsFrom := t
	t = max(t, time.Now().Add(-replayFor).UnixNano())
	var out []op
	for i := r.ops.from(t, func(o *op) int64 { return o.At }); i < r.ops.len(); i++ {
		out = append(out, *r.ops.at(i))
	}
	for i := r.ids.from(idsFrom, func(x *idRecord) int64 { return x.at }); i < r.ids.len(); i++ {
		x := r.ids.at(i)
		hi, lo := x.key.Parts()
		k := binary.BigEndian.AppendUint64(make([]byte, 0, 16), hi)
		out = append(out, op{Kind: opConsumedKey, Service: x.service, Key: binary.BigEndian.AppendUint64(k, lo), Remaining: x.remaining, At: x.at})
	}
	return out, whole
}

// A member that meets another for the first time since it started asks it
// for what it sent since its key store last committed before the start
// (replayRequest): a restart quicker than failure detection, or a new
// member (everything the log holds), which no other member saw fail. The
// member answers with replayTo. A member seen failed and back is sent its
// replay without asking (NotifyJoin): a stalled process never saw itself
// fail.
type replayRequest struct {
	Node  string `json:"node"`
	Since int64  `json:"since"` // Unix ns; 0: everything kept
}

// replayMargin is how far before since a replay starts: notices still on
// their way when a node stopped.
const replayMargin = 10 * time.Second

// replayEvery bounds how often a member is sent a replay.
const replayEvery = 10 * time.Second

var replayIncomplete = metrics.NewCounter(`capsgate_replay_incomplete_total`)

// replayRefused counts the replay requests not answered: too many sent
// at once, or too many names not yet members waiting.
var replayRefused = metrics.NewCounter(`capsgate_replay_refused_total`)

// askReplay asks member for what it sent since.
func (c *Cluster) askReplay(member string, since time.Time) {
	var at int64
	if !since.IsZero() {
		at = since.Add(-replayMargin).UnixNano()
	}
	msg, _ := json.Marshal(replayRequest{Node: c.cfg.NodeName, Since: at})
	if to := c.member(member); to != nil {
		if err := c.ml.SendReliable(to, append([]byte{msgReplay}, msg...)); err != nil {
			c.log.Warn("cannot ask a member for what this node missed", "member", member, "err", oneLine(err))
		}
	}
}

// replayAsked answers a replayRequest: one at a time per member, and the
// same request (member and since) at most once every replayEvery.
func (c *Cluster) replayAsked(b []byte) {
	var r replayRequest
	if json.Unmarshal(b, &r) != nil || r.Node == "" || r.Node == c.cfg.NodeName {
		return
	}
	if !names.Valid([]byte(r.Node)) {
		return // no member's name (node_name): not kept, not looked up
	}
	if c.member(r.Node) == nil {
		// A new member's request can come before the news of it: kept
		// (the latest, for at most replayAskedKeep names, those kept
		// longer than replayPendingFor let go first when full) and
		// answered at its join, not by a goroutine waiting for a name
		// that may never be a member.
		now := time.Now()
		c.replay.mu.Lock()
		c.replay.pending = keepRecent(c.replay.pending, r.Node, now, replayAskedKeep, replayPendingFor,
			func(p pendingReplay) time.Time { return p.at }, pendingReplay{r, now})
		_, kept := c.replay.pending[r.Node]
		c.replay.mu.Unlock()
		if !kept {
			replayRefused.Inc()
			return
		}
		// Its join may have come between the look and the keeping.
		if c.member(r.Node) != nil {
			c.replayPending(r.Node)
		}
		return
	}
	c.answerReplay(r)
}

// pendingReplay is a request kept until its asker joins.
type pendingReplay struct {
	r  replayRequest
	at time.Time
}

// replayPending answers the request a member sent before the news of
// its join, if it sent one.
func (c *Cluster) replayPending(name string) {
	c.replay.mu.Lock()
	p, ok := c.replay.pending[name]
	delete(c.replay.pending, name)
	c.replay.mu.Unlock()
	if ok {
		c.answerReplay(p.r)
	}
}

// answerReplay answers a member's replayRequest.
func (c *Cluster) answerReplay(r replayRequest) {
	now := time.Now()
	c.replay.mu.Lock()
	if c.replay.asked == nil {
		c.replay.asked = map[string]replayAnswer{}
	}
	if len(c.replay.asked) >= replayAskedKeep {
		// Names that asked, members or not: the old answers go.
		maps.DeleteFunc(c.replay.asked, func(_ string, a replayAnswer) bool { return !a.busy && now.Sub(a.at) >= replayEvery })
	}
	last, ok := c.replay.asked[r.Node]
	if ok && (last.busy || last.since == r.Since && now.Sub(last.at) < replayEvery) {
		c.replay.mu.Unlock()
		return
	}
	if c.replay.answering >= replayAnswering {
		c.replay.mu.Unlock()
		replayRefused.Inc()
		c.log.Warn("a member asked for what it missed while as many replays as a node sends at once were being sent: it gets none",
			"member", r.Node, "at_once", replayAnswering)
		return
	}
	c.replay.asked[r.Node] = replayAnswer{since: r.Since, at: now, busy: true}
	c.replay.answering++
	c.replay.mu.Unlock()
	go func() {
		defer func() {
			c.replay.mu.Lock()
			a := c.replay.asked[r.Node]
			a.busy = false
			c.replay.asked[r.Node] = a
			c.replay.answering--
			c.replay.mu.Unlock()
		}()
		c.replayTo(r.Node, time.Unix(0, r.Since))
	}()
}

// replayAskedKeep bounds the names whose last request is kept before the
// old ones are let go.
const replayAskedKeep = 1024

// replayPendingFor is how long a request from a name not yet a member is
// kept while replayAskedKeep others are.
const replayPendingFor = 10 * time.Second

// replayAnswering bounds the replays being sent at once, to members
// (a request from a name that is no member waits for its join, in
// pending): a farm's rolling restart asks each node for one a member.
const replayAnswering = 64

// replayAnswer is the last replay a member asked for.
type replayAnswer struct {
	since int64
	at    time.Time
	busy  bool // being sent
}

// member returns the memberlist node named name, or nil.
func (c *Cluster) member(name string) *memberlist.Node {
	for _, m := range c.ml.Members() {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// replayTo sends a member the operations sent since since (at most
// replayFor ago), in batches of replayBatch, to that member (a repeat is
// harmless: every operation is idempotent).
func (c *Cluster) replayTo(member string, since time.Time) {
	// IDs older than the idempotency window need not reach it.
	// A new member's request can come before the news of it. A name
	// that is no member by then gets nothing, and costs no copy of the
	// log.
	to := c.member(member)
	for i := 0; to == nil && i < 50; i++ {
		select {
		case <-c.stop:
			return
		case <-time.After(100 * time.Millisecond):
		}
		to = c.member(member)
	}
	if to == nil {
		c.log.Warn("a member asked for what it missed but is not a member", "member", member)
		return
	}
	need := max(since.UnixNano(), time.Now().Add(-c.cfg.Engine.Config().IdempotencyWindow).UnixNano())
	ops, whole := c.replay.since(since.UnixNano(), need)
	if !whole {
		replayIncomplete.Inc()
		c.log.Warn("a member asked for more CONSUME IDs than the replay log keeps: it gets the newest only",
			"member", member, "since", since, "ids", replayIDsMax)
	}
	if len(ops) == 0 {
		return
	}
	c.log.Info("sending a member what it missed", "member", member, "ops", len(ops))
	for len(ops) > 0 {
		select {
		case <-c.stop:
			return
		default:
		}
		n := min(len(ops), replayBatch)
		msg, _ := json.Marshal(opsMsg{Node: c.cfg.NodeName, Ops: ops[:n]})
		msg = c.packedFor(to, &packing{plain: append([]byte{msgOps}, msg...)})
		if err := c.ml.SendReliable(to, msg); err != nil {
			c.log.Warn("cannot send a member that came back what it missed", "member", member, "err", oneLine(err))
			return
		}
		sentBytes(msg)
		ops = ops[n:]
	}
}

// replayBatch bounds the operations of one replay message (about 100 bytes
// each in JSON; memberlist's streams take up to a few MB).
const replayBatch = 4096
