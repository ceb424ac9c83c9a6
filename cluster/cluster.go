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
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/meter"
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
// to spread and a way to load the ones peers send.
type Licences interface {
	Documents() [][]byte
	Add(armored []byte) (registry.Result, error)
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
	MaxCAPS   float64
	Engine    *admission.Engine
	Clock     admission.Clock
	Shares    *Shares
	Licences  Licences
	// Policy is what a side does while members are unreachable.
	Policy PolicyConfig
	// Accounts holds the token allocations made through the admin API; the
	// cluster spreads them (nil: not spread).
	Accounts Accounts
	// LedgerHead returns this node's usage-ledger head, which every member
	// writes into its own ledger as a witness; nil: none.
	LedgerHead func() (seq uint64, hash string)
	Log        *slog.Logger
}

// Accounts is what the cluster needs of the node's account allocations.
type Accounts interface {
	// Apply takes an allocation made on another member (the later wins).
	Apply(service, account string, a meter.Allocation) error
	Allocations() map[string]map[string]meter.Allocation
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
	// Since is when a dead member was declared dead.
	Since *time.Time `json:"since,omitempty"`
	// Reclaimed: a dead member whose part the live members took over.
	Reclaimed bool `json:"reclaimed,omitempty"`
}

type meta struct {
	Version  string  `json:"v"`
	RESPAddr string  `json:"resp"`
	Admin    string  `json:"admin,omitempty"`
	MaxCAPS  float64 `json:"max_caps"`
}

// peer is what this node knows of another member.
type peer struct {
	demand    map[string]float64
	tokenRate map[string]float64 // tokens per second it charges to each pool
	held      map[string]Held
	heard     time.Time // when its last demand report arrived
	dead      bool
	leaving   bool // it said it is leaving
	left      bool // it left gracefully: its part is free at once
	reclaimed bool // declared dead long enough: its part went to the live
	deadAt    time.Time
	addr      string
	metaRaw   []byte
	// applied are its parts of each licence, as it reported them.
	applied map[string]Share
	// joinedAt is when it last joined: a report heard before is stale.
	joinedAt time.Time
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

	mu      sync.Mutex // guards the fields below
	peers   map[string]*peer
	local   map[string]float64            // this node's demand
	rate    map[string]float64            // this node's token rate per pool
	held    map[string]Held               // what this node holds
	side    Side                          // as last decided
	budget  map[string]int64              // this node's token budget per pool, as planned and reported
	applied map[string]Share              // this node's parts as applied, and reported
	shares  map[string]map[string]float64 // service → node → share, as last computed here
	// computed is this node's part as computed at the previous exchange:
	// a rise is applied one exchange late (see allocate).
	computed map[string]Share
	meter    *demandMeter

	forward chan op // RELEASE/DEREGISTER/claims for other members
	claims  claims
	replay  replayLog

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
	c := &Cluster{cfg: cfg, log: cfg.Log, peers: map[string]*peer{}, local: map[string]float64{},
		shares: map[string]map[string]float64{}, budget: map[string]int64{}, applied: map[string]Share{}, computed: map[string]Share{}, meter: newDemandMeter(), stop: make(chan struct{}),
		forward: make(chan op, forwardQueue), side: Side{State: SideWhole, Fraction: 1, Live: 1, Known: 1}}
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
	mc.Logger = log.New(logWriter{cfg.Log}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cannot start gossip on %s (gossip.addr, --gossip-addr): %w", cfg.BindAddr, err)
	}
	c.ml = ml
	return c, nil
}

// logWriter sends memberlist's log lines to slog at debug level, but its
// warnings and errors at their level.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	s := string(p)
	switch {
	case len(s) > 7 && s[:7] == "[ERR] m":
		w.l.Error(s)
	case len(s) > 8 && s[:8] == "[WARN] m":
		w.l.Warn(s)
	default:
		w.l.Debug(s)
	}
	return len(p), nil
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
	})
	return err
}

// Kinds of user messages.
const (
	msgDemand  = 'd'
	msgLicence = 'l'
	msgOps     = 'o' // a batch of forwarded RELEASE/DEREGISTER and claims
	msgLeaving = 'x' // the sender is about to leave gracefully
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

type demandMsg struct {
	Node      string             `json:"n"`
	HeadSeq   uint64             `json:"ls,omitempty"`
	HeadHash  string             `json:"lh,omitempty"`
	Applied   map[string]Share   `json:"a,omitempty"`
	Demand    map[string]float64 `json:"d"`
	TokenRate map[string]float64 `json:"r,omitempty"`
	Held      map[string]Held    `json:"h,omitempty"`
}

// exchange measures demand, sends it to every member and reallocates,
// every ExchangeInterval.
func (c *Cluster) exchange() {
	defer c.wg.Done()
	start := time.Now()
	admission.Repeat(c.stop, ExchangeInterval, func() time.Duration {
		now := time.Now()
		demand, rate, held := c.meter.measure(c.cfg.Engine, now.Sub(start).Seconds())
		c.mu.Lock()
		c.local, c.rate, c.held = demand, rate, held
		c.mu.Unlock()
		c.allocate(now)
		// The report goes out after the allocation, with the token budgets
		// just planned: they apply at the next exchange, after the others
		// have them.
		c.mu.Lock()
		report := make(map[string]Held, len(held))
		for service, h := range held {
			report[service] = h
		}
		for service, b := range c.budget {
			h := report[service]
			h.Budget = b
			report[service] = h
		}
		applied := make(map[string]Share, len(c.applied))
		for service, a := range c.applied {
			applied[service] = a
		}
		c.mu.Unlock()
		dm := demandMsg{Node: c.cfg.NodeName, Demand: demand, TokenRate: rate, Held: report, Applied: applied}
		if c.cfg.LedgerHead != nil {
			dm.HeadSeq, dm.HeadHash = c.cfg.LedgerHead()
		}
		msg, _ := json.Marshal(dm)
		msg = append([]byte{msgDemand}, msg...)
		for _, m := range c.ml.Members() {
			if m.Name != c.cfg.NodeName && c.ml.SendBestEffort(m, msg) == nil {
				sent(demandSent, msg)
			}
		}
		return ExchangeInterval
	})
}

// allocate recomputes every licensed service's split among the live
// members, in name order so that every node computes the same vectors from
// the same reports, and applies this node's part: CAPS by demand, sessions
// and subscribers by what each node holds (so a node never gets less than
// it holds while the licence covers everyone, and the spare is split),
// tokens by the rate each node charges them. While members it knew are
// unreachable, the partition policy decides how much of each licence the
// live side splits (decideSide).
func (c *Cluster) allocate(now time.Time) {
	names := c.liveNames()
	licensed := c.cfg.Shares.Licensed()
	c.mu.Lock()
	var failed []failure
	for name, p := range c.peers {
		if p.dead && !p.left && !p.reclaimed && !slices.Contains(names, name) {
			failed = append(failed, failure{name: name, at: p.deadAt})
		}
	}
	side, reclaim := decideSide(now, c.cfg.Policy, names, failed)
	for _, name := range reclaim {
		c.peers[name].reclaimed = true
		c.log.Warn("a failed member's part of every licence goes to the live members", "member", name,
			"after", c.cfg.Policy.ReclaimAfter)
	}
	if side.State != c.side.State {
		c.log.Warn("partition state changed", "from", c.side.State, "to", side.State, "live", side.Live, "known", side.Known,
			"policy", c.cfg.Policy.Policy.String())
	}
	c.side = side
	sideFraction.Set(side.Fraction)
	result := map[string]map[string]float64{}
	mine := map[string]Share{}
	self := slices.Index(names, c.cfg.NodeName)
	for service, l := range licensed {
		caps := make([]float64, len(names))
		sessions := make([]float64, len(names))
		subs := make([]float64, len(names))
		rates := make([]float64, len(names))
		for i, n := range names {
			var d, r float64
			var h Held
			if n == c.cfg.NodeName {
				d, r, h = c.local[service], c.rate[service], c.held[service]
			} else if p := c.peers[n]; p != nil {
				// A stale report's demand is dropped, but what a live member
				// holds is kept until it is declared dead: its sessions do
				// not end because a report was lost.
				h = p.held[service]
				if now.Sub(p.heard) < staleAfter {
					d, r = p.demand[service], p.tokenRate[service]
				}
			}
			caps[i], sessions[i], subs[i], rates[i] = d, float64(h.Sessions), float64(h.Subscribers), r
		}
		sh := Share{CAPS: -1, Sessions: -1, Subscribers: -1}
		if l.CAPS > 0 {
			shares := Allocate(side.Fraction*l.CAPS, caps)
			result[service] = map[string]float64{}
			for i, n := range names {
				result[service][n] = shares[i]
			}
			if self >= 0 {
				sh.CAPS = shares[self] / l.CAPS
			}
		}
		if l.Sessions > 0 && self >= 0 {
			sh.Sessions = Allocate(side.Fraction*float64(l.Sessions), sessions)[self] / float64(l.Sessions)
		}
		if l.Subscribers > 0 && self >= 0 {
			sh.Subscribers = Allocate(side.Fraction*float64(l.Subscribers), subs)[self] / float64(l.Subscribers)
		}
		if l.Tokens != admission.Unlimited && self >= 0 && c.clusteredLocked() {
			sh.TokensShared = true
			sh.TokensBudget, sh.AccountBudgets = c.budgetsLocked(service, l.Tokens, names, side.Fraction)
		}
		// A fall applies at once. A rise goes no further than what the
		// other live members' own reports leave free (riseCap): a member
		// whose fall has not been reported yet, whose report is stale, or
		// that has not reported since it (re)joined keeps what it may
		// hold, so nodes whose views differ for a moment (a member just
		// joined, a partition healing on one side first, failures seen at
		// different times) never claim the same part twice.
		prev, ok := c.applied[service]
		if !ok && len(names) > 0 {
			// A licence new here starts from an even part, not from nothing.
			even := side.Fraction / float64(len(names))
			prev = Share{CAPS: even, Sessions: even, Subscribers: even}
		}
		cp := c.riseCapLocked(service, names, side.Fraction)
		applied := Share{CAPS: rise(sh.CAPS, prev.CAPS, cp.CAPS), Sessions: rise(sh.Sessions, prev.Sessions, cp.Sessions),
			Subscribers: rise(sh.Subscribers, prev.Subscribers, cp.Subscribers), TokensShared: sh.TokensShared, TokensBudget: sh.TokensBudget,
			AccountBudgets: sh.AccountBudgets}
		// A token budget is reported one exchange before it applies.
		if old, ok := c.computed[service]; ok && old.TokensShared {
			applied.TokensBudget = min(sh.TokensBudget, old.TokensBudget)
			applied.AccountBudgets = map[string]int64{}
			for acct, b := range sh.AccountBudgets {
				if ob, ok := old.AccountBudgets[acct]; ok {
					b = min(b, ob)
				} else {
					b = 0 // new here: after its report
				}
				applied.AccountBudgets[acct] = b
			}
		}
		c.computed[service] = sh
		c.applied[service] = applied
		mine[service] = applied
	}
	c.shares = result
	c.mu.Unlock()
	for service, sh := range mine {
		if err := c.cfg.Shares.SetShare(service, sh); err != nil {
			c.log.Error("cannot apply the share", "service", service, "err", err)
		}
	}
}

// riseCap returns, per dimension, the part of a service's licence that the
// other live members' reports leave to this node: fraction less what each
// applies, a member with no report since it (re)joined counting as holding
// everything. Called with mu held.
func (c *Cluster) riseCapLocked(service string, live []string, fraction float64) Share {
	var others Share
	for _, n := range live {
		if n == c.cfg.NodeName {
			continue
		}
		p := c.peers[n]
		if p == nil || !p.heard.After(p.joinedAt) {
			return Share{}
		}
		a := p.applied[service]
		others.CAPS += whole(a.CAPS)
		others.Sessions += whole(a.Sessions)
		others.Subscribers += whole(a.Subscribers)
	}
	return Share{CAPS: max(fraction-others.CAPS, 0), Sessions: max(fraction-others.Sessions, 0),
		Subscribers: max(fraction-others.Subscribers, 0)}
}

// whole reads a reported part: negative means the whole licence.
func whole(f float64) float64 {
	if f < 0 {
		return 1
	}
	return f
}

// rise applies a computed part: a fall at once, a rise up to the cap (but
// never below what is applied now). Negative parts mean the whole licence
// (not shared) and pass through.
func rise(computed, prev, cp float64) float64 {
	if computed < 0 || computed <= prev {
		return computed
	}
	return min(computed, max(prev, cp))
}

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
	return c.side
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
		if name == c.cfg.NodeName {
			m.Demand = copyMap(c.local)
		} else if p := c.peers[name]; p != nil {
			m.Demand = copyMap(p.demand)
		}
		for service, byNode := range c.shares {
			if s, ok := byNode[name]; ok {
				m.Shares[service] = s
			}
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
	for name, p := range c.peers {
		if !seen[name] && p.dead {
			since := p.deadAt
			state := "dead"
			if p.left {
				state = "left"
			}
			add(name, p.addr, state, p.metaRaw, &since)
			out[len(out)-1].Reclaimed = p.reclaimed
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
		p.demand, p.tokenRate, p.held, p.applied, p.heard = m.Demand, m.TokenRate, m.Held, m.Applied, time.Now()
		if m.HeadSeq > p.head.Seq && isHash(m.HeadHash) {
			p.head = ledger.Witness{Node: m.Node, Seq: m.HeadSeq, Hash: m.HeadHash}
		}
		c.mu.Unlock()
	case msgOps:
		forwardReceived.Inc()
		c.apply(b[1:])
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
		res, err := c.cfg.Licences.Add(doc)
		if err != nil {
			c.log.Warn("refusing a licence sent by a member", "err", err)
			return
		}
		if res.New {
			convergence.Update(max(time.Since(loaded).Seconds(), 0))
		}
	}
}

// GetBroadcasts: licences go directly and by state sync; nothing queued.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

type state struct {
	Documents [][]byte                               `json:"docs"`
	ClockMark time.Time                              `json:"clock_mark"`
	Accounts  map[string]map[string]meter.Allocation `json:"accounts,omitempty"`
}

// LocalState is this node's licences, revocations and clock mark.
func (d *delegate) LocalState(join bool) []byte {
	st := state{Documents: d.cfg.Licences.Documents(), ClockMark: d.cfg.Licences.ClockMark()}
	if d.cfg.Accounts != nil {
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
		if _, err := d.cfg.Licences.Add(doc); err != nil {
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
	if p == nil {
		p = &peer{}
		c.peers[n.Name] = p
	}
	back, downSince := p.dead, p.deadAt
	p.dead, p.left, p.reclaimed, p.addr, p.metaRaw = false, false, false, n.Address(), append([]byte(nil), n.Meta...)
	p.joinedAt = time.Now()
	c.mu.Unlock()
	if n.Name != c.cfg.NodeName {
		c.log.Info("member joined", "member", n.Name, "addr", n.Address())
		if back {
			go c.replayTo(n.Name, downSince)
		}
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	left := n.Name == c.cfg.NodeName
	if p := c.peers[n.Name]; p != nil {
		left = left || p.leaving
		p.dead, p.left, p.leaving, p.deadAt = true, left, false, time.Now()
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
	}
	c.mu.Unlock()
}

// isHash reports whether h is a ledger record hash (64 lowercase hex
// digits): a peer's malformed head must not spoil this node's ledger.
func isHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for _, c := range h {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
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
