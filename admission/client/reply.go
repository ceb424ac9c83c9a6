package client

import (
	"errors"
	"fmt"
	"strconv"
)

// Kind is the type of a RESP2 reply, named by its first byte.
type Kind byte

// The RESP2 reply kinds.
const (
	Simple  Kind = '+' // simple string: Str
	Err     Kind = '-' // error: Str is the server's text, e.g. "ERR unknown command 'X'"
	Integer Kind = ':' // integer: Int
	Bulk    Kind = '$' // bulk string: Str, or Nil
	Array   Kind = '*' // array: Elems, or Nil
)

func (k Kind) String() string {
	switch k {
	case Simple:
		return "simple string"
	case Err:
		return "error"
	case Integer:
		return "integer"
	case Bulk:
		return "bulk string"
	case Array:
		return "array"
	}
	return fmt.Sprintf("kind %q", byte(k))
}

// Reply is one RESP2 reply. A Reply from a Pipeline points into the
// connection's read buffer and is valid until the Pipeline's next Exec or
// Reset; Clone makes a copy that lives on.
type Reply struct {
	Kind Kind
	// Str is a simple or bulk string's bytes, or an error's text.
	Str []byte
	// Int is an integer reply.
	Int int64
	// Elems are an array's elements.
	Elems []Reply
	// Nil is set for the null bulk string ($-1) and the null array (*-1).
	Nil bool
}

// Err returns the reply as a *ServerError when it is a RESP error, else nil.
func (r *Reply) Err() error {
	if r.Kind != Err {
		return nil
	}
	return &ServerError{Msg: string(r.Str)}
}

// Clone returns a deep copy of r that does not share its memory.
func (r *Reply) Clone() Reply {
	c := *r
	if r.Str != nil {
		c.Str = append([]byte(nil), r.Str...)
	}
	if r.Elems != nil {
		c.Elems = make([]Reply, len(r.Elems))
		for i := range r.Elems {
			c.Elems[i] = r.Elems[i].Clone()
		}
	}
	return c
}

// String renders the reply the way redis-cli does, for messages and tests.
func (r *Reply) String() string {
	switch {
	case r.Nil:
		return "(nil)"
	case r.Kind == Integer:
		return "(integer) " + strconv.FormatInt(r.Int, 10)
	case r.Kind == Err:
		return "(error) " + string(r.Str)
	case r.Kind == Array:
		s := "["
		for i := range r.Elems {
			if i > 0 {
				s += ", "
			}
			s += r.Elems[i].String()
		}
		return s + "]"
	}
	return strconv.Quote(string(r.Str))
}

// ServerError is a RESP error reply; Msg is the server's text with its
// prefix ("ERR ...", "NOAUTH ...").
type ServerError struct{ Msg string }

func (e *ServerError) Error() string { return e.Msg }

// Prefix returns the error's first word (ERR, NOAUTH, WRONGTYPE ...).
func (e *ServerError) Prefix() string {
	for i := 0; i < len(e.Msg); i++ {
		if e.Msg[i] == ' ' {
			return e.Msg[:i]
		}
	}
	return e.Msg
}

// ErrProtocol is wrapped by every error about a reply that is not RESP2;
// the connection it came from is closed.
var ErrProtocol = errors.New("resp protocol error")

// Limits on what the parser accepts from a server, so a broken or hostile
// peer cannot make the client allocate without bound.
const (
	// MaxBulk bounds a bulk string (Redis's proto-max-bulk-len default).
	MaxBulk = 512 << 20
	// MaxArray bounds an array's element count.
	MaxArray = 1 << 20
	// MaxDepth bounds the nesting of arrays.
	MaxDepth = 16
	// maxLine bounds a header line (type byte, a number, CRLF) or a simple
	// string; decisions and Redis's own lines are far shorter.
	maxLine = 64 << 10
)

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// parser reads replies from a source. It keeps the slices the
// Reader returns (zero copy), so they are valid until the Reader's
// Release; the elements of arrays live in elems, reused from one batch to
// the next.
// source is what the parser reads from: a connection's netpoll.Reader,
// or a bufio.Reader over a connection dialled elsewhere (streamSource).
// What Until and Next return stays valid until Release.
type source interface {
	Until(delim byte) ([]byte, error)
	Next(n int) ([]byte, error)
	Release() error
}

type parser struct {
	elems []Reply
}

// reset forgets the elements of earlier replies (their memory is reused).
func (p *parser) reset() { p.elems = p.elems[:0] }

// read reads one reply. It returns the Reply by value: a pointer into
// elems would go stale when a nested array grows it, and a pointer to a
// local would escape through the recursion (one allocation per element).
func (p *parser) read(r source, depth int) (Reply, error) {
	line, err := readLine(r)
	if err != nil {
		return Reply{}, err
	}
	reply := Reply{Kind: Kind(line[0])}
	body := line[1:]
	switch reply.Kind {
	case Simple, Err:
		reply.Str = body
		return reply, nil
	case Integer:
		reply.Int, err = parseInt(body)
		return reply, err
	case Bulk:
		n, err := parseLen(body, MaxBulk)
		if err != nil || n < 0 {
			reply.Nil = n < 0
			return reply, err
		}
		b, err := r.Next(n + 2)
		if err != nil {
			return reply, err
		}
		if b[n] != '\r' || b[n+1] != '\n' {
			return reply, protoErr("bulk string of %d bytes not followed by CRLF", n)
		}
		reply.Str = b[:n:n]
		return reply, nil
	case Array:
		n, err := parseLen(body, MaxArray)
		if err != nil || n < 0 {
			reply.Nil = n < 0
			return reply, err
		}
		if depth >= MaxDepth {
			return reply, protoErr("arrays nested deeper than %d", MaxDepth)
		}
		start := len(p.elems)
		for range n {
			p.elems = append(p.elems, Reply{})
		}
		for i := range n {
			e, err := p.read(r, depth+1)
			if err != nil {
				return reply, err
			}
			p.elems[start+i] = e
		}
		reply.Elems = p.elems[start : start+n : start+n]
		return reply, nil
	}
	return reply, protoErr("unknown reply type %q", line[0])
}

// readLine returns a reply's first line without its CRLF; it has at least
// the type byte.
func readLine(r source) ([]byte, error) {
	line, err := r.Until('\n')
	if err != nil {
		return nil, err
	}
	if len(line) > maxLine {
		return nil, protoErr("a line of %d bytes", len(line))
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, protoErr("line %q does not end in CRLF", truncate(line))
	}
	return line[: len(line)-2 : len(line)-2], nil
}

// parseLen parses a bulk or array length: -1 (null) up to max.
func parseLen(b []byte, max int) (int, error) {
	if len(b) == 2 && b[0] == '-' && b[1] == '1' {
		return -1, nil
	}
	v, err := parseInt(b)
	if err != nil || v < 0 || v > int64(max) {
		return 0, protoErr("bad length %q", truncate(b))
	}
	return int(v), nil
}

// parseInt parses a RESP integer: an optional '-' and decimal digits.
func parseInt(b []byte) (int64, error) {
	neg := len(b) > 0 && b[0] == '-'
	d := b
	if neg {
		d = b[1:]
	}
	if len(d) == 0 || len(d) > 19 {
		return 0, protoErr("bad integer %q", truncate(b))
	}
	var v uint64
	for _, c := range d {
		if c < '0' || c > '9' {
			return 0, protoErr("bad integer %q", truncate(b))
		}
		v = v*10 + uint64(c-'0')
	}
	if v > 1<<63-1 && !(neg && v == 1<<63) {
		return 0, protoErr("integer %q out of range", truncate(b))
	}
	if neg {
		return -int64(v), nil
	}
	return int64(v), nil
}

// truncate shortens what an error message quotes.
func truncate(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}
