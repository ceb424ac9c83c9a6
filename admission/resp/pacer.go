package resp

import (
	"sync"

	"github.com/panjf2000/gnet/v2"
)

// pacer runs the rest of long pipelines in rounds. A connection whose
// replies reached their budget (ConnState.more) is handed to the pacer,
// which wakes every such connection once per round and starts the next
// round only when the last one has run. Between two rounds each event
// loop goes back to its sockets, so a client that pipelines commands with
// large replies gets them a batch per round while the others' requests
// are answered in between. (gnet runs up to 256 queued wake-ups in a row
// before it polls again: a connection that woke itself would be woken
// again and again inside one of them, and hold the loop.)
type pacer struct {
	mu      sync.Mutex
	pending []gnet.Conn
	kick    chan struct{}
}

func newPacer() *pacer { return &pacer{kick: make(chan struct{}, 1)} }

// add queues a connection for the next round. Called on its event loop.
func (p *pacer) add(c gnet.Conn) {
	p.mu.Lock()
	p.pending = append(p.pending, c)
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run wakes the queued connections in rounds until stop is closed.
func (p *pacer) run(stop <-chan struct{}) {
	var round []gnet.Conn
	ran := make(chan struct{}, 64)
	for {
		select {
		case <-stop:
			return
		case <-p.kick:
		}
		for {
			p.mu.Lock()
			round, p.pending = p.pending, round[:0]
			p.mu.Unlock()
			if len(round) == 0 {
				break
			}
			woken := 0
			for _, c := range round {
				if c.Wake(func(gnet.Conn, error) error { ran <- struct{}{}; return nil }) == nil {
					woken++
				}
			}
			clear(round)
			for range woken {
				select {
				case <-ran:
				case <-stop:
					return
				}
			}
		}
	}
}
