package client

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Decision is capsgate's answer to ADMIT, REGISTER and CONSUME: the RESP
// array [admitted, reason, retry_after_ms, remaining].
type Decision struct {
	Admitted bool
	// Reason is OK, CAPS, SESSIONS, SUBSCRIBERS, TOKENS, UNLICENSED or
	// OVERLOAD.
	Reason string
	// RetryAfterMs is 0 when admitted, else a hint for a retry.
	RetryAfterMs int64
	// Remaining is what is left of the limiting quantity, or -1.
	Remaining int64
}

// Priority is an ADMIT priority.
type Priority string

// ADMIT priorities; the zero value sends none (normal).
const (
	PriorityNormal    Priority = "normal"
	PriorityHigh      Priority = "high"
	PriorityEmergency Priority = "emergency"
)

// AdmitOptions are ADMIT's optional parts; zero fields are left out.
type AdmitOptions struct {
	// Call opens a session held until Release (and makes a repeat of the
	// same call id idempotent).
	Call string
	// Account charges tokens to this account's pool.
	Account  string
	Priority Priority
}

// Decision parses r as a decision. A RESP error is returned as a
// *ServerError, anything else that is not a decision wraps ErrProtocol.
func (r *Reply) Decision() (Decision, error) {
	if err := r.Err(); err != nil {
		return Decision{}, err
	}
	e := r.Elems
	if r.Kind != Array || len(e) != 4 || e[0].Kind != Integer || e[1].Kind != Simple ||
		e[2].Kind != Integer || e[3].Kind != Integer {
		return Decision{}, protoErr("not a decision: %s", r.String())
	}
	return Decision{Admitted: e[0].Int == 1, Reason: reason(e[1].Str), RetryAfterMs: e[2].Int, Remaining: e[3].Int}, nil
}

// reason returns the reason's text; the ones capsgate sends cost no
// allocation.
func reason(b []byte) string {
	switch string(b) { // the compiler compares without converting
	case "OK":
		return "OK"
	case "CAPS":
		return "CAPS"
	case "SESSIONS":
		return "SESSIONS"
	case "SUBSCRIBERS":
		return "SUBSCRIBERS"
	case "TOKENS":
		return "TOKENS"
	case "UNLICENSED":
		return "UNLICENSED"
	case "OVERLOAD":
		return "OVERLOAD"
	}
	return string(b)
}

// Admit asks whether a call attempt for service may go ahead.
func (c *Conn) Admit(ctx context.Context, service string, opts AdmitOptions) (Decision, error) {
	c.args[0], c.args[1] = "ADMIT", service
	n := 2
	n = c.opt(n, "CALL", opts.Call)
	n = c.opt(n, "ACCOUNT", opts.Account)
	n = c.opt(n, "PRIORITY", string(opts.Priority))
	return c.decision(ctx, n)
}

// Release ends the session of call callID; seconds > 0 charges per-minute
// tokens for a call that long. It reports whether the call was open.
func (c *Conn) Release(ctx context.Context, service, callID string, seconds int64) (bool, error) {
	c.args[0], c.args[1], c.args[2] = "RELEASE", service, callID
	n := 3
	if seconds > 0 {
		n = c.opt(n, "SECONDS", strconv.FormatInt(seconds, 10))
	}
	return c.flag(ctx, n)
}

// Register registers subscriber; ttl > 0 (whole seconds) overrides the
// server's registration TTL.
func (c *Conn) Register(ctx context.Context, service, subscriber string, ttl time.Duration) (Decision, error) {
	c.args[0], c.args[1], c.args[2] = "REGISTER", service, subscriber
	n := 3
	if ttl > 0 {
		n = c.opt(n, "TTL", strconv.FormatInt(int64((ttl+time.Second-1)/time.Second), 10))
	}
	return c.decision(ctx, n)
}

// Deregister removes subscriber and reports whether it was registered.
func (c *Conn) Deregister(ctx context.Context, service, subscriber string) (bool, error) {
	c.args[0], c.args[1], c.args[2] = "DEREGISTER", service, subscriber
	return c.flag(ctx, 3)
}

// Consume charges units tokens to account's pool (or the service's); a
// non-empty id makes a repeat with the same id free.
func (c *Conn) Consume(ctx context.Context, service, account string, units int64, id string) (Decision, error) {
	c.args[0], c.args[1], c.args[2], c.args[3] = "CONSUME", service, account, strconv.FormatInt(units, 10)
	return c.decision(ctx, c.opt(4, "ID", id))
}

// Quota returns QUOTA's field/value pairs, integers in decimal.
func (c *Conn) Quota(ctx context.Context, service string) (map[string]string, error) {
	c.args[0], c.args[1] = "QUOTA", service
	r, err := c.command(ctx, 2)
	if err != nil {
		return nil, err
	}
	if r.Kind != Array || len(r.Elems)%2 != 0 {
		return nil, protoErr("QUOTA answered %s", r.String())
	}
	m := make(map[string]string, len(r.Elems)/2)
	for i := 0; i < len(r.Elems); i += 2 {
		k, v := &r.Elems[i], &r.Elems[i+1]
		if v.Kind == Integer {
			m[string(k.Str)] = strconv.FormatInt(v.Int, 10)
		} else {
			m[string(k.Str)] = string(v.Str)
		}
	}
	return m, nil
}

// opt adds "name value" to the arguments when value is not empty.
func (c *Conn) opt(n int, name, value string) int {
	if value == "" {
		return n
	}
	c.args[n], c.args[n+1] = name, value
	return n + 2
}

func (c *Conn) decision(ctx context.Context, n int) (Decision, error) {
	r, err := c.command(ctx, n)
	if err != nil {
		return Decision{}, err
	}
	return r.Decision()
}

// flag runs a command answered :1 or :0.
func (c *Conn) flag(ctx context.Context, n int) (bool, error) {
	r, err := c.command(ctx, n)
	if err != nil {
		return false, err
	}
	if r.Kind != Integer || (r.Int != 0 && r.Int != 1) {
		return false, fmt.Errorf("%w: %s answered %s", ErrProtocol, c.args[0], r.String())
	}
	return r.Int == 1, nil
}
