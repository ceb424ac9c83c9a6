package cluster

import (
	"encoding/json"
	"maps"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/sat"
	"github.com/capsgate/capsgate/licensing/ledger"
)

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
	// Stretch: the member reads a report's refresh stretch (Report.Stretch);
	// a member of an earlier release does not, and forgets the entries a
	// stretched refresh names less often than deltaRefresh reports.
	Stretch bool `json:"stretch,omitempty"`
	// Packs: the member reads packed messages (msgPacked); one of an
	// earlier release is sent messages as they are.
	Packs bool `json:"packs,omitempty"`
}

// noteMeta keeps a member's metadata and what it says: its RESP address,
// whether it reads a report's refresh stretch (meta.Stretch) and packed
// messages (meta.Packs). Metadata that does not parse says neither.
func (p *peer) noteMeta(raw []byte) {
	p.metaRaw = append([]byte(nil), raw...)
	var md meta
	ok := json.Unmarshal(raw, &md) == nil
	p.resp, p.stretch, p.packs = respOf(p.metaRaw, p.addr), ok && md.Stretch, ok && md.Packs
}

// refreshBound is the planner's refreshEntries for the members alive:
// refreshEntries when every one reads the stretch, else none (every entry
// refreshed in deltaRefresh reports, as an earlier release expects). It
// reads what NotifyJoin and NotifyUpdate noted of their metadata, under mu
// as the planner learns of joins: a member that joins is either counted
// here or after the plan (its join then sends the next report whole, and
// the next plan drops the stretch to 1). Called with mu held.
func (c *Cluster) refreshBound() int {
	for _, p := range c.peers {
		if p.alive && !p.stretch {
			return noStretch
		}
	}
	return refreshEntries
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
	stretch bool   // its metadata says it reads a refresh stretch
	packs   bool   // its metadata says it reads packed messages
	// head is its ledger head as last reported; witnessed the seq of the
	// head last handed to Witnesses.
	head      ledger.Witness
	witnessed uint64
}

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
		maps.DeleteFunc(m.Demand, func(service string, _ float64) bool { return strings.Contains(service, admission.TrunkSep) })
		m.Owed = map[string]int64{}
		held := c.planner.Held(name)
		for _, service := range c.cfg.Shares.LicensedNames() { // not the keys: their parts are in their own view (GET .../limits)
			if s, ok := c.planner.Share(service, name); ok {
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

// FarmUsage is a service's usage summed over the live members, as each
// last reported it (this node's own as it last measured it): what
// GET /v1/services/{service} shows as the cluster's.
type FarmUsage struct {
	// Members is how many live members the sums are over.
	Members int `json:"members"`
	// OfferedCAPS is the attempts a second the members were offered (a
	// node outside a cluster: those it admitted over the last second).
	OfferedCAPS float64 `json:"offered_caps"`
	Sessions    int64   `json:"sessions"`
	Subscribers int64   `json:"subscribers"`
	// TokensUsed is what the members charged the service's pool and its
	// accounts' this period.
	TokensUsed int64 `json:"tokens_used"`
}

// Usage returns service's usage over the live members (FarmUsage), its
// accounts' pools included (this node's from its account book, the
// others' from their reports).
func (c *Cluster) Usage(service string) FarmUsage {
	names := c.liveNames()
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.planner
	accounts := p.book.byService[service]
	u := FarmUsage{Members: len(names)}
	for _, name := range names {
		u.OfferedCAPS += p.Demand(name)[service]
		held := p.Held(name)
		h := held[service]
		u.Sessions, u.Subscribers = sat.Add(u.Sessions, h.Sessions), sat.Add(u.Subscribers, h.Subscribers)
		u.TokensUsed = sat.Add(u.TokensUsed, h.Tokens)
		for e := range accounts {
			used := held[e.key].Tokens
			if name == p.self {
				used = e.used
			}
			u.TokensUsed = sat.Add(u.TokensUsed, used)
		}
	}
	return u
}
