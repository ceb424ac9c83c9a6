package cluster

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
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
	// RESPAddr and MaxCAPS are published in the node metadata.
	RESPAddr string
	MaxCAPS  float64
	Engine   *admission.Engine
	Clock    admission.Clock
	Shares   *Shares
	Licences Licences
	Log      *slog.Logger
}

// Member is one member as GET /v1/cluster shows it.
type Member struct {
	Name     string             `json:"name"`
	Addr     string             `json:"addr"`
	State    string             `json:"state"`
	RESPAddr string             `json:"resp_addr,omitempty"`
	Version  string             `json:"version,omitempty"`
	MaxCAPS  float64            `json:"max_caps"`
	Demand   map[string]float64 `json:"demand"`
	Shares   map[string]float64 `json:"shares"`
	// Since is when a dead member was declared dead.
	Since *time.Time `json:"since,omitempty"`
}

type meta struct {
	Version  string  `json:"v"`
	RESPAddr string  `json:"resp"`
	MaxCAPS  float64 `json:"max_caps"`
}

// peer is what this node knows of another member.
type peer struct {
	demand  map[string]float64
	held    map[string]Held
	heard   time.Time // when its last demand report arrived
	dead    bool
	deadAt  time.Time
	addr    string
	metaRaw []byte
}

// Cluster is this node's membership: memberlist plus the demand exchange,
// share allocation and licence spread.
type Cluster struct {
	cfg Config
	ml  *memberlist.Memberlist
	log *slog.Logger

	mu     sync.Mutex // guards the fields below
	peers  map[string]*peer
	local  map[string]float64            // this node's demand
	held   map[string]Held               // what this node holds
	shares map[string]map[string]float64 // service → node → share, as last computed here
	// computed is this node's part as computed at the previous exchange:
	// a rise is applied one exchange late (see allocate).
	computed map[string]Share
	meter    *demandMeter

	forward chan []byte // RELEASE/DEREGISTER for other members

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
		shares: map[string]map[string]float64{}, computed: map[string]Share{}, meter: newDemandMeter(), stop: make(chan struct{}),
		forward: make(chan []byte, forwardQueue)}
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
	msgDemand     = 'd'
	msgLicence    = 'l'
	msgRelease    = 'r'
	msgDeregister = 'u'
)

// forwardQueue bounds the RELEASE/DEREGISTER messages waiting to go out;
// beyond it they are dropped (the session or registration then ends by
// its TTL) rather than blocking an event loop.
const forwardQueue = 4096

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
	bytesSent       = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="sent"}`)
	bytesReceived   = metrics.NewCounter(`capsgate_gossip_bytes_total{direction="received"}`)
	// convergence is the time from a licence's load on one node to its
	// arrival on another (by the direct path), as the two clocks tell it.
	convergence = metrics.NewHistogram(`capsgate_license_convergence_seconds`)
)

// sent counts a user message sent.
func sent(c *metrics.Counter, msg []byte) {
	c.Inc()
	bytesSent.Add(len(msg))
}

type keyMsg struct {
	Service string `json:"s"`
	Key     []byte `json:"k"` // bytes (base64 in JSON): a call-id need not be UTF-8
	Seconds int64  `json:"t,omitempty"`
}

// ForwardRelease sends a RELEASE this node could not do to every member
// (implements resp.Forwarder; never blocks).
func (c *Cluster) ForwardRelease(service, call []byte, seconds int64) {
	c.enqueue(msgRelease, keyMsg{Service: string(service), Key: append([]byte(nil), call...), Seconds: seconds})
}

// ForwardDeregister sends a DEREGISTER this node could not do to every member.
func (c *Cluster) ForwardDeregister(service, sub []byte) {
	c.enqueue(msgDeregister, keyMsg{Service: string(service), Key: append([]byte(nil), sub...)})
}

func (c *Cluster) enqueue(kind byte, m keyMsg) {
	b, _ := json.Marshal(m)
	select {
	case c.forward <- append([]byte{kind}, b...):
	default:
		// Counted, not logged: logging here would put I/O on the event
		// loop exactly when a flood fills the queue.
		forwardDropped.Inc()
	}
}

// forwarder sends queued RELEASE/DEREGISTER messages to every member.
func (c *Cluster) forwarder() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case msg := <-c.forward:
			for _, m := range c.ml.Members() {
				if m.Name != c.cfg.NodeName && c.ml.SendBestEffort(m, msg) == nil {
					sent(forwardSent, msg)
				}
			}
		}
	}
}

type demandMsg struct {
	Node   string             `json:"n"`
	Demand map[string]float64 `json:"d"`
	Held   map[string]Held    `json:"h,omitempty"`
}

// exchange measures demand, sends it to every member and reallocates,
// every ExchangeInterval.
func (c *Cluster) exchange() {
	defer c.wg.Done()
	start := time.Now()
	admission.Repeat(c.stop, ExchangeInterval, func() time.Duration {
		now := time.Now()
		demand, held := c.meter.measure(c.cfg.Engine, now.Sub(start).Seconds())
		c.mu.Lock()
		c.local, c.held = demand, held
		c.mu.Unlock()
		msg, _ := json.Marshal(demandMsg{Node: c.cfg.NodeName, Demand: demand, Held: held})
		msg = append([]byte{msgDemand}, msg...)
		for _, m := range c.ml.Members() {
			if m.Name != c.cfg.NodeName && c.ml.SendBestEffort(m, msg) == nil {
				sent(demandSent, msg)
			}
		}
		c.allocate(now)
		return ExchangeInterval
	})
}

// allocate recomputes every licensed service's split among the live
// members, in name order so that every node computes the same vectors from
// the same reports, and applies this node's part: CAPS by demand, sessions
// and subscribers by what each node holds (so a node never gets less than
// it holds while the licence covers everyone, and the spare is split).
func (c *Cluster) allocate(now time.Time) {
	names := c.liveNames()
	licensed := c.cfg.Shares.Licensed()
	c.mu.Lock()
	result := map[string]map[string]float64{}
	mine := map[string]Share{}
	self := -1
	for i, n := range names {
		if n == c.cfg.NodeName {
			self = i
		}
	}
	for service, l := range licensed {
		caps := make([]float64, len(names))
		sessions := make([]float64, len(names))
		subs := make([]float64, len(names))
		for i, n := range names {
			var d float64
			var h Held
			if n == c.cfg.NodeName {
				d, h = c.local[service], c.held[service]
			} else if p := c.peers[n]; p != nil {
				// A stale report's demand is dropped, but what a live member
				// holds is kept until it is declared dead: its sessions do
				// not end because a report was lost.
				h = p.held[service]
				if now.Sub(p.heard) < staleAfter {
					d = p.demand[service]
				}
			}
			caps[i], sessions[i], subs[i] = d, float64(h.Sessions), float64(h.Subscribers)
		}
		sh := Share{CAPS: -1, Sessions: -1, Subscribers: -1}
		if l.CAPS > 0 {
			shares := Allocate(l.CAPS, caps)
			result[service] = map[string]float64{}
			for i, n := range names {
				result[service][n] = shares[i]
			}
			if self >= 0 {
				sh.CAPS = shares[self] / l.CAPS
			}
		}
		if l.Sessions > 0 && self >= 0 {
			sh.Sessions = Allocate(float64(l.Sessions), sessions)[self] / float64(l.Sessions)
		}
		if l.Subscribers > 0 && self >= 0 {
			sh.Subscribers = Allocate(float64(l.Subscribers), subs)[self] / float64(l.Subscribers)
		}
		// A fall applies at once, a rise one exchange late: by then this
		// node's report has reached the others and they have given up what
		// it takes, so two nodes whose load rises together never both
		// claim the same spare.
		applied := sh
		if prev, ok := c.computed[service]; ok {
			applied = Share{CAPS: admission.MinLimit(sh.CAPS, prev.CAPS), Sessions: admission.MinLimit(sh.Sessions, prev.Sessions),
				Subscribers: admission.MinLimit(sh.Subscribers, prev.Subscribers)}
		}
		c.computed[service] = sh
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
			add(name, p.addr, "dead", p.metaRaw, &since)
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
	b, _ := json.Marshal(meta{Version: Version, RESPAddr: d.cfg.RESPAddr, MaxCAPS: d.cfg.MaxCAPS})
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
		p.demand, p.held, p.heard = m.Demand, m.Held, time.Now()
		c.mu.Unlock()
	case msgRelease, msgDeregister:
		forwardReceived.Inc()
		var m keyMsg
		if json.Unmarshal(b[1:], &m) != nil || c.cfg.Clock == nil {
			return
		}
		now := c.cfg.Clock.Now()
		if b[0] == msgRelease {
			c.cfg.Engine.Release(now, []byte(m.Service), m.Key, m.Seconds)
		} else {
			c.cfg.Engine.Deregister(now, []byte(m.Service), m.Key)
		}
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
	Documents [][]byte  `json:"docs"`
	ClockMark time.Time `json:"clock_mark"`
}

// LocalState is this node's licences, revocations and clock mark.
func (d *delegate) LocalState(join bool) []byte {
	b, _ := json.Marshal(state{Documents: d.cfg.Licences.Documents(), ClockMark: d.cfg.Licences.ClockMark()})
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
	p.dead, p.addr, p.metaRaw = false, n.Address(), append([]byte(nil), n.Meta...)
	c.mu.Unlock()
	if n.Name != c.cfg.NodeName {
		c.log.Info("member joined", "member", n.Name, "addr", n.Address())
	}
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	if p := c.peers[n.Name]; p != nil {
		p.dead, p.deadAt = true, time.Now()
	}
	c.mu.Unlock()
	c.log.Warn("member left or failed", "member", n.Name, "addr", n.Address())
}

func (e *events) NotifyUpdate(n *memberlist.Node) {
	c := (*Cluster)(e)
	c.mu.Lock()
	if p := c.peers[n.Name]; p != nil {
		p.metaRaw = append([]byte(nil), n.Meta...)
	}
	c.mu.Unlock()
}
