package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudwego/netpoll"
)

// Pipeline queues commands on one connection and sends them in one write;
// Exec then reads every reply, in order. Commands are encoded straight
// into netpoll's output buffer and replies point into its input buffer, so
// a Pipeline reused batch after batch allocates nothing.
//
// A Pipeline is used by one goroutine. Its replies are valid until the
// next Reset, Append or Exec.
type Pipeline struct {
	c       *Conn
	queued  int   // commands appended since the last Exec
	err     error // the first Append error, returned by Exec
	replies []Reply
	parser  parser
	held    bool // replies point into the read buffer: release it before reuse
}

// Reset forgets the last batch's replies (releasing their memory to the
// connection).
func (p *Pipeline) Reset() {
	if p.held {
		_ = p.c.r.Release()
		p.held = false
	}
	p.replies = p.replies[:0]
	p.parser.reset()
}

// Append queues one command of byte arguments.
func (p *Pipeline) Append(args ...[]byte) {
	if b := p.malloc(commandSize(args)); b != nil {
		putCommand(b, args)
	}
}

// AppendString queues one command of string arguments.
func (p *Pipeline) AppendString(args ...string) {
	if b := p.malloc(commandSize(args)); b != nil {
		putCommand(b, args)
	}
}

// AppendFrame queues an encoded frame (see AppendCommand) holding n
// commands; the load generator builds its frame once and appends it for
// every request.
func (p *Pipeline) AppendFrame(frame []byte, n int) {
	if b := p.malloc(len(frame)); b != nil {
		copy(b, frame)
		p.queued += n - 1
	}
}

// malloc reserves size bytes of the output buffer for one command.
func (p *Pipeline) malloc(size int) []byte {
	if p.held {
		p.Reset()
	}
	if p.err != nil || p.c.err != nil {
		return nil // Exec reports it; netpoll must not be asked after a close
	}
	b, err := p.c.malloc(size)
	if err != nil {
		p.err = fmt.Errorf("cannot queue a command: %w", err)
		return nil
	}
	p.queued++
	return b
}

// Len returns the number of replies the last Exec read.
func (p *Pipeline) Len() int { return len(p.replies) }

// Reply returns the i-th reply of the last Exec.
func (p *Pipeline) Reply(i int) *Reply { return &p.replies[i] }

// Replies returns every reply of the last Exec.
func (p *Pipeline) Replies() []Reply { return p.replies }

// Exec sends the queued commands and reads their replies. The context's
// deadline (else the connection's timeout) bounds it; a context cancelled
// mid-call closes the connection. Any error breaks the connection (see
// Conn); RESP error replies are not errors here but replies of kind Err.
func (p *Pipeline) Exec(ctx context.Context) error {
	c := p.c
	if c.err != nil {
		return c.err
	}
	if p.held {
		_ = c.r.Release()
		p.held = false
		p.replies = p.replies[:0]
		p.parser.reset()
	}
	n := p.queued
	p.queued = 0
	if err := p.err; err != nil {
		p.err = nil
		return c.fail(err)
	}
	if err := ctx.Err(); err != nil {
		return c.fail(err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(c.timeout)
	}
	_ = c.nc.SetReadDeadline(deadline)
	_ = c.nc.SetWriteDeadline(deadline)
	if ctx.Done() != nil {
		// Only a cancellable context pays for this; Background does not.
		stop := context.AfterFunc(ctx, func() { _ = c.nc.Close() })
		defer stop()
	}
	if err := c.w.Flush(); err != nil {
		return c.fail(p.ctxErr(ctx, fmt.Errorf("cannot send %d commands: %w", n, err)))
	}
	if cap(p.replies) < n {
		p.replies = make([]Reply, 0, n)
	}
	p.replies = p.replies[:n]
	p.held = true
	for i := range n {
		var err error
		if p.replies[i], err = p.parser.read(c.r, 0); err != nil {
			p.replies = p.replies[:i]
			return c.fail(p.ctxErr(ctx, fmt.Errorf("cannot read reply %d of %d: %w", i+1, n, err)))
		}
	}
	return nil
}

// ctxErr names the context's error when it ended the call: cancelled, or
// its deadline passed (netpoll's timer may fire just before the context's).
func (p *Pipeline) ctxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	timedOut := errors.Is(err, netpoll.ErrReadTimeout) || errors.Is(err, netpoll.ErrWriteTimeout)
	if d, ok := ctx.Deadline(); cerr == nil && ok && timedOut && time.Until(d) < time.Millisecond {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
