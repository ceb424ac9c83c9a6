package resp

// What common Redis clients send or offer besides capsgate's own commands:
// INFO [section ...] in the form redis-py, ioredis and go-redis parse,
// COMMAND and its subcommands, CLIENT INFO, LIST, SETINFO and the rest a
// client library sends on connect, and MULTI/EXEC/DISCARD, which redis-py's
// pipeline() sends by default. None of these is on the decision path.

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsgate/capsgate/admission"
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

// clientSnapshot keeps the last list of open connections, sorted by id, for
// the instant it was taken: every CLIENT LIST of one read (a pipeline of
// them shares the instant) is answered from one scan of the connections, so
// a pipeline cannot make a loop scan 10,000 connections per command.
type clientSnapshot struct {
	mu sync.Mutex // guards the following fields
	at int64
	cs []*ConnState // never changed once published: readers keep the slice
}

func (h *Handler) openClients(now int64) []*ConnState {
	sn := &h.snapshot
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if sn.cs == nil || sn.at != now {
		all := h.clients.OpenClients(nil)
		slices.SortFunc(all, func(a, b *ConnState) int { return cmp.Compare(a.id, b.id) })
		sn.at, sn.cs = now, all
	}
	return sn.cs
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
	all := []*ConnState{cs}
	if h.clients != nil {
		all = h.openClients(now)
	}
	if ids != nil {
		slices.Sort(ids)
		var sel []*ConnState
		for _, c := range all {
			if _, ok := slices.BinarySearch(ids, c.id); ok {
				sel = append(sel, c)
			}
		}
		all = sel
	}
	var b []byte
	shown := 0
	for _, c := range all {
		if shown == maxClientList {
			break
		}
		var ok bool
		if b, ok = h.clientLine(b, now, c, false); ok {
			shown++
		}
	}
	if len(all) > shown && shown == maxClientList {
		b = fmt.Appendf(b, "truncated=1 shown=%d total=%d\n", shown, len(all))
	}
	return AppendBulk(out, b)
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

// appendLines appends lines as an array of simple strings (Redis's HELP).
func appendLines(out []byte, lines []string) []byte {
	out = AppendArrayHeader(out, len(lines))
	for _, l := range lines {
		out = AppendSimple(out, l)
	}
	return out
}

// commandSpec describes a command for COMMAND, COMMAND INFO and COMMAND DOCS.
type commandSpec struct {
	name  string
	arity int // Redis's convention: n exactly n arguments with the name, -n at least n
	flags string
	// keyed: argument 1 is the service, which stands for the key (first,
	// last and step 1) so that clients that shard by key keep a service on
	// one node; other commands have none.
	keyed   bool
	acl     string
	group   string
	summary string
	// usage is the arguments as a help line writes them, for COMMAND
	// DOCS (redis-cli's help and hints): a word is an argument, an upper
	// case word before it its token, [...] optional, a|b one of, x ... more.
	usage string
}

// commandTable lists every command exec answers; TestCommandTableMatchesExec
// keeps the two in step.
var commandTable = []commandSpec{
	{"admit", -2, "write fast", true, "@write @fast", "capsgate", "Decide whether a call attempt may go ahead.", "service [CALL call-id] [ACCOUNT account] [PRIORITY normal|high|emergency]"},
	{"release", -3, "write fast", true, "@write @fast", "capsgate", "End a call's session.", "service call-id [SECONDS seconds]"},
	{"register", -3, "write fast", true, "@write @fast", "capsgate", "Register or refresh a subscriber.", "service subscriber [TTL seconds]"},
	{"deregister", 3, "write fast", true, "@write @fast", "capsgate", "Deregister a subscriber.", "service subscriber"},
	{"consume", -4, "write fast", true, "@write @fast", "capsgate", "Charge prepaid tokens to an account.", "service account units [ID key]"},
	{"quota", 2, "readonly fast", true, "@read @fast", "capsgate", "Show a service's limits and usage.", "service"},
	{"ping", -1, "fast stale", false, "@fast @connection", "connection", "Return the server's liveliness response.", "[message]"},
	{"echo", 2, "fast stale", false, "@fast @connection", "connection", "Return the given string.", "message"},
	{"quit", -1, "noscript loading stale fast no_auth allow_busy", false, "@fast @connection", "connection", "Close the connection.", ""},
	{"auth", -2, "noscript loading stale fast no_auth allow_busy", false, "@fast @connection", "connection", "Authenticate the connection.", "[username] password"},
	{"hello", -1, "noscript loading stale fast no_auth allow_busy", false, "@fast @connection", "connection", "Handshake with the server (RESP2 only).", "[protover] [AUTH username password] [SETNAME clientname]"},
	{"select", 2, "loading stale fast", false, "@fast @connection", "connection", "Select database 0, the only one.", "index"},
	{"info", -1, "loading stale", false, "@slow @dangerous", "server", "Return information and statistics about the server and its services.", "[section ...]"},
	{"command", -1, "loading stale", false, "@slow @connection", "server", "Return detailed information about all commands.", "[subcommand] [argument ...]"},
	{"client", -2, "noscript loading stale", false, "@slow @connection", "connection", "Inspect or name client connections.", "subcommand [argument ...]"},
	{"multi", 1, "noscript loading stale fast allow_busy", false, "@fast @transaction", "transactions", "Start a transaction: queue commands until EXEC.", ""},
	{"exec", 1, "noscript loading stale skip_slowlog", false, "@slow @transaction", "transactions", "Run the commands queued since MULTI.", ""},
	{"discard", 1, "noscript loading stale fast allow_busy", false, "@fast @transaction", "transactions", "Drop the commands queued since MULTI.", ""},
}

// commandEntry is a command of commandTable with its COMMAND INFO and
// COMMAND DOCS entries, encoded once.
type commandEntry struct {
	commandSpec
	info, docs []byte
}

// commands indexes commandTable by name; commandAll is the reply to COMMAND.
var commands, commandAll = func() (map[string]*commandEntry, []byte) {
	m := make(map[string]*commandEntry, len(commandTable))
	all := AppendArrayHeader(nil, len(commandTable))
	words := func(b []byte, s string) []byte {
		f := strings.Fields(s)
		b = AppendArrayHeader(b, len(f))
		for _, w := range f {
			b = AppendSimple(b, w)
		}
		return b
	}
	for _, c := range commandTable {
		b := AppendArrayHeader(nil, 10)
		b = AppendBulkString(b, c.name)
		b = AppendInt(b, int64(c.arity))
		b = words(b, c.flags)
		k := b2i(c.keyed)
		b = AppendInt(AppendInt(AppendInt(b, k), k), k)
		b = words(b, c.acl)
		b = AppendArrayHeader(b, 0) // tips
		b = AppendArrayHeader(b, 0) // key specs
		b = AppendArrayHeader(b, 0) // subcommands
		all = append(all, b...)

		d := AppendBulkString(nil, c.name)
		d = AppendArrayHeader(d, 6+2*int(b2i(c.usage != "")))
		for _, s := range []string{"summary", c.summary, "since", Version, "group", c.group} {
			d = AppendBulkString(d, s)
		}
		if c.usage != "" {
			d = appendDocArgs(AppendBulkString(d, "arguments"), c.usage)
		}
		m[c.name] = &commandEntry{commandSpec: c, info: b, docs: d}
	}
	return m, all
}()

// arityOK reports whether a command of n arguments (its name included)
// has the arity of spec.
func (c *commandSpec) arityOK(n int) bool {
	if c.arity < 0 {
		return n >= -c.arity
	}
	return n == c.arity
}

// appendDocArgs appends the arguments of a usage line (see commandSpec)
// as COMMAND DOCS writes them: an array of maps (flat in RESP2) with name,
// type, token, flags and, for one of several words, their arguments.
func appendDocArgs(b []byte, usage string) []byte {
	var parts []string
	for rest := strings.TrimSpace(usage); rest != ""; rest = strings.TrimSpace(rest) {
		var part string
		if rest[0] == '[' {
			part, rest, _ = strings.Cut(rest, "]")
			part += "]"
		} else {
			part, rest, _ = strings.Cut(rest, " ")
		}
		parts = append(parts, part)
	}
	b = AppendArrayHeader(b, len(parts))
	for _, part := range parts {
		b = appendDocArg(b, part)
	}
	return b
}

func appendDocArg(b []byte, part string) []byte {
	optional := strings.HasPrefix(part, "[")
	words := strings.Fields(strings.Trim(part, "[]"))
	multiple := len(words) > 1 && words[len(words)-1] == "..."
	if multiple {
		words = words[:len(words)-1]
	}
	token := ""
	if len(words) > 1 && words[0] == strings.ToUpper(words[0]) {
		token, words = words[0], words[1:]
	}
	var flags []string
	if optional {
		flags = append(flags, "optional")
	}
	if multiple {
		flags = append(flags, "multiple")
	}
	name, typ, sub := words[0], "string", []string(nil)
	switch {
	case len(words) > 1: // a token followed by several values
		name, typ, sub = strings.ToLower(token), "block", words
	case strings.Contains(name, "|"):
		name, typ, sub = strings.ToLower(token), "oneof", strings.Split(name, "|")
	}
	fields := 2 + b2i(token != "") + b2i(flags != nil) + b2i(sub != nil)
	b = AppendArrayHeader(b, 2*int(fields))
	b = AppendBulkString(AppendBulkString(b, "name"), name)
	b = AppendBulkString(AppendBulkString(b, "type"), typ)
	if token != "" {
		b = AppendBulkString(AppendBulkString(b, "token"), token)
	}
	if flags != nil {
		b = AppendBulkString(b, "flags")
		b = AppendArrayHeader(b, len(flags))
		for _, f := range flags {
			b = AppendSimple(b, f)
		}
	}
	if sub != nil {
		b = AppendArrayHeader(AppendBulkString(b, "arguments"), len(sub))
		for _, w := range sub {
			if typ == "oneof" {
				b = AppendArrayHeader(b, 6)
				b = AppendBulkString(AppendBulkString(b, "name"), w)
				b = AppendBulkString(AppendBulkString(b, "type"), "pure-token")
				b = AppendBulkString(AppendBulkString(b, "token"), w)
				continue
			}
			b = AppendArrayHeader(b, 4)
			b = AppendBulkString(AppendBulkString(b, "name"), w)
			b = AppendBulkString(AppendBulkString(b, "type"), "string")
		}
	}
	return b
}

var commandHelp = []string{
	"COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
	"(no subcommand)",
	"    Return details about all commands.",
	"COUNT",
	"    Return the total number of commands.",
	"DOCS [<command-name> ...]",
	"    Return documentary information about commands (all when none is named).",
	"INFO [<command-name> ...]",
	"    Return details about the named commands (all when none is named).",
	"LIST",
	"    Return the names of all commands.",
	"HELP",
	"    Print this help.",
}

// COMMAND [COUNT | INFO name ... | DOCS name ... | LIST | HELP]
func (h *Handler) command(args [][]byte, out []byte) []byte {
	if len(args) == 1 {
		return append(out, commandAll...)
	}
	var nb [16]byte
	sub := string(lower(&nb, args[1]))
	names := args[2:]
	switch {
	case sub == "count" && len(args) == 2:
		return AppendInt(out, int64(len(commandTable)))
	case sub == "list" && len(args) == 2:
		out = AppendArrayHeader(out, len(commandTable))
		for _, c := range commandTable {
			out = AppendBulkString(out, c.name)
		}
		return out
	case sub == "help" && len(args) == 2:
		return appendLines(out, commandHelp)
	case sub == "info" && len(names) == 0:
		return append(out, commandAll...)
	case sub == "info":
		// One entry per name, nil for a command capsgate does not have.
		out = AppendArrayHeader(out, len(names))
		for _, n := range names {
			e, ok := commands[string(lower(&nb, n))]
			if !ok {
				out = append(out, "*-1\r\n"...)
				continue
			}
			out = append(out, e.info...)
		}
		return out
	case sub == "docs":
		// Name and docs pairs; a command capsgate does not have is left out.
		var entries [][]byte
		if len(names) == 0 {
			for _, c := range commandTable {
				entries = append(entries, commands[c.name].docs)
			}
		}
		for _, n := range names {
			if e, ok := commands[string(lower(&nb, n))]; ok {
				entries = append(entries, e.docs)
			}
		}
		out = AppendArrayHeader(out, 2*len(entries))
		for _, e := range entries {
			out = append(out, e...)
		}
		return out
	case sub == "count" || sub == "list" || sub == "help":
		return wrongArgs(out, "command|"+sub)
	}
	return AppendError(out, "ERR unknown subcommand '"+printable(args[1], 32)+"'. Try COMMAND HELP.")
}

// INFO sections, in Redis's order; each is in "default" and "all".
var infoSections = []string{"server", "clients", "persistence", "replication", "services", "keyspace"}

// info renders INFO [section ...]: Redis's sections that clients read (an
// ioredis ready check waits while Persistence says loading:1), and the
// Services section, one line per service in Redis's keyspace form,
//
//	service_demo:name=demo,licensed=1,caps=1000,caps_used=0.0,...
//
// which redis-py parses into a dict. A ':' in a service's name is written
// %3A in the field name (it would end the field name for every parser);
// name= keeps the name as it is. Unknown sections are left out, and when
// none is known the reply is empty, as in Redis.
func (h *Handler) info(args [][]byte, out []byte) []byte {
	want := make(map[string]bool, len(infoSections))
	if len(args) == 1 {
		args = [][]byte{nil, []byte("default")}
	}
	for _, a := range args[1:] {
		switch s := strings.ToLower(string(a)); s {
		case "default", "all", "everything":
			for _, n := range infoSections {
				want[n] = true
			}
		default:
			want[s] = true
		}
	}
	var b []byte
	section := func(name string) bool {
		if !want[strings.ToLower(name)] {
			return false
		}
		if len(b) > 0 {
			b = append(b, "\r\n"...)
		}
		b = append(b, "# "+name+"\r\n"...)
		return true
	}
	if section("Server") {
		up := int64(time.Since(h.started).Seconds())
		b = fmt.Appendf(b, "redis_version:7.2.0\r\ncapsgate_version:%s\r\nredis_mode:standalone\r\nos:%s %s\r\narch_bits:64\r\nprocess_id:%d\r\nuptime_in_seconds:%d\r\nuptime_in_days:%d\r\n",
			Version, runtime.GOOS, runtime.GOARCH, pid, up, up/86400)
	}
	if section("Clients") && h.stats != nil {
		b = fmt.Appendf(b, "connected_clients:%d\r\n", h.stats())
	}
	if section("Persistence") {
		// Licences, sessions and the ledger are loaded before the node
		// listens, so it never answers while loading.
		b = append(b, "loading:0\r\nasync_loading:0\r\n"...)
	}
	if section("Replication") {
		b = append(b, "role:master\r\nconnected_slaves:0\r\n"...)
	}
	if section("Services") {
		b = h.infoServices(b)
	}
	section("Keyspace") // capsgate keeps no keys
	return AppendBulk(out, b)
}

// infoServices appends the Services section's lines, at most
// maxInfoServices of them.
func (h *Handler) infoServices(b []byte) []byte {
	// Rendered again only when what it shows changed (a hundred services
	// take about 100 µs and 78 KB), so a client pipelining INFOs costs
	// the node a copy each, not a rendering.
	fp := h.eng.Fingerprint()
	if c := h.servicesInfo.Load(); c != nil && c.fingerprint == fp {
		return append(b, c.body...)
	}
	body := h.renderServices(nil, h.eng.Services())
	h.servicesInfo.Store(&servicesSnap{fingerprint: fp, body: body})
	return append(b, body...)
}

// servicesSnap is INFO's Services section as last rendered, with the
// engine's fingerprint then.
type servicesSnap struct {
	fingerprint uint64
	body        []byte
}

func (h *Handler) renderServices(b []byte, services []*admission.Service) []byte {
	b = fmt.Appendf(b, "services:%d\r\n", len(services))
	for i, s := range services {
		if i == maxInfoServices {
			b = fmt.Appendf(b, "services_shown:%d\r\nservices_more:see GET /v1/services\r\n", i)
			break
		}
		st := s.Stats()
		b = append(b, "service_"...)
		b = append(b, strings.ReplaceAll(st.Name, ":", "%3A")...)
		b = append(b, ":name="...)
		b = append(b, st.Name...)
		b = fmt.Appendf(b, ",licensed=%d,caps=", b2i(st.Limits.Licensed))
		b = appendRate(b, st.Limits.CAPS)
		b = fmt.Appendf(b, ",caps_used=%.1f,sessions=%d,subscribers=%d,tokens_used=%d,admitted=%d\r\n",
			st.UsedCAPS, st.Sessions, st.Subscribers, st.TokensUsed, st.Admissions[admission.OK])
	}
	return b
}

// appendRate appends a rate; -1 (unlimited) and whole numbers print as
// integers, others with two decimals (never in exponent form).
func appendRate(b []byte, v float64) []byte {
	switch {
	case v >= math.MaxInt64:
		// A rate saturated at the end of the range (2^63 as a float)
		// reads as the largest integer, as every other limit does.
		return strconv.AppendInt(b, math.MaxInt64, 10)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'f', 2, 64)
}

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
	case "admit", "release", "register", "deregister", "consume", "quota", "ping", "echo", "select":
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
// (EXEC, DISCARD, MULTI, QUIT), which run at once.
func (h *Handler) queue(cs *ConnState, name []byte, args [][]byte, out []byte) ([]byte, bool) {
	switch string(name) {
	case "exec", "discard", "multi", "quit":
		return out, false
	}
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

// unknownCommand appends Redis's reply to a command it does not know.
func unknownCommand(out, name []byte) []byte {
	return AppendError(out, "ERR unknown command '"+printable(name, 64)+"'")
}
