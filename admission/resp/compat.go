package resp

// What common Redis clients send or offer besides capsgate's own commands:
// INFO [section ...] in the form redis-py, ioredis and go-redis parse,
// COMMAND and its subcommands, CLIENT INFO, LIST, SETINFO and the rest a
// client library sends on connect, and MULTI/EXEC/DISCARD, which redis-py's
// pipeline() sends by default. None of these is on the decision path.
// COMMAND is here; CLIENT is in clients.go, INFO in info.go and
// MULTI/EXEC/DISCARD in tx.go.

import (
	"fmt"
	"strings"
)

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
	{"oc", -2, "readonly fast", true, "@read @fast", "capsgate", "Show the SIP overload feedback (RFC 7339, rate) of a licence or a trunk key.", "service [TRUNK key]"},
	{"cl.throttle", -5, "write fast", true, "@write @fast", "capsgate", "Rate-limit a key with redis-cell's GCRA (farm-wide).", "key max_burst count period [quantity]"},
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
	case (sub == "info" || sub == "docs") && len(names) > len(commandTable):
		// Each name's entry is up to ~700 bytes from ~6 of request: a
		// reply to a thousand names repeated would be far past what a
		// client may hold of replies. None names them all.
		return AppendError(out, fmt.Sprintf("ERR COMMAND %s takes at most %d command names (none: all of them)", strings.ToUpper(sub), len(commandTable)))
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

// unknownCommand appends Redis's reply to a command it does not know.
func unknownCommand(out, name []byte) []byte {
	return AppendError(out, "ERR unknown command '"+printable(name, 64)+"'")
}
