package resp

// Bounds of a transaction: what MULTI makes the node hold until EXEC, and
// so the EXEC reply (QUOTA's, the longest a transaction may queue, is
// about 700 bytes).
const (
	maxTxCommands = 256
	maxTxBytes    = 64 << 10
)

// txQueue holds the commands queued since MULTI, encoded as RESP.
type txQueue struct {
	buf   []byte
	n     int
	dirty bool // a command was refused while queuing: EXEC discards all
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
	if tx.n == maxTxCommands || len(tx.buf)+size > maxTxBytes {
		return refuse(AppendError(out, "ERR transaction too long: at most 256 commands and 64 KiB between MULTI and EXEC"))
	}
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
