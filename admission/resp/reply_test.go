package resp

import (
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBulkInPlace: a bulk reply built in place (bulkStart, bulkEnd) is
// byte for byte AppendBulk's, at every length where the header's digits
// change, and after what the buffer held.
func TestBulkInPlace(t *testing.T) {
	for _, n := range []int{0, 1, 9, 10, 11, 99, 100, 999, 1000, 99_999, 100_000, 1 << 20} {
		body := []byte(strings.Repeat("x", n))
		b, mark := bulkStart([]byte("prev"))
		b = append(b, body...)
		require.Equal(t, string(AppendBulk([]byte("prev"), body)), string(bulkEnd(b, mark)), n)
	}
}

func TestAppendReplies(t *testing.T) {
	f := func(want string, got []byte) {
		t.Helper()
		require.Equal(t, want, string(got))
	}
	prefix := []byte("prev") // the encoders append, never overwrite

	f("+OK\r\n", AppendSimple(nil, "OK"))
	f("prev+PONG\r\n", AppendSimple(prefix, "PONG"))
	f("+\r\n", AppendSimple(nil, ""))
	f("+a b  c\r\n", AppendSimple(nil, "a\rb\r\nc"))

	f("-ERR unknown command 'x'\r\n", AppendError(nil, "ERR unknown command 'x'"))
	f("prev-ERR x\r\n", AppendError(prefix, "ERR x"))
	f("-ERR bad  input here \r\n", AppendError(nil, "ERR bad\r\ninput\nhere\r"))

	f(":0\r\n", AppendInt(nil, 0))
	f(":1\r\n", AppendInt(nil, 1))
	f(":-1\r\n", AppendInt(nil, -1))
	f(":1234567\r\n", AppendInt(nil, 1234567))
	f(":9223372036854775807\r\n", AppendInt(nil, math.MaxInt64))
	f(":-9223372036854775808\r\n", AppendInt(nil, math.MinInt64))
	f("prev:7\r\n", AppendInt(prefix, 7))

	f("$5\r\nhello\r\n", AppendBulk(nil, []byte("hello")))
	f("$0\r\n\r\n", AppendBulk(nil, nil))
	f("$0\r\n\r\n", AppendBulk(nil, []byte{}))
	f("$4\r\n\r\n\x00\xff\r\n", AppendBulk(nil, []byte("\r\n\x00\xff")))
	f("prev$1\r\nx\r\n", AppendBulk(prefix, []byte("x")))

	f("$5\r\nhello\r\n", AppendBulkString(nil, "hello"))
	f("$0\r\n\r\n", AppendBulkString(nil, ""))
	f("$2\r\n\r\n\r\n", AppendBulkString(nil, "\r\n"))
	long := strings.Repeat("z", 70000)
	f("$70000\r\n"+long+"\r\n", AppendBulkString(nil, long))

	f("$-1\r\n", AppendNull(nil))
	f("prev$-1\r\n", AppendNull(prefix))

	f("*0\r\n", AppendArrayHeader(nil, 0))
	f("*14\r\n", AppendArrayHeader(nil, 14))
	f("*-1\r\n", AppendArrayHeader(nil, -1))

	require.Equal(t, "prev", string(prefix), "appending must not write into the caller's bytes")
}

func TestAppendDecision(t *testing.T) {
	f := func(want string, got []byte) {
		t.Helper()
		require.Equal(t, want, string(got))
	}
	f("*4\r\n:1\r\n+OK\r\n:0\r\n:41\r\n", AppendDecision(nil, true, "OK", 0, 41))
	f("*4\r\n:0\r\n+CAPS\r\n:250\r\n:0\r\n", AppendDecision(nil, false, "CAPS", 250, 0))
	f("*4\r\n:0\r\n+UNLICENSED\r\n:-1\r\n:-1\r\n", AppendDecision(nil, false, "UNLICENSED", -1, -1))
	f("*4\r\n:1\r\n+\r\n:9223372036854775807\r\n:-9223372036854775808\r\n",
		AppendDecision(nil, true, "", math.MaxInt64, math.MinInt64))
	f("*4\r\n:0\r\n+BAD REASON\r\n:1\r\n:2\r\n", AppendDecision(nil, false, "BAD\nREASON", 1, 2))
	f("prev*4\r\n:1\r\n+OK\r\n:0\r\n:1\r\n", AppendDecision([]byte("prev"), true, "OK", 0, 1))
}

// A multibulk request built with the encoders parses back to its args: the
// encoders and the parser agree on the format.
func TestAppendParsesBack(t *testing.T) {
	args := []string{"ADMIT", "demo", "", "\r\n\x00\xff", strings.Repeat("v", 1000)}
	b := AppendArrayHeader(nil, len(args))
	for i, a := range args {
		if i%2 == 0 {
			b = AppendBulkString(b, a)
		} else {
			b = AppendBulk(b, []byte(a))
		}
	}
	got, n, err := Parse(b, nil)
	require.NoError(t, err)
	require.Equal(t, len(b), n)
	require.Equal(t, args, argStrings(got))
}

func TestAppendAllocs(t *testing.T) {
	b := make([]byte, 0, 512)
	p := []byte("some bulk payload")
	for name, fn := range map[string]func(){
		"simple":       func() { b = AppendSimple(b[:0], "OK") },
		"error":        func() { b = AppendError(b[:0], "ERR wrong number of arguments\r\n") },
		"int":          func() { b = AppendInt(b[:0], -1234567890) },
		"bulk":         func() { b = AppendBulk(b[:0], p) },
		"bulk string":  func() { b = AppendBulkString(b[:0], "license_state") },
		"null":         func() { b = AppendNull(b[:0]) },
		"array header": func() { b = AppendArrayHeader(b[:0], 14) },
		"decision":     func() { b = AppendDecision(b[:0], false, "CAPS", 250, 12345) },
	} {
		require.Zero(t, testing.AllocsPerRun(200, fn), name)
	}
}

func BenchmarkAppendDecision(b *testing.B) {
	out := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		out = AppendDecision(out[:0], true, "OK", 0, 4711)
	}
}

func BenchmarkAppendInt(b *testing.B) {
	out := make([]byte, 0, 64)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		out = AppendInt(out[:0], int64(i&1023))
	}
}

func BenchmarkAppendBulk(b *testing.B) {
	out := make([]byte, 0, 256)
	p := []byte(callID)
	b.ReportAllocs()
	for b.Loop() {
		out = AppendBulk(out[:0], p)
	}
}
