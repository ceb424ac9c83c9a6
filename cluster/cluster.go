package cluster

import (
	"fmt"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster/trunks"
	"github.com/capsgate/capsgate/licensing/registry"
)

// Version is carried in node metadata.
const Version = "0.1.0"

// Licences is what the cluster needs of the licence registry: its documents
// to spread and a way to load the ones peers send (a licence file as it was
// loaded, which may hold several documents: all load or none).
type Licences interface {
	Documents() [][]byte
	// Digest names the documents, whatever their order.
	Digest() string
	Load(text []byte) ([]registry.Result, error)
	// LoadShared is Load for documents a member sent (see
	// registry.Registry.LoadShared).
	LoadShared(text []byte) ([]registry.Result, error)
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
	// give the member they go to ("": none) when the farm has no gossip
	// key; with one they authenticate as resp.MemberUser (MemberSecret).
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
	// Trunks holds the limits of the services' keys (ADMIT ... TRUNK);
	// the cluster spreads them (nil: not spread).
	Trunks *trunks.Book
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
	// AllocationsDigest names the allocations held: members holding the
	// same give the same digest.
	AllocationsDigest() string
}

// Cluster is this node's membership: memberlist plus the demand exchange,
// share allocation and licence spread.
type Cluster struct {
	cfg Config
	ml  *memberlist.Memberlist
	log *slog.Logger

	mu    sync.Mutex // guards the fields below
	peers map[string]*peer
	// early are the names whose demand reports came before the news of
	// their join (dropped: see NotifyMsg); at the join each is asked for
	// a whole report (msgWhole), by when they were kept: at most
	// earlyKeep, those older than earlyFor let go for newer ones.
	early map[string]time.Time
	// wholeAt is when a member's ask last made the next report whole.
	wholeAt time.Time
	// streaming holds the members a report is being sent to over TCP.
	streaming map[string]bool
	planner   *Planner
	// licensed is the licences' and keys' limits the planner plans from,
	// kept up to date by Shares.SyncLicensed (under mu).
	licensed map[string]admission.Limits
	usage    *UsageReader // read by the exchange loop only
	// watch is the trunk keys' buckets starved watches, as of the last
	// plan, and plans counts the plans (both guarded by mu); spending is
	// the licences' buckets spent since the last plan or not full since,
	// and stale a scratch list (both the exchange loop's own: see starved).
	watch    []starvedWatch
	plans    uint64
	spending map[*admission.Service]spendingWatch
	stale    []*admission.Service
	// offered is, by member and by what was sent, the last time this node
	// sent it its licences or its allocations because their digests
	// differed (see offerState; guarded by mu).
	offered map[offerKey]stateOffer
	// allocsSeen is this node's allocations' digest as a push-pull last
	// found it, allocsSince when it became that, and allocsApart since
	// when each member's has differed from it (allocationsDue; guarded by
	// mu).
	allocsSeen  string
	allocsSince time.Time
	allocsApart map[string]time.Time

	wake    chan struct{} // a report calls for an early plan (Woken)
	ex      exchangeState // StepExchange's, touched by its caller only but heard
	forward chan op       // RELEASE/DEREGISTER/claims for other members
	// wallOff is the wall clock's offset from the engine's (wallOf).
	wallOff atomic.Int64
	// reclaiming holds a token for each batch of claims made again being
	// sent (reclaim).
	reclaiming chan struct{}
	replay     replayLog
	spill      spillers
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
		stop:  make(chan struct{}), wake: make(chan struct{}, 1), forward: make(chan op, forwardQueue),
		reclaiming: make(chan struct{}, reclaimSends)}
	if cfg.Clock != nil {
		off, ok := c.readWallOff()
		for try := 0; !ok && try < 100; try++ {
			off, ok = c.readWallOff()
		}
		c.wallOff.Store(off)
	}
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
	// Messages worth deflating are packed here (pack.go), with
	// compressors kept from one to the next.
	mc.EnableCompression = false
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

// Start joins the configured members and starts forwarding operations to
// them. The periodic work is the caller's to step, from one goroutine
// each: StepExchange (woken early by Woken) and StepRejoin; the node
// drives them from its table of background work.
func (c *Cluster) Start() error {
	c.join()
	c.wg.Add(1)
	go c.forwarder()
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

// StepRejoin tries the join list again while this node is alone (a node
// that reaches none of the members it was given runs alone and keeps
// trying); it is due again after rejoinEvery.
func (c *Cluster) StepRejoin(time.Time) time.Duration {
	if c.stopped() {
		return rejoinEvery
	}
	if len(c.cfg.Join) > 0 && c.ml.NumMembers() <= 1 {
		c.join()
	}
	return rejoinEvery
}

// stopped reports whether Stop has begun: a step then does nothing.
func (c *Cluster) stopped() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
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

// LocalName returns this node's name.
func (c *Cluster) LocalName() string { return c.cfg.NodeName }
