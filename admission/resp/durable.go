package resp

import (
	"sync"

	"github.com/VictoriaMetrics/metrics"
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

// heldReplies counts the replies held for a commit, and heldWaits the
// times a connection waited for one.
var (
	heldReplies = metrics.NewCounter(`capsgate_resp_replies_held_for_commit_total`)
	heldWaits   = metrics.NewCounter(`capsgate_resp_commit_waits_total`)
)

// durableWaiters are the connections whose held replies wait for a
// commit: one entry per connection at most.
type durableWaiters struct {
	mu   sync.Mutex // guards list
	list []durableWaiter
}

type durableWaiter struct {
	ticket uint64
	wake   func()
}

// wait registers cs to be woken once the key store's durable ticket
// reaches cs.heldTicket; it reports false when it already has (nothing
// registered). Called on cs's event loop.
func (h *Handler) wait(cs *ConnState) bool {
	if cs.heldWaiting {
		return true
	}
	h.waiters.mu.Lock()
	defer h.waiters.mu.Unlock()
	// Under the lock: a Released that follows the commit this misses
	// finds the entry.
	if _, durable := h.eng.IDTickets(); durable >= cs.heldTicket {
		return false
	}
	h.waiters.list = append(h.waiters.list, durableWaiter{ticket: cs.heldTicket, wake: cs.wake})
	cs.heldWaiting = true
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
// durable, and forgets them (the connection's waiter entry is gone by
// then). It reports whether it did; false also when none are held.
func (h *Handler) HeldReady(cs *ConnState, out []byte) ([]byte, bool) {
	if len(cs.held) == 0 {
		return out, false
	}
	if _, durable := h.eng.IDTickets(); durable < cs.heldTicket {
		return out, false
	}
	out = append(out, cs.held...)
	cs.held, cs.heldTicket, cs.heldWaiting = cs.held[:0], 0, false
	cs.heldSince.Store(0)
	if cap(cs.held) > 1<<20 {
		cs.held = nil
	}
	return out, true
}

// Holding reports whether the connection has replies waiting for a commit.
func (cs *ConnState) Holding() bool { return len(cs.held) > 0 }
