package resp

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/cell"
)

// Version is reported by INFO and HELLO.
const Version = "0.1.0"

// ConnState is what the command layer remembers about one client
// connection. It is owned by the connection's event loop.
type ConnState struct {
	id     int64
	authed bool
	info   clientInfo // name and library (CLIENT SETNAME, SETINFO), for CLIENT LIST
	tx     *txQueue   // commands queued since MULTI; nil outside a transaction
	args   [][]byte
	// warmArgs and warmKeys are warm's scratch.
	warmArgs [][]byte
	warmKeys []admission.Key
	loop     *loopStats
	// commands counts the commands of the current read, for the histogram.
	commands int
	// outBudget bounds the replies of one Handle call (0: no bound): once
	// they reach it, Handle leaves the rest of the input for a later call
	// and sets more.
	outBudget int
	// member: authenticated as MemberUser (a cluster member).
	member bool
	// quoted holds the quoted inline lines of a Handle call, unescaped
	// there rather than in the connection's bytes (parse).
	quoted []byte
	// outLimit is what this client may hold of replies (its part of the
	// node's reply memory; 0: no bound): one CLIENT LIST reply is cut to
	// it, so that many clients listing at once hold no more than that.
	outLimit int
	more     bool
	// paced: queued with the server's pacer; pause: how long the pacer
	// waits before it looks again at a connection whose client does not
	// read (doubling while it does not).
	paced atomic.Bool
	pause time.Duration
	// forwarding counts this connection's operations waiting to be
	// forwarded (Forwarder); blocked says Handle stopped before a command
	// that would forward one, for want of room.
	forwarding atomic.Int64
	blocked    bool
	// lastActive is the engine-clock instant of the last request, read by
	// the idle sweeper from another goroutine.
	lastActive atomic.Int64
	// spill is the ADMIT sent to another member to decide (Spiller), whose
	// answer comes before any other, while spilling; wake has the server
	// run the connection again (set by the server; nil: no spilling), and
	// spillDone is spill.finish, made once. inExec: the commands of a
	// transaction run, each answered at once.
	spill     spillWait
	spilling  bool
	wake      func()
	spillDone func(admission.Decision, bool)
	// throttleDone is spill.finishThrottle, made once.
	throttleDone func(cell.Reply, bool)
	inExec       bool
	// held are replies waiting for the key store to commit up to
	// heldTicket (durable.go), since heldSince (engine clock; 0: none, read
	// by the sweeper); needTicket is what the command just run needs
	// committed (0: nothing); durable: its place among the connections
	// waiting for a commit (Handler.wait); quitHeld: a QUIT or a malformed
	// request came behind them, the connection closes once they are sent.
	held       []byte
	heldSince  atomic.Int64
	quitHeld   bool
	heldTicket uint64
	needTicket uint64
	durable    durableWaiter
}

// spillWait is an ADMIT waiting for the member it was spilled to.
type spillWait struct {
	// routed: a CONSUME with ID sent to the member that owns the ID
	// (Router), not a spilled ADMIT; ok then says the member answered.
	routed  bool
	th      throttleWait       // a CL.THROTTLE sent to its key's owner (throttle.go)
	service []byte             // the ADMIT's, for the count once settled
	trunk   []byte             // its TRUNK key (empty: none), likewise
	refusal admission.Decision // this node's, replied unless the member admits
	d       admission.Decision // the member's, when admitted
	ok      bool               // the member admitted
	done    atomic.Bool
	// gone: the connection closed while it waited; finish settles the
	// count itself then (with eng).
	gone atomic.Bool
	eng  *admission.Engine
	wake func()
}

// finish takes the member's answer (ok: it admitted, with d) and has the
// connection run again. Called once per spill, from any goroutine.
func (w *spillWait) finish(d admission.Decision, ok bool) {
	w.d, w.ok = d, ok
	w.done.Store(true)
	if w.gone.Load() && w.done.CompareAndSwap(true, false) {
		w.settle() // the connection closed first and left it here
		return
	}
	w.wake()
}

// settle counts the spilled attempt: admitted by the member, or refused.
func (w *spillWait) settle() {
	if w.routed || w.th.on {
		return // the owner counted it, or nothing was
	}
	if w.ok {
		spillAdmitted.Inc()
		w.eng.SpilledOut(w.service, w.trunk)
		return
	}
	spillRefused.Inc()
	w.eng.Refused(w.service, w.trunk, w.refusal.Reason)
}

// Closed settles a spilled ADMIT whose connection closed before its
// answer was sent: now if the answer has come, else when it comes. Called
// on the connection's event loop when it closes.
func (cs *ConnState) Closed() {
	if !cs.spilling {
		return
	}
	cs.spilling = false
	w := &cs.spill
	w.gone.Store(true)
	if w.done.CompareAndSwap(true, false) {
		w.settle()
	}
}

// drop lets go of what a closed connection's commands used (its
// arguments, scratch and open transaction), which CLIENT LIST's snapshot
// would otherwise keep reachable until the next snapshot. Called on its
// event loop once it is closed and not adopted to send held replies.
func (cs *ConnState) drop() {
	cs.args, cs.warmArgs, cs.warmKeys, cs.quoted, cs.tx = nil, nil, nil, nil, nil
}

// SetWake says how the server runs a connection again from another
// goroutine; a connection without one never spills.
func (cs *ConnState) SetWake(wake func()) {
	cs.wake, cs.spill.wake = wake, wake
	cs.spillDone = cs.spill.finish
	cs.throttleDone = cs.spill.finishThrottle
}

// Spilling reports whether the connection waits for a spilled ADMIT's
// answer (Handle runs nothing until then).
func (cs *ConnState) Spilling() bool { return cs.spilling && !cs.spill.done.Load() }

// Spilled appends the answer to the connection's spilled ADMIT, once it has
// come (cs.Spilling is false), forgets it and settles its count (admitted
// by the member, or refused here); it reports whether there was one.
func (h *Handler) Spilled(cs *ConnState, out []byte) ([]byte, bool) {
	w := &cs.spill
	if !cs.spilling || !w.done.Load() {
		return out, false
	}
	cs.spilling = false
	if w.th.on {
		return h.throttleAnswer(cs, out), true
	}
	w.settle()
	if w.ok {
		return decision(out, w.d), true
	}
	if w.routed {
		routeFailed.Inc()
	}
	return decision(out, w.refusal), true
}

// Spiller sends an ADMIT that this node's CAPS bucket refused to the
// member whose bucket holds the most room, as the farm's planner last
// heard (the cluster): a farm so admits what one bucket holding the whole
// licence would, where the next plan would come too late.
type Spiller interface {
	// Spill sends the ADMIT (args are valid only during the call) and
	// calls done once, from another goroutine, with the member's decision
	// and whether it admitted, within a bounded time. It returns false
	// when it sends nothing (no member has room, the licence is all asked
	// for, too many are in flight): the refusal stands.
	// trunk names the key whose limits refused it (nil: the licence's).
	Spill(args [][]byte, trunk []byte, done func(d admission.Decision, ok bool)) bool
}

// Router sends a CONSUME with ID to the member that owns the ID (the
// cluster): every node sends a given ID to the same member, so that a
// repeat through any node, however soon after the first, gets the first
// decision, uncharged, rather than racing the notice of the first charge.
type Router interface {
	// Routes reports whether CONSUME service acct ... ID id is to be
	// sent to another member (false: it is decided here). It must not
	// allocate.
	Routes(service, acct, id []byte) bool
	// Route sends the CONSUME (args are valid only during the call) to
	// the ID's owner and calls done once, from another goroutine, with
	// the owner's decision and whether it answered, within a bounded
	// time. It returns false when it sends nothing (this node owns the
	// ID, the owner is unreachable, too many are in flight): the CONSUME
	// is decided here.
	Route(args [][]byte, done func(d admission.Decision, answered bool)) bool
}

// RouteMarker is the CONSUME option a routed CONSUME carries, with the
// name of the member that sent it: decided where it arrives, never sent
// on.
const RouteMarker = "ROUTED"

// Routing counters: CONSUMEs with ID sent to their owner, answered or not.
var (
	routeSent   = metrics.NewCounter(`capsgate_consume_routed_total{result="sent"}`)
	routeFailed = metrics.NewCounter(`capsgate_consume_routed_total{result="unanswered"}`)
	// routeUnanswered is the reply to a CONSUME whose owner did not
	// answer in time: it may or may not have been charged there, so the
	// client retries it with its ID (the owner answers, or, once marked
	// down, this node decides).
	routeUnanswered = admission.Decision{Reason: admission.OVERLOAD, RetryAfterMS: 50}
)

// Spill counters: ADMITs spilled, and how the members answered.
var (
	spillSent     = metrics.NewCounter(`capsgate_spill_total{result="sent"}`)
	spillAdmitted = metrics.NewCounter(`capsgate_spill_total{result="admitted"}`)
	spillRefused  = metrics.NewCounter(`capsgate_spill_total{result="refused"}`)
)

// NewConnState returns the state of a fresh connection.
func NewConnState(id int64) *ConnState {
	return &ConnState{id: id, args: make([][]byte, 0, 16)}
}

// Forwarder passes on what this node could not do itself: the RELEASE of
// a call or the DEREGISTER of a subscriber held by another node; and it
// claims a subscriber newly registered here, so that another node holding
// it from an earlier registration lets it go (a subscriber counts once in
// the cluster). It is called on the event loop and must not block; the
// byte slices are only valid during the call.
//
// Each operation counts in queued (the connection's) until it is sent;
// ForwardRoom says whether the forwarder has room for one more. A
// connection with MaxForwardQueued operations waiting, or finding no room,
// waits before its next command that may forward (back-pressure, not a
// drop): a client flooding RELEASEs for calls nobody holds is slowed to
// what the cluster can carry, and another client's RELEASE is never
// dropped for it.
type Forwarder interface {
	ForwardRoom() bool
	ForwardRelease(service, call []byte, seconds int64, queued *atomic.Int64)
	ForwardDeregister(service, subscriber []byte, at int64, queued *atomic.Int64)
	ClaimSubscriber(service, subscriber []byte, at int64, queued *atomic.Int64)
	// Consumed passes on a CONSUME ID charged here, with its decision, so
	// that a repeat through another node is not charged again.
	Consumed(service, account, id []byte, d admission.Decision, queued *atomic.Int64)
}

// MaxForwardQueued bounds the operations one connection may have waiting
// to be forwarded to the cluster.
const MaxForwardQueued = 256

// mustWait reports whether a command named name (lower case), which may
// pass on work to the cluster, must wait for room (see Forwarder): until
// the connection's own waiting operations leave room for what it may
// forward (an EXEC: every command of its transaction that may, at most
// MaxForwardQueued: see txQueue) and the forwarder has room.
func (h *Handler) mustWait(cs *ConnState, name []byte, args [][]byte) bool {
	if h.fwd == nil {
		return false
	}
	n := int64(1) // what the command may forward
	if string(name) == "exec" {
		if cs.tx == nil || cs.tx.forwards == 0 {
			return false
		}
		n = int64(cs.tx.forwards)
	} else if !forwards(string(name), args) {
		return false
	}
	return cs.forwarding.Load()+n > MaxForwardQueued || !h.fwd.ForwardRoom()
}

// forwards reports whether a command may forward work to the cluster:
// RELEASE (of a call held elsewhere), REGISTER (a claim), DEREGISTER, and
// CONSUME with an ID (what was charged), a member's routed one included.
func forwards(name string, args [][]byte) bool {
	switch name {
	case "release", "register", "deregister":
		return true
	case "consume":
		return len(args) > 4
	}
	return false
}

// Handler executes commands against an engine. It holds no per-connection
// state and is safe for concurrent use by every event loop.
type Handler struct {
	eng      *admission.Engine
	null     bool   // decides nothing: every command is answered NullReply (NewNullHandler)
	noWarm   bool   // the benchmarks' comparison: no warm pass
	password []byte // nil: AUTH is not required
	// memberSecret is MemberUser's secret (nil: none; SetMemberSecret).
	memberSecret []byte
	started      time.Time
	stats        func() (conns int64) // for INFO; may be nil
	fwd          Forwarder            // may be nil
	spill        Spiller              // may be nil
	route        Router               // may be nil
	cells        *throttle            // CL.THROTTLE (throttle.go); nil: disabled
	ocSeq        ocSeq                // OC's oc-seq (oc.go)
	waiters      durableWaiters
	kick         func()         // asks for a commit now (durable.go); may be nil
	clients      ClientLister   // for CLIENT LIST; may be nil
	snapshot     clientSnapshot // CLIENT LIST's connections, sorted
	// servicesInfo is INFO's Services section as last rendered.
	servicesInfo atomic.Pointer[servicesSnap]
}

// SetForwarder sets where RELEASE and DEREGISTER of keys this node does not
// hold go (the cluster). Call it before serving.
func (h *Handler) SetForwarder(f Forwarder) { h.fwd = f }

// SetSpiller sets where ADMITs refused by this node's CAPS bucket go (the
// cluster). Call it before serving.
func (h *Handler) SetSpiller(s Spiller) { h.spill = s }

// SetRouter sets where CONSUMEs with an ID another member owns go (the
// cluster). Call it before serving.
func (h *Handler) SetRouter(r Router) { h.route = r }

// routes reports whether args, a CONSUME on cs, goes to its ID's owner:
// it has an ID another member owns (not a routed one, whose 8 arguments
// say ROUTED), and cs can wait for the answer (a transaction's cannot).
func (h *Handler) routes(cs *ConnState, args [][]byte) bool {
	return h.route != nil && cs.wake != nil && !cs.inExec && cs.tx == nil &&
		len(args) == 6 && bytes.EqualFold(args[4], []byte("ID")) && h.route.Routes(args[1], args[2], args[5])
}

// NewHandler returns a handler deciding with eng. A non-empty password makes
// clients AUTH first.
func NewHandler(eng *admission.Engine, password string) *Handler {
	h := &Handler{eng: eng, started: time.Now()}
	if password != "" {
		h.password = []byte(password)
	}
	return h
}

// NullReply is what a handler that decides nothing (NewNullHandler)
// answers to every command: a decision of ADMIT's shape (admitted, OK,
// retry 0, remaining 1), decided by nobody.
const NullReply = "*4\r\n:1\r\n+OK\r\n:0\r\n:1\r\n"

// NewNullHandler returns a handler that decides nothing: it takes commands
// as NewHandler's does (the same framing, bounds and pacing in the Server)
// and answers each with NullReply. A Server with it costs what capsgate's
// transport and framing cost and nothing for deciding: the ceiling of the
// RESP front end on a machine (capsbench's "limit" target).
func NewNullHandler() *Handler { return &Handler{null: true, noWarm: true, started: time.Now()} }

// Handle runs every complete command at the front of in, appending the
// replies to out in request order. It returns the bytes consumed, the grown
// out and whether the connection must now be closed (QUIT or a protocol
// error; the replies in out are sent first; behind replies held for a
// commit it closes only once they are sent, cs.quitHeld). Bytes of an
// incomplete last command are left unconsumed for the next call, and so
// are the commands after the replies reach cs's budget (cs.more: the
// caller calls again once the replies are on their way), so no command
// runs while the node holds more than the budget and one reply of a
// connection's replies, and a command that may forward work to the
// cluster while it has no room for it (cs.blocked: the caller calls again
// a little later).
func (h *Handler) Handle(now int64, cs *ConnState, in, out []byte) (n int, _ []byte, closeConn bool) {
	cs.more, cs.blocked = false, false
	cs.quoted = cs.quoted[:0]
	start := len(out)
	// An unauthenticated client's commands are all refused: their keys
	// are not warmed (it would have the loop take a service's lock and
	// probe keys of its choosing).
	if len(in) >= warmFrom && cs.tx == nil && !h.noWarm && (h.password == nil || cs.authed) {
		h.warm(cs, in)
	}
	for n < len(in) {
		if cs.outBudget > 0 && len(out)-start+len(cs.held) >= cs.outBudget {
			cs.more = true
			break
		}
		args, used, err := cs.parse(in[n:])
		if err != nil {
			mark := len(out)
			out = append(out, "-ERR Protocol error: "...)
			out = append(out, err.Error()...)
			out = append(out, "\r\n"...)
			if cs.closeBehindHeld(out[mark:]) {
				return len(in), out[:mark], false
			}
			return len(in), out, true
		}
		if used == 0 {
			break
		}
		cs.args = args[:0]
		if len(args) == 0 {
			n += used
			continue // an empty inline line
		}
		var nb [16]byte
		name := lower(&nb, args[0])
		if h.mustWait(cs, name, args) {
			cs.blocked = true
			break
		}
		if len(cs.held) > 0 && h.routesAway(cs, name, args) {
			// A CONSUME for another member's ID, or a CL.THROTTLE of its
			// key, waits for the replies held for a commit: its answer
			// must come after them.
			break
		}
		n += used
		var quit bool
		cs.commands++
		mark := len(out)
		out, quit = h.run(now, cs, name, args, out)
		if cs.needTicket > 0 || len(cs.held) > 0 {
			// This reply, and every one after a held one, waits for the
			// commit (durable.go).
			if len(cs.held) == 0 {
				cs.heldSince.Store(now)
			}
			cs.held = append(cs.held, out[mark:]...)
			heldReplies.Inc()
			out = out[:mark]
			cs.heldTicket, cs.needTicket = max(cs.heldTicket, cs.needTicket), 0
		}
		if quit {
			if len(cs.held) > 0 {
				cs.quitHeld = true // its +OK is held too
				return len(in), out, false
			}
			return len(in), out, true
		}
		if cs.spilling {
			break // its answer comes before the next command's
		}
	}
	if cap(cs.quoted) > quotedKeep {
		cs.quoted = nil // an idle connection does not keep a long line's copy
	}
	return n, out, false
}

// quotedKeep is what a connection keeps between reads of the copy its
// quoted inline lines were unescaped in.
const quotedKeep = 4 << 10

// parse is Parse for Handle, which may leave a command it parsed
// unconsumed (waiting for room to forward, or behind held replies) and
// parse it again at its next call: an inline line with quotes, which
// Parse unescapes in place, is unescaped in a copy (cs.quoted, kept for
// the rest of the call: the args point into it), so that the connection's
// bytes are never rewritten. Clients send multibulk; a quoted inline line
// is someone typing.
func (cs *ConnState) parse(in []byte) ([][]byte, int, error) {
	if len(in) == 0 || in[0] == '*' {
		return Parse(in, cs.args)
	}
	line := in[:min(len(in), MaxRequestBytes)]
	nl := bytes.IndexByte(line, '\n')
	if nl < 0 || bytes.IndexAny(line[:nl], `"'`) < 0 {
		return Parse(in, cs.args) // incomplete (Parse writes nothing) or nothing to unescape
	}
	at := len(cs.quoted)
	cs.quoted = append(cs.quoted, line[:nl+1]...)
	return Parse(cs.quoted[at:len(cs.quoted):len(cs.quoted)], cs.args)
}

// lower copies an ASCII command name, lower-cased, into buf. Names longer
// than buf are not commands.
func lower(buf *[16]byte, b []byte) []byte {
	if len(b) > len(buf) {
		return nil
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(b)]
}

// exec runs one command. It reports whether the connection must close.
func (h *Handler) exec(now int64, cs *ConnState, args [][]byte, out []byte) ([]byte, bool) {
	var nb [16]byte
	return h.run(now, cs, lower(&nb, args[0]), args, out)
}

// run is exec with the command's name already lower-cased (name).
func (h *Handler) run(now int64, cs *ConnState, name []byte, args [][]byte, out []byte) ([]byte, bool) {
	if h.null {
		return append(out, NullReply...), false
	}
	cs.info.seen(now)
	if h.password != nil && !cs.authed {
		switch string(name) {
		case "auth", "hello", "quit":
		default:
			return AppendError(out, "NOAUTH Authentication required."), false
		}
	}
	if cs.tx != nil {
		if out, queued := h.queue(cs, name, args, out); queued {
			return out, false
		}
	}
	switch string(name) {
	case "admit":
		return h.admit(now, cs, args, out), false
	case "release":
		return h.release(now, cs, args, out), false
	case "register":
		return h.register(now, cs, args, out), false
	case "deregister":
		return h.deregister(now, cs, args, out), false
	case "consume":
		return h.consume(now, cs, args, out), false
	case "quota":
		return h.quota(args, out), false
	case "oc":
		return h.oc(now, args, out), false
	case "cl.throttle":
		return h.clThrottle(now, cs, args, out), false
	case "ping":
		switch len(args) {
		case 1:
			return AppendSimple(out, "PONG"), false
		case 2:
			return AppendBulk(out, args[1]), false
		}
		return wrongArgs(out, "ping"), false
	case "echo":
		if len(args) != 2 {
			return wrongArgs(out, "echo"), false
		}
		return AppendBulk(out, args[1]), false
	case "quit":
		return AppendSimple(out, "OK"), true
	case "auth":
		return h.auth(cs, args, out), false
	case "hello":
		return h.hello(cs, args, out), false
	case "select":
		if len(args) != 2 {
			return wrongArgs(out, "select"), false
		}
		if v, ok := parseInt(args[1]); !ok || v != 0 {
			return AppendError(out, "ERR DB index is out of range"), false
		}
		return AppendSimple(out, "OK"), false
	case "info":
		return h.info(args, out), false
	case "command":
		return h.command(args, out), false
	case "client":
		return h.client(now, cs, args, out), false
	case "multi":
		return h.multi(cs, args, out), false
	case "exec":
		return h.execTx(now, cs, args, out), false
	case "discard":
		return h.discard(cs, args, out), false
	}
	return unknownCommand(out, args[0]), false
}

func wrongArgs(out []byte, cmd string) []byte {
	return AppendError(out, "ERR wrong number of arguments for '"+cmd+"' command")
}

// parseInt reads a decimal int64 without allocating.
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 { // 19 digits cannot overflow uint64
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
		if v > math.MaxInt64 {
			return 0, false
		}
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// printable renders client bytes for an error message: at most max bytes,
// control and non-ASCII bytes as \xNN.
func printable(b []byte, max int) string {
	var s strings.Builder
	for i, c := range b {
		if i == max {
			s.WriteString("...")
			break
		}
		if c < 0x20 || c >= 0x7f || c == '\'' {
			fmt.Fprintf(&s, "\\x%02x", c)
			continue
		}
		s.WriteByte(c)
	}
	return s.String()
}
