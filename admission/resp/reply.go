package resp

import "strconv"

// The reply encoders append one RESP2 reply to b and return the extended
// slice, like strconv.AppendInt. They allocate nothing unless b must grow;
// an event loop reuses one reply buffer for all its connections.

// AppendSimple appends the simple string reply "+s\r\n". A '\r' or '\n' in
// s, which would end the reply early, is written as a space.
func AppendSimple(b []byte, s string) []byte {
	b = append(b, '+')
	b = appendLine(b, s)
	return append(b, '\r', '\n')
}

// AppendError appends the error reply "-s\r\n"; s is the whole message with
// its error code, e.g. "ERR unknown command 'x'". A '\r' or '\n' in s, which
// would end the reply early, is written as a space.
func AppendError(b []byte, s string) []byte {
	b = append(b, '-')
	b = appendLine(b, s)
	return append(b, '\r', '\n')
}

// AppendInt appends the integer reply ":v\r\n".
func AppendInt(b []byte, v int64) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, v, 10)
	return append(b, '\r', '\n')
}

// AppendBulk appends the bulk string reply "$<len(p)>\r\n<p>\r\n". p may hold
// any bytes; a nil or empty p is the empty string, not the null reply (see
// AppendNull).
func AppendBulk(b []byte, p []byte) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(p)), 10)
	b = append(b, '\r', '\n')
	b = append(b, p...)
	return append(b, '\r', '\n')
}

// bulkRoom is the room bulkStart keeps for a bulk reply's header: "$",
// the length (replies are far below 10^10 bytes) and CRLF.
const bulkRoom = 1 + 10 + 2

// bulkStart begins a bulk reply whose length is not known yet: its body is
// appended to the returned slice from mark on, and bulkEnd then writes the
// header and moves the body next to it. Nothing is allocated but room in b.
func bulkStart(b []byte) (_ []byte, mark int) {
	b = append(b, make([]byte, bulkRoom)...)
	return b, len(b)
}

// bulkEnd finishes the bulk reply bulkStart began at mark.
func bulkEnd(b []byte, mark int) []byte {
	n := len(b) - mark
	var hb [bulkRoom]byte
	h := append(hb[:0], '$')
	h = strconv.AppendInt(h, int64(n), 10)
	h = append(h, '\r', '\n')
	at := mark - bulkRoom
	copy(b[at:], h)
	copy(b[at+len(h):], b[mark:])
	return append(b[:at+len(h)+n], '\r', '\n')
}

// AppendBulkString appends s as a bulk string reply, like AppendBulk.
func AppendBulkString(b []byte, s string) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// AppendNull appends the null bulk reply "$-1\r\n" (Redis's nil).
func AppendNull(b []byte) []byte {
	return append(b, "$-1\r\n"...)
}

// AppendArrayHeader appends "*n\r\n", the header of an array reply; the
// caller then appends its n elements.
func AppendArrayHeader(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// AppendDecision appends a capsgate decision, the reply to ADMIT: an array
// of four elements,
//
//	*4\r\n:<admitted>\r\n+<reason>\r\n:<retryAfterMS>\r\n:<remaining>\r\n
//
// where admitted is 1 or 0 and reason is a simple string (a '\r' or '\n' in
// it is written as a space).
func AppendDecision(b []byte, admitted bool, reason string, retryAfterMS, remaining int64) []byte {
	if admitted {
		b = append(b, "*4\r\n:1\r\n+"...)
	} else {
		b = append(b, "*4\r\n:0\r\n+"...)
	}
	b = appendLine(b, reason)
	b = append(b, "\r\n:"...)
	b = strconv.AppendInt(b, retryAfterMS, 10)
	b = append(b, "\r\n:"...)
	b = strconv.AppendInt(b, remaining, 10)
	return append(b, '\r', '\n')
}

// appendLine appends s with every '\r' and '\n' replaced by a space, for the
// one-line replies (simple strings and errors).
func appendLine(b []byte, s string) []byte {
	n := len(b)
	b = append(b, s...)
	for i := n; i < len(b); i++ {
		if c := b[i]; c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return b
}
