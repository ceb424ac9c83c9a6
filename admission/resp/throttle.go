package resp

import (
	"bytes"
	"strconv"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/cell"
)

// CL.THROTTLE key max_burst count period [quantity]: redis-cell's rate
// limiter (admission/cell), farm-wide. A key is decided by the member
// that owns it (ThrottleRouter, the cluster): a node that does not own
// it sends it there, marked ROUTED so it is never sent on, and answers
// with the owner's reply; the connection runs nothing else meanwhile (as
// for a spilled ADMIT), so one connection has one in flight at most, and
// the router bounds those of the node. An owner that does not answer in
// time, and a command inside MULTI (refused: it cannot wait), leave the
// key to this node: decided here, on this node's own bucket for it.

// Throttle configures CL.THROTTLE (config section throttle).
type Throttle struct {
	// Allow lists the key prefixes CL.THROTTLE accepts; empty, it is
	// disabled.
	Allow []string
	// Bounds bound its arguments.
	Bounds cell.Bounds
	// Table holds the keys (throttle.max_keys).
	Table *cell.Table
}

// ThrottleRouter sends a CL.THROTTLE to the member that owns its key (the
// cluster): every node sends a key to the same member, whose bucket is
// then the farm's.
type ThrottleRouter interface {
	// ThrottleRoutes reports whether key is owned by another member that
	// may be asked now (false: it is decided here). It must not allocate.
	ThrottleRoutes(key []byte) bool
	// RouteThrottle sends CL.THROTTLE (args, with or without quantity,
	// are valid only during the call) to the key's owner and calls done
	// once, from another goroutine, with the owner's reply and whether
	// it answered, within a bounded time. It returns false when it sends
	// nothing (too many in flight, the owner is unreachable): the key is
	// then decided here.
	RouteThrottle(args [][]byte, done func(r cell.Reply, answered bool)) bool
}

// throttle is a handler's CL.THROTTLE.
type throttle struct {
	allow  [][]byte
	bounds cell.Bounds
	table  *cell.Table
	router ThrottleRouter // may be nil
	full   string         // the error reply to a new key when the table is full
}

// throttleWait is a CL.THROTTLE sent to its key's owner, with what this
// node decides if the owner does not answer.
type throttleWait struct {
	on       bool
	reply    cell.Reply // the owner's
	key      admission.Key
	rate     cell.Rate
	quantity int64
}

// CL.THROTTLE's counters: decisions made here by result, keys refused for
// a full table, commands refused (bad arguments, a key no prefix allows,
// disabled), and those sent to their key's owner, answered or decided here
// for want of an answer; and the keys every table holds.
var (
	throttleAllowed    = metrics.NewCounter(`capsgate_throttle_total{result="allowed"}`)
	throttleLimited    = metrics.NewCounter(`capsgate_throttle_total{result="limited"}`)
	throttleFull       = metrics.NewCounter(`capsgate_throttle_total{result="full"}`)
	throttleRefused    = metrics.NewCounter(`capsgate_throttle_total{result="error"}`)
	throttleAnswered   = metrics.NewCounter(`capsgate_throttle_routed_total{result="answered"}`)
	throttleUnanswered = metrics.NewCounter(`capsgate_throttle_routed_total{result="unanswered"}`)
	_                  = metrics.NewGauge(`capsgate_throttle_keys`, func() float64 { return float64(cell.Held()) })
)

// errThrottleOff answers CL.THROTTLE on a node with no throttle.allow.
const errThrottleOff = "ERR CL.THROTTLE is not enabled (throttle.allow is empty)"

// SetThrottle enables CL.THROTTLE with t (t.Allow empty: disabled). Call
// it before serving.
func (h *Handler) SetThrottle(t Throttle) {
	if len(t.Allow) == 0 || t.Table == nil {
		h.cells = nil
		return
	}
	c := &throttle{bounds: t.Bounds, table: t.Table,
		full: "ERR CL.THROTTLE cannot take a new key: the table holds throttle.max_keys (" +
			strconv.FormatInt(t.Table.Max(), 10) + ") keys whose buckets are not full"}
	for _, p := range t.Allow {
		c.allow = append(c.allow, []byte(p))
	}
	h.cells = c
}

// SetThrottleRouter sets where CL.THROTTLEs for keys another member owns
// go (the cluster). Call it after SetThrottle, before serving.
func (h *Handler) SetThrottleRouter(r ThrottleRouter) {
	if h.cells != nil {
		h.cells.router = r
	}
}

func (t *throttle) allowed(key []byte) bool {
	for _, p := range t.allow {
		if bytes.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// throttleRoutes reports whether a CL.THROTTLE of key on cs goes to the
// key's owner: another member owns it, and cs can wait for the answer.
func (h *Handler) throttleRoutes(cs *ConnState, key []byte) bool {
	return h.cells != nil && h.cells.router != nil && cs.wake != nil && !cs.inExec && cs.tx == nil &&
		h.cells.router.ThrottleRoutes(key)
}

// routesAway reports whether the command args (named name) goes to
// another member for its answer: a CONSUME with an ID another member owns
// (Router), or a CL.THROTTLE of a key another member owns.
func (h *Handler) routesAway(cs *ConnState, name []byte, args [][]byte) bool {
	switch string(name) {
	case "consume":
		return h.routes(cs, args)
	case "cl.throttle":
		return len(args) >= 2 && h.throttleRoutes(cs, args[1])
	}
	return false
}

// CL.THROTTLE key max_burst count period [quantity] [ROUTED member]
func (h *Handler) clThrottle(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	routed := len(args) == 8 && bytes.EqualFold(args[6], []byte(RouteMarker))
	if routed {
		// Sent by a member to this node, the key's owner: decided here,
		// never sent on.
		if !h.fromMember(cs) {
			throttleRefused.Inc()
			return memberOnly(out, "CL.THROTTLE ... ROUTED")
		}
		args = args[:6]
	}
	t := h.cells
	if t == nil {
		throttleRefused.Inc()
		return AppendError(out, errThrottleOff)
	}
	a, err := cell.ParseArgs(args[1:], t.bounds)
	if err != nil {
		throttleRefused.Inc()
		return AppendError(out, "ERR "+err.Error())
	}
	if !t.allowed(a.Key) {
		throttleRefused.Inc()
		return AppendError(out, "ERR CL.THROTTLE key '"+printable(a.Key, 64)+"' starts with none of the prefixes of throttle.allow")
	}
	r, err := cell.NewRate(a.MaxBurst, a.Count, a.Period)
	if err != nil {
		throttleRefused.Inc()
		return AppendError(out, "ERR "+err.Error())
	}
	key := admission.KeyOf(a.Key)
	if !routed && len(cs.held) == 0 && h.throttleRoutes(cs, a.Key) {
		w := &cs.spill
		w.th = throttleWait{on: true, key: key, rate: r, quantity: a.Quantity}
		w.done.Store(false)
		if t.router.RouteThrottle(args, cs.throttleDone) {
			cs.spilling = true
			return out
		}
		w.th.on = false
	}
	return h.throttleHere(now, key, r, a.Quantity, out)
}

// throttleHere decides CL.THROTTLE on this node's table.
func (h *Handler) throttleHere(now int64, key admission.Key, r cell.Rate, quantity int64, out []byte) []byte {
	reply, err := h.cells.table.Throttle(now, key, r, quantity)
	switch {
	case err != nil:
		throttleFull.Inc()
		return AppendError(out, h.cells.full)
	case reply.Limited:
		throttleLimited.Inc()
	default:
		throttleAllowed.Inc()
	}
	return appendThrottle(out, reply)
}

// appendThrottle appends CL.THROTTLE's reply: an array of five integers.
func appendThrottle(out []byte, r cell.Reply) []byte {
	out = AppendArrayHeader(out, 5)
	for _, v := range r.Ints() {
		out = AppendInt(out, v)
	}
	return out
}

// finishThrottle takes the owner's reply to a CL.THROTTLE (answered: it
// came) and has the connection run again. Called once, from any goroutine.
func (w *spillWait) finishThrottle(r cell.Reply, answered bool) {
	w.th.reply = r
	w.finish(admission.Decision{}, answered)
}

// throttleAnswer appends the answer to the connection's CL.THROTTLE sent
// to its key's owner: the owner's reply, or, when none came in time, this
// node's decision now. Called by Spilled.
func (h *Handler) throttleAnswer(cs *ConnState, out []byte) []byte {
	w := &cs.spill
	w.th.on = false
	if w.ok {
		throttleAnswered.Inc()
		return appendThrottle(out, w.th.reply)
	}
	throttleUnanswered.Inc()
	return h.throttleHere(h.eng.Now(), w.th.key, w.th.rate, w.th.quantity, out)
}
