package resp

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// pacer runs the rest of long pipelines in rounds, and looks again at
// connections paused because their client does not read its replies.
//
// A connection whose replies reached their budget (ConnState.more) is
// handed to the pacer, which wakes every such connection once per round
// and starts the next round only when the last one has run. Between two
// rounds each event loop goes back to its sockets, so a client that
// pipelines commands with large replies gets them a batch per round while
// the others' requests are answered in between. (gnet runs up to 256
// queued wake-ups in a row before it polls again: a connection that woke
// itself would be woken again and again inside one of them, and hold the
// loop.) A paused connection is woken after a delay instead, to see
// whether its client has read.
type pacer struct {
	mu      sync.Mutex
	pending []paced
	waiting []paced
	kick    chan struct{}
	// running: a round is being run (set with the round taken, cleared
	// when the pacer finds no round left to run).
	running bool
}

// idle reports whether no connection waits for a round or for a look
// again, and no round is running: every connection has run what it had
// received, as far as its client read its replies.
func (p *pacer) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending) == 0 && len(p.waiting) == 0 && !p.running
}

// paced is a queued connection: its flag says it is queued.
type paced struct {
	c      gnet.Conn
	queued *atomic.Bool
	due    time.Time
}

func newPacer() *pacer { return &pacer{kick: make(chan struct{}, 1)} }

// next queues a connection for the next round; after, once d has passed.
// A connection already queued (flag set) is not queued twice. Called on
// the connection's event loop.
func (p *pacer) next(c gnet.Conn, queued *atomic.Bool) { p.after(c, queued, 0) }

func (p *pacer) after(c gnet.Conn, queued *atomic.Bool, d time.Duration) {
	if !queued.CompareAndSwap(false, true) {
		return
	}
	p.mu.Lock()
	if d <= 0 {
		p.pending = append(p.pending, paced{c: c, queued: queued})
	} else {
		p.waiting = append(p.waiting, paced{c: c, queued: queued, due: time.Now().Add(d)})
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run wakes the queued connections in rounds until stop is closed.
func (p *pacer) run(stop <-chan struct{}) {
	var round []paced
	ran := make(chan struct{}, 1)
	var left atomic.Int64
	done := func(gnet.Conn, error) error {
		if left.Add(-1) == 0 {
			ran <- struct{}{}
		}
		return nil
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		now := time.Now()
		next := time.Duration(-1)
		p.waiting = slices.DeleteFunc(p.waiting, func(w paced) bool {
			if !w.due.After(now) {
				p.pending = append(p.pending, w)
				return true
			}
			if d := w.due.Sub(now); next < 0 || d < next {
				next = d
			}
			return false
		})
		round, p.pending = p.pending, round[:0]
		p.running = len(round) > 0
		p.mu.Unlock()
		if len(round) == 0 {
			if next < 0 {
				next = time.Hour
			}
			timer.Reset(next)
			select {
			case <-stop:
				return
			case <-p.kick:
			case <-timer.C:
			}
			continue
		}
		// The last wake-up of the round to run tells the pacer (one
		// hand-off a round, not one per connection: a channel send on
		// an event loop readies the pacer and can cost the loop its
		// core).
		left.Store(int64(len(round)))
		woken := 0
		for _, e := range round {
			e.queued.Store(false)
			if e.c.Wake(done) == nil {
				woken++
			} else {
				done(nil, nil)
			}
		}
		clear(round)
		if woken == 0 {
			<-ran // sent by the last done above
			continue
		}
		select {
		case <-ran:
		case <-stop:
			return
		}
	}
}
