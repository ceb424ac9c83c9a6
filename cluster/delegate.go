package cluster

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/cluster/trunks"
	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/registry"
)

// Kinds of user messages.
const (
	msgDemand  = 'd'
	msgLicence = 'l'
	msgOps     = 'o' // a batch of forwarded RELEASE/DEREGISTER and claims
	msgLeaving = 'x' // the sender is about to leave gracefully
	msgReplay  = 'r' // the sender asks for what it missed (replayRequest)
	msgState   = 's' // the sender's licences, for a member whose digest differs
	msgWhole   = 'w' // the sender (named) asks for a whole report: it missed the first
)

// Gossip traffic, by kind of message (user messages; memberlist's own
// probes and gossip are not counted).
var (
	demandSent     = metrics.NewCounter(`capsgate_gossip_messages_total{kind="demand",direction="sent"}`)
	demandReceived = metrics.NewCounter(`capsgate_gossip_messages_total{kind="demand",direction="received"}`)
	// demandUnknown counts the demand reports dropped for coming from a
	// name that is no member here.
	demandUnknown = metrics.NewCounter(`capsgate_gossip_demand_unknown_total`)
	// wholeAsked counts the whole reports members asked this node for.
	wholeAsked      = metrics.NewCounter(`capsgate_gossip_whole_asked_total`)
	licenceSent     = metrics.NewCounter(`capsgate_gossip_messages_total{kind="licence",direction="sent"}`)
	licenceReceived = metrics.NewCounter(`capsgate_gossip_messages_total{kind="licence",direction="received"}`)
	stateSent       = metrics.NewCounter(`capsgate_gossip_messages_total{kind="state",direction="sent"}`)
	stateReceived   = metrics.NewCounter(`capsgate_gossip_messages_total{kind="state",direction="received"}`)
	forwardSent     = metrics.NewCounter(`capsgate_gossip_messages_total{kind="forward",direction="sent"}`)
	forwardReceived = metrics.NewCounter(`capsgate_gossip_messages_total{kind="forward",direction="received"}`)
	forwardDropped  = metrics.NewCounter(`capsgate_gossip_forward_dropped_total`)
	claimsTaken     = metrics.NewCounter(`capsgate_subscriber_claims_total{result="released_here"}`)
	claimsRenewed   = metrics.NewCounter(`capsgate_subscriber_claims_total{result="claimed_again"}`)
	bytesSent       = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="sent"}`)
	bytesReceived   = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="received"}`)
	// convergence is the time from a licence's load on one node to its
	// arrival on another (by the direct path), as the two clocks tell it.
	convergence = metrics.NewPrometheusHistogramExt(`capsgate_license_convergence_seconds`, []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5})
)

// sent counts a user message sent (msg as it went: packed or not).
func sent(c *metrics.Counter, msg []byte) {
	c.Inc()
	sentBytes(msg)
}

// sentBytes counts the bytes of a user message sent, and it as packed if
// it went so.
func sentBytes(msg []byte) {
	bytesSent.Add(len(msg))
	if len(msg) > 0 && msg[0] == msgPacked {
		packedSent.Inc()
	}
}

// SpreadLicence sends a licence or revocation just loaded here to every
// member directly; each verifies it itself. Push/pull state sync repairs
// what this misses and serves members that were down.
func (c *Cluster) SpreadLicence(armored []byte) {
	msg := binary.BigEndian.AppendUint64([]byte{msgLicence}, uint64(time.Now().UnixNano()))
	pk := &packing{plain: append(msg, armored...)}
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.NodeName {
			continue
		}
		go func(m *memberlist.Node) {
			msg := c.packedFor(m, pk)
			if err := c.ml.SendReliable(m, msg); err != nil {
				c.log.Warn("cannot send a licence to a member; state sync will", "member", m.Name, "err", err)
				return
			}
			sent(licenceSent, msg)
		}(m)
	}
}

// delegate implements memberlist.Delegate.
type delegate Cluster

// AllocationSync is how long a member whose digest still differs from
// this node's waits before this node sends it its licences, or its
// allocations, again (see offerState).
const AllocationSync = time.Minute

// AllocationSettle is how long this node's allocations' digest must have
// held before a push-pull that finds another member's different has this
// node send it its allocations: while allocations are being made (a
// provisioning run of 100,000, a few hundred a second), every member's
// digest moves and differs from the others' for the milliseconds each
// direct send takes, and each push-pull would otherwise send all of them.
const AllocationSettle = 10 * time.Second

// allocationsDue reports whether this node sends node its allocations,
// from a push-pull at now that found their digests (ours, theirs): when
// they differ and this node's have held for AllocationSettle, or they
// have differed for AllocationSync whatever this node's do (a stream of
// allocations that never lets them settle: a member that missed one is
// sent them once every AllocationSync, not never).
func (d *delegate) allocationsDue(node, ours, theirs string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ours != d.allocsSeen {
		d.allocsSeen, d.allocsSince = ours, now
	}
	if theirs == ours {
		delete(d.allocsApart, node)
		return false
	}
	if d.allocsApart == nil || len(d.allocsApart) >= 1024 {
		d.allocsApart = map[string]time.Time{} // members that left stay until then
	}
	since, ok := d.allocsApart[node]
	if !ok {
		since = now
		d.allocsApart[node] = now
	}
	switch {
	case now.Sub(d.allocsSince) >= AllocationSettle:
		return true
	case now.Sub(since) >= AllocationSync:
		d.allocsApart[node] = now // the next, AllocationSync after this one
		return true
	}
	return false
}

// NodeMeta publishes version, RESP address and max_caps.
func (d *delegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(meta{Version: Version, RESPAddr: d.cfg.RESPAddr, Admin: d.cfg.AdminAddr, MaxCAPS: d.cfg.MaxCAPS, Stretch: true, Packs: true})
	if len(b) > limit {
		return nil
	}
	return b
}

// NotifyMsg receives demand reports and licences.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 2 {
		return
	}
	c := (*Cluster)(d)
	bytesReceived.Add(len(b))
	if b[0] == msgPacked {
		buf, err := unpack(b[1:])
		if err != nil {
			packedRefused.Inc()
			c.log.Debug("refusing a packed message", "err", err)
			return
		}
		defer release(buf)
		packedReceived.Inc()
		if b = buf.Bytes(); len(b) < 2 {
			return
		}
	}
	switch b[0] {
	case msgDemand:
		demandReceived.Inc()
		var m demandMsg
		if json.Unmarshal(b[1:], &m) != nil || m.Node == "" || m.Node == c.cfg.NodeName {
			return
		}
		c.mu.Lock()
		p := c.peers[m.Node]
		if p == nil || !p.met {
			// Not (yet) a member here: a name memberlist never told of
			// gets no view, no part of a token budget and no place in
			// the ledger's witnesses. A member's reports that come before
			// the news of its join are dropped too; at the join it is
			// asked for a whole report, since those dropped may have been
			// its only whole ones (the rest are deltas on them).
			if names.Valid([]byte(m.Node)) { // a member's name (node_name): at most 64 bytes kept
				now := time.Now()
				c.early = keepRecent(c.early, m.Node, now, earlyKeep, earlyFor, func(t time.Time) time.Time { return t }, now)
			}
			c.mu.Unlock()
			demandUnknown.Inc()
			return
		}
		c.spill.room.Store(true)
		if c.planner.Heard(c.cfg.Now(), m.Node, m.Report) {
			c.ex.heard.Store(true)
			select {
			case c.wake <- struct{}{}:
			default:
			}
		}
		// A peer's malformed head must not spoil this node's ledger.
		if w := (ledger.Witness{Node: m.Node, Seq: m.HeadSeq, Hash: m.HeadHash, Key: m.HeadKey, Genesis: m.Genesis}); m.HeadSeq > p.head.Seq && w.Check() == nil {
			p.head = w
		}
		c.mu.Unlock()
	case msgOps:
		forwardReceived.Inc()
		c.apply(b[1:])
	case msgReplay:
		c.replayAsked(b[1:])
	case msgWhole:
		// At most once each wholeEvery, whoever asks (the asker may ask
		// before this node has met it; a whole report goes to every
		// member): a whole report of a farm's 100,000 accounts is
		// megabytes.
		now := time.Now()
		c.mu.Lock()
		if now.Sub(c.wholeAt) >= wholeEvery {
			c.wholeAt = now
			c.planner.SendWhole()
			wholeAsked.Inc()
		}
		c.mu.Unlock()
	case msgLeaving:
		c.mu.Lock()
		if p := c.peers[string(b[1:])]; p != nil {
			p.leaving = true
		}
		c.mu.Unlock()
	case msgState:
		stateReceived.Inc()
		var st state
		if json.Unmarshal(b[1:], &st) != nil {
			return
		}
		d.cfg.Licences.ObserveMark(st.ClockMark)
		d.loadDocuments(st.Documents)
		c.applyAllocations(st.Accounts)
		c.applyTrunks(st.Trunks)
	case msgLicence:
		licenceReceived.Inc()
		if len(b) < 9 {
			return
		}
		loaded := time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
		doc := append([]byte(nil), b[9:]...)
		res, err := c.cfg.Licences.LoadShared(doc)
		if err != nil {
			c.log.Warn("refusing a licence sent by a member", "err", err)
			return
		}
		if slices.ContainsFunc(res, func(r registry.Result) bool { return r.New }) {
			convergence.Update(max(time.Since(loaded).Seconds(), 0))
		}
	}
}

// GetBroadcasts: licences go directly and by state sync; nothing queued.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

type state struct {
	// Node is the sender, and Digest names its licences and revocations
	// (Licences.Digest). Documents are the licences and revocations
	// themselves, sent when a member joins and to a member whose digest
	// differs (offerState), not at every push-pull: 1,000 licences are
	// 1.5 MB of JSON, which every push-pull (every 5 s, both ways) would
	// otherwise compress, send, read and unpack.
	//
	// Allocs names the account allocations and keys' limits the same way
	// (allocationsDigest), and Accounts and Trunks are those themselves,
	// sent when a member joins and to a member whose Allocs differs once
	// this node's have held for AllocationSettle: they reach every member
	// as they are made (SpreadAllocation, replayed to a member that comes
	// back), so the state sync only repairs what that missed; 100,000
	// allocations are 7 MB of JSON.
	Node      string                                     `json:"node,omitempty"`
	Digest    string                                     `json:"digest,omitempty"`
	Documents [][]byte                                   `json:"docs,omitempty"`
	ClockMark time.Time                                  `json:"clock_mark"`
	Allocs    string                                     `json:"allocs,omitempty"`
	Accounts  map[string]map[string]admission.Allocation `json:"accounts,omitempty"`
	Trunks    []trunks.Setting                           `json:"trunks,omitempty"`
}

// LocalState is this node's clock mark and the digests of its licences
// and of its allocations; and the licences, revocations, allocations and
// keys' limits themselves when a member joins (see state).
func (d *delegate) LocalState(join bool) []byte {
	st := state{Node: d.cfg.NodeName, Digest: d.cfg.Licences.Digest(), ClockMark: d.cfg.Licences.ClockMark(),
		Allocs: d.allocationsDigest()}
	if join {
		st.Documents = d.cfg.Licences.Documents()
		d.addAllocations(&st)
	}
	b, _ := json.Marshal(st)
	return b
}

// allocationsDigest names this node's account allocations and keys'
// limits ("" when it keeps neither).
func (d *delegate) allocationsDigest() string {
	var s string
	if d.cfg.Accounts != nil {
		s = d.cfg.Accounts.AllocationsDigest()
	}
	if d.cfg.Trunks != nil {
		s += "/" + d.cfg.Trunks.Digest()
	}
	return s
}

// addAllocations puts this node's allocations and keys' limits in st.
func (d *delegate) addAllocations(st *state) {
	if d.cfg.Accounts != nil {
		st.Accounts = d.cfg.Accounts.Allocations()
	}
	if d.cfg.Trunks != nil {
		st.Trunks = d.cfg.Trunks.Settings()
	}
}

// MergeRemoteState loads a peer's licences (each verified here) and
// allocations, takes its clock mark if it is later, and sends the peer
// this node's licences, or its allocations, if their digests still differ.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	var s state
	if err := json.Unmarshal(buf, &s); err != nil {
		d.log.Warn("cannot read a member's state", "err", err)
		return
	}
	d.cfg.Licences.ObserveMark(s.ClockMark)
	d.loadDocuments(s.Documents)
	c := (*Cluster)(d)
	c.applyAllocations(s.Accounts)
	c.applyTrunks(s.Trunks)
	// At a join both ends send everything. A member of an earlier version
	// sends no licence digest, and every document; nor an allocation
	// digest, and its allocations once a minute: it reads no allocation in
	// a state sent to it, so none is sent.
	if join || s.Node == "" || s.Node == d.cfg.NodeName {
		return
	}
	if s.Digest != "" && s.Digest != d.cfg.Licences.Digest() {
		c.offerState(s.Node, s.Digest, false)
	}
	if ours := d.allocationsDigest(); ours != "" && s.Allocs != "" && d.allocationsDue(s.Node, ours, s.Allocs, d.cfg.Now()) {
		c.offerState(s.Node, s.Allocs, true)
	}
}

// loadDocuments loads licences and revocations a member sent.
func (d *delegate) loadDocuments(docs [][]byte) {
	for _, doc := range docs {
		if _, err := d.cfg.Licences.LoadShared(doc); err != nil {
			d.log.Debug("not loading a licence from a member's state", "err", err)
		}
	}
}

// offerKey is what offerState sent to whom: a member's name, and whether
// the allocations (or the licences).
type offerKey struct {
	node        string
	allocations bool
}

// stateOffer is what offerState last sent a member: when, and the two
// digests then.
type stateOffer struct {
	theirs, ours string
	at           time.Time
	busy         bool // being sent
}

// offerState sends the member node every licence and revocation of this
// node (allocations false), or every account allocation and key's limits
// (allocations true), when its state sync named a digest of them that
// differs from this node's (theirs): it missed a direct send, was cut off,
// or holds something this node does not. Both ends of a push-pull see the
// difference, so each sends the other what it holds (the later allocation
// of an account, the later setting of a key wins), and one push-pull
// mends both. A member is sent them once for each pair of digests, and
// again after AllocationSync if the two still differ (a document one side
// refuses, a licence of another farm, an allocation its pool cannot hold,
// keeps them apart for good); one send of each at a time, beside the
// push-pull.
func (c *Cluster) offerState(node, theirs string, allocations bool) {
	ours, now := c.cfg.Licences.Digest(), c.cfg.Now()
	if allocations {
		ours = (*delegate)(c).allocationsDigest()
	}
	k := offerKey{node: node, allocations: allocations}
	c.mu.Lock()
	if c.offered == nil {
		c.offered = map[offerKey]stateOffer{}
	}
	o := c.offered[k]
	if o.busy || o.theirs == theirs && o.ours == ours && now.Sub(o.at) < AllocationSync {
		c.mu.Unlock()
		return
	}
	c.offered[k] = stateOffer{theirs: theirs, ours: ours, at: now, busy: true}
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := errNotMember
		if m := c.member(node); m != nil {
			st := state{Node: c.cfg.NodeName, ClockMark: c.cfg.Licences.ClockMark()}
			if allocations {
				(*delegate)(c).addAllocations(&st)
			} else {
				st.Documents = c.cfg.Licences.Documents()
			}
			b, _ := json.Marshal(st)
			msg := c.packedFor(m, &packing{plain: append([]byte{msgState}, b...)})
			if err = c.ml.SendReliable(m, msg); err == nil {
				sent(stateSent, msg)
			}
		}
		c.mu.Lock()
		o := c.offered[k]
		o.busy = false
		if err != nil {
			o.at = time.Time{} // the next push-pull tries again
			what := "licences"
			if allocations {
				what = "allocations"
			}
			c.log.Warn("cannot send a member the "+what+" it lacks; the next state sync will", "member", node, "err", err)
		}
		c.offered[k] = o
		c.mu.Unlock()
	}()
}

var errNotMember = errors.New("not a member")

// earlyKeep bounds the names kept whose reports came before their join,
// and earlyFor how long one is kept while the bound is reached; a node
// makes a whole report when asked at most once each wholeEvery.
const (
	earlyKeep  = 64
	earlyFor   = 10 * time.Second
	wholeEvery = time.Second
)

// keepRecent records name at now in m (made if nil), which holds at most
// limit names: when it is full, those kept longer than ago are let go
// first, and if none is, name is not kept.
func keepRecent[V any](m map[string]V, name string, now time.Time, limit int, ago time.Duration, at func(V) time.Time, v V) map[string]V {
	if m == nil {
		m = map[string]V{}
	}
	if _, ok := m[name]; !ok && len(m) >= limit {
		maps.DeleteFunc(m, func(_ string, x V) bool { return now.Sub(at(x)) >= ago })
		if len(m) >= limit {
			return m
		}
	}
	m[name] = v
	return m
}

// askWhole asks the member named for a whole report: its reports came
// before the news of its join, and were dropped.
func (c *Cluster) askWhole(name string) {
	if to := c.member(name); to != nil {
		if err := c.ml.SendReliable(to, append([]byte{msgWhole}, c.cfg.NodeName...)); err != nil {
			c.log.Warn("cannot ask a member for a whole report", "member", name, "err", oneLine(err))
		}
	}
}

// events implements memberlist.EventDelegate.
type events Cluster

func (e *events) NotifyJoin(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	p := c.peers[n.Name]
	met := p == nil || !p.met
	if p == nil {
		p = &peer{}
		c.peers[n.Name] = p
	}
	p.met = true
	back, downSince := c.planner.Joined(c.cfg.Now(), n.Name)
	p.addr = n.Address()
	if n.Name != c.cfg.NodeName {
		c.hadPeer.Store(true)
		c.cfg.Engine.TrackClaims()
	}
	p.noteMeta(n.Meta)
	p.alive = true
	c.refreshOwners()
	_, early := c.early[n.Name]
	delete(c.early, n.Name)
	c.mu.Unlock()
	if early {
		go c.askWhole(n.Name)
	}
	c.replayPending(n.Name)
	if n.Name != c.cfg.NodeName {
		c.log.Info("member joined", "member", n.Name, "addr", n.Address())
		if met {
			// First met since this node started: it asks for what was
			// sent since it last knew everything.
			go c.askReplay(n.Name, c.cfg.LastAlive)
		}
		if back {
			// Seen failed and back (a stall, a partition, a restart):
			// it gets what this node sent meanwhile, which it may not
			// know it missed (a stalled process never saw itself fail).
			go c.replayTo(n.Name, downSince.Add(-time.Second))
		}
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	left := n.Name == c.cfg.NodeName
	if p := c.peers[n.Name]; p != nil {
		left = left || p.leaving
		p.leaving, p.alive = false, false
		c.planner.Gone(c.cfg.Now(), n.Name, left)
		c.refreshOwners()
	}
	c.mu.Unlock()
	if left {
		c.log.Info("member left", "member", n.Name, "addr", n.Address())
	} else {
		c.log.Warn("member failed", "member", n.Name, "addr", n.Address())
	}
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	if p := c.peers[n.Name]; p != nil {
		p.noteMeta(n.Meta)
		c.refreshOwners()
	}
	c.mu.Unlock()
}
