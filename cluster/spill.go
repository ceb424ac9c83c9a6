package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/client"
)

// Spilling (resp.Spiller): an ADMIT refused by this node's CAPS bucket goes
// to the member whose bucket, by the planner's last reports, holds the most
// room (Planner.SpillTo), over the RESP port that member publishes, marked
// SPILLED so that it is decided there and never sent on; a member that
// refuses is taken as empty and the next is asked (SpillTries in all). Its
// answer is the member's when it admits, else this node's refusal. Nothing
// more is admitted than the farm's buckets hold: the member admits from
// its own. And no more is sent than they hold: what was spilled to a
// member counts against its room until its next report, so under an
// overload, where every bucket is empty, nothing is sent.
const (
	// SpillTimeout bounds the wait for the members' answers (SpillTries
	// at most); past it the refusal stands.
	SpillTimeout = 50 * time.Millisecond
	// MaxSpilling bounds the ADMITs in flight to members at once; beyond
	// it a refusal stands.
	MaxSpilling = 256
	// spillConns bounds the connections to one member.
	spillConns = 8
)

// SpillMarker is the ADMIT option a spilled ADMIT carries, with the name of
// the member that spilled it: decided where it arrives, never spilled on.
const SpillMarker = "SPILLED"

var (
	spillBusy   = metrics.NewCounter(`capsgate_spill_skipped_total{why="busy"}`)
	spillNoRoom = metrics.NewCounter(`capsgate_spill_skipped_total{why="no_room"}`)
	spillFailed = metrics.NewCounter(`capsgate_spill_failed_total`)
)

// memberClients holds a pooled RESP client per member's RESP address.
type memberClients struct {
	mu      sync.Mutex // guards clients
	clients map[string]*client.Client
}

// get returns the pooled client of the member at addr, made with cfg on
// first use.
func (m *memberClients) get(ctx context.Context, addr string, cfg client.Config) (*client.Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cl := m.clients[addr]; cl != nil {
		return cl, nil
	}
	cl, err := client.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if m.clients == nil {
		m.clients = map[string]*client.Client{}
	}
	m.clients[addr] = cl
	return cl, nil
}

// close closes the members' clients.
func (m *memberClients) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for addr, cl := range m.clients {
		_ = cl.Close()
		delete(m.clients, addr)
	}
}

// spillers holds the state of spilling, and which members' RESP ports
// failed (spilled ADMITs and routed CONSUMEs both skip those).
type spillers struct {
	clients memberClients
	mu      sync.Mutex           // guards down
	down    map[string]time.Time // addresses that failed, until when they are skipped
	// anyDown: down may hold an address (read without the lock).
	anyDown  atomic.Bool
	inFlight atomic.Int64
	// room: a member may have room, as far as the last report or plan
	// says; cleared when SpillTo finds none, so that under an overload,
	// where every bucket is empty, a refusal takes the cluster's lock at
	// most once per report heard, not once per attempt.
	room atomic.Bool
}

// spillBackoff is how long a member whose RESP port failed a spilled ADMIT
// gets no other: a port that does not answer would hold each connection
// that spills to it for SpillTimeout.
const spillBackoff = 5 * time.Second

// usable reports whether addr may be sent a spilled ADMIT at now.
func (s *spillers) usable(addr string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	until, ok := s.down[addr]
	if ok && now.After(until) {
		delete(s.down, addr)
		s.anyDown.Store(len(s.down) > 0)
		return true
	}
	return !ok
}

// failed records that addr failed at now.
func (s *spillers) failed(addr string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down == nil {
		s.down = map[string]time.Time{}
	}
	s.down[addr] = now.Add(spillBackoff)
	s.anyDown.Store(true)
}

// Spill implements resp.Spiller.
func (c *Cluster) Spill(args [][]byte, trunk []byte, done func(admission.Decision, bool)) bool {
	if len(args) < 2 {
		return false
	}
	if !c.spill.room.Load() {
		spillNoRoom.Inc()
		return false
	}
	if c.spill.inFlight.Add(1) > MaxSpilling {
		c.spill.inFlight.Add(-1)
		spillBusy.Inc()
		return false
	}
	// The member is chosen by the bucket that refused: the licence's, or
	// the trunk key's (planned under its TrunkName).
	service := string(args[1])
	if trunk != nil {
		service = admission.TrunkName(service, string(trunk))
	}
	l, licensed := c.cfg.Shares.Limit(service)
	to, addr := c.spillTarget(service, l.CAPS)
	if !licensed || addr == "" {
		c.spill.inFlight.Add(-1)
		spillNoRoom.Inc()
		return false
	}
	cmd := make([][]byte, 0, len(args)+2)
	for _, a := range args {
		cmd = append(cmd, append([]byte(nil), a...))
	}
	cmd = append(cmd, []byte(SpillMarker), []byte(c.cfg.NodeName))
	go func() {
		defer c.spill.inFlight.Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), SpillTimeout)
		defer cancel()
		for try := 1; ; try++ {
			d, asked, ok := c.spillTo(ctx, addr, cmd)
			if ok {
				done(d, true)
				return
			}
			if !asked {
				break // not decided there: the refusal stands
			}
			// Its bucket emptied since its report: the next member with
			// room, if any (SpillTries in all).
			c.mu.Lock()
			c.planner.SpillRefused(service, to)
			c.mu.Unlock()
			if try == SpillTries || ctx.Err() != nil {
				break
			}
			if to, addr = c.spillTarget(service, l.CAPS); addr == "" {
				break
			}
		}
		done(admission.Decision{}, false)
	}()
	return true
}

// spillTarget returns the member to spill an attempt for service to and
// its RESP address ("": none).
func (c *Cluster) spillTarget(service string, licence float64) (name, addr string) {
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	to, ok := c.planner.SpillTo(now, service, licence)
	if !ok {
		c.spill.room.Store(false)
	}
	if p := c.peers[to]; ok && p != nil && p.resp != "" && c.spill.usable(p.resp, time.Now()) {
		return to, p.resp
	}
	return "", ""
}

// spillTo asks the member at addr to decide cmd and reports its decision,
// whether the member decided it (asked) and whether it admitted.
func (c *Cluster) spillTo(ctx context.Context, addr string, cmd [][]byte) (d admission.Decision, asked, admitted bool) {
	d, err := c.ask(ctx, &c.spill.clients, addr, SpillTimeout, spillConns, cmd)
	if errors.Is(err, client.ErrPoolBusy) {
		// This node's connections to the member stayed busy: the wait
		// was on this side and says nothing of the member's port or
		// bucket.
		spillBusy.Inc()
		return admission.Decision{}, false, false
	}
	if err != nil {
		spillFailed.Inc()
		c.spill.failed(addr, time.Now())
		c.log.Debug("a member did not decide a spilled ADMIT", "addr", addr, "err", err)
		return admission.Decision{}, false, false
	}
	if !d.Admitted() {
		return admission.Decision{}, true, false
	}
	return admission.Decision{Reason: admission.OK, Remaining: d.Remaining}, true, true
}

// respOf returns the RESP address a member publishes in its metadata, on
// its gossip host when it listens on every address; "" when none.
func respOf(metaRaw []byte, gossip string) string {
	var md meta
	if json.Unmarshal(metaRaw, &md) != nil || md.RESPAddr == "" {
		return ""
	}
	u := reachable("resp://"+md.RESPAddr, gossip)
	if len(u) <= len("resp://") {
		return ""
	}
	return u[len("resp://"):]
}
