package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// LimitReply is what the Limit server answers to every command: a decision
// of capsgate's shape (admitted, OK, retry 0, remaining 1), decided by
// nobody.
const LimitReply = "*4\r\n:1\r\n+OK\r\n:0\r\n:1\r\n"

// Limit is a gnet v2 RESP server that frames requests as capsgate does
// (multibulk or inline commands, pipelined, split anywhere) and answers
// each complete one with LimitReply. With capsgate's gnet options it costs
// what the transport costs and nothing for deciding: the ceiling any RESP
// server on this machine and event loop can reach.
type Limit struct {
	gnet.BuiltinEventEngine
	// Loops is the number of event loops Start runs (0: one per CPU, as
	// capsgate's default); set it before Start.
	Loops  int
	addr   string
	eng    gnet.Engine
	booted chan struct{}
	done   chan error
	// replies holds LimitReply many times, so a pipelined read is answered
	// with slices of it.
	replies []byte
}

// limitBatch is how many replies one slice of Limit.replies holds.
const limitBatch = 1024

// ErrFrame is wrapped by frame errors: what a RESP server answers with
// "-ERR Protocol error" before it closes the connection.
var ErrFrame = errors.New("protocol error")

// maxFrameArgs and maxFrameBulk bound a command, as capsgate does.
const (
	maxFrameArgs = 1 << 10
	maxFrameBulk = 512 << 20
	maxInline    = 64 << 10
)

// FrameCommands returns how many complete commands buf starts with and
// how many bytes they take. An incomplete command at the end is left for
// more input; a malformed one is an error wrapping ErrFrame.
func FrameCommands(buf []byte) (commands, used int, err error) {
	for used < len(buf) {
		n, err := frameOne(buf[used:])
		if err != nil || n == 0 {
			return commands, used, err
		}
		if len(bytes.TrimSpace(buf[used:used+n])) > 0 { // a blank inline line gets no reply, as in Redis
			commands++
		}
		used += n
	}
	return commands, used, nil
}

// frameOne returns the length of the command buf starts with, 0 when it
// is not complete yet.
func frameOne(buf []byte) (int, error) {
	if buf[0] != '*' {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			if len(buf) > maxInline {
				return 0, fmt.Errorf("%w: too big inline request", ErrFrame)
			}
			return 0, nil
		}
		return i + 1, nil
	}
	args, i, err := frameLen(buf, 0, maxFrameArgs)
	if err != nil || i == 0 {
		return 0, err
	}
	for range args {
		if i >= len(buf) {
			return 0, nil
		}
		if buf[i] != '$' {
			return 0, fmt.Errorf("%w: expected '$', got %q", ErrFrame, buf[i])
		}
		n, next, err := frameLen(buf, i, maxFrameBulk)
		if err != nil || next == 0 {
			return 0, err
		}
		i = next + n + 2
		if i > len(buf) {
			return 0, nil
		}
		if buf[i-2] != '\r' || buf[i-1] != '\n' {
			return 0, fmt.Errorf("%w: bulk not followed by CRLF", ErrFrame)
		}
	}
	return i, nil
}

// frameLen parses the length line at buf[i] ('*' or '$', digits, CRLF)
// and returns the length and where the line ends; next is 0 when the line
// is not complete.
func frameLen(buf []byte, i, limit int) (v, next int, err error) {
	j := bytes.IndexByte(buf[i:], '\n')
	if j < 0 {
		if len(buf)-i > 32 {
			return 0, 0, fmt.Errorf("%w: length line too long", ErrFrame)
		}
		return 0, 0, nil
	}
	line := buf[i+1 : i+j]
	if len(line) == 0 || line[len(line)-1] != '\r' {
		return 0, 0, fmt.Errorf("%w: length line without CRLF", ErrFrame)
	}
	digits := line[:len(line)-1]
	for _, c := range digits {
		if c < '0' || c > '9' || v > limit {
			return 0, 0, fmt.Errorf("%w: invalid length %q", ErrFrame, digits)
		}
		v = v*10 + int(c-'0')
	}
	if len(digits) == 0 || v > limit {
		return 0, 0, fmt.Errorf("%w: invalid length %q", ErrFrame, digits)
	}
	return v, i + j + 1, nil
}

// NewLimit returns a Limit server for addr (host:port; port 0 picks one).
func NewLimit(addr string) *Limit {
	return &Limit{addr: addr, booted: make(chan struct{}), done: make(chan error, 1),
		replies: bytes.Repeat([]byte(LimitReply), limitBatch)}
}

// Start listens with capsgate's gnet options (one event loop per core, no
// Nagle) and serves in the background until Stop.
func (l *Limit) Start() error {
	go func() {
		opts := []gnet.Option{gnet.WithMulticore(true), gnet.WithTCPNoDelay(gnet.TCPNoDelay),
			gnet.WithReuseAddr(true), gnet.WithLogger(quietLogger{})}
		if l.Loops > 0 {
			opts = append(opts, gnet.WithNumEventLoop(l.Loops))
		}
		l.done <- gnet.Run(l, "tcp://"+l.addr, opts...)
	}()
	select {
	case <-l.booted:
		return nil
	case err := <-l.done:
		return fmt.Errorf("cannot listen on %s: %w", l.addr, err)
	}
}

// Addr is the address Limit listens on.
func (l *Limit) Addr() string { return l.addr }

// Stop stops the server and waits for it.
func (l *Limit) Stop(ctx context.Context) error {
	if err := l.eng.Stop(ctx); err != nil {
		return err
	}
	select {
	case err := <-l.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// OnBoot records the engine and the bound address.
func (l *Limit) OnBoot(eng gnet.Engine) gnet.Action {
	l.eng = eng
	if fd, err := eng.Dup(); err == nil {
		if sa, err := syscall.Getsockname(fd); err == nil {
			if a, ok := sa.(*syscall.SockaddrInet4); ok {
				l.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			}
		}
		_ = syscall.Close(fd)
	}
	close(l.booted)
	return gnet.None
}

// OnTraffic answers every complete command buffered for c.
func (l *Limit) OnTraffic(c gnet.Conn) gnet.Action {
	in, _ := c.Peek(-1)
	n, used, err := FrameCommands(in)
	if used > 0 {
		_, _ = c.Discard(used)
	}
	for n > 0 {
		k := min(n, limitBatch)
		_, _ = c.Write(l.replies[:k*len(LimitReply)])
		n -= k
	}
	if err != nil {
		_, _ = c.Write([]byte("-ERR Protocol error: " + err.Error() + "\r\n"))
		return gnet.Close
	}
	return gnet.None
}

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

// quietLogger drops gnet's banner and chatter.
type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}
