package resp

import (
	"bytes"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/names"
)

// Error replies of the command table.
const (
	errSyntax      = "ERR syntax error"
	errService     = "ERR invalid service name"
	errAccount     = "ERR invalid account name"
	errTrunk       = "ERR invalid trunk key"
	errCall        = "ERR invalid call-id"
	errSubscriber  = "ERR invalid subscriber id"
	errID          = "ERR invalid idempotency key"
	errNotInt      = "ERR value is not an integer or out of range"
	errPriority    = "ERR invalid priority: want normal, high or emergency"
	errUnits       = "ERR units must be a positive integer"
	errTTL         = "ERR TTL must be a positive integer of seconds"
	errSeconds     = "ERR SECONDS must be a non-negative integer"
	errNoSuchQuota = "ERR no such service"
)

func decision(out []byte, d admission.Decision) []byte {
	return AppendDecision(out, d.Admitted(), d.Reason.String(), d.RetryAfterMS, d.Remaining)
}

// ADMIT service [CALL call-id] [ACCOUNT account] [PRIORITY normal|high|emergency] [TRUNK key] [SPILLED member]
func (h *Handler) admit(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	if len(args) < 2 || len(args)%2 != 0 {
		return wrongArgs(out, "admit")
	}
	if !names.Valid(args[1]) {
		return AppendError(out, errService)
	}
	var call, acct, trunk []byte
	prio := admission.Normal
	seenPrio, spilled := false, false
	for i := 2; i < len(args); i += 2 {
		opt, v := args[i], args[i+1]
		switch {
		case bytes.EqualFold(opt, []byte("CALL")) && call == nil:
			if !names.ValidKey(v) {
				return AppendError(out, errCall)
			}
			call = v
		case bytes.EqualFold(opt, []byte("ACCOUNT")) && acct == nil:
			if !names.Valid(v) {
				return AppendError(out, errAccount)
			}
			acct = v
		case bytes.EqualFold(opt, []byte("TRUNK")) && trunk == nil:
			if !names.Valid(v) {
				return AppendError(out, errTrunk)
			}
			trunk = v
		case bytes.EqualFold(opt, []byte("SPILLED")) && !spilled:
			// A member's ADMIT that its bucket refused: decided here, never
			// spilled on (v names the member).
			if !h.fromMember(cs) {
				return memberOnly(out, "ADMIT ... SPILLED")
			}
			spilled = true
		case bytes.EqualFold(opt, []byte("PRIORITY")) && !seenPrio:
			seenPrio = true
			switch {
			case bytes.EqualFold(v, []byte("normal")):
			case bytes.EqualFold(v, []byte("high")):
				prio = admission.High
			case bytes.EqualFold(v, []byte("emergency")):
				prio = admission.Emergency
			default:
				return AppendError(out, errPriority)
			}
		default:
			return AppendError(out, errSyntax)
		}
	}
	if spilled {
		return decision(out, h.eng.AdmitTrunkSpilled(now, args[1], call, acct, trunk, prio))
	}
	if h.spill == nil || cs.wake == nil || cs.inExec || cs.tx != nil || cs.spilling || len(cs.held) > 0 {
		return decision(out, h.eng.AdmitTrunk(now, args[1], call, acct, trunk, prio))
	}
	d := h.eng.AdmitTrunkSpillable(now, args[1], call, acct, trunk, prio)
	if d.Reason == admission.CAPS || d.Reason == admission.TRUNK_CAPS {
		cs.spill.routed, cs.spill.refusal, cs.spill.ok, cs.spill.eng = false, d, false, h.eng
		cs.spill.done.Store(false)
		by := trunk // the key's bucket refused it, not the licence's
		if d.Reason == admission.CAPS {
			by = nil
		}
		if h.spill.Spill(args, by, cs.spillDone) {
			spillSent.Inc()
			cs.spill.service = append(cs.spill.service[:0], args[1]...)
			cs.spill.trunk = append(cs.spill.trunk[:0], trunk...) // empty: none
			cs.spilling = true
			return out
		}
		h.eng.Refused(args[1], trunk, d.Reason)
	}
	return decision(out, d)
}

// keyed validates the commands of the form "service key [OPTION n]"
// (RELEASE, REGISTER, DEREGISTER; opt "" for none): the arity, the service,
// the key and the option, whose value must be at least min (def when it is
// absent). It returns the value, or the error reply.
func keyed(args [][]byte, cmd, errKey, opt string, min, def int64, errOpt string) (int64, string) {
	if len(args) != 3 && (opt == "" || len(args) != 5) {
		return 0, "ERR wrong number of arguments for '" + cmd + "' command"
	}
	switch {
	case !names.Valid(args[1]):
		return 0, errService
	case !names.ValidKey(args[2]):
		return 0, errKey
	case len(args) == 3:
		return def, ""
	case !bytes.EqualFold(args[3], []byte(opt)):
		return 0, errSyntax
	}
	v, ok := parseInt(args[4])
	if !ok || v < min {
		return 0, errOpt
	}
	return v, ""
}

// RELEASE service call-id [SECONDS n]
func (h *Handler) release(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	secs, e := keyed(args, "release", errCall, "SECONDS", 0, 0, errSeconds)
	if e != "" {
		return AppendError(out, e)
	}
	released := h.eng.Release(now, args[1], args[2], secs)
	if !released {
		// Its ADMIT may still be on its way here (admission.EndedFor).
		h.eng.Ended(now, args[1], args[2])
		if h.fwd != nil {
			h.fwd.ForwardRelease(args[1], args[2], secs, &cs.forwarding)
		}
	}
	return AppendInt(out, b2i(released))
}

// REGISTER service subscriber [TTL seconds]
func (h *Handler) register(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	ttl, e := keyed(args, "register", errSubscriber, "TTL", 1, 0, errTTL)
	if e != "" {
		return AppendError(out, e)
	}
	d, added, at := h.eng.RegisterClaimed(now, args[1], args[2], ttl)
	if added && h.fwd != nil {
		h.fwd.ClaimSubscriber(args[1], args[2], at, &cs.forwarding)
	}
	return decision(out, d)
}

// DEREGISTER service subscriber
func (h *Handler) deregister(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	if _, e := keyed(args, "deregister", errSubscriber, "", 0, 0, ""); e != "" {
		return AppendError(out, e)
	}
	gone := h.eng.Deregister(now, args[1], args[2])
	// Passed on even when found here: the subscriber may have registered
	// again through another node a moment ago (its claim on the way), and
	// that registration must end too.
	if h.fwd != nil {
		h.fwd.ForwardDeregister(args[1], args[2], now, &cs.forwarding)
	}
	return AppendInt(out, b2i(gone))
}

// CONSUME service account units [ID key [ROUTED member]]
func (h *Handler) consume(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	routed := len(args) == 8 && bytes.EqualFold(args[6], []byte(RouteMarker))
	if routed {
		// Sent by the member named by its ID's owner (this node): decided
		// here, never sent on.
		if !h.fromMember(cs) {
			return memberOnly(out, "CONSUME ... ROUTED")
		}
		args = args[:6]
	}
	if len(args) != 4 && len(args) != 6 {
		return wrongArgs(out, "consume")
	}
	if !names.Valid(args[1]) {
		return AppendError(out, errService)
	}
	if !names.Valid(args[2]) {
		return AppendError(out, errAccount)
	}
	units, ok := parseInt(args[3])
	if !ok || units <= 0 {
		return AppendError(out, errUnits)
	}
	var id []byte
	if len(args) == 6 {
		if !bytes.EqualFold(args[4], []byte("ID")) {
			return AppendError(out, errSyntax)
		}
		if !names.ValidKey(args[5]) {
			return AppendError(out, errID)
		}
		id = args[5]
	}
	if !routed && len(cs.held) == 0 && h.routes(cs, args) {
		if d, ok := h.eng.KnownID(now, args[1], args[2], id); ok {
			// Its owner's notice came: the first decision, acknowledged
			// once what this node remembers of it is on disk.
			h.ackDurable(cs)
			return decision(out, d)
		}
		w := &cs.spill
		w.routed, w.ok, w.refusal = true, false, routeUnanswered
		w.done.Store(false)
		if h.route.Route(args, cs.spillDone) {
			routeSent.Inc()
			cs.spilling = true
			return out
		}
		w.routed = false
	}
	d, charged := h.eng.ConsumeCharged(now, args[1], args[2], units, id)
	if id != nil && d.Admitted() {
		if h.fwd != nil && charged {
			// A repeat answered with its first decision is not news.
			h.fwd.Consumed(args[1], args[2], id, d, &cs.forwarding)
		}
		h.ackDurable(cs)
	}
	return decision(out, d)
}

// ackDurable has the reply just decided wait until the keys remembered so
// far are on disk (durable.go).
func (h *Handler) ackDurable(cs *ConnState) {
	if ticket, durable := h.eng.IDTickets(); ticket > durable && cs.wake != nil {
		cs.needTicket = ticket
	}
}

// QUOTA service: flat field/value pairs.
func (h *Handler) quota(args [][]byte, out []byte) []byte {
	if len(args) != 2 {
		return wrongArgs(out, "quota")
	}
	if !names.Valid(args[1]) {
		return AppendError(out, errService)
	}
	// A service the node does not know has the same fields as any
	// other: nothing licensed, nothing used.
	var st admission.Stats
	if s := h.eng.Service(string(args[1])); s != nil {
		st = s.Stats()
	}
	l := st.Limits
	state := l.State
	if !l.Licensed {
		state = "unlicensed"
	} else if state == "" {
		state = "active"
	}
	licensed := l.LicensedCAPS
	if licensed == 0 {
		licensed = l.CAPS
	}
	fields := 17
	out = AppendArrayHeader(out, 2*fields)
	out = kvFloat(out, "caps_licensed", licensed)
	out = kvFloat(out, "caps_share", l.CAPS)
	out = kvFloat(out, "caps_used", st.UsedCAPS)
	out = kvInt(out, "caps_burst", st.Burst)
	out = kvInt(out, "sessions_licensed", l.Sessions)
	out = kvInt(out, "sessions_used", st.Sessions)
	out = kvInt(out, "sessions_emergency", st.EmergencySessions)
	out = kvInt(out, "subscribers_licensed", l.Subscribers)
	out = kvInt(out, "subscribers_used", st.Subscribers)
	out = kvInt(out, "tokens_licensed", l.Tokens)
	out = kvInt(out, "tokens_used", st.TokensUsed)
	out = kvInt(out, "tokens_left", st.TokensLeft)
	out = kvInt(out, "tokens_overage", st.Overage)
	out = kvInt(out, "tokens_per_attempt", l.TokensPerAttempt)
	out = kvInt(out, "tokens_per_minute", l.TokensPerMinute)
	out = AppendBulkString(out, "overage")
	out = AppendBulkString(out, l.Overage.String())
	out = AppendBulkString(out, "license_state")
	return AppendBulkString(out, state)
}

func kvInt(out []byte, k string, v int64) []byte {
	out = AppendBulkString(out, k)
	return AppendInt(out, v)
}

// kvFloat writes a rate; -1 (unlimited) and whole numbers print as integers.
func kvFloat(out []byte, k string, v float64) []byte {
	out = AppendBulkString(out, k)
	var nb [32]byte
	return AppendBulk(out, appendRate(nb[:0], v))
}
