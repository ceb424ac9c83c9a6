package resp

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParse feeds arbitrary bytes to Parse as a pipelined stream. The seeds
// are in testdata/fuzz/FuzzParse; run the fuzzer with
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 3m ./admission/resp/
//
// For every command Parse must stay inside buf and alias it, a multibulk
// request must be the canonical encoding of its args, an inline line must
// split exactly as a literal port of Redis's sdssplitargs splits it, and any
// args re-encoded as multibulk must parse back to the same args. The stream
// cut in two at split must give the same commands and the same error.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		whole := checkStream(t, data)
		cut := int(uint(split) % uint(len(data)+1))
		got := feed(data, cut)
		require.Equal(t, whole.cmds, got.cmds, "cut at %d", cut)
		require.Equal(t, whole.ends, got.ends, "cut at %d", cut)
		require.Equal(t, whole.err, got.err, "cut at %d", cut)
	})
}

// checkStream parses every command of data in turn, checking each result,
// and returns what it parsed.
func checkStream(t *testing.T, data []byte) fed {
	t.Helper()
	var r fed
	buf := bytes.Clone(data) // Parse may unescape quoted inline args in place
	var dst [][]byte
	off := 0
	for {
		rest, orig := buf[off:], data[off:]
		// peek (the warm pass's) reads what Parse reads, the same
		// length or the same refusal, but for an inline line with quotes,
		// which it leaves to Parse; it never writes its input.
		_, pn, perr := peek(rest, nil)
		if !bytes.Equal(rest, orig) {
			t.Fatalf("peek modified its input: %q became %q", orig, rest)
		}
		args, n, err := Parse(rest, dst)
		if perr != errPeekQuoted && (pn != n || (perr == nil) != (err == nil)) {
			t.Fatalf("peek read %d bytes (err %v), Parse %d (err %v) of %q", pn, perr, n, err, orig)
		}
		if n < 0 || n > len(rest) {
			t.Fatalf("n = %d outside buf of %d bytes", n, len(rest))
		}
		if err != nil || n == 0 {
			if n != 0 || len(args) != 0 {
				t.Fatalf("n = %d, %d args without a command (err %v)", n, len(args), err)
			}
		}
		if err != nil {
			checkProtocolError(t, err)
			checkInlineError(t, orig, err)
			r.err = err
			return r
		}
		if n == 0 {
			if !bytes.Equal(rest, orig) {
				t.Fatalf("incomplete request modified: %q became %q", orig, rest)
			}
			return r
		}
		if n > MaxRequestBytes || len(args) > MaxArgs {
			t.Fatalf("a request of %d bytes and %d args passed the limits", n, len(args))
		}
		checkArgsInside(t, rest, n, args)
		if orig[0] == '*' {
			checkMultibulk(t, orig[:n], args)
		} else {
			checkInline(t, orig[:n], args)
		}
		checkReencoded(t, args)
		off += n
		r.cmds = append(r.cmds, argStrings(args))
		r.ends = append(r.ends, off)
		r.at = append(r.at, len(data))
		dst = args[:0]
	}
}

// checkProtocolError checks that err can be sent as the text of a one-line
// error reply.
func checkProtocolError(t *testing.T, err error) {
	t.Helper()
	if _, ok := err.(*ProtocolError); !ok {
		t.Fatalf("%T is not a *ProtocolError: %v", err, err)
	}
	if msg := err.Error(); msg == "" || strings.ContainsAny(msg, "\r\n") {
		t.Fatalf("bad error text %q", msg)
	}
}

// checkMultibulk checks that a multibulk request (unmodified, as received)
// is exactly the canonical encoding of the args parsed from it.
func checkMultibulk(t *testing.T, req []byte, args [][]byte) {
	t.Helper()
	if !bytes.Equal(encodeArgs(args), req) && !(len(args) == 0 && string(req) == "*-1\r\n") {
		t.Fatalf("multibulk %q parsed as %q", req, args)
	}
}

// checkInline checks an inline request (as received) against the port of
// sdssplitargs.
func checkInline(t *testing.T, req []byte, args [][]byte) {
	t.Helper()
	line := req[:len(req)-1]
	if req[len(req)-1] != '\n' || bytes.IndexByte(line, '\n') >= 0 {
		t.Fatalf("inline request %q is not one line", req)
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	want, ok := splitArgsReference(line)
	if !ok || !equalArgs(want, args) {
		t.Fatalf("inline %q parsed as %q, sdssplitargs gives %q (ok=%v)", line, args, want, ok)
	}
}

// checkInlineError checks a quoting or argument-count error on a whole
// inline line against the port of sdssplitargs.
func checkInlineError(t *testing.T, orig []byte, err error) {
	t.Helper()
	if len(orig) == 0 || orig[0] == '*' {
		return
	}
	end := min(len(orig), MaxRequestBytes)
	nl := bytes.IndexByte(orig[:end], '\n')
	if nl < 0 {
		return // checked by the split consistency instead
	}
	line := bytes.TrimSuffix(orig[:nl], []byte("\r"))
	want, ok := splitArgsReference(line)
	switch {
	case err == errProtoUnbalanced && ok:
		t.Fatalf("%q: unbalanced, but sdssplitargs gives %q", line, want)
	case err == errProtoTooManyArgs && ok && len(want) <= MaxArgs:
		t.Fatalf("%q: too many args, but sdssplitargs gives %d", line, len(want))
	case err != errProtoUnbalanced && err != errProtoTooManyArgs:
		t.Fatalf("%q: unexpected error %v for a whole inline line", line, err)
	}
}

// checkReencoded checks that args sent as a multibulk request parse back to
// the same args, or are refused as a whole if the encoding is too large.
func checkReencoded(t *testing.T, args [][]byte) {
	t.Helper()
	if len(args) == 0 {
		return
	}
	enc := encodeArgs(args)
	again, n, err := Parse(enc, nil)
	if len(enc) > MaxRequestBytes {
		if err != errProtoTooLarge {
			t.Fatalf("re-encoded request of %d bytes: n=%d err=%v", len(enc), n, err)
		}
		return
	}
	if err != nil || n != len(enc) || !equalArgs(args, again) {
		t.Fatalf("%q re-encoded parses as %q, n=%d, err=%v", args, again, n, err)
	}
}

// encodeArgs encodes args as a multibulk request with the reply encoders.
func encodeArgs(args [][]byte) []byte {
	b := AppendArrayHeader(nil, len(args))
	for _, a := range args {
		b = AppendBulk(b, a)
	}
	return b
}

func equalArgs(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// splitArgsReference is a literal port of Redis's sdssplitargs (sds.c),
// allocating and unoptimised, to check splitInline against. The C code
// reads a NUL-terminated string; here the end of line is -1, and a NUL byte
// is an ordinary byte, as capsgate documents. ok is false for unbalanced
// quotes.
func splitArgsReference(line []byte) (args [][]byte, ok bool) {
	at := func(p int) int {
		if p < len(line) {
			return int(line[p])
		}
		return -1
	}
	isspace := func(c int) bool { return c == ' ' || (c >= '\t' && c <= '\r') }
	ishex := func(c int) bool { return c >= 0 && isHex(byte(c)) }
	p := 0
	args = [][]byte{}
	for {
		for at(p) != -1 && isspace(at(p)) {
			p++
		}
		if at(p) == -1 {
			return args, true
		}
		inq, insq, done := false, false, false
		current := []byte{}
		for !done {
			switch {
			case inq:
				if at(p) == '\\' && at(p+1) == 'x' && ishex(at(p+2)) && ishex(at(p+3)) {
					current = append(current, unhex(byte(at(p+2)))*16+unhex(byte(at(p+3))))
					p += 3
				} else if at(p) == '\\' && at(p+1) != -1 {
					p++
					c := byte(at(p))
					switch c {
					case 'n':
						c = '\n'
					case 'r':
						c = '\r'
					case 't':
						c = '\t'
					case 'b':
						c = '\b'
					case 'a':
						c = '\a'
					}
					current = append(current, c)
				} else if at(p) == '"' {
					// closing quote must be followed by a space or nothing at all
					if at(p+1) != -1 && !isspace(at(p+1)) {
						return nil, false
					}
					done = true
				} else if at(p) == -1 {
					return nil, false // unterminated quotes
				} else {
					current = append(current, byte(at(p)))
				}
			case insq:
				if at(p) == '\\' && at(p+1) == '\'' {
					p++
					current = append(current, '\'')
				} else if at(p) == '\'' {
					if at(p+1) != -1 && !isspace(at(p+1)) {
						return nil, false
					}
					done = true
				} else if at(p) == -1 {
					return nil, false
				} else {
					current = append(current, byte(at(p)))
				}
			default:
				switch at(p) {
				case ' ', '\n', '\r', '\t', -1:
					done = true
				case '"':
					inq = true
				case '\'':
					insq = true
				default:
					current = append(current, byte(at(p)))
				}
			}
			if at(p) != -1 {
				p++
			}
		}
		args = append(args, current)
	}
}
