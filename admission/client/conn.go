package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cloudwego/netpoll"
)

// DefaultTimeout bounds a call whose context has no deadline: a capsgate
// answers in microseconds, so seconds mean a dead peer.
const DefaultTimeout = 5 * time.Second

// ErrClosed is returned by calls on a closed Conn or Client.
var ErrClosed = errors.New("client closed")

// ErrPoolBusy is returned, wrapped with the context's error, when every
// connection of a Client's pool stayed in use until the context ended: the
// wait was on this side, not on the server.
var ErrPoolBusy = errors.New("every pooled connection in use")

// Conn is one connection to a RESP2 server on netpoll. It is used by one
// goroutine at a time (a Client hands each out to one caller); its
// Pipeline puts many commands in flight at once. After any I/O or protocol
// error, or a context that ends mid-call, the connection is closed and
// every later call returns that error: the stream is no longer in step
// with its replies.
type Conn struct {
	nc      netpoll.Connection
	r       netpoll.Reader
	w       netpoll.Writer
	timeout time.Duration
	err     error // why the connection is unusable; nil while it is fine
	one     Pipeline
	// args holds the arguments of a typed helper's command; reused.
	args [8]string
}

// Dial connects to addr (host:port) with netpoll. The context bounds the
// dial; Conn calls whose context has no deadline get DefaultTimeout.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	timeout := DefaultTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
		if timeout <= 0 {
			return nil, fmt.Errorf("cannot connect to %s: %w", addr, context.DeadlineExceeded)
		}
	}
	nc, err := netpoll.DialConnection("tcp", addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s: %w", addr, err)
	}
	c := &Conn{nc: nc, r: nc.Reader(), w: nc.Writer(), timeout: DefaultTimeout}
	c.one.c = c
	return c, nil
}

// auth sends AUTH [user] password and checks that the server took it.
func (c *Conn) auth(ctx context.Context, user, password string) error {
	args := [][]byte{[]byte("AUTH"), []byte(password)}
	if user != "" {
		args = [][]byte{[]byte("AUTH"), []byte(user), []byte(password)}
	}
	r, err := c.Do(ctx, args...)
	if err != nil {
		return fmt.Errorf("cannot authenticate: %w", err)
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("cannot authenticate: %w", err)
	}
	return nil
}

// SetTimeout sets what bounds a call whose context has no deadline.
func (c *Conn) SetTimeout(d time.Duration) {
	if d > 0 {
		c.timeout = d
	}
}

// Err returns why the connection is unusable, or nil.
func (c *Conn) Err() error { return c.err }

// Close closes the connection; it is safe to call twice.
func (c *Conn) Close() error {
	if c.err == nil {
		c.err = ErrClosed
	}
	return c.nc.Close()
}

// fail records the first error that broke the stream and closes it.
func (c *Conn) fail(err error) error {
	if c.err == nil {
		c.err = err
		_ = c.nc.Close()
	}
	return err
}

// Pipeline returns a new pipeline on c. Only one of c's pipelines may hold
// queued commands at a time.
func (c *Conn) Pipeline() *Pipeline { return &Pipeline{c: c} }

// Do sends one command and returns its reply, a copy the caller keeps. A
// RESP error reply is returned as both the Reply and a *ServerError.
func (c *Conn) Do(ctx context.Context, args ...[]byte) (Reply, error) {
	p := &c.one
	p.Reset()
	p.Append(args...)
	if err := p.Exec(ctx); err != nil {
		return Reply{}, err
	}
	r := p.replies[0].Clone()
	return r, r.Err()
}

// command runs the typed helper's command c.args[:n] and returns its reply,
// valid until the next command. A RESP error is returned as a *ServerError.
func (c *Conn) command(ctx context.Context, n int) (*Reply, error) {
	p := &c.one
	p.Reset()
	p.AppendString(c.args[:n]...)
	if err := p.Exec(ctx); err != nil {
		return nil, err
	}
	r := &p.replies[0]
	return r, r.Err()
}

// Split splits a connection into a sending and a receiving side for an
// open-loop load: one goroutine calls Send at its own pace, another
// Receive, and replies come back in the order of the sends. Receive waits
// at most the connection's timeout (SetTimeout) for a reply; see
// Stream.SetTimeout.
func (c *Conn) Split() *Stream {
	s := &Stream{c: c, replies: replies{r: c.r}}
	s.SetTimeout(c.timeout)
	return s
}

// Stream is the split view of a Conn that Split returns.
type Stream struct {
	c *Conn
	replies
}

// replies reads one reply after another from r, each valid until the
// next.
type replies struct {
	r     source
	p     parser
	reply Reply
}

func (rs *replies) next() (*Reply, error) {
	_ = rs.r.Release()
	rs.p.reset()
	var err error
	if rs.reply, err = rs.p.read(rs.r, 0); err != nil {
		return nil, fmt.Errorf("cannot read a reply: %w", err)
	}
	return &rs.reply, nil
}

// ReplyReader reads RESP replies from a connection this package did not
// dial (one dialled from inside a network namespace, say) with the
// client's parser and bounds; send it commands made with AppendCommand.
type ReplyReader struct{ replies }

// NewReplyReader returns a ReplyReader reading from r.
func NewReplyReader(r io.Reader) *ReplyReader {
	return &ReplyReader{replies{r: &streamSource{r: bufio.NewReaderSize(r, 64<<10)}}}
}

// streamSource is a source over a bufio.Reader: what it returns is copied
// into an arena that Release empties, so a reply's lines stay valid while
// later ones are read.
type streamSource struct {
	r     *bufio.Reader
	arena []byte
}

// keep copies b into the arena; a full arena is replaced, not grown, so
// what was returned before stays where it is.
func (s *streamSource) keep(n int) []byte {
	if cap(s.arena)-len(s.arena) < n {
		s.arena = make([]byte, 0, max(n, 4<<10))
	}
	start := len(s.arena)
	s.arena = s.arena[:start+n]
	return s.arena[start : start+n : start+n]
}

func (s *streamSource) Until(delim byte) ([]byte, error) {
	part, err := s.r.ReadSlice(delim)
	if err == nil { // the whole line was in the buffer: one copy
		b := s.keep(len(part))
		copy(b, part)
		return b, nil
	}
	line := append([]byte(nil), part...) // longer than the buffer: gathered
	for err == bufio.ErrBufferFull {
		if part, err = s.r.ReadSlice(delim); len(line)+len(part) > maxLine+2 {
			return nil, protoErr("a line longer than %d bytes", maxLine)
		}
		line = append(line, part...)
	}
	if err != nil {
		return nil, err
	}
	b := s.keep(len(line))
	copy(b, line)
	return b, nil
}

func (s *streamSource) Next(n int) ([]byte, error) {
	b := s.keep(n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (s *streamSource) Release() error {
	s.arena = s.arena[:0]
	return nil
}

// Read reads the next reply; it is valid until the next Read (Clone keeps
// it). A RESP error reply is a Reply of Kind Err, not an error.
func (rr *ReplyReader) Read() (*Reply, error) { return rr.next() }

// SetTimeout bounds how long Receive waits for a reply; 0 means no bound
// (Receive then waits until a reply comes or the stream is closed, which
// spares netpoll a timer reset and stop per wait: an open-loop generator
// that knows how many replies to expect closes its streams itself when
// they are overdue). Call it before the first Receive, from the receiving
// goroutine.
func (s *Stream) SetTimeout(d time.Duration) {
	_ = s.c.nc.SetReadDeadline(time.Time{}) // a Pipeline's deadline would win over the timeout
	_ = s.c.nc.SetReadTimeout(max(d, 0))
}

// Send writes frame (one or more encoded commands) and flushes it, in one
// write; only one goroutine may call it, and not while another closes the
// stream (netpoll frees the send buffer on Close).
func (s *Stream) Send(frame []byte) error {
	if s.c.err != nil {
		return fmt.Errorf("cannot send: %w", s.c.err)
	}
	b, err := s.c.malloc(len(frame))
	if err == nil {
		copy(b, frame)
		err = s.c.w.Flush()
	}
	if err != nil {
		return fmt.Errorf("cannot send: %w", err)
	}
	return nil
}

// malloc reserves n bytes of the output buffer. netpoll frees that buffer
// on its poller when the server hangs up, and a Malloc after that
// dereferences a nil node: a connection seen closed fails with ErrClosed
// instead, and the panic of a hang-up that comes between the check and
// the Malloc becomes the same error.
func (c *Conn) malloc(n int) (b []byte, err error) {
	if !c.nc.IsActive() {
		return nil, ErrClosed
	}
	defer func() {
		if recover() != nil {
			b, err = nil, ErrClosed
		}
	}()
	return c.w.Malloc(n)
}

// Receive reads the next reply; it is valid until the next Receive. Only
// one goroutine may call it. A reply already read from the socket is
// returned without waiting; otherwise the goroutine waits for netpoll's
// poller to read more (see SetTimeout for how long).
func (s *Stream) Receive() (*Reply, error) { return s.next() }

// Close closes the connection under the stream, which ends a Receive
// waiting in another goroutine. The sending goroutine must be done with
// Send first.
func (s *Stream) Close() error { return s.c.Close() }
