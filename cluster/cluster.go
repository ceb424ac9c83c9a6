package cluster

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/registry"
)

// Version is carried in node metadata.
const Version = "0.1.0"

// ExchangeInterval is how often a node measures its demand, sends it to
// every member and recomputes its shares.
const ExchangeInterval = 100 * time.Millisecond

// staleAfter is when a peer's demand report counts as missing (10 missed
// exchanges): the peer keeps its floor only.
const staleAfter = time.Second

// Licences is what the cluster needs of the licence registry: its documents
// to spread and a way to load the ones peers send (a licence file as it was
// loaded, which may hold several documents: all load or none).
type Licences interface {
	Documents() [][]byte
	Load(text []byte) ([]registry.Result, error)
	ClockMark() time.Time
	ObserveMark(t time.Time)
}

// Config configures a node's membership.
type Config struct {
	NodeName string
	// BindAddr is gossip.addr (host:port, TCP and UDP).
	BindAddr string
	// Key is the gossip encryption key (16, 24 or 32 bytes); nil: none.
	Key []byte
	// Join lists members to join at start.
	Join []string
	// RESPAddr, AdminAddr (a URL) and MaxCAPS are published in the node
	// metadata.
	RESPAddr  string
	AdminAddr string
	// RESPPassword is resp.password_file's password, which spilled ADMITs
	// give the member they go to ("": none).
	RESPPassword string
	MaxCAPS      float64
	Engine       *admission.Engine
	Clock        admission.Clock
	Shares       *Shares
	Licences     Licences
	// Policy is what a side does while members are unreachable.
	Policy PolicyConfig
	// Accounts holds the token allocations made through the admin API; the
	// cluster spreads them (nil: not spread).
	Accounts Accounts
	// LedgerHead returns this node's usage-ledger head, which every member
	// writes into its own ledger as a witness; nil: none.
	LedgerHead func() (seq uint64, hash string)
	// LedgerIdentity returns this node's ledger key and genesis hash,
	// which members witness with its head; nil: not sent.
	LedgerIdentity func() (key, genesis string)
	// LastAlive is when this node last knew every CONSUME ID charged in
	// the farm (its key store's last commit before this start; zero: a
	// node that never ran). It asks each member it meets for what they
	// sent since (see replay).
	LastAlive time.Time
	Log       *slog.Logger
	// Now tells the time (nil: time.Now); the planner sees no other clock.
	Now func() time.Time
}

// Accounts is what the cluster needs of the node's account allocations.
type Accounts interface {
	// Apply takes an allocation made on another member (the later wins).
	Apply(service, account string, a admission.Allocation) error
	Allocations() map[string]map[string]admission.Allocation
}

// Member is one member as GET /v1/cluster shows it.
type Member struct {
	Name     string `json:"name"`
	Addr     string `json:"addr"`
	State    string `json:"state"`
	RESPAddr string `json:"resp_addr,omitempty"`
	// AdminAddr is the URL of its admin API ("http://host:port" or
	// https; an unspecified host replaced by its gossip address).
	AdminAddr string             `json:"admin_addr,omitempty"`
	Version   string             `json:"version,omitempty"`
	MaxCAPS   float64            `json:"max_caps"`
	Demand    map[string]float64 `json:"demand"`
	Shares    map[string]float64 `json:"shares"`
	// Owed is, by licensed service, what the member's CAPS bucket owed
	// (its depth less what it would admit at once) in its last report:
	// 0 is a full bucket, which this node may spill attempts to.
	Owed map[string]int64 `json:"owed"`
	// Since is when a dead member was declared dead.
	Since *time.Time `json:"since,omitempty"`
	// Reclaimed: a dead member whose part the live members took over.
	Reclaimed bool `json:"reclaimed,omitempty"`
}

// View is the JSON of GET /v1/cluster: the node answering, its partition
// policy (cluster.partition_policy), what its side of the cluster
// enforces under it now, and the members.
type View struct {
	Node      string   `json:"node"`
	ClusterID string   `json:"cluster_id"`
	Policy    string   `json:"partition_policy"`
	Side      Side     `json:"side"`
	Members   []Member `json:"members"`
}

type meta struct {
	Version  string  `json:"v"`
	RESPAddr string  `json:"resp"`
	Admin    string  `json:"admin,omitempty"`
	MaxCAPS  float64 `json:"max_caps"`
}

// peer is what this node keeps of another member beside its planner's
// view: where it is and its ledger head.
type peer struct {
	met     bool // joined since this node started (not only heard of)
	leaving bool // it said it is leaving
	alive   bool // joined and not gone since
	addr    string
	metaRaw []byte
	resp    string // its RESP address (spilled ADMITs go there)
	// head is its ledger head as last reported; witnessed the seq of the
	// head last handed to Witnesses.
	head      ledger.Witness
	witnessed uint64
}

// Cluster is this node's membership: memberlist plus the demand exchange,
// share allocation and licence spread.
type Cluster struct {
	cfg Config
	ml  *memberlist.Memberlist
	log *slog.Logger

	mu    sync.Mutex // guards the fields below
	peers map[string]*peer
	// streaming holds the members a report is being sent to over TCP.
	streaming map[string]bool
	planner   *Planner
	usage     *UsageReader // read by the exchange loop only
	// allocationsSent is when the state sync last carried the account
	// allocations (guarded by mu).
	allocationsSent time.Time

	wake    chan struct{} // a report calls for an early plan
	forward chan op       // RELEASE/DEREGISTER/claims for other members
	claims  claims
	replay  replayLog
	spill   spillers
	// owners are the live members that own CONSUME IDs (route.go);
	// routers the clients routed CONSUMEs go over, routing how many are
	// in flight.
	owners  atomic.Pointer[ownerSet]
	routers memberClients
	routeQ  routeQueues
	routing atomic.Int64
	// hadPeer: another member was seen once; until then nothing is
	// forwarded (see enqueue).
	hadPeer atomic.Bool

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// New creates the node's memberlist, listening on cfg.BindAddr.
func New(cfg Config) (*Cluster, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	host, portStr, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot use gossip.addr %q: %w", cfg.BindAddr, err)
	}
	port, _ := strconv.Atoi(portStr)
	if host == "" {
		host = "0.0.0.0"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cluster{cfg: cfg, log: cfg.Log, peers: map[string]*peer{}, planner: NewPlanner(cfg.NodeName, cfg.Policy, cfg.Engine.Config().Burst),
		usage: NewUsageReader(cfg.Engine),
		stop:  make(chan struct{}), wake: make(chan struct{}, 1), forward: make(chan op, forwardQueue)}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertisePort = port
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		mc.AdvertiseAddr = host
	}
	// Failure detection: a killed node is declared dead in about 1.5 s
	// instead of 6 s: probe every 200 ms, 100 ms to answer, suspicion for
	// 2 × log(n) probe intervals. Measured on loopback and a LAN these raise
	// no false alarm; a WAN farm would want the defaults back.
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.SuspicionMult = 2
	// Gossip faster and wider: a licence or revocation queued for gossip
	// reaches 20 nodes in ~140 ms instead of ~600 ms. Licences also go to
	// every member directly (SendReliable); gossip is the second path.
	mc.GossipInterval = 50 * time.Millisecond
	mc.GossipNodes = 4
	// Full state sync every 5 s instead of 30 s repairs anything both paths
	// missed and serves nodes that were down.
	mc.PushPullInterval = 5 * time.Second
	mc.SecretKey = cfg.Key
	mc.Delegate = (*delegate)(c)
	mc.Events = (*events)(c)
	mc.Logger = log.New(newLogWriter(cfg.Log, time.Now), "", 0) // see gossiplog.go
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cannot start gossip on %s (gossip.addr, --gossip-addr): %w", cfg.BindAddr, err)
	}
	c.ml = ml
	return c, nil
}

// rejoinEvery is how often a node that has configured members to join but
// sees no other member tries to join again (they may start after it, or a
// partition may heal).
const rejoinEvery = time.Second

// Start joins the configured members and starts the demand exchange. A node
// that reaches none of them runs alone and keeps trying.
func (c *Cluster) Start() error {
	c.join()
	c.wg.Add(3)
	go c.exchange()
	go c.forwarder()
	go c.rejoin()
	return nil
}

func (c *Cluster) join() {
	if len(c.cfg.Join) == 0 {
		return
	}
	if n, err := c.ml.Join(c.cfg.Join); err != nil && n == 0 {
		c.log.Warn("cannot join any member yet; running alone and trying again", "join", c.cfg.Join, "err", oneLine(err))
	}
}

// rejoin tries the join list again while this node is alone.
func (c *Cluster) rejoin() {
	defer c.wg.Done()
	admission.Repeat(c.stop, rejoinEvery, func() time.Duration {
		if len(c.cfg.Join) > 0 && c.ml.NumMembers() <= 1 {
			c.join()
		}
		return rejoinEvery
	})
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

// Stop leaves the cluster (so peers take over the share at once) and stops.
func (c *Cluster) Stop() error {
	var err error
	c.once.Do(func() {
		close(c.stop)
		c.wg.Wait()
		// memberlist's leave notice does not tell a leave from a death
		// (Node.State is not updated), so say it first.
		c.sendAll(append([]byte{msgLeaving}, c.cfg.NodeName...))
		if lerr := c.ml.Leave(time.Second); lerr != nil {
			err = lerr
		}
		if serr := c.ml.Shutdown(); serr != nil && err == nil {
			err = serr
		}
		c.spill.clients.close()
		c.routers.close()
	})
	return err
}

// Kinds of user messages.
const (
	msgDemand  = 'd'
	msgLicence = 'l'
	msgOps     = 'o' // a batch of forwarded RELEASE/DEREGISTER and claims
	msgLeaving = 'x' // the sender is about to leave gracefully
	msgReplay  = 'r' // the sender asks for what it missed (replayRequest)
)

// Gossip traffic, by kind of message (user messages; memberlist's own
// probes and gossip are not counted).
var (
	demandSent      = metrics.NewCounter(`capsgate_gossip_messages_total{kind="demand",direction="sent"}`)
	demandReceived  = metrics.NewCounter(`capsgate_gossip_messages_total{kind="demand",direction="received"}`)
	licenceSent     = metrics.NewCounter(`capsgate_gossip_messages_total{kind="licence",direction="sent"}`)
	licenceReceived = metrics.NewCounter(`capsgate_gossip_messages_total{kind="licence",direction="received"}`)
	forwardSent     = metrics.NewCounter(`capsgate_gossip_messages_total{kind="forward",direction="sent"}`)
	forwardReceived = metrics.NewCounter(`capsgate_gossip_messages_total{kind="forward",direction="received"}`)
	forwardDropped  = metrics.NewCounter(`capsgate_gossip_forward_dropped_total`)
	claimsTaken     = metrics.NewCounter(`capsgate_subscriber_claims_total{result="released_here"}`)
	bytesSent       = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="sent"}`)
	bytesReceived   = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="received"}`)
	// convergence is the time from a licence's load on one node to its
	// arrival on another (by the direct path), as the two clocks tell it.
	convergence = metrics.NewPrometheusHistogramExt(`capsgate_license_convergence_seconds`, []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5})
)

// sent counts a user message sent.
func sent(c *metrics.Counter, msg []byte) {
	c.Inc()
	bytesSent.Add(len(msg))
}

// demandMsg is a member's report on the wire, with its ledger head.
type demandMsg struct {
	Node     string `json:"n"`
	HeadSeq  uint64 `json:"ls,omitempty"`
	HeadHash string `json:"lh,omitempty"`
	HeadKey  string `json:"lk,omitempty"`
	Genesis  string `json:"lg,omitempty"`
	Report
}

// exchange plans this node's parts, applies them and sends its report to
// every member every ExchangeInterval, and between exchanges as soon as
// the planner allows when a member's report or one of this node's buckets
// calls for it (Planner.Heard, Planner.Starved; looked at every
// StarvedCheck). The report goes out after the plan, with the token
// budgets just planned: they apply at the next exchange, after the others
// have them.
func (c *Cluster) exchange() {
	defer c.wg.Done()
	tick := time.NewTicker(StarvedCheck)
	defer tick.Stop()
	next := c.cfg.Now().Add(ExchangeInterval)
	var early time.Time // when an early plan is due; zero: none
	for {
		select {
		case <-c.stop:
			return
		case <-c.wake:
			if early.IsZero() {
				c.mu.Lock()
				early = c.planner.EarlyAt(c.cfg.Now())
				c.mu.Unlock()
			}
			continue
		case <-tick.C:
		}
		now := c.cfg.Now()
		switch {
		case !now.Before(next):
			c.send(c.plan(now, true))
			next = now.Add(ExchangeInterval)
			early = time.Time{}
		case !early.IsZero() && !now.Before(early):
			c.send(c.plan(now, false))
			early = time.Time{}
		case early.IsZero() && c.starved():
			c.mu.Lock()
			early = c.planner.EarlyAt(now)
			c.mu.Unlock()
		}
	}
}

// starved reports whether one of this node's licensed buckets has spent
// half of what it was planned to hold (Planner.Starved).
func (c *Cluster) starved() bool {
	now := c.cfg.Engine.Now()
	licensed := c.cfg.Shares.LicensedNames()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, service := range licensed {
		if s := c.cfg.Engine.Service(service); s != nil {
			if _, avail := s.Bucket(now); c.planner.Starved(service, avail) {
				return true
			}
		}
	}
	return false
}

// send sends this node's report to every member: as one UDP packet when
// it fits in one (a report is about 126 bytes per service with traffic
// and 70 per account charging tokens here: BenchmarkReportSize), over TCP
// otherwise. A packet larger than UDP allows is refused by the socket, and
// the exchange with a node holding hundreds of busy services stopped
// without a word. A TCP send runs beside the exchange, at most one at a
// time per member: one to a member that does not answer is dropped, not
// queued, and the next report supersedes it.
func (c *Cluster) send(r Report) {
	dm := demandMsg{Node: c.cfg.NodeName, Report: r}
	if c.cfg.LedgerHead != nil {
		dm.HeadSeq, dm.HeadHash = c.cfg.LedgerHead()
	}
	if c.cfg.LedgerIdentity != nil {
		dm.HeadKey, dm.Genesis = c.cfg.LedgerIdentity()
	}
	msg, _ := json.Marshal(dm)
	msg = append([]byte{msgDemand}, msg...)
	reportBytes.Update(float64(len(msg)))
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.NodeName {
			continue
		}
		if len(msg) <= maxReportPacket {
			if err := c.ml.SendBestEffort(m, msg); err != nil {
				reportErrors.Inc()
				continue
			}
			sent(demandSent, msg)
			continue
		}
		c.sendStream(m, msg)
	}
}

// maxReportPacket is the largest report sent as one UDP packet: a
// datagram holds 65,507 bytes, less memberlist's framing, label and
// encryption.
const maxReportPacket = 60 << 10

// sendStream sends a report too large for a packet to m over TCP, unless
// the last one to m is still on its way.
func (c *Cluster) sendStream(m *memberlist.Node, msg []byte) {
	c.mu.Lock()
	if c.streaming == nil {
		c.streaming = map[string]bool{}
	}
	busy := c.streaming[m.Name]
	c.streaming[m.Name] = true
	c.mu.Unlock()
	if busy {
		reportsSkipped.Inc()
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := c.ml.SendReliable(m, msg)
		c.mu.Lock()
		delete(c.streaming, m.Name)
		c.mu.Unlock()
		if err != nil {
			reportErrors.Inc()
			return
		}
		reportsStreamed.Inc()
		sent(demandSent, msg)
	}()
}

var (
	reportBytes     = metrics.NewPrometheusHistogramExt(`capsgate_cluster_report_bytes`, []float64{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20})
	reportErrors    = metrics.NewCounter(`capsgate_cluster_report_errors_total`)
	reportsStreamed = metrics.NewCounter(`capsgate_cluster_reports_streamed_total`)
	reportsSkipped  = metrics.NewCounter(`capsgate_cluster_reports_skipped_total`)
)

// plan steps the planner (an exchange, or an early plan) with the live
// members, the licences and the engine's counters, applies this node's
// parts and returns the report to send.
func (c *Cluster) plan(now time.Time, exchange bool) Report {
	names := c.liveNames()
	c.cfg.Shares.SetMembers(len(names))
	licensed := c.cfg.Shares.Licensed()
	usage := c.usage.Read()
	c.mu.Lock()
	var p Plan
	if exchange {
		p = c.planner.Plan(now, names, licensed, usage)
	} else {
		p = c.planner.PlanNow(now, names, licensed, usage)
		earlyPlans.Inc()
	}
	c.mu.Unlock()
	c.spill.room.Store(true)
	for _, name := range p.Reclaimed {
		c.log.Warn("a failed member's part of every licence goes to the live members", "member", name,
			"after", c.cfg.Policy.ReclaimAfter)
	}
	if p.SideChanged {
		c.log.Warn("partition state changed", "to", p.Side.State, "live", p.Side.Live, "known", p.Side.Known,
			"policy", c.cfg.Policy.Policy.String())
	}
	sideFraction.Set(p.Side.Fraction)
	for service, sh := range p.Parts {
		if err := c.cfg.Shares.SetShare(service, sh); err != nil {
			c.log.Error("cannot apply the share", "service", service, "err", err)
		}
	}
	c.cfg.Shares.Planned()
	return p.Report
}

// earlyPlans counts the plans made between exchanges.
var earlyPlans = metrics.NewCounter(`capsgate_cluster_early_plans_total`)

// sideFraction is the part of each licence this node's side enforces.
var sideFraction = metrics.NewGauge(`capsgate_cluster_side_fraction`, nil)

// Witnesses returns the members' ledger heads that moved since the last
// call, by member name, for this node's ledger.
func (c *Cluster) Witnesses() []ledger.Witness {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ledger.Witness
	for _, p := range c.peers {
		if p.head.Seq > p.witnessed {
			out = append(out, p.head)
			p.witnessed = p.head.Seq
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Side returns this node's side of the cluster as last decided.
func (c *Cluster) Side() Side {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.planner.Side()
}

// liveNames returns the names of the members that are not dead, sorted.
func (c *Cluster) liveNames() []string {
	ms := c.ml.Members()
	names := make([]string, 0, len(ms))
	for _, m := range ms {
		names = append(names, m.Name)
	}
	sort.Strings(names)
	return names
}

// SpreadLicence sends a licence or revocation just loaded here to every
// member directly; each verifies it itself. Push/pull state sync repairs
// what this misses and serves members that were down.
func (c *Cluster) SpreadLicence(armored []byte) {
	msg := binary.BigEndian.AppendUint64([]byte{msgLicence}, uint64(time.Now().UnixNano()))
	msg = append(msg, armored...)
	for _, m := range c.ml.Members() {
		if m.Name == c.cfg.NodeName {
			continue
		}
		go func(m *memberlist.Node) {
			if err := c.ml.SendReliable(m, msg); err != nil {
				c.log.Warn("cannot send a licence to a member; state sync will", "member", m.Name, "err", err)
				return
			}
			sent(licenceSent, msg)
		}(m)
	}
}

// Members returns every member known, the dead ones included, by name.
func (c *Cluster) Members() []Member {
	live := c.ml.Members()
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	var out []Member
	add := func(name, addr, state string, metaRaw []byte, since *time.Time) {
		m := Member{Name: name, Addr: addr, State: state, Since: since, Demand: map[string]float64{}, Shares: map[string]float64{}}
		var md meta
		if json.Unmarshal(metaRaw, &md) == nil {
			m.RESPAddr, m.Version, m.MaxCAPS = md.RESPAddr, md.Version, md.MaxCAPS
			m.AdminAddr = reachable(md.Admin, addr)
		}
		m.Demand = copyMap(c.planner.Demand(name))
		m.Owed = map[string]int64{}
		held := c.planner.Held(name)
		for service := range c.cfg.Shares.Licensed() {
			if s, ok := c.planner.Shares(service)[name]; ok {
				m.Shares[service] = s
			}
			m.Owed[service] = held[service].Owed
		}
		out = append(out, m)
		seen[name] = true
	}
	for _, n := range live {
		state := "alive"
		if n.State == memberlist.StateSuspect {
			state = "suspect"
		}
		add(n.Name, n.Address(), state, n.Meta, nil)
	}
	for _, g := range c.planner.GoneMembers() {
		if p := c.peers[g.Name]; p != nil && !seen[g.Name] {
			since := g.At
			state := "dead"
			if g.Left {
				state = "left"
			}
			add(g.Name, p.addr, state, p.metaRaw, &since)
			out[len(out)-1].Reclaimed = g.Reclaimed
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func copyMap(m map[string]float64) map[string]float64 {
	out := make(map[string]float64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// LocalName returns this node's name.
func (c *Cluster) LocalName() string { return c.cfg.NodeName }

// delegate implements memberlist.Delegate.
type delegate Cluster

// AllocationSync is how often the state sync carries the account
// allocations (besides a join): see LocalState.
const AllocationSync = time.Minute

// allocationsDue reports whether the allocations go in this state sync,
// and if so notes it.
func (d *delegate) allocationsDue(now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Sub(d.allocationsSent) < AllocationSync {
		return false
	}
	d.allocationsSent = now
	return true
}

// NodeMeta publishes version, RESP address and max_caps.
func (d *delegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(meta{Version: Version, RESPAddr: d.cfg.RESPAddr, Admin: d.cfg.AdminAddr, MaxCAPS: d.cfg.MaxCAPS})
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
	switch b[0] {
	case msgDemand:
		demandReceived.Inc()
		var m demandMsg
		if json.Unmarshal(b[1:], &m) != nil || m.Node == "" || m.Node == c.cfg.NodeName {
			return
		}
		c.mu.Lock()
		p := c.peers[m.Node]
		if p == nil {
			p = &peer{}
			c.peers[m.Node] = p
		}
		c.spill.room.Store(true)
		if c.planner.Heard(c.cfg.Now(), m.Node, m.Report) {
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
	case msgLeaving:
		c.mu.Lock()
		if p := c.peers[string(b[1:])]; p != nil {
			p.leaving = true
		}
		c.mu.Unlock()
	case msgLicence:
		licenceReceived.Inc()
		if len(b) < 9 {
			return
		}
		loaded := time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
		doc := append([]byte(nil), b[9:]...)
		res, err := c.cfg.Licences.Load(doc)
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
	Documents [][]byte                                   `json:"docs"`
	ClockMark time.Time                                  `json:"clock_mark"`
	Accounts  map[string]map[string]admission.Allocation `json:"accounts,omitempty"`
}

// LocalState is this node's licences, revocations and clock mark, and
// its account allocations when a member joins and at most once every
// AllocationSync otherwise: they reach every member as they are made
// (SpreadAllocation, replayed to a member that comes back), and the
// state sync only repairs what that missed; 100,000 of them are 7 MB of
// JSON, which every push-pull (every 5 s) would otherwise send, compress
// and read.
func (d *delegate) LocalState(join bool) []byte {
	st := state{Documents: d.cfg.Licences.Documents(), ClockMark: d.cfg.Licences.ClockMark()}
	if d.cfg.Accounts != nil && (join || d.allocationsDue(time.Now())) {
		st.Accounts = d.cfg.Accounts.Allocations()
	}
	b, _ := json.Marshal(st)
	return b
}

// MergeRemoteState loads a peer's licences (each verified here) and takes
// its clock mark if it is later.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	var s state
	if err := json.Unmarshal(buf, &s); err != nil {
		d.log.Warn("cannot read a member's state", "err", err)
		return
	}
	d.cfg.Licences.ObserveMark(s.ClockMark)
	for _, doc := range s.Documents {
		if _, err := d.cfg.Licences.Load(doc); err != nil {
			d.log.Debug("not loading a licence from a member's state", "err", err)
		}
	}
	(*Cluster)(d).applyAllocations(s.Accounts)
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
	p.addr, p.metaRaw = n.Address(), append([]byte(nil), n.Meta...)
	if n.Name != c.cfg.NodeName {
		c.hadPeer.Store(true)
	}
	p.resp = respOf(p.metaRaw, p.addr)
	p.alive = true
	c.refreshOwners()
	c.mu.Unlock()
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
		p.metaRaw = append([]byte(nil), n.Meta...)
		p.resp = respOf(p.metaRaw, p.addr)
		c.refreshOwners()
	}
	c.mu.Unlock()
}

// reachable turns a listen URL with an unspecified host ("http://:8390",
// "https://0.0.0.0:8390") into one on the host of gossip address via.
func reachable(url, via string) string {
	scheme, addr, ok := strings.Cut(url, "://")
	if !ok {
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if vh, _, err := net.SplitHostPort(via); err == nil {
			return scheme + "://" + net.JoinHostPort(vh, port)
		}
	}
	return url
}
