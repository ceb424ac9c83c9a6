package resp

import (
	"context"
	"net"
	"os"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/panjf2000/gnet/v2"
)

// Durable replies. A CONSUME with ID is acknowledged only once its key is
// on disk (admission.Engine.IDTickets): a kill -9 must not undo an
// acknowledged charge's idempotency, or a retry after the restart would be
// charged twice. Its reply, and every reply after it on the connection,
// waits in the connection's held buffer until the node's key store has
// committed it (the next group commit, every idstore.FlushEvery); the
// commands after it still run, so a pipeline of CONSUMEs waits for one
// commit, not one each. Handler.Released, called after every commit,
// wakes the connections it made durable.
//
// Held replies are sent before the connection closes, whatever closes it
// but MaxHeldWait: a QUIT or a malformed request behind them has its reply
// queued behind them (ConnState.quitHeld), and a connection gnet closes
// under them (the client half-closed it after its last command, or the
// server stops) leaves them to a duplicate of its socket that sends them
// once they are durable (orphan).

// heldReplies counts the replies held for a commit, and heldWaits the
// times a connection waited for one.
var (
	heldReplies = metrics.NewCounter(`capsgate_resp_replies_held_for_commit_total`)
	heldWaits   = metrics.NewCounter(`capsgate_resp_commit_waits_total`)
)

// durableWaiters are the connections whose held replies wait for a
// commit: one entry per connection at most.
type durableWaiters struct {
	mu   sync.Mutex // guards list and the fields of every durableWaiter
	list []*durableWaiter
}

// durableWaiter is a connection's place among the waiters, for the last
// ticket it waits for. Its fields are guarded by durableWaiters.mu.
type durableWaiter struct {
	ticket uint64 // woken once the durable ticket reaches it
	listed bool
	wake   func() // must not block
}

// wait has cs woken once the key store's durable ticket reaches
// cs.heldTicket; it reports false when it already has (nothing to wait
// for). Called on cs's event loop each time it holds replies after a
// read: the commands of a later read may have raised cs.heldTicket since
// it was first listed.
func (h *Handler) wait(cs *ConnState) bool { return h.enlist(&cs.durable, cs.heldTicket, cs.wake) }

// enlist has w woken, with wake, once the durable ticket reaches ticket,
// and asks for a commit when ticket is new to it; it reports false,
// listing nothing, when it already has.
func (h *Handler) enlist(w *durableWaiter, ticket uint64, wake func()) bool {
	h.waiters.mu.Lock()
	defer h.waiters.mu.Unlock()
	// Under the lock: a Released that follows the commit this misses
	// finds the entry.
	if _, durable := h.eng.IDTickets(); durable >= ticket {
		return false // an entry still listed for an older ticket wakes it once more, harmlessly
	}
	w.wake = wake
	if w.listed && w.ticket >= ticket {
		return true
	}
	w.ticket = ticket
	if !w.listed {
		w.listed = true
		h.waiters.list = append(h.waiters.list, w)
	}
	heldWaits.Inc()
	if h.kick != nil {
		h.kick()
	}
	return true
}

// SetCommitKick sets what asks the key store for a commit now (it must
// not block); without one, held replies wait for the next periodic commit.
// Call it before serving.
func (h *Handler) SetCommitKick(kick func()) { h.kick = kick }

// Released wakes the connections whose held replies the key store's last
// commit made durable. The node calls it after every commit.
func (h *Handler) Released() {
	_, durable := h.eng.IDTickets()
	var wake []func()
	h.waiters.mu.Lock()
	kept := h.waiters.list[:0]
	for _, w := range h.waiters.list {
		if w.ticket <= durable {
			w.listed = false
			wake = append(wake, w.wake)
		} else {
			kept = append(kept, w)
		}
	}
	clear(h.waiters.list[len(kept):])
	h.waiters.list = kept
	h.waiters.mu.Unlock()
	for _, w := range wake {
		w()
	}
}

// HeldReady appends the connection's held replies to out once they are
// durable, and forgets them. It reports whether it did; false also when
// none are held.
func (h *Handler) HeldReady(cs *ConnState, out []byte) ([]byte, bool) {
	if len(cs.held) == 0 {
		return out, false
	}
	if _, durable := h.eng.IDTickets(); durable < cs.heldTicket {
		return out, false
	}
	out = append(out, cs.held...)
	cs.held, cs.heldTicket = cs.held[:0], 0
	cs.heldSince.Store(0)
	if cap(cs.held) > 1<<20 {
		cs.held = nil
	}
	return out, true
}

// Holding reports whether the connection has replies waiting for a commit.
func (cs *ConnState) Holding() bool { return len(cs.held) > 0 }

// closeBehindHeld queues reply, the connection's last (a QUIT's +OK, a
// protocol error), behind its held replies, and reports true: the
// connection closes once they are sent. With none held it reports false:
// the caller sends reply and closes now.
func (cs *ConnState) closeBehindHeld(reply []byte) bool {
	if len(cs.held) == 0 {
		return false
	}
	cs.held = append(cs.held, reply...)
	heldReplies.Inc()
	cs.quitHeld = true
	return true
}

// orphan is what a connection closed under held replies leaves: a
// duplicate of its socket, on which they go once durable before it
// closes. It counts as an open connection (Config.MaxConns) until then.
type orphan struct {
	nc    net.Conn
	held  []byte
	since int64 // engine clock: when its replies began to wait
	ready chan struct{}
	gone  chan struct{}
	once  [2]sync.Once // closes ready, gone
}

// durable is the orphan's wake: its replies may go.
func (o *orphan) durable() { o.once[0].Do(func() { close(o.ready) }) }

// drop closes the orphan's socket with its replies unsent.
func (o *orphan) drop() {
	o.once[1].Do(func() {
		close(o.gone)
		_ = o.nc.Close() // a write blocked on a client that does not read ends
	})
}

// adopt takes over the held replies of c, which gnet is closing, unless
// they waited past MaxHeldWait (the sweeper closed it: unacknowledged) or
// replies before them are still queued: gnet drops what the socket does
// not take at once as it closes, and replies after such a gap would be
// read as the answers to other commands. It reports whether it did.
// Called from OnClose.
func (s *Server) adopt(c gnet.Conn, cs *ConnState) bool {
	if s.noOrphans.Load() {
		return false
	}
	since := cs.heldSince.Load()
	if since < s.clk.Now()-int64(MaxHeldWait) || c.OutboundBuffered() > 0 {
		return false
	}
	fd, err := c.Dup()
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), "resp-held")
	nc, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		return false
	}
	o := &orphan{nc: nc, held: cs.held, since: since, ready: make(chan struct{}), gone: make(chan struct{})}
	s.mu.Lock()
	if s.noOrphans.Load() { // Stop gave up on them meanwhile
		s.mu.Unlock()
		_ = nc.Close()
		return false
	}
	s.orphans[o] = struct{}{}
	s.mu.Unlock()
	cs.held = nil
	if !s.h.enlist(&cs.durable, cs.heldTicket, o.durable) {
		o.durable()
	}
	go s.sendOrphan(o)
	return true
}

// sendOrphan sends an orphan's replies once durable, and closes it.
func (s *Server) sendOrphan(o *orphan) {
	select {
	case <-o.ready:
		_ = o.nc.SetWriteDeadline(time.Now().Add(MaxHeldWait))
		_, _ = o.nc.Write(o.held)
	case <-o.gone:
	}
	o.drop()
	s.mu.Lock()
	delete(s.orphans, o)
	s.mu.Unlock()
	s.conns.Add(-1)
	openConns.Add(-1)
	select {
	case s.orphanGone <- struct{}{}:
	default:
	}
}

// expireOrphans drops the orphans whose replies waited past MaxHeldWait,
// as the sweeper closes such connections.
func (s *Server) expireOrphans(now int64) {
	var expired []*orphan
	s.mu.Lock()
	for o := range s.orphans {
		if o.since < now-int64(MaxHeldWait) {
			expired = append(expired, o)
		}
	}
	s.mu.Unlock()
	for _, o := range expired {
		heldTimeouts.Inc()
		o.drop()
	}
}

// waitOrphans waits until every orphan has sent its replies or been
// dropped (past MaxHeldWait, or when ctx ends: it drops them all then).
func (s *Server) waitOrphans(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var err error
	done := ctx.Done()
	for {
		s.mu.Lock()
		left := len(s.orphans)
		s.mu.Unlock()
		if left == 0 {
			return err
		}
		select {
		case <-s.orphanGone:
		case <-tick.C:
			s.expireOrphans(s.clk.Now())
		case <-done:
			err, done = ctx.Err(), nil
			s.mu.Lock()
			s.noOrphans.Store(true)
			for o := range s.orphans {
				o.drop()
			}
			s.mu.Unlock()
		}
	}
}
