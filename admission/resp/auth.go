package resp

import (
	"bytes"
	"crypto/subtle"
)

// MemberUser is the user a cluster member authenticates as on another
// member's RESP port (AUTH capsgate-member secret), with a secret derived
// from the gossip key (SetMemberSecret). Only its connections may send
// what members send each other: ADMIT ... SPILLED, CONSUME ... ROUTED and
// CL.THROTTLE ... ROUTED, each decided where it arrives and counted apart
// (a spilled attempt's refusal is its sender's, its admission not this
// member's demand). From a client they would let it keep its refusals out
// of the counts, shrink this member's demand and so its part of the
// licence, or take a key's limit once per member.
const MemberUser = "capsgate-member"

// SetMemberSecret sets the secret of MemberUser (empty: the markers are
// taken from any client, as in a farm without a gossip key, whose members
// do not authenticate each other). Call it before serving.
func (h *Handler) SetMemberSecret(secret string) {
	h.memberSecret = nil
	if secret != "" {
		h.memberSecret = []byte(secret)
	}
}

// fromMember reports whether cs may send the members' markers.
func (h *Handler) fromMember(cs *ConnState) bool { return h.memberSecret == nil || cs.member }

// memberOnly is the reply to a member's marker from a client.
func memberOnly(out []byte, marker string) []byte {
	return AppendError(out, "ERR "+marker+" is sent by cluster members only (AUTH "+MemberUser+" ...)")
}

// AUTH [user] password
func (h *Handler) auth(cs *ConnState, args [][]byte, out []byte) []byte {
	if len(args) != 2 && len(args) != 3 {
		return wrongArgs(out, "auth")
	}
	if len(args) == 3 && string(args[1]) == MemberUser {
		if h.memberSecret == nil || subtle.ConstantTimeCompare(args[2], h.memberSecret) != 1 {
			return AppendError(out, errWrongPass)
		}
		cs.authed, cs.member = true, true
		return AppendSimple(out, "OK")
	}
	if h.password == nil && len(args) == 2 {
		return AppendError(out, errAuthNoPassword)
	}
	if !h.checkAuth(args[1:]) {
		return AppendError(out, errWrongPass)
	}
	cs.authed, cs.member = true, false
	return AppendSimple(out, "OK")
}

// The replies Redis gives to AUTH without a password configured (the
// one-argument form only) and to a wrong user or password.
const (
	errAuthNoPassword = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
	errWrongPass      = "WRONGPASS invalid username-password pair or user is disabled."
)

// checkAuth checks [user] password in constant time; the only user is
// "default". Without a password configured the default user takes any
// password, as Redis's default user does (nopass): a client set up with a
// user and a password (go-redis, redis-py) connects to such a node.
func (h *Handler) checkAuth(up [][]byte) bool {
	pass := up[len(up)-1]
	userOK := len(up) == 1 || string(up[0]) == "default"
	if h.password == nil {
		return userOK
	}
	passOK := subtle.ConstantTimeCompare(pass, h.password) == 1
	return userOK && passOK
}

// HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 only.
func (h *Handler) hello(cs *ConnState, args [][]byte, out []byte) []byte {
	i := 1
	if len(args) > 1 {
		v, ok := parseInt(args[1])
		if !ok {
			return AppendError(out, "ERR Protocol version is not an integer or out of range")
		}
		if v != 2 {
			return AppendError(out, "NOPROTO sorry, this protocol version is not supported.")
		}
		i = 2
	}
	// Every option is read before any applies, as Redis does: a syntax
	// error, a bad name or a failed AUTH changes nothing, and the name is
	// set only once the connection is authenticated.
	var auth [][]byte
	var name []byte
	for i < len(args) {
		switch {
		case bytes.EqualFold(args[i], []byte("AUTH")) && i+2 < len(args):
			auth = args[i+1 : i+3]
			i += 3
		case bytes.EqualFold(args[i], []byte("SETNAME")) && i+1 < len(args):
			if !validClientAttr(args[i+1]) {
				return AppendError(out, errClientName)
			}
			name = args[i+1]
			i += 2
		default:
			return AppendError(out, "ERR Syntax error in HELLO option '"+printable(args[i], 32)+"'")
		}
	}
	if auth != nil {
		if !h.checkAuth(auth) {
			return AppendError(out, errWrongPass)
		}
		cs.authed, cs.member = true, false
	}
	if h.password != nil && !cs.authed {
		return AppendError(out, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
	}
	if name != nil {
		cs.setName(name)
		h.snapshot.forget() // the listing shows it, as after CLIENT SETNAME
	}
	out = AppendArrayHeader(out, 14)
	out = AppendBulkString(out, "server")
	out = AppendBulkString(out, "capsgate")
	out = AppendBulkString(out, "version")
	out = AppendBulkString(out, Version)
	out = AppendBulkString(out, "proto")
	out = AppendInt(out, 2)
	out = AppendBulkString(out, "id")
	out = AppendInt(out, cs.id)
	out = AppendBulkString(out, "mode")
	out = AppendBulkString(out, "standalone")
	out = AppendBulkString(out, "role")
	out = AppendBulkString(out, "master")
	out = AppendBulkString(out, "modules")
	return AppendArrayHeader(out, 0)
}
