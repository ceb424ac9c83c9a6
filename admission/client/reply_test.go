package client

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/cloudwego/netpoll"
	"github.com/stretchr/testify/require"
)

// parseAll parses every reply in in, as a connection would receive it.
func parseAll(in []byte) ([]Reply, error) {
	r := netpoll.NewLinkBuffer()
	_, _ = r.WriteBinary(bytes.Clone(in))
	_ = r.Flush()
	var p parser
	var out []Reply
	for r.Len() > 0 || len(out) == 0 {
		v, err := p.read(r, 0)
		if err != nil {
			return out, err
		}
		out = append(out, v)
	}
	return out, nil
}

// parseStream parses the replies in in with a ReplyReader fed a byte at a
// time, up to the first error.
func parseStream(in []byte) []Reply {
	rr := NewReplyReader(iotest.OneByteReader(bytes.NewReader(in)))
	var out []Reply
	for {
		r, err := rr.Read()
		if err != nil {
			return out
		}
		out = append(out, r.Clone())
	}
}

// appendReply encodes r in RESP2, the reference for the round trip.
func appendReply(b []byte, r *Reply) []byte {
	b = append(b, byte(r.Kind))
	switch {
	case r.Nil:
		return append(b, "-1\r\n"...)
	case r.Kind == Integer:
		b = strconv.AppendInt(b, r.Int, 10)
	case r.Kind == Bulk:
		b = strconv.AppendInt(b, int64(len(r.Str)), 10)
		b = append(b, "\r\n"...)
		b = append(b, r.Str...)
	case r.Kind == Array:
		b = strconv.AppendInt(b, int64(len(r.Elems)), 10)
		b = append(b, "\r\n"...)
		for i := range r.Elems {
			b = appendReply(b, &r.Elems[i])
		}
		return b
	default:
		b = append(b, r.Str...)
	}
	return append(b, "\r\n"...)
}

func TestParse(t *testing.T) {
	f := func(in, want string) {
		t.Helper()
		got, err := parseAll([]byte(in))
		require.NoError(t, err, "%q", in)
		s := make([]string, len(got))
		for i := range got {
			s[i] = got[i].String()
		}
		require.Equal(t, want, strings.Join(s, " | "), "%q", in)
	}
	f("+OK\r\n", `"OK"`)
	f("-ERR unknown command 'X'\r\n", `(error) ERR unknown command 'X'`)
	f(":-1\r\n:9223372036854775807\r\n:-9223372036854775808\r\n", "(integer) -1 | (integer) 9223372036854775807 | (integer) -9223372036854775808")
	f("$5\r\nhe\r\no\r\n$0\r\n\r\n$-1\r\n", `"he\r\no" | "" | (nil)`)
	f("*4\r\n:1\r\n+OK\r\n:0\r\n:99\r\n", `[(integer) 1, "OK", (integer) 0, (integer) 99]`)
	f("*2\r\n*1\r\n$1\r\na\r\n*-1\r\n*0\r\n", `[["a"], (nil)] | []`)
}

func TestParseErrors(t *testing.T) {
	f := func(in string) {
		t.Helper()
		_, err := parseAll([]byte(in))
		require.ErrorIs(t, err, ErrProtocol, "%q", in)
	}
	f("?\r\n")
	f("+OK\n")
	f(":12a\r\n")
	f(":\r\n")
	f(":9223372036854775808\r\n")
	f(":-9223372036854775809\r\n")
	f("$-2\r\n")
	f("$3\r\nabcd\r\n")
	f("*-5\r\n")
	f("$99999999999\r\n")
	f(strings.Repeat("*1\r\n", MaxDepth+1) + ":1\r\n")
	_, err := parseAll([]byte("$10\r\nabc"))
	require.Error(t, err, "a truncated bulk")
	require.False(t, errors.Is(err, ErrProtocol))
}

func TestDecision(t *testing.T) {
	got, err := parseAll([]byte("*4\r\n:0\r\n+CAPS\r\n:7\r\n:0\r\n-NOAUTH Authentication required.\r\n+OK\r\n"))
	require.NoError(t, err)
	d, err := got[0].Decision()
	require.NoError(t, err)
	require.Equal(t, Decision{Reason: "CAPS", RetryAfterMs: 7}, d)
	_, err = got[1].Decision()
	var se *ServerError
	require.ErrorAs(t, err, &se)
	require.Equal(t, "NOAUTH", se.Prefix())
	_, err = got[2].Decision()
	require.ErrorIs(t, err, ErrProtocol)
}

func TestAppendCommand(t *testing.T) {
	require.Equal(t, "*2\r\n$5\r\nADMIT\r\n$10\r\n0123456789\r\n", string(AppendCommand(nil, "ADMIT", "0123456789")))
	require.Equal(t, "*0\r\n", string(AppendCommand(nil)))
}

// FuzzReply feeds arbitrary bytes to the parser: it never panics, what it
// accepts encodes back to bytes it parses the same way, and a ReplyReader
// fed the bytes one at a time reads the same replies.
func FuzzReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := parseAll(in)
		stream := parseStream(in)
		require.Equal(t, len(got), len(stream), "%q", in)
		for i := range got {
			require.Equal(t, got[i].String(), stream[i].String())
		}
		var enc []byte
		for i := range got {
			enc = appendReply(enc, &got[i])
		}
		if err == nil && len(enc) > len(in) {
			t.Fatalf("%q encodes back longer: %q", in, enc)
		}
		again, err := parseAll(enc)
		if len(got) > 0 {
			require.NoError(t, err, "re-parse %q", enc)
		}
		require.Equal(t, len(got), len(again))
		for i := range got {
			require.Equal(t, got[i].String(), again[i].String())
		}
	})
}

// A ReplyReader takes a line as long as the parser allows, however its
// reads are split, and refuses a longer one as the netpoll parser does.
func TestReplyReaderLongLines(t *testing.T) {
	ok := "+" + strings.Repeat("a", maxLine-3) + "\r\n"
	got := parseStream([]byte(ok + ":7\r\n"))
	require.Len(t, got, 2)
	require.Equal(t, maxLine-3, len(got[0].Str))
	require.Equal(t, int64(7), got[1].Int)
	long := "+" + strings.Repeat("a", 2*maxLine) + "\r\n"
	require.Empty(t, parseStream([]byte(long)))
	netpoll, err := parseAll([]byte(long))
	require.Error(t, err)
	require.Empty(t, netpoll)
}
