package resp

import "fmt"

// Bounds of a transaction: what MULTI makes the node hold until EXEC, and
// so the EXEC reply, built at once. A transaction may queue the client's
// part of the node's reply memory (ConnState.outLimit, as it is when each
// command is queued), within [minTxBytes, maxTxBytes], and a command for
// every txBytesPerCommand of it: 4,096 commands for a client of a node with
// 32 connections or fewer open (redis-py's pipeline() sends MULTI ... EXEC
// around everything it pipelines), 256 when more than 512 are. Its replies
// (txReply: QUOTA's is the longest, about 700 bytes) may take as much, or
// minTxReplies; and of its commands at most MaxForwardQueued may forward
// work to the cluster, as many as a connection may have waiting (EXEC
// waits for room as they would, once: see Handler.mustWait).
const (
	minTxBytes        = 64 << 10
	maxTxBytes        = 1 << 20
	txBytesPerCommand = 256
	minTxReplies      = 256 << 10
)

// txBounds returns the bytes and the commands cs's transaction may queue.
func txBounds(cs *ConnState) (bytes, commands int) {
	bytes = minTxBytes
	if cs.outLimit > 0 {
		bytes = min(max(cs.outLimit, minTxBytes), maxTxBytes)
	}
	return bytes, bytes / txBytesPerCommand
}

// txReply bounds the reply of a command a transaction may queue.
func txReply(name string, args [][]byte) int {
	switch name {
	case "quota":
		return 1 << 10
	case "echo", "ping":
		if len(args) > 1 {
			return len(args[1]) + 16
		}
	}
	return 64
}

// txQueue holds the commands queued since MULTI, encoded as RESP.
type txQueue struct {
	buf []byte
	n   int
	// replies bounds the EXEC reply (txReply summed); forwards counts the
	// commands that may forward work (forwards).
	replies, forwards int
	dirty             bool // a command was refused while queuing: EXEC discards all
}

// txAllowed says which commands a transaction may queue: those whose
// replies are small (INFO, CLIENT and COMMAND are refused).
func txAllowed(name string) bool {
	switch name {
	case "admit", "release", "register", "deregister", "consume", "quota", "oc", "ping", "echo", "select":
		return true
	}
	return false
}

// MULTI
func (h *Handler) multi(cs *ConnState, args [][]byte, out []byte) []byte {
	switch {
	case len(args) != 1:
		return wrongArgs(out, "multi")
	case cs.tx != nil:
		return AppendError(out, "ERR MULTI calls can not be nested")
	}
	cs.tx = &txQueue{}
	return AppendSimple(out, "OK")
}

// DISCARD
func (h *Handler) discard(cs *ConnState, args [][]byte, out []byte) []byte {
	switch {
	case len(args) != 1:
		return wrongArgs(out, "discard")
	case cs.tx == nil:
		return AppendError(out, "ERR DISCARD without MULTI")
	}
	cs.tx = nil
	return AppendSimple(out, "OK")
}

// queue queues a command while a MULTI is open, checking its name and
// arity first as Redis does; a refused command makes EXEC discard the
// transaction. It reports false for the commands that are not queued
// (EXEC, DISCARD, MULTI, QUIT), which run at once, unless their arity is
// wrong: Redis refuses those before running them, and flags the
// transaction as for any other.
func (h *Handler) queue(cs *ConnState, name []byte, args [][]byte, out []byte) ([]byte, bool) {
	tx := cs.tx
	refuse := func(reply []byte) ([]byte, bool) {
		tx.dirty = true
		return reply, true
	}
	c, ok := commands[string(name)]
	switch {
	case !ok:
		return refuse(unknownCommand(out, args[0]))
	case !c.arityOK(len(args)):
		return refuse(wrongArgs(out, c.name))
	case c.name == "exec" || c.name == "discard" || c.name == "multi" || c.name == "quit":
		return out, false
	case !txAllowed(c.name):
		return refuse(AppendError(out, "ERR '"+c.name+"' cannot be queued in a transaction (MULTI)"))
	}
	size := 16
	for _, a := range args {
		size += len(a) + 16
	}
	maxBytes, maxCommands := txBounds(cs)
	reply, fwd := txReply(c.name, args), 0
	if forwards(c.name, args) {
		fwd = 1
	}
	switch {
	case tx.n >= maxCommands || len(tx.buf)+size > maxBytes:
		return refuse(AppendError(out, fmt.Sprintf("ERR transaction too long: at most %d commands and %d KiB between MULTI and EXEC",
			maxCommands, maxBytes>>10)))
	case tx.replies+reply > max(maxBytes, minTxReplies):
		return refuse(AppendError(out, fmt.Sprintf("ERR transaction too long: its replies would pass %d KiB", max(maxBytes, minTxReplies)>>10)))
	case tx.forwards+fwd > MaxForwardQueued:
		return refuse(AppendError(out, fmt.Sprintf("ERR transaction too long: at most %d RELEASE, REGISTER, DEREGISTER and CONSUME ... ID between MULTI and EXEC",
			MaxForwardQueued)))
	}
	tx.replies += reply
	tx.forwards += fwd
	tx.buf = AppendArrayHeader(tx.buf, len(args))
	for _, a := range args {
		tx.buf = AppendBulk(tx.buf, a)
	}
	tx.n++
	return AppendSimple(out, "QUEUED"), true
}

// EXEC runs the queued commands one after the other on this connection's
// event loop, their replies in one array. Each command is as atomic as it
// is alone; commands of connections on other event loops may run between
// them (capsgate has no keys to WATCH).
func (h *Handler) execTx(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	switch {
	case len(args) != 1:
		return wrongArgs(out, "exec")
	case cs.tx == nil:
		return AppendError(out, "ERR EXEC without MULTI")
	}
	tx := cs.tx
	cs.tx = nil
	if tx.dirty {
		return AppendError(out, "EXECABORT Transaction discarded because of previous errors.")
	}
	out = AppendArrayHeader(out, tx.n)
	cs.inExec = true
	defer func() { cs.inExec = false }()
	var a [][]byte
	for in := tx.buf; len(in) > 0; {
		var used int
		a, used, _ = Parse(in, a[:0]) // encoded above: whole and valid
		in = in[used:]
		out, _ = h.exec(now, cs, a, out)
	}
	return out
}
