// Package resp is capsgate's RESP2 front end: the request parser, the reply
// encoders, and the gnet server and command table built on them.
//
// # Parsing
//
// Parse reads one command from the front of the bytes buffered for a
// connection. It understands both request forms a Redis server accepts:
//
//   - multibulk, what client libraries send:
//     "*<count>\r\n" then count times "$<len>\r\n<len bytes>\r\n";
//   - inline, what a human types into telnet or redis-cli: one line ending
//     in "\n" (a "\r" before it is dropped), split on blanks, with Redis's
//     "double" and 'single' quoting.
//
// The caller loops: while Parse reports a complete command it runs it and
// parses again from buf[n:]; when Parse reports an incomplete command the
// caller keeps the unconsumed bytes and calls again once more have arrived;
// on a protocol error it replies "-ERR Protocol error: <err>" and closes the
// connection.
//
// # Zero-copy contract
//
// The decision path allocates nothing, so Parse copies nothing:
//
//   - The args Parse returns are sub-slices of buf. They are valid only
//     until the caller reuses or releases buf (for gnet: until the bytes are
//     discarded). Each arg's capacity equals its length, so appending to one
//     cannot overwrite the bytes that follow it in buf.
//   - The arg list itself is built in the caller's dst (dst[:0]); it
//     allocates only when cap(dst) is too small, and the caller should keep
//     the returned slice (args[:0]) for the next call so it grows once.
//   - Parse never modifies a multibulk request. An inline request with
//     quoted arguments is unescaped in place: the unescaped form of a token
//     is never longer than its escaped form, so it is written over the
//     token's own bytes inside buf[:n]. Parse writes to buf only when it
//     returns that line as a complete command or rejects it; it never
//     modifies buf when it reports an incomplete command. Bytes Parse has
//     returned as a command must therefore not be parsed a second time;
//     what must look at commands before they run (warm) parses them with
//     peek, which never writes.
//
// # Limits and errors
//
// One request, a whole multibulk frame or an inline line with its line end,
// may be at most MaxRequestBytes long, and a command at most MaxArgs
// arguments. Parse reports a protocol error as soon as the buffered bytes
// prove the request malformed or too big, whatever bytes might follow (an
// inline line's tokens once the line ends, as Redis does: before that only
// its length), so a peer cannot make the server buffer more than
// MaxRequestBytes (plus a few header bytes) for one request. The scan goes
// left to right and the first offending byte decides the error (of an
// inline line: its length, then its first offending token once it ends),
// so parsing a stream whole or in pieces gives the same commands and the
// same error.
//
// The error texts are Redis's own (networking.c, processMultibulkBuffer and
// processInlineBuffer) where Redis has one. Where capsgate differs from
// Redis it is stricter, never more lenient:
//
//   - a multibulk count may be -1 or 0 (an empty command, skipped like Redis
//     does) or 1..MaxArgs; other negative counts are invalid multibulk
//     lengths and larger ones are "too many arguments" (also for inline);
//   - a bulk length above MaxRequestBytes is an invalid bulk length (as
//     Redis says of lengths above proto-max-bulk-len), and one that would
//     take the frame past MaxRequestBytes is "request too large";
//   - the "\r\n" after every line and after every bulk payload is checked
//     (Redis skips two bytes without looking);
//   - a multibulk frame's errors are reported on the first byte that
//     proves them rather than once a whole line is buffered, so Redis's
//     "too big mbulk count string"
//     and "too big bulk count string" cannot happen here.
//
// An inline line of binary garbage is not a protocol error, just as in
// Redis: it is split like any other line and becomes an unknown command.
// Unlike Redis (whose C strings stop there) a NUL byte in an inline line is
// an ordinary byte.
package resp

import (
	"bytes"
	"errors"
)

// Limits of one request.
const (
	// MaxRequestBytes bounds one request: a whole multibulk frame, from the
	// '*' to the "\r\n" after the last bulk, or one inline line including
	// its line end.
	MaxRequestBytes = 64 << 10
	// MaxArgs bounds the number of arguments of one command, the multibulk
	// element count or the number of tokens of an inline line.
	MaxArgs = 1024
)

// ProtocolError is a malformed or oversized request. Its Error text is what
// follows "ERR Protocol error: " in the reply sent before the connection is
// closed.
type ProtocolError struct{ msg string }

// Error returns the text of the protocol error, e.g. "invalid bulk length".
func (e *ProtocolError) Error() string { return e.msg }

// The protocol errors Parse returns, allocated once. The only one built on
// the error path is "expected '$', got 'X'", whose text depends on the byte.
var (
	errProtoMultibulkLen = &ProtocolError{"invalid multibulk length"}
	errProtoBulkLen      = &ProtocolError{"invalid bulk length"}
	errProtoInlineTooBig = &ProtocolError{"too big inline request"}
	errProtoUnbalanced   = &ProtocolError{"unbalanced quotes in request"}
	errProtoTooLarge     = &ProtocolError{"request too large"}
	errProtoTooManyArgs  = &ProtocolError{"too many arguments"}
)

// errProtoExpectedBulk is Redis's "expected '$', got 'X'", for a multibulk
// element that does not start with '$'. A byte that is not printable ASCII
// is shown as \xNN so the reply stays one clean line.
func errProtoExpectedBulk(c byte) error {
	const hex = "0123456789abcdef"
	got := string(c)
	if c < 0x20 || c >= 0x7f {
		got = string([]byte{'\\', 'x', hex[c>>4], hex[c&0xf]})
	}
	return &ProtocolError{"expected '$', got '" + got + "'"}
}

// Parse parses one command from the front of buf.
//
// It appends the command's arguments (sub-slices of buf, no copies) to
// dst[:0] and returns them; n is the number of bytes consumed:
//
//   - n > 0, err == nil: a complete command. len(args) is 0 for an empty
//     inline line and for "*0\r\n" or "*-1\r\n"; the caller skips it.
//   - n == 0, err == nil: buf holds only part of a command (or nothing);
//     call again with the same bytes and more once they arrive.
//   - err != nil: a protocol error (a *ProtocolError); reply
//     "-ERR Protocol error: " + err.Error() and close the connection.
//
// Whenever no complete command is returned, args is dst[:0] (possibly grown).
// Parse may rewrite bytes of an inline line with quoted arguments in place;
// see the package documentation for the zero-copy contract.
func Parse(buf []byte, dst [][]byte) (args [][]byte, n int, err error) {
	return parse(buf, dst, true)
}

// errPeekQuoted is what peek reports of an inline line with quotes, whose
// arguments only Parse can give (by unescaping them in place).
var errPeekQuoted = errors.New("resp: inline quotes are unescaped by Parse only")

// peek is Parse that never modifies buf: for a whole inline line with a
// quote it reports errPeekQuoted (and n == 0) rather than unescaping it. It
// looks at commands that Parse will parse again (warm).
func peek(buf []byte, dst [][]byte) (args [][]byte, n int, err error) {
	return parse(buf, dst, false)
}

func parse(buf []byte, dst [][]byte, unescape bool) (args [][]byte, n int, err error) {
	args = dst[:0]
	if len(buf) == 0 {
		return args, 0, nil
	}
	if buf[0] == '*' {
		return parseMultibulk(buf, args)
	}
	return parseInline(buf, args, unescape)
}

// parseMultibulk parses the multibulk request at the front of buf
// (buf[0] == '*') into args, which is empty.
func parseMultibulk(buf []byte, args [][]byte) ([][]byte, int, error) {
	count, pos, err := parseLenLine(buf, 1, MaxArgs, true, errProtoMultibulkLen, errProtoTooManyArgs)
	if err != nil || pos == 0 {
		return args, 0, err
	}
	for ; count > 0; count-- {
		if pos == len(buf) {
			return args[:0], 0, nil
		}
		if buf[pos] != '$' {
			return args[:0], 0, errProtoExpectedBulk(buf[pos])
		}
		size, start, err := parseLenLine(buf, pos+1, MaxRequestBytes, false, errProtoBulkLen, errProtoBulkLen)
		if err != nil || start == 0 {
			return args[:0], 0, err
		}
		end := start + size // the payload is buf[start:end], then "\r\n"
		if end+2 > MaxRequestBytes {
			return args[:0], 0, errProtoTooLarge
		}
		if end+2 > len(buf) {
			// Not all here yet; the '\r' after the payload may be.
			if end < len(buf) && buf[end] != '\r' {
				return args[:0], 0, errProtoBulkLen
			}
			return args[:0], 0, nil
		}
		if buf[end] != '\r' || buf[end+1] != '\n' {
			return args[:0], 0, errProtoBulkLen
		}
		args = append(args, buf[start:end:end])
		pos = end + 2
	}
	// A count of 0 or -1 ends here too: consumed, no arguments.
	return args, pos, nil
}

// parseLenLine parses the decimal number of a "*<count>\r\n" or
// "$<len>\r\n" line, starting at buf[i], just after the type byte, up to
// and including the "\r\n".
//
// The number is written the way Redis's string2ll accepts it: digits
// without a sign or leading zeros. With minusOne, "-1" is also accepted
// (the null multibulk). It returns the value and the offset just past the
// "\r\n"; next == 0 with a nil error means the line is not complete yet.
//
// Every byte is checked as it is read, so an error comes as soon as the
// bytes read prove one: invalid for a malformed number or line end, tooBig
// as soon as the value, which can only grow with more digits, exceeds max.
func parseLenLine(buf []byte, i, max int, minusOne bool, invalid, tooBig error) (v, next int, err error) {
	start := i
	if minusOne && i < len(buf) && buf[i] == '-' {
		// Of the negative numbers only "-1" is accepted.
		if i+1 < len(buf) && buf[i+1] != '1' {
			return 0, 0, invalid
		}
		i += 2
		v = -1
	} else {
		for ; i < len(buf); i++ {
			c := buf[i]
			if c < '0' || c > '9' {
				break
			}
			if v == 0 && i > start { // a digit after a leading "0"
				return 0, 0, invalid
			}
			v = v*10 + int(c-'0') // cannot overflow: v <= max here
			if v > max {
				return 0, 0, tooBig
			}
		}
	}
	if i >= len(buf) {
		return 0, 0, nil
	}
	if buf[i] != '\r' || i == start {
		return 0, 0, invalid
	}
	if i+1 == len(buf) {
		return 0, 0, nil
	}
	if buf[i+1] != '\n' {
		return 0, 0, invalid
	}
	return v, i + 2, nil
}

// parseInline parses the inline request at the front of buf (buf[0] !=
// '*') into args, which is empty; without unescape a whole line with a
// quote is errPeekQuoted.
func parseInline(buf []byte, args [][]byte, unescape bool) ([][]byte, int, error) {
	window := buf
	if len(window) > MaxRequestBytes {
		window = window[:MaxRequestBytes]
	}
	nl := bytes.IndexByte(window, '\n')
	if nl < 0 {
		// Not a whole line yet: an error only once it cannot end within
		// MaxRequestBytes, as Redis does. (Its tokens are not looked at
		// before it ends: a line sent a byte at a time would be scanned
		// whole at each byte, up to 64 KiB each.)
		if len(buf) >= MaxRequestBytes {
			return args[:0], 0, errProtoInlineTooBig
		}
		return args[:0], 0, nil
	}
	line := buf[:nl]
	if nl > 0 && line[nl-1] == '\r' {
		line = line[:nl-1]
	}
	args, err := splitInline(line, args, unescape)
	if err != nil {
		return args[:0], 0, err
	}
	return args, nl + 1, nil
}

// isSpace reports whether c is a blank for C's isspace, which Redis uses to
// skip blanks between tokens and to check what follows a closing quote.
func isSpace(c byte) bool {
	return c == ' ' || (c >= '\t' && c <= '\r') // \t \n \v \f \r
}

// inlineSpecial marks the bytes that end an unquoted run in an inline
// token: the token separators and the quotes.
var inlineSpecial = [256]bool{' ': true, '\t': true, '\r': true, '\n': true, '"': true, '\'': true}

// isHex reports whether c is a hexadecimal digit.
func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// unhex returns the value of the hexadecimal digit c.
func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// splitInline splits an inline line into arguments exactly as Redis's
// sdssplitargs does:
//
//   - tokens are separated by blanks (isspace); an unquoted token ends at a
//     space, tab, '\r' or '\n' (not at '\v' or '\f');
//   - a '"' in a token opens a double-quoted part with the escapes \n \r
//     \t \b \a, \xHH (two hex digits) and backslash before any other byte
//     standing for that byte (\\, \");
//   - a single quote opens a single-quoted part where only \' is an
//     escape;
//   - a closing quote ends the token and must be followed by a blank or
//     the end of the line, and a quote must be closed before the end of the
//     line; otherwise the quotes are unbalanced.
//
// line is a whole line without its line end: the tokens are appended to
// args, and tokens with quotes are unescaped in place, the output cursor w
// never passing the input cursor i. Without unescape, a line is split only
// while it has no quote, and nothing is written: the first quote is
// errPeekQuoted.
func splitInline(line []byte, args [][]byte, unescape bool) ([][]byte, error) {
	i, tokens := 0, 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		if tokens++; tokens > MaxArgs {
			return args, errProtoTooManyArgs
		}
		// One token: the output is line[start:w]. Its unquoted start is
		// its own output; skip it in one go (most tokens end there).
		start := i
		for i < len(line) && !inlineSpecial[line[i]] {
			i++
		}
		// The rest, byte by byte: each pass of the loop consumes the input
		// from in to i and produces at most the byte c.
		w := i
		var quote byte // 0, '"' or '\''
	token:
		for {
			if i == len(line) {
				if quote != 0 {
					return args, errProtoUnbalanced
				}
				break token
			}
			in, c := i, line[i]
			i++
			switch {
			case quote == 0:
				switch c {
				case ' ', '\t', '\r', '\n':
					break token
				case '"', '\'':
					if !unescape {
						return args, errPeekQuoted // it would rewrite the line
					}
					quote = c // opens a quoted part: no output
					continue
				}
			case c == quote:
				// A closing quote ends the token; a blank or the end must follow.
				if i < len(line) && !isSpace(line[i]) {
					return args, errProtoUnbalanced
				}
				break token
			case c != '\\':
				// An ordinary byte in quotes.
			case i == len(line):
				// A '\' ending the line is kept, and leaves the quote
				// unbalanced.
			case quote == '\'':
				if line[i] == '\'' { // \' is the only escape in single quotes
					c = '\''
					i++
				}
			default: // an escape in double quotes
				e := line[i]
				i++
				switch e {
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
				case 'x':
					c = 'x'
					if i+1 < len(line) && isHex(line[i]) && isHex(line[i+1]) {
						c = unhex(line[i])<<4 | unhex(line[i+1])
						i += 2
					}
				default:
					c = e
				}
			}
			// Once a quote has been opened the output lags the input, so
			// this writes only in tokens with quotes.
			if w != in {
				line[w] = c
			}
			w++
		}
		args = append(args, line[start:w:w])
	}
}
