package resp

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what one client can make the node hold or build.
const (
	// maxClientList bounds the lines of CLIENT LIST (about 300 bytes each,
	// 1000 at most with the longest names): over 10,000 connections a
	// listing would otherwise be megabytes. A truncated listing ends with a
	// line that says so.
	maxClientList = 1000
	// maxClientAttr bounds a connection's name, library name and version,
	// which the node holds for as long as the connection is open.
	maxClientAttr = 128
)

// clientMeta is what a client told about itself. A connection's event loop
// replaces it whole (never changes it in place), so CLIENT LIST on another
// loop reads it without a lock.
type clientMeta struct {
	name, libName, libVer string
	noEvict, noTouch      bool
}

// clientInfo is the part of ConnState that CLIENT LIST reads from other
// event loops.
type clientInfo struct {
	meta atomic.Pointer[clientMeta]
	// first is the engine-clock instant of the connection's first command
	// (0 before it): the server records no opening instant of its own, and a
	// client library sends its first command (HELLO, CLIENT SETINFO, PING)
	// as it connects. Before it, lastActive is the instant the connection
	// opened.
	first atomic.Int64
}

func (ci *clientInfo) get() clientMeta {
	if m := ci.meta.Load(); m != nil {
		return *m
	}
	return clientMeta{}
}

// update applies f to a copy of the meta and publishes it. Called only by
// the connection's own event loop.
func (ci *clientInfo) update(f func(*clientMeta)) {
	m := ci.get()
	f(&m)
	ci.meta.Store(&m)
}

// seen notes the instant of a command; the first one stands for the
// connection's age.
func (ci *clientInfo) seen(now int64) {
	if ci.first.Load() == 0 {
		ci.first.Store(now)
	}
}

// validClientAttr reports whether v can be a client name, library name or
// version: what Redis accepts (printable ASCII, no spaces, since CLIENT LIST
// separates fields with them), at most maxClientAttr bytes.
func validClientAttr(v []byte) bool {
	if len(v) > maxClientAttr {
		return false
	}
	for _, c := range v {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

const errClientName = "ERR Client names cannot contain spaces, newlines or special characters, and are at most 128 bytes."

// setName sets the connection's name (CLIENT SETNAME, HELLO SETNAME),
// returning an error reply for a name Redis would refuse or one too long.
func (cs *ConnState) setName(name []byte) string {
	if !validClientAttr(name) {
		return errClientName
	}
	cs.info.update(func(m *clientMeta) { m.name = string(name) })
	return ""
}

// ClientLister lists the open client connections for CLIENT LIST and
// CLIENT INFO. Its methods are called on an event loop: they take at most a
// short lock and never block.
type ClientLister interface {
	// OpenClients appends the state of every open connection to dst.
	OpenClients(dst []*ConnState) []*ConnState
	// ClientAddrs returns the remote and local addresses and the file
	// descriptor of a connection; ok is false once it has closed.
	ClientAddrs(cs *ConnState) (addr, laddr string, fd int, ok bool)
}

// SetClientLister sets where CLIENT LIST finds the other connections; a
// *Server is one. Without it CLIENT LIST shows only the calling connection,
// with no address. Call it before serving.
func (h *Handler) SetClientLister(l ClientLister) { h.clients = l }

// OpenClients implements ClientLister.
func (s *Server) OpenClients(dst []*ConnState) []*ConnState {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cs := range s.open {
		dst = append(dst, cs)
	}
	return dst
}

// ClientAddrs implements ClientLister. It reads the connection under mu:
// gnet clears a connection's addresses after OnClose, which takes mu to
// forget it. The local address is the one the server listens on (gnet
// gives the configured one, whose port may be 0).
func (s *Server) ClientAddrs(cs *ConnState) (addr, laddr string, fd int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.open[cs]
	if !ok {
		return "", "", 0, false
	}
	if a := c.RemoteAddr(); a != nil {
		addr = a.String()
	}
	return addr, s.addr, c.Fd(), true
}

// clientSnapshot keeps the last list of open connections, sorted by id,
// for clientSnapshotFor after the instant it was taken: every CLIENT LIST
// of one read (a pipeline of them shares the instant), and those of a
// thousand clients listing at once, are answered from one scan of the
// connections, so that neither makes a loop scan 10,000 connections per
// command. A connection closed since is left out as its line is written.
type clientSnapshot struct {
	mu sync.Mutex // guards the following fields
	at int64
	cs []*ConnState // never changed once published: readers keep the slice
	// text is the listing of cs (at most maxClientList lines, those
	// still open), rendered once at the first plain CLIENT LIST, and ends
	// where each line ends in it (nil: not rendered yet); never changed
	// once published.
	text []byte
	ends []int
}

// forget drops the snapshot's rendering: a connection's name, library or
// flags changed.
func (sn *clientSnapshot) forget() {
	sn.mu.Lock()
	sn.text, sn.ends = nil, nil
	sn.mu.Unlock()
}

// holds reports whether the snapshot lists cs (a client that connected
// since sees itself). Called with mu held.
func (sn *clientSnapshot) holds(cs *ConnState) bool {
	_, ok := slices.BinarySearchFunc(sn.cs, cs.id, connByID)
	return ok
}

// connByID orders connections by ID, for a binary search of a snapshot.
func connByID(c *ConnState, id int64) int { return cmp.Compare(c.id, id) }

// clientSnapshotFor is how long a clientSnapshot serves.
const clientSnapshotFor = 100 * time.Millisecond

func (h *Handler) openClients(now int64, cs *ConnState) []*ConnState {
	sn := &h.snapshot
	sn.mu.Lock()
	defer sn.mu.Unlock()
	h.snapshotLocked(now, cs)
	return sn.cs
}

// snapshotLocked takes a new snapshot unless the last still serves cs at
// now. Called with the snapshot's mu held.
func (h *Handler) snapshotLocked(now int64, cs *ConnState) {
	sn := &h.snapshot
	if sn.cs == nil || now < sn.at || now-sn.at >= int64(clientSnapshotFor) || !sn.holds(cs) {
		all := h.clients.OpenClients(nil)
		slices.SortFunc(all, func(a, b *ConnState) int { return cmp.Compare(a.id, b.id) })
		sn.at, sn.cs, sn.text, sn.ends = now, all, nil, nil
	}
}

// listing returns the snapshot's rendered listing (clientSnapshot.text,
// ends) and how many connections it holds, rendering it if it is not yet.
func (h *Handler) listing(now int64, cs *ConnState) (text []byte, ends []int, total int) {
	sn := &h.snapshot
	sn.mu.Lock()
	defer sn.mu.Unlock()
	h.snapshotLocked(now, cs)
	if sn.ends == nil {
		sn.ends = make([]int, 0, min(len(sn.cs), maxClientList))
		for _, c := range sn.cs {
			if len(sn.ends) == maxClientList {
				break
			}
			var ok bool
			if sn.text, ok = h.clientLine(sn.text, now, c, false); ok {
				sn.ends = append(sn.ends, len(sn.text))
			}
		}
	}
	return sn.text, sn.ends, len(sn.cs)
}

// appendClientLine appends one CLIENT LIST line in Redis's format. Fields
// capsgate does not track (buffers, memory) are 0, as redis-py's CLIENT
// INFO parser needs them present.
func appendClientLine(out []byte, now int64, cs *ConnState, addr, laddr string, fd int) []byte {
	m := cs.info.get()
	last := cs.lastActive.Load()
	first := cs.info.first.Load()
	if first == 0 {
		first = last
	}
	secs := func(d int64) int64 { return max(d, 0) / int64(time.Second) }
	flags := ""
	if m.noEvict {
		flags += "e"
	}
	if m.noTouch {
		flags += "T"
	}
	if flags == "" {
		flags = "N"
	}
	out = fmt.Appendf(out, "id=%d addr=%s laddr=%s fd=%d name=%s age=%d idle=%d flags=%s db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 "+
		"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=NULL user=default redir=-1 resp=2 lib-name=%s lib-ver=%s\n",
		cs.id, addr, laddr, fd, m.name, secs(now-first), secs(now-last), flags, m.libName, m.libVer)
	return out
}

// clientLine appends the line of one connection, with its addresses when
// the lister knows them. It reports false for a connection that has
// closed, whose line is left out unless always.
func (h *Handler) clientLine(out []byte, now int64, cs *ConnState, always bool) ([]byte, bool) {
	addr, laddr, fd, ok := "", "", -1, true
	if h.clients != nil {
		addr, laddr, fd, ok = h.clients.ClientAddrs(cs)
	}
	if !ok && !always {
		return out, false
	}
	return appendClientLine(out, now, cs, addr, laddr, fd), true
}

// clientList renders CLIENT LIST [TYPE type] [ID id ...].
func (h *Handler) clientList(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	var ids []int64
	for i := 2; i < len(args); {
		switch {
		case bytes.EqualFold(args[i], []byte("TYPE")) && i+1 < len(args):
			switch strings.ToLower(string(args[i+1])) {
			case "normal":
			case "master", "replica", "slave", "pubsub":
				return AppendBulkString(out, "") // capsgate has none of these
			default:
				return AppendError(out, "ERR Unknown client type '"+printable(args[i+1], 32)+"'")
			}
			i += 2
		case bytes.EqualFold(args[i], []byte("ID")) && i+1 < len(args):
			for i++; i < len(args); i++ {
				id, ok := parseInt(args[i])
				if !ok || id <= 0 {
					return AppendError(out, "ERR Invalid client ID")
				}
				ids = append(ids, id)
			}
		default:
			return AppendError(out, errSyntax)
		}
	}
	if ids == nil && h.clients != nil {
		// Every plain listing of a snapshot's time is cut from one
		// rendering of it: a thousand clients listing at once format a
		// thousand connections once, not each.
		text, ends, total := h.listing(now, cs)
		k := len(ends)
		if cs.outLimit > 0 { // the lines that reach the limit, as below
			k = min(k, sort.SearchInts(ends, cs.outLimit)+1)
		}
		out, mark := bulkStart(out)
		if k > 0 {
			out = append(out, text[:ends[k-1]]...)
		}
		if k < len(ends) || k == maxClientList && total > k {
			out = fmt.Appendf(out, "truncated=1 shown=%d total=%d\n", k, total)
		}
		return bulkEnd(out, mark)
	}
	all := []*ConnState{cs}
	if h.clients != nil {
		all = h.openClients(now, cs)
	}
	if ids != nil {
		// The snapshot is in ID order: each ID is looked up, where a walk
		// of every connection for each listing let a client pipelining
		// CLIENT LIST ID (a few bytes of reply each) hold its event loop
		// for as many walks of the node's connections.
		slices.Sort(ids)
		sel := make([]*ConnState, 0, min(len(ids), len(all)))
		for _, id := range slices.Compact(ids) {
			if i, ok := slices.BinarySearchFunc(all, id, connByID); ok {
				sel = append(sel, all[i])
			}
		}
		all = sel
	}
	out, mark := bulkStart(out)
	shown, full := 0, false
	for _, c := range all {
		// At most maxClientList lines, and no more than the client's part
		// of the node's reply memory: a thousand clients listing a
		// thousand connections at once would each be sent 300 KB, built
		// on the event loops while every other client waits.
		if full = shown == maxClientList || cs.outLimit > 0 && len(out)-mark >= cs.outLimit; full {
			break
		}
		var ok bool
		if out, ok = h.clientLine(out, now, c, false); ok {
			shown++
		}
	}
	if full {
		out = fmt.Appendf(out, "truncated=1 shown=%d total=%d\n", shown, len(all))
	}
	return bulkEnd(out, mark)
}

// CLIENT subcommand ...: what client libraries send on connect, and what an
// operator asks of the connections.
func (h *Handler) client(now int64, cs *ConnState, args [][]byte, out []byte) []byte {
	if len(args) < 2 {
		return wrongArgs(out, "client")
	}
	var nb [16]byte
	sub := string(lower(&nb, args[1]))
	arity := func(n int) bool { return len(args) == n }
	switch sub {
	case "setname", "setinfo", "no-evict", "no-touch":
		h.snapshot.forget() // the listing shows what they change
	}
	switch sub {
	case "setname":
		if !arity(3) {
			break
		}
		if e := cs.setName(args[2]); e != "" {
			return AppendError(out, e)
		}
		return AppendSimple(out, "OK")
	case "getname":
		if !arity(2) {
			break
		}
		if m := cs.info.get(); m.name != "" {
			return AppendBulkString(out, m.name)
		}
		return AppendNull(out)
	case "id":
		if !arity(2) {
			break
		}
		return AppendInt(out, cs.id)
	case "setinfo":
		if !arity(4) {
			break
		}
		return h.clientSetInfo(cs, args[2], args[3], out)
	case "info":
		if !arity(2) {
			break
		}
		line, _ := h.clientLine(nil, now, cs, true)
		return AppendBulk(out, line)
	case "list":
		return h.clientList(now, cs, args, out)
	case "no-evict", "no-touch":
		if !arity(3) {
			break
		}
		on := bytes.EqualFold(args[2], []byte("ON"))
		if !on && !bytes.EqualFold(args[2], []byte("OFF")) {
			return AppendError(out, errSyntax)
		}
		cs.info.update(func(m *clientMeta) {
			if sub == "no-evict" {
				m.noEvict = on
			} else {
				m.noTouch = on
			}
		})
		return AppendSimple(out, "OK")
	case "help":
		if !arity(2) {
			break
		}
		return appendLines(out, clientHelp)
	default:
		return AppendError(out, "ERR unknown subcommand '"+printable(args[1], 32)+"'. Try CLIENT HELP.")
	}
	return wrongArgs(out, "client|"+sub)
}

// CLIENT SETINFO LIB-NAME|LIB-VER value
func (h *Handler) clientSetInfo(cs *ConnState, attr, v []byte, out []byte) []byte {
	var name bool
	switch {
	case bytes.EqualFold(attr, []byte("LIB-NAME")):
		name = true
	case bytes.EqualFold(attr, []byte("LIB-VER")):
	default:
		return AppendError(out, "ERR Unrecognized option '"+printable(attr, 32)+"'")
	}
	if !validClientAttr(v) {
		what := "lib-ver"
		if name {
			what = "lib-name"
		}
		return AppendError(out, "ERR "+what+" cannot contain spaces, newlines or special characters, and is at most 128 bytes.")
	}
	cs.info.update(func(m *clientMeta) {
		if name {
			m.libName = string(v)
		} else {
			m.libVer = string(v)
		}
	})
	return AppendSimple(out, "OK")
}

var clientHelp = []string{
	"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
	"GETNAME",
	"    Return the name of the current connection.",
	"ID",
	"    Return the ID of the current connection.",
	"INFO",
	"    Return information about the current client connection.",
	"LIST [TYPE (NORMAL|MASTER|REPLICA|PUBSUB)] [ID <id> [<id> ...]]",
	"    Return information about client connections, at most 1000 of them (by id).",
	"NO-EVICT (ON|OFF)",
	"    Accepted for compatibility: capsgate evicts no client.",
	"NO-TOUCH (ON|OFF)",
	"    Accepted for compatibility: capsgate has no keys to touch.",
	"SETINFO <LIB-NAME|LIB-VER> <value>",
	"    Set the client library's name or version shown by CLIENT LIST.",
	"SETNAME <name>",
	"    Assign the name <name> to the current connection.",
	"HELP",
	"    Print this help.",
}
