package bench

import (
	"context"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/resp"
)

// LimitReply is what the Limit server answers to every command
// (resp.NullReply).
const LimitReply = resp.NullReply

// Limit is capsgate's own RESP server (resp.Server: its gnet event loops,
// framing, bounds and pacing) with a handler that decides nothing
// (resp.NewNullHandler): it costs what the transport costs and nothing for
// deciding, the ceiling capsgate's front end can reach on this machine.
type Limit struct {
	// Loops is the number of event loops Start runs (0: one per CPU, as
	// capsgate's default); set it before Start.
	Loops int
	addr  string
	srv   *resp.Server
}

// NewLimit returns a Limit server for addr (host:port; port 0 picks one).
func NewLimit(addr string) *Limit { return &Limit{addr: addr} }

// Start listens and serves in the background until Stop.
func (l *Limit) Start() error {
	l.srv = resp.NewServer(resp.Config{Addr: l.addr, EventLoops: l.Loops}, resp.NewNullHandler(), admission.NewSystemClock())
	if err := l.srv.Start(); err != nil {
		return err
	}
	l.addr = l.srv.Addr()
	return nil
}

// Addr is the address Limit listens on.
func (l *Limit) Addr() string { return l.addr }

// Stop stops the server and waits for it.
func (l *Limit) Stop(ctx context.Context) error { return l.srv.Stop(ctx) }

// ServeLimit runs a Limit server on addr with loops event loops (0: one
// per CPU) until ctx ends, printing the address it listens on to ready
// (one line) once it does.
func ServeLimit(ctx context.Context, addr string, loops int, ready func(addr string)) error {
	l := NewLimit(addr)
	l.Loops = loops
	if err := l.Start(); err != nil {
		return err
	}
	ready(l.Addr())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return l.Stop(sctx)
}
