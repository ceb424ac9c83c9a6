package resp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/panjf2000/gnet/v2"

	"github.com/capsgate/capsgate/admission"
)

// Config is the RESP front end's configuration.
type Config struct {
	// Addr is host:port to listen on (RESP default port 6390).
	Addr string
	// MaxConns bounds client connections; one more is told
	// "-ERR max number of clients reached" and closed. 0 means
	// DefaultMaxConns.
	MaxConns int
	// IdleTimeout closes a connection that sent nothing for so long; 0
	// never does (like Redis's `timeout 0`).
	IdleTimeout time.Duration
	// EventLoops is the number of gnet event loops; 0 means one per core.
	EventLoops int
	// Logger receives gnet's warnings and errors; nil discards them.
	Logger *slog.Logger
	// MaxOutbound bounds the replies queued for a client that does not read
	// them: past it nothing more runs for it until it reads. 0 means
	// DefaultMaxOutbound.
	MaxOutbound int
	// MaxBuffered bounds the replies queued for all clients together, and
	// apart the requests received from all and not yet run: each client
	// may hold MaxBuffered / (open connections) of each, replies within
	// [MinOutbound, MaxOutbound] and requests within [MinInbound,
	// MaxInbound]. 0 means DefaultMaxBuffered.
	MaxBuffered int
}

// Validate reports the first field of c out of its range: every count and
// the idle timeout are at least 0, where 0 means the default each names.
func (c Config) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"MaxConns", int64(c.MaxConns)}, {"IdleTimeout", int64(c.IdleTimeout)}, {"EventLoops", int64(c.EventLoops)},
		{"MaxOutbound", int64(c.MaxOutbound)}, {"MaxBuffered", int64(c.MaxBuffered)}} {
		if f.v < 0 {
			return fmt.Errorf("resp.Config.%s must be >= 0 (0: the default), got %d", f.name, f.v)
		}
	}
	return nil
}

// Config's defaults.
const (
	// DefaultMaxConns is Redis's maxclients default: a farm's proxies
	// open tens of connections each, so 10,000 leaves room for hundreds.
	DefaultMaxConns = 10000
	// DefaultMaxOutbound holds a thousand pipelined INFO replies, or
	// 30,000 decisions, for a client that does not read.
	DefaultMaxOutbound = 1 << 20
	// DefaultMaxBuffered bounds what all clients together make the node
	// hold of replies, and of requests, at 32 MiB each.
	DefaultMaxBuffered = 32 << 20
)

// Bounds of what one client may make the node hold (see Config).
const (
	// MinOutbound is the least a client may queue of replies however many
	// are open: the largest reply (INFO, CLIENT LIST) fits in it.
	MinOutbound = 32 << 10
	// MinInbound and MaxInbound bound the requests a client may have sent
	// ahead of its replies (received, not yet run): past its part the
	// client is told so and closed. gnet reads whatever arrives, so this
	// is what stops a client that sends and never reads.
	MinInbound = 2 * MaxRequestBytes
	MaxInbound = 4 << 20
	// BatchOutbound bounds the replies built for one connection before
	// the event loop turns to the others: a client that pipelines commands
	// with large replies gets them in rounds, between other clients'.
	BatchOutbound = 64 << 10
	// PeekWindow is the input one round reads commands from: at least
	// one whole request (MaxRequestBytes) fits in it wherever it starts.
	PeekWindow = 2 * MaxRequestBytes
)

// queryLimitReply is what a client whose unread requests pass its bound
// gets before it is closed.
var queryLimitReply = []byte("-ERR client query buffer limit reached: read the replies before sending more\r\n")

// inputClosed counts the clients closed for sending too far ahead of
// their replies; outputPaused the times a client's commands waited for it
// to read its replies.
var (
	inputClosed  = metrics.NewCounter("capsgate_resp_input_limit_closed_total")
	outputPaused = metrics.NewCounter("capsgate_resp_output_limit_paused_total")
)

// openConns counts client connections across the process, for metrics.
var openConns atomic.Int64

var _ = metrics.NewGauge("capsgate_resp_connections", func() float64 { return float64(openConns.Load()) })

// maxClientsReply is what a connection beyond Config.MaxConns gets.
var maxClientsReply = []byte("-ERR max number of clients reached\r\n")

// stoppingReply refuses a connection opened while the node stops.
var stoppingReply = []byte("-ERR the node is stopping: connect to another member\r\n")

// loopStats is owned by one event loop: its reply buffer and its decision
// latency histogram (one per loop, so observing takes no shared lock).
type loopStats struct {
	loop gnet.EventLoop
	out  []byte
	hist *latencyHist
}

// Server is the RESP front end: gnet event loops feeding a Handler.
type Server struct {
	gnet.BuiltinEventEngine
	cfg Config
	h   *Handler
	clk admission.Clock

	eng    gnet.Engine
	booted chan struct{}
	done   chan error
	addr   string
	nextID atomic.Int64
	conns  atomic.Int64
	stop   chan struct{}
	pace   *pacer
	// draining: Stop has begun; a connection opened now is refused.
	// drainFor is DrainFor.
	draining atomic.Bool
	drainFor time.Duration
	wg       sync.WaitGroup
	once     sync.Once

	mu      sync.Mutex // guards open, loops and orphans
	open    map[*ConnState]gnet.Conn
	loops   []*loopStats
	orphans map[*orphan]struct{} // closed connections' held replies (durable.go)
	// orphanGone tells Stop that an orphan is done; noOrphans: Stop gave
	// up waiting for them (its deadline), and a connection closed after
	// leaves its held replies unsent.
	orphanGone chan struct{}
	noOrphans  atomic.Bool
}

// NewServer returns a server; Start makes it listen.
func NewServer(cfg Config, h *Handler, clk admission.Clock) *Server {
	if cfg.MaxOutbound == 0 {
		cfg.MaxOutbound = DefaultMaxOutbound
	}
	if cfg.MaxBuffered == 0 {
		cfg.MaxBuffered = DefaultMaxBuffered
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	s := &Server{cfg: cfg, h: h, clk: clk, booted: make(chan struct{}), done: make(chan error, 1),
		stop: make(chan struct{}), pace: newPacer(), drainFor: DrainFor, open: make(map[*ConnState]gnet.Conn),
		orphans: make(map[*orphan]struct{}), orphanGone: make(chan struct{}, 1)}
	h.SetConnCounter(s.conns.Load)
	return s
}

// Start listens and serves in the background. It returns once the server
// accepts connections, or with the reason it cannot.
func (s *Server) Start() error {
	if err := s.cfg.Validate(); err != nil {
		return fmt.Errorf("cannot listen for RESP on %s: %w", s.cfg.Addr, err)
	}
	opts := []gnet.Option{
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithTCPKeepAlive(time.Minute), // find dead peers behind silent firewalls
		gnet.WithLogger(gnetLogger{s.cfg.Logger}),
		gnet.WithReuseAddr(true),
	}
	if s.cfg.EventLoops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(s.cfg.EventLoops))
	} else {
		opts = append(opts, gnet.WithMulticore(true))
	}
	go func() { s.done <- gnet.Run(s, "tcp://"+s.cfg.Addr, opts...) }()
	select {
	case <-s.booted:
	case err := <-s.done:
		if err == nil {
			err = errors.New("stopped before it started")
		}
		return fmt.Errorf("cannot listen for RESP on %s (resp.addr, --resp-addr): %w", s.cfg.Addr, err)
	}
	s.wg.Add(2)
	go s.sweepIdle()
	go func() { defer s.wg.Done(); s.pace.run(s.stop) }()
	return nil
}

// Addr returns the address the server listens on (with the real port when
// the configured one was 0).
func (s *Server) Addr() string { return s.addr }

// Conns returns the number of open client connections.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Stop stops accepting, closes every connection after sending the replies
// to what it had received, and waits for the event loops to end. First it
// refuses new connections, and runs and sends what the open ones had
// received (the rest of a long pipeline, run in the pacer's rounds, and
// the commands of a client paused until it reads), for at most DrainFor
// and ctx. Replies held for the key store's commit are sent once it is made
// (the node keeps committing until Stop returns), within MaxHeldWait and
// ctx. It is safe to call more than once.
func (s *Server) Stop(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		s.drainRounds(ctx)
		close(s.stop)
		s.wg.Wait()
		if err = s.eng.Stop(ctx); err == nil {
			select {
			case err = <-s.done:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
		if e := s.waitOrphans(ctx); err == nil {
			err = e
		}
	})
	return err
}

// DrainFor bounds how long Stop runs and sends what connections had
// received before it closes them: a client that pipelines without end, or
// one that never reads its replies, delays a stop by this much at most.
// (A test may set Server.drainFor.)
const DrainFor = 2 * time.Second

// drainCheck is how often drainRounds looks at the connections again.
const drainCheck = 5 * time.Millisecond

// drainRounds refuses new connections, then waits until the pacer has
// nothing left to run and every open connection has no reply left unsent
// and no request left to run, for at most s.drainFor and ctx. Without it,
// a pipeline's later rounds were never run, and gnet's close drops what a
// connection's socket would not take at once: its client saw the
// connection close without the answers to commands the node had received.
func (s *Server) drainRounds(ctx context.Context) {
	s.draining.Store(true)
	ctx, cancel := context.WithTimeout(ctx, s.drainFor)
	defer cancel()
	tick := time.NewTicker(drainCheck)
	defer tick.Stop()
	for !s.pace.idle() || !s.flushed(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// flushed wakes every open connection (each runs what it has received, on
// its event loop) and reports whether each then had no reply left unsent
// and no request waiting for a commit or a spilled answer (what waits for
// the pacer, idle says; the unfinished last request of a client that is
// still sending it is not counted). It gives up, reporting false, when
// ctx ends first.
func (s *Server) flushed(ctx context.Context) bool {
	s.mu.Lock()
	conns := make([]gnet.Conn, 0, len(s.open))
	for _, c := range s.open {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		return true
	}
	var busy, left atomic.Int64
	left.Store(int64(len(conns)))
	all := make(chan struct{}, 1) // sent once, by the last to answer
	for _, c := range conns {
		var once atomic.Bool // a Wake that fails may still run its callback
		answer := func(b bool) {
			if !once.CompareAndSwap(false, true) {
				return
			}
			if b {
				busy.Add(1)
			}
			if left.Add(-1) == 0 {
				all <- struct{}{}
			}
		}
		err := c.Wake(func(c gnet.Conn, _ error) error {
			// Closed since (no context: gnet may have released its
			// buffers), it has nothing left here.
			cs, open := c.Context().(*ConnState)
			answer(open && (c.OutboundBuffered() > 0 || c.InboundBuffered() > 0 && (cs.Holding() || cs.spilling)))
			return nil
		})
		if err != nil {
			answer(true)
		}
	}
	select {
	case <-all:
		return busy.Load() == 0
	case <-ctx.Done():
		return false
	}
}

// OnBoot records the engine and the bound address.
func (s *Server) OnBoot(eng gnet.Engine) gnet.Action {
	s.eng = eng
	s.addr = s.cfg.Addr
	if fd, err := eng.Dup(); err == nil {
		if sa, err := syscall.Getsockname(fd); err == nil {
			switch a := sa.(type) {
			case *syscall.SockaddrInet4:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			case *syscall.SockaddrInet6:
				s.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
			}
		}
		syscall.Close(fd)
	}
	close(s.booted)
	return gnet.None
}

// OnOpen admits a connection unless the server is full.
func (s *Server) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if s.draining.Load() {
		return stoppingReply, gnet.Close
	}
	if s.conns.Add(1) > int64(s.cfg.MaxConns) {
		s.conns.Add(-1)
		return maxClientsReply, gnet.Close
	}
	openConns.Add(1)
	cs := NewConnState(s.nextID.Add(1))
	cs.lastActive.Store(s.clk.Now())
	s.mu.Lock()
	cs.loop = s.loopOf(c.EventLoop())
	s.open[cs] = c
	s.mu.Unlock()
	cs.SetWake(func() { s.pace.next(c, &cs.paced) })
	c.SetContext(cs)
	return nil, gnet.None
}

// loopOf returns the stats of an event loop, creating them on first sight.
// Called with mu held.
func (s *Server) loopOf(el gnet.EventLoop) *loopStats {
	for _, l := range s.loops {
		if l.loop == el {
			return l
		}
	}
	l := &loopStats{loop: el, out: make([]byte, 0, 64<<10), hist: newLatencyHist()}
	s.loops = append(s.loops, l)
	return l
}

// OnClose forgets a connection. One closed under replies held for a
// commit leaves them to be sent (durable.go).
func (s *Server) OnClose(c gnet.Conn, _ error) gnet.Action {
	cs, ok := c.Context().(*ConnState)
	if !ok {
		return gnet.None
	}
	c.SetContext(nil)
	cs.Closed()
	s.mu.Lock()
	delete(s.open, cs)
	s.mu.Unlock()
	if cs.Holding() && s.adopt(c, cs) {
		return gnet.None // still counted, until its replies are sent
	}
	cs.drop()
	s.conns.Add(-1)
	openConns.Add(-1)
	return gnet.None
}

// OnTraffic answers every complete command buffered for c. This is the
// decision path: it parses in place, decides and encodes into the loop's
// reply buffer without allocating.
func (s *Server) OnTraffic(c gnet.Conn) gnet.Action {
	cs, ok := c.Context().(*ConnState)
	if !ok {
		return gnet.Close
	}
	total := c.InboundBuffered()
	if cs.spilling {
		// A spilled ADMIT's answer comes before anything else.
		if cs.Spilling() {
			if total > s.clientLimit(MinInbound, MaxInbound) {
				inputClosed.Inc()
				_, _ = c.Write(queryLimitReply)
				return gnet.Close
			}
			return gnet.None
		}
		out, _ := s.h.Spilled(cs, cs.loop.out[:0])
		_, _ = c.Write(out)
		cs.loop.out = out[:0]
	}
	if cs.Holding() {
		// Replies held for the key store's commit go once it is done.
		if out, ok := s.h.HeldReady(cs, cs.loop.out[:0]); ok {
			_, _ = c.Write(out)
			cs.loop.out = out[:0]
		}
	}
	if cs.quitHeld {
		// QUIT or a malformed request came behind held replies: they go
		// first, then the close; nothing after it runs.
		return s.closeAfterHeld(c, cs, total)
	}
	if total == 0 {
		if cs.Holding() && !s.h.wait(cs) {
			s.pace.next(c, &cs.paced)
		}
		return gnet.None
	}
	// Nothing runs for a client whose replies fill its part of the
	// node's reply memory, and one whose requests wait beyond its part is
	// closed.
	queued, outLimit, inLimit := c.OutboundBuffered(), s.clientLimit(MinOutbound, s.cfg.MaxOutbound), s.clientLimit(MinInbound, MaxInbound)
	if total > inLimit {
		inputClosed.Inc()
		if cs.closeBehindHeld(queryLimitReply) {
			return s.closeAfterHeld(c, cs, total)
		}
		_, _ = c.Write(queryLimitReply)
		return gnet.Close
	}
	if queued >= outLimit {
		// Paused until its client reads: looked at again after 1 ms,
		// then 2, 4 ... 64 while it does not.
		if cs.pause == 0 {
			outputPaused.Inc()
		}
		cs.pause = min(max(2*cs.pause, time.Millisecond), 64*time.Millisecond)
		s.pace.after(c, &cs.paced, cs.pause)
		return gnet.None
	}
	cs.pause = 0
	// A window of the input, not all of it: gnet copies what it peeks
	// when the input spans its buffers, and a long pipeline peeked whole
	// at every round would be copied over and over.
	in, _ := c.Peek(min(total, PeekWindow))
	now := s.clk.Now()
	cs.lastActive.Store(now)
	ls := cs.loop
	cs.commands = 0
	cs.outBudget, cs.outLimit = min(BatchOutbound, outLimit-queued), outLimit
	n, out, closeConn := s.h.Handle(now, cs, in, ls.out[:0])
	if n > 0 {
		_, _ = c.Discard(n)
	}
	switch {
	case closeConn:
	case cs.Holding():
		// Woken by the key store's commit (Handler.Released), which
		// sends the held replies and runs the rest.
		if !s.h.wait(cs) {
			s.pace.next(c, &cs.paced)
		}
	case cs.blocked:
		s.pace.after(c, &cs.paced, time.Millisecond) // when the cluster has room again
	case cs.more || len(in) < total && n > 0:
		s.pace.next(c, &cs.paced) // the rest at the next round, after the others
	}
	if len(out) > 0 {
		_, _ = c.Write(out)
		// Every command of this read is recorded with the read's time per
		// command: exact for unpipelined clients, an average for pipelines.
		if k := cs.commands; k > 0 {
			ls.hist.observe((s.clk.Now()-now)/int64(k), uint64(k))
		}
	}
	if cap(out) > 1<<20 { // a huge pipeline once: do not keep its buffer
		out = make([]byte, 0, 64<<10)
	}
	ls.out = out[:0]
	if closeConn {
		return gnet.Close
	}
	return gnet.None
}

// closeAfterHeld closes a connection whose last reply is queued behind its
// held replies (cs.quitHeld) once they are sent, dropping what it sent
// since (total bytes).
func (s *Server) closeAfterHeld(c gnet.Conn, cs *ConnState, total int) gnet.Action {
	if !cs.Holding() {
		return gnet.Close
	}
	_, _ = c.Discard(total)
	if !s.h.wait(cs) {
		s.pace.next(c, &cs.paced)
	}
	return gnet.None
}

// clientLimit is what one client may hold of requests or of replies: its
// part of MaxBuffered among the open connections, within [least, most].
func (s *Server) clientLimit(least, most int) int {
	part := s.cfg.MaxBuffered / int(max(s.conns.Load(), 1))
	return max(min(part, most), least)
}

// MaxHeldWait bounds how long a connection's replies may wait for the key
// store's commit (durable.go): a disk that keeps failing commits would
// otherwise hold them for ever. Past it the connection is closed; its
// client, which got no acknowledgement, retries with its IDs.
const MaxHeldWait = 10 * time.Second

var heldTimeouts = metrics.NewCounter(`capsgate_resp_held_timeouts_total`)

// sweepIdle closes connections idle for longer than IdleTimeout, and those
// whose replies waited for a commit for longer than MaxHeldWait.
func (s *Server) sweepIdle() {
	defer s.wg.Done()
	every := time.Second
	if s.cfg.IdleTimeout > 0 {
		every = min(s.cfg.IdleTimeout/4, every)
	}
	var idle []gnet.Conn
	admission.Repeat(s.stop, every, func() time.Duration {
		now := s.clk.Now()
		limit, held := now-int64(s.cfg.IdleTimeout), now-int64(MaxHeldWait)
		idle = idle[:0]
		s.mu.Lock()
		for cs, c := range s.open {
			switch hs := cs.heldSince.Load(); {
			case hs != 0 && hs < held:
				heldTimeouts.Inc()
				idle = append(idle, c)
			case s.cfg.IdleTimeout > 0 && cs.lastActive.Load() < limit:
				idle = append(idle, c)
			}
		}
		s.mu.Unlock()
		for _, c := range idle {
			_ = c.Close()
		}
		s.expireOrphans(now)
		return every
	})
}

// gnetLogger passes gnet's warnings and errors to slog; its chatter (the
// start-up banner, debug) is dropped.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(string, ...any) {}
func (g gnetLogger) Infof(string, ...any)  {}
func (g gnetLogger) Warnf(format string, args ...any) {
	if g.l != nil {
		g.l.Warn("gnet: " + fmt.Sprintf(format, args...))
	}
}
func (g gnetLogger) Errorf(format string, args ...any) {
	if g.l != nil {
		g.l.Error("gnet: " + fmt.Sprintf(format, args...))
	}
}
func (g gnetLogger) Fatalf(format string, args ...any) { g.Errorf(format, args...) }
