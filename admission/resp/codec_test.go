package resp

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// callID is a 36-byte call-id, the size of the UUIDs SIP stacks send.
const callID = "123e4567-e89b-12d3-a456-426614174000"

// multibulk encodes args as a multibulk request, the way clients do.
func multibulk(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

// argStrings copies parsed args out of the buffer they alias.
func argStrings(args [][]byte) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = string(a)
	}
	return out
}

// argOffset is the offset of a in buf, or -1 when a is empty (an empty
// slice has no position to check).
func argOffset(buf, a []byte) int {
	if len(a) == 0 {
		return -1
	}
	return int(uintptr(unsafe.Pointer(unsafe.SliceData(a))) - uintptr(unsafe.Pointer(unsafe.SliceData(buf))))
}

// checkArgsInside fails unless every arg is a capacity-capped sub-slice of
// buf[:n], in order and without overlap.
func checkArgsInside(t testing.TB, buf []byte, n int, args [][]byte) {
	t.Helper()
	next := 0
	for i, a := range args {
		if cap(a) != len(a) {
			t.Fatalf("arg %d: cap %d != len %d", i, cap(a), len(a))
		}
		off := argOffset(buf, a)
		if off < 0 {
			continue
		}
		if off < next || off+len(a) > n {
			t.Fatalf("arg %d at [%d, %d) is not inside buf[%d:%d]", i, off, off+len(a), next, n)
		}
		next = off + len(a)
	}
}

// parseCopy parses a fresh copy of in (Parse may unescape inline quotes in
// place) and checks the invariants every result must meet.
func parseCopy(t *testing.T, in string) (args []string, n int, err error) {
	t.Helper()
	buf := []byte(in)
	a, n, err := Parse(buf, nil)
	require.GreaterOrEqual(t, n, 0)
	require.LessOrEqual(t, n, len(buf))
	if err != nil || n == 0 {
		require.Zero(t, n, "no bytes may be consumed without a command")
		require.Empty(t, a, "no args without a command")
		return nil, 0, err
	}
	checkArgsInside(t, buf, n, a)
	return argStrings(a), n, nil
}

func TestParseValid(t *testing.T) {
	f := func(name, in string, n int, want ...string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			args, got, err := parseCopy(t, in)
			require.NoError(t, err)
			if n == 0 {
				n = len(in)
			}
			require.Equal(t, n, got, "bytes consumed")
			if want == nil {
				want = []string{}
			}
			require.Equal(t, want, args)
		})
	}

	// Multibulk.
	f("set", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", 0, "SET", "k", "v")
	f("admit", multibulk("ADMIT", "demo", "CALL", callID, "PRIORITY", "high"), 0,
		"ADMIT", "demo", "CALL", callID, "PRIORITY", "high")
	f("empty bulk", "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", 0, "ECHO", "")
	f("only empty bulks", "*3\r\n$0\r\n\r\n$0\r\n\r\n$0\r\n\r\n", 0, "", "", "")
	f("binary bulk", "*2\r\n$4\r\nECHO\r\n$8\r\n\r\n\x00\xff*$\r\n\r\n", 0, "ECHO", "\r\n\x00\xff*$\r\n")
	f("count 0", "*0\r\n", 0)
	f("count -1", "*-1\r\n", 0)
	f("count 0 then more", "*0\r\n*1\r\n$4\r\nPING\r\n", 4)
	f("long bulk", multibulk("ECHO", strings.Repeat("x", 1000)), 0, "ECHO", strings.Repeat("x", 1000))
	f("pipelined multibulk", "*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 14, "PING")
	f("multibulk then inline", "*1\r\n$4\r\nPING\r\nPING\r\n", 14, "PING")
	f("multibulk then garbage", "*1\r\n$4\r\nPING\r\n\x00\xff", 14, "PING")

	// Inline.
	f("inline crlf", "PING\r\n", 0, "PING")
	f("inline lf", "PING\n", 0, "PING")
	f("inline admit", "ADMIT demo CALL "+callID+" PRIORITY high\r\n", 0,
		"ADMIT", "demo", "CALL", callID, "PRIORITY", "high")
	f("inline pipelined", "ADMIT demo\r\nPING\r\n", 12, "ADMIT", "demo")
	f("inline then multibulk", "PING\n*1\r\n$4\r\nPING\r\n", 5, "PING")
	f("inline extra blanks", "  ADMIT \t demo\t\tCALL   c1   \r\n", 0, "ADMIT", "demo", "CALL", "c1")
	f("inline empty crlf", "\r\n", 0)
	f("inline empty lf", "\n", 0)
	f("inline only blanks", " \t \v\f \r\n", 0)
	f("inline cr separates", "a\rb\r\n", 0, "a", "b")
	f("inline cr cr lf", "PING\r\r\n", 0, "PING")
	f("inline vt and ff", "\v\f a\vb\fc\r\n", 0, "a\vb\fc") // blanks between tokens, not inside
	f("inline star later", "PING *1 $3\r\n", 0, "PING", "*1", "$3")
	f("inline dollar first", "$3\r\n", 0, "$3")
	f("inline binary garbage", "\x00\xff\x01\x80garbage\r\n", 0, "\x00\xff\x01\x80garbage")
	f("inline binary tokens", "\xff\xfe \x00\x00\n", 0, "\xff\xfe", "\x00\x00")

	// Inline quoting, as sdssplitargs does it.
	f("double quotes", `SET "a b" "" c`+"\r\n", 0, "SET", "a b", "", "c")
	f("double quote escapes", `ECHO "\x41\x7a\n\r\t\b\a\\\"\q\xZZ\x4"`+"\r\n", 0,
		"ECHO", "Az\n\r\t\b\a\\\"qxZZx4")
	f("hex escape upper", `ECHO "\xFF\x00\xaB"`+"\n", 0, "ECHO", "\xff\x00\xab")
	f("single quotes", `ECHO 'it\'s' 'a\nb\\c' '"' ''`+"\r\n", 0, "ECHO", "it's", `a\nb\\c`, `"`, "")
	f("quotes inside token", `ab"c d" x'y z'`+"\r\n", 0, "abc d", "xy z")
	f("quote then tab", "\"a\"\tb\r\n", 0, "a", "b")
	f("quote then vt", "\"a\"\vb\r\n", 0, "a", "b")
	f("quote at line end", `SET "a"`+"\r\n", 0, "SET", "a")
	f("quote then cr", "\"a\"\rb\r\n", 0, "a", "b")
	f("quoted blanks and cr", "\"a \t\rb\"\r\n", 0, "a \t\rb")
	f("quoted star", `"*1" '$2'`+"\r\n", 0, "*1", "$2")
	f("quoted pipelined", `SET "k\x41" 'v'`+"\r\nPING\r\n", 17, "SET", "kA", "v")
}

func TestParseIncomplete(t *testing.T) {
	for _, in := range []string{
		"", "*", "*1", "*12", "*1\r", "*1\r\n", "*1\r\n$", "*1\r\n$4", "*1\r\n$4\r", "*1\r\n$4\r\n",
		"*1\r\n$4\r\nPI", "*1\r\n$4\r\nPING", "*1\r\n$4\r\nPING\r", "*1\r\n$0\r\n", "*1\r\n$0\r\n\r",
		"*-", "*-1", "*-1\r", "*0", "*0\r", "*2\r\n$1\r\na\r\n", "*1024\r\n",
		"*1\r\n$65522\r\n", // a frame of exactly MaxRequestBytes, still to come
		"P", "PING", "PING\r", "PING \"a b", `SET "a b`, `SET "a"`, `SET 'a'`, `SET 'a\`, `SET "a\`,
		`SET "\x4`, `SET "a\"`, `a"b c"`, "\x00\xff",
		strings.Repeat("a", MaxRequestBytes-1),
		strings.Repeat("a ", MaxArgs),
		// Errors once the line ends, not before (Redis's rule: a line
		// dribbled in is not scanned again at each byte).
		`SET "foo"bar`, `SET 'foo'"`, strings.Repeat("a ", MaxArgs) + "a", `"a"b ` + strings.Repeat("x", MaxRequestBytes-6),
	} {
		buf := []byte(in)
		args, n, err := Parse(buf, make([][]byte, 3, 8))
		require.NoError(t, err, "%q", in)
		require.Zero(t, n, "%q", in)
		require.Empty(t, args, "%q", in)
		require.Equal(t, in, string(buf), "an incomplete request must not be modified")
	}
}

func TestParseErrors(t *testing.T) {
	f := func(in, want string) {
		t.Helper()
		_, _, err := parseCopy(t, in)
		require.Error(t, err, "%q", in)
		var pe *ProtocolError
		require.True(t, errors.As(err, &pe), "%q: %T is not a *ProtocolError", in, err)
		require.Equal(t, want, err.Error(), "%q", in)

		// Every prefix is incomplete or already the same error: the error
		// comes as soon as the bytes prove it, and never a different one.
		step := 1
		if len(in) > 300 {
			step = 997
		}
		for i := len(in) - 1; i >= 0; i -= step {
			_, n, perr := parseCopy(t, in[:i])
			require.Zero(t, n)
			if perr != nil {
				require.Equal(t, want, perr.Error(), "prefix %q of %q", in[:i], in)
			}
		}
	}

	// Multibulk count.
	f("*abc", "invalid multibulk length")
	f("*abc\r\n", "invalid multibulk length")
	f("*\r\n", "invalid multibulk length")
	f("*\n", "invalid multibulk length")
	f("*1x", "invalid multibulk length")
	f("*1\n", "invalid multibulk length")
	f("*1\r\r", "invalid multibulk length")
	f("*1\rx\n", "invalid multibulk length")
	f("*01\r\n", "invalid multibulk length")
	f("*00", "invalid multibulk length")
	f("*+1\r\n", "invalid multibulk length")
	f("*-5", "invalid multibulk length")
	f("*-5\r\n", "invalid multibulk length")
	f("*-0\r\n", "invalid multibulk length")
	f("*--1\r\n", "invalid multibulk length")
	f("*-\r\n", "invalid multibulk length")
	f("*-12\r\n", "invalid multibulk length")
	f("*-1x", "invalid multibulk length")
	f("* 1\r\n", "invalid multibulk length")
	f("*1 \r\n", "invalid multibulk length")
	f("*1025", "too many arguments")
	f("*1025\r\n", "too many arguments")
	f("*2147483648\r\n", "too many arguments")
	f("*99999999999999999999\r\n", "too many arguments")

	// Bulk length.
	f("*1\r\n$abc", "invalid bulk length")
	f("*1\r\n$abc\r\n", "invalid bulk length")
	f("*1\r\n$-1", "invalid bulk length")
	f("*1\r\n$-1\r\n", "invalid bulk length")
	f("*1\r\n$-0\r\n", "invalid bulk length")
	f("*1\r\n$\r\n", "invalid bulk length")
	f("*1\r\n$+3\r\n", "invalid bulk length")
	f("*1\r\n$03\r\n", "invalid bulk length")
	f("*1\r\n$3x\r\n", "invalid bulk length")
	f("*1\r\n$3\n", "invalid bulk length")
	f("*1\r\n$3\rx", "invalid bulk length")
	f("*1\r\n$99999999999999999999", "invalid bulk length")
	f("*1\r\n$99999999999999999999\r\n", "invalid bulk length")
	f("*1\r\n$9223372036854775808\r\n", "invalid bulk length")
	f("*1\r\n$65537", "invalid bulk length") // > MaxRequestBytes, like proto-max-bulk-len
	f("*1\r\n$65536\r\n", "request too large")
	f("*2\r\n$40000\r\n"+strings.Repeat("x", 40000)+"\r\n$40000\r\n", "request too large")

	// Element type.
	f("*1\r\n+foo", "expected '$', got '+'")
	f("*1\r\n:1\r\n", "expected '$', got ':'")
	f("*1\r\n*1\r\n", "expected '$', got '*'")
	f("*1\r\n'", "expected '$', got '''")
	f("*1\r\n\r\n", `expected '$', got '\x0d'`)
	f("*1\r\n\x00", `expected '$', got '\x00'`)
	f("*1\r\n\xff", `expected '$', got '\xff'`)

	// Bulk payload not followed by exactly "\r\n".
	f("*1\r\n$3\r\nfoox\r\n", "invalid bulk length")
	f("*1\r\n$3\r\nfoox", "invalid bulk length")
	f("*1\r\n$3\r\nfoo\rx", "invalid bulk length")
	f("*1\r\n$3\r\nfoo\n", "invalid bulk length")
	f("*1\r\n$3\r\nfoo\n\r", "invalid bulk length")
	f("*1\r\n$0\r\nx", "invalid bulk length")

	// A truncated request continued by garbage.
	f("*2\r\n$3\r\nfoo\r\nGARBAGE\r\n", "expected '$', got 'G'")
	f("*3\r\n$3\r\nSET\r\n$1\r\nkjunk\r\n", "invalid bulk length")
	f("*2\r\n$5\r\nADMIT\r\n$5\r\nde*1\r\n$4\r\nPING\r\n", "invalid bulk length")
	f("*2\r\n$5\r\nADMIT\r\n*1\r\n$4\r\nPING\r\n", "expected '$', got '*'")
	f("*2\r\n$5\r\nADMIT\r\n\x00\xff\xfe", `expected '$', got '\x00'`)

	// Inline.
	f(strings.Repeat("a", MaxRequestBytes), "too big inline request")
	f(strings.Repeat("a", MaxRequestBytes)+"\r\n", "too big inline request")
	f("\x00"+strings.Repeat("\xff", MaxRequestBytes+10), "too big inline request")
	f(`SET "foo`+"\r\n", "unbalanced quotes in request")
	f(`SET 'foo`+"\r\n", "unbalanced quotes in request")
	f(`SET "foo"bar`+"\r\n", "unbalanced quotes in request")
	f(`SET 'foo'"`+"\r\n", "unbalanced quotes in request")
	f(`SET "a\"`+"\r\n", "unbalanced quotes in request")
	f(`SET "a\`+"\r\n", "unbalanced quotes in request")
	f(`SET 'a\'`+"\r\n", "unbalanced quotes in request")
	f("\"\r\n", "unbalanced quotes in request")
	f("'\n", "unbalanced quotes in request")
	f("\"a\"\x00\r\n", "unbalanced quotes in request")
	// A line's tokens are looked at once it ends, as Redis does: before
	// that, only its length can be an error.
	f(`"a"b `+strings.Repeat("x", MaxRequestBytes), "too big inline request")
	f(strings.Repeat("a ", MaxArgs+1)+"\r\n", "too many arguments")
}

func TestParseLimits(t *testing.T) {
	// A multibulk frame of exactly MaxRequestBytes, and one byte more.
	frame := func(size int) string { return multibulk(strings.Repeat("x", size)) }
	fit := MaxRequestBytes - len(frame(0)) - 4 // the length takes 5 digits, not 1
	require.Equal(t, MaxRequestBytes, len(frame(fit)))
	args, n, err := parseCopy(t, frame(fit))
	require.NoError(t, err)
	require.Equal(t, MaxRequestBytes, n)
	require.Len(t, args, 1)
	_, _, err = parseCopy(t, frame(fit+1))
	require.EqualError(t, err, "request too large")
	// The frame is refused as soon as its length line is complete.
	_, _, err = parseCopy(t, "*1\r\n$"+strconv.Itoa(fit+1)+"\r\n")
	require.EqualError(t, err, "request too large")

	// The limit holds for the frame as a whole.
	two := multibulk(strings.Repeat("a", MaxRequestBytes/2), strings.Repeat("b", MaxRequestBytes/2))
	_, _, err = parseCopy(t, two)
	require.EqualError(t, err, "request too large")

	// MaxArgs arguments, and one more.
	many := make([]string, MaxArgs)
	args, _, err = parseCopy(t, multibulk(many...))
	require.NoError(t, err)
	require.Equal(t, many, args)
	_, _, err = parseCopy(t, multibulk(append(many, "")...))
	require.EqualError(t, err, "too many arguments")

	// An inline line of exactly MaxRequestBytes with its line end.
	line := strings.Repeat("a", MaxRequestBytes-1)
	args, n, err = parseCopy(t, line+"\n")
	require.NoError(t, err)
	require.Equal(t, MaxRequestBytes, n)
	require.Equal(t, []string{line}, args)
	args, n, err = parseCopy(t, line[1:]+"\r\n")
	require.NoError(t, err)
	require.Equal(t, MaxRequestBytes, n)
	require.Equal(t, []string{line[1:]}, args)
	// One byte more is refused, even before the line end arrives.
	_, _, err = parseCopy(t, line+"\r\n")
	require.EqualError(t, err, "too big inline request")
	_, _, err = parseCopy(t, line+"a")
	require.EqualError(t, err, "too big inline request")

	// An inline line of MaxArgs tokens, and one more.
	args, _, err = parseCopy(t, strings.Repeat("a ", MaxArgs)+"\r\n")
	require.NoError(t, err)
	require.Len(t, args, MaxArgs)
	_, _, err = parseCopy(t, strings.Repeat("a ", MaxArgs)+"a\r\n")
	require.EqualError(t, err, "too many arguments")
}

// streamCommand is one command of a test stream: its bytes and its args.
type streamCommand struct {
	raw  string
	args []string
}

// mixedCommand returns the i-th command of a stream mixing every request
// shape.
func mixedCommand(i int) streamCommand {
	id := fmt.Sprintf("call-%04d", i)
	switch i % 10 {
	case 0:
		a := []string{"ADMIT", "demo", "CALL", callID, "PRIORITY", "high"}
		return streamCommand{multibulk(a...), a}
	case 1:
		return streamCommand{"ADMIT demo CALL " + id + "\r\n", []string{"ADMIT", "demo", "CALL", id}}
	case 2:
		return streamCommand{`SET "key \x41\n" 'it\'s' "" ` + id + "\n", []string{"SET", "key A\n", "it's", "", id}}
	case 3:
		a := []string{"ECHO", "\r\n\x00\xff" + id, ""}
		return streamCommand{multibulk(a...), a}
	case 4:
		return streamCommand{"\r\n", []string{}}
	case 5:
		return streamCommand{"*0\r\n", []string{}}
	case 6:
		return streamCommand{"*-1\r\n", []string{}}
	case 7:
		return streamCommand{"  PING \t " + id + "\t\n", []string{"PING", id}}
	case 8:
		return streamCommand{"\x00\xff" + id + " \"\\x00\"\r\n", []string{"\x00\xff" + id, "\x00"}}
	default:
		a := []string{"RELEASE", "demo", id, strings.Repeat("s", i%200)}
		return streamCommand{multibulk(a...), a}
	}
}

// mixedStream returns count mixed commands and their concatenation.
func mixedStream(count int) ([]streamCommand, string) {
	cmds := make([]streamCommand, count)
	var b strings.Builder
	for i := range cmds {
		cmds[i] = mixedCommand(i)
		b.WriteString(cmds[i].raw)
	}
	return cmds, b.String()
}

func TestParsePipelined(t *testing.T) {
	cmds, stream := mixedStream(1000)
	buf := []byte(stream)
	dst := make([][]byte, 0, 2) // grows once, then is reused
	off := 0
	for i, c := range cmds {
		args, n, err := Parse(buf[off:], dst)
		require.NoError(t, err, "command %d", i)
		require.Equal(t, len(c.raw), n, "command %d: %q", i, c.raw)
		checkArgsInside(t, buf[off:], n, args)
		require.Equal(t, c.args, argStrings(args), "command %d: %q", i, c.raw)
		dst = args[:0]
		off += n
	}
	require.Equal(t, len(buf), off)
	args, n, err := Parse(buf[off:], dst)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Empty(t, args)
}

// fed is what a connection makes of a byte stream: the commands parsed,
// where each ended in the stream, how many bytes had been received when it
// was parsed, and the protocol error that ended the stream, if any.
type fed struct {
	cmds [][]string
	ends []int
	at   []int
	err  error
}

// feed delivers stream in pieces cut at the given offsets the way the
// server does: after each piece it parses every complete command, and keeps
// the unconsumed bytes for the next piece.
func feed(stream []byte, cuts ...int) fed {
	var r fed
	var dst [][]byte
	var buf []byte
	consumed, prev := 0, 0
	for _, cut := range append(cuts, len(stream)) {
		// A fresh copy, as a socket read would give: Parse may have
		// unescaped consumed inline commands in place.
		buf = append(append([]byte(nil), buf...), stream[prev:cut]...)
		prev = cut
		for {
			args, n, err := Parse(buf, dst)
			if err != nil {
				r.err = err
				return r
			}
			if n == 0 {
				break
			}
			consumed += n
			r.cmds = append(r.cmds, argStrings(args))
			r.ends = append(r.ends, consumed)
			r.at = append(r.at, cut)
			buf = buf[n:]
			dst = args[:0]
		}
	}
	return r
}

func TestParseSplit(t *testing.T) {
	_, mixed := mixedStream(20)
	_, few := mixedStream(5)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	for name, stream := range map[string]string{
		"mixed":            mixed,
		"binary":           multibulk("ECHO", string(binary)) + `ECHO "\x00\xff\"" '\'\\'` + "\r\n" + multibulk("X", "\r\n\r\n"),
		"ends in garbage":  few + "*2\r\n$3\r\nfoo\r\n+bar\r\n",
		"bad payload end":  "PING\r\n" + "*1\r\n$3\r\nfoox\r\n",
		"unbalanced quote": "PING\r\n" + `SET "a"b` + "\r\nPING\r\n",
		"too many args":    "PING\n*1025\r\n",
		"inline too big":   "PING\n" + strings.Repeat("x", MaxRequestBytes+5),
		"incomplete tail":  mixed + "*3\r\n$3\r\nSET\r\n$1\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			in := []byte(stream)
			whole := feed(in)
			require.NotEmpty(t, whole.cmds)
			cuts := len(in) + 1
			step := 1
			if len(in) > 5000 {
				step = 127 // the 64 KiB line: every split point is too slow
			}

			// Cut in two at every point.
			for cut := 0; cut < cuts; cut += step {
				got := feed(in, cut)
				require.Equal(t, whole.cmds, got.cmds, "cut at %d", cut)
				require.Equal(t, whole.ends, got.ends, "cut at %d", cut)
				require.Equal(t, whole.err, got.err, "cut at %d", cut)
			}

			// Byte by byte: each command is parsed exactly when its last
			// byte arrives, never before, never after.
			if len(in) > 5000 {
				return
			}
			each := make([]int, len(in))
			for i := range each {
				each[i] = i
			}
			got := feed(in, each...)
			require.Equal(t, whole.cmds, got.cmds)
			require.Equal(t, whole.ends, got.at, "parsed when the last byte arrived")
			require.Equal(t, whole.err, got.err)
		})
	}
}

func TestParseZeroCopy(t *testing.T) {
	// Multibulk args alias buf, capped, and buf is left untouched.
	in := "*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\nrest"
	buf := []byte(in)
	dst := make([][]byte, 0, 8)
	args, n, err := Parse(buf, dst)
	require.NoError(t, err)
	require.Equal(t, len(in)-4, n)
	require.Equal(t, 8, argOffset(buf, args[0]))
	require.Equal(t, 17, argOffset(buf, args[1]))
	require.Equal(t, 3, cap(args[0]))
	require.Equal(t, in, string(buf))
	require.Same(t, unsafe.SliceData(dst[:1]), unsafe.SliceData(args), "args must be built in dst")

	// Appending to an arg cannot overwrite what follows it.
	_ = append(args[0], "XX"...)
	require.Equal(t, in, string(buf))

	// Plain inline args alias buf too, untouched.
	in = "ADMIT  demo\tCALL c1\r\nrest"
	buf = []byte(in)
	args, n, err = Parse(buf, dst)
	require.NoError(t, err)
	require.Equal(t, len(in)-4, n)
	require.Equal(t, []int{0, 7, 12, 17}, []int{argOffset(buf, args[0]), argOffset(buf, args[1]), argOffset(buf, args[2]), argOffset(buf, args[3])})
	require.Equal(t, in, string(buf))

	// Quoted inline args are unescaped in place, inside the line only.
	in = `SET "a\x41\"b" 'c\'d' e` + "\r\n" + `"next\x41"`
	buf = []byte(in)
	args, n, err = Parse(buf, dst)
	require.NoError(t, err)
	require.Equal(t, []string{"SET", `aA"b`, "c'd", "e"}, argStrings(args))
	checkArgsInside(t, buf, n, args)
	require.Equal(t, in[n:], string(buf[n:]), "bytes after the command are untouched")
	require.Equal(t, 4, argOffset(buf, args[1]), "unescaped where the token starts")
}

func TestParseAllocs(t *testing.T) {
	f := func(name, in string, want int) {
		t.Helper()
		orig := []byte(in)
		buf := make([]byte, len(orig))
		dst := make([][]byte, 0, 16)
		allocs := testing.AllocsPerRun(200, func() {
			copy(buf, orig) // quoted inline args were unescaped in place
			args, n, err := Parse(buf, dst)
			if err != nil || n != len(in) || len(args) != want {
				panic(fmt.Sprintf("%s: %d args, n=%d, err=%v", name, len(args), n, err))
			}
		})
		require.Zero(t, allocs, name)
	}
	f("multibulk", multibulk("ADMIT", "demo", "CALL", callID, "PRIORITY", "high"), 6)
	f("inline", "ADMIT demo CALL "+callID+" PRIORITY high\r\n", 6)
	f("inline quoted", `ADMIT "demo" CALL '`+callID+`' ACCOUNT "a\x41\n"`+"\r\n", 6)
	f("empty", "*0\r\n", 0)

	// A protocol error allocates nothing either, except "expected '$'".
	buf := []byte("*1\r\n$-1\r\n")
	require.Zero(t, testing.AllocsPerRun(100, func() { _, _, _ = Parse(buf, nil) }))
}

// benchParse parses every command of in once per iteration.
func benchParse(b *testing.B, in string) {
	orig := []byte(in)
	buf := make([]byte, len(orig))
	copy(buf, orig)
	dst := make([][]byte, 0, 16)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for off := 0; off < len(buf); {
			args, n, err := Parse(buf[off:], dst)
			if err != nil || n == 0 {
				b.Fatalf("n=%d err=%v", n, err)
			}
			dst = args[:0]
			off += n
		}
	}
}

func BenchmarkParseMultibulk(b *testing.B) {
	benchParse(b, multibulk("ADMIT", "demo", "CALL", callID, "PRIORITY", "high"))
}

func BenchmarkParseInline(b *testing.B) {
	benchParse(b, "ADMIT demo CALL "+callID+" PRIORITY high\r\n")
}

func BenchmarkParseInlineQuoted(b *testing.B) {
	// Each iteration restores the escaped bytes first; the copy is included.
	orig := []byte(`ADMIT "demo" CALL '` + callID + `' ACCOUNT "a\x41\n"` + "\r\n")
	buf := make([]byte, len(orig))
	dst := make([][]byte, 0, 16)
	b.SetBytes(int64(len(orig)))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, orig)
		if _, n, err := Parse(buf, dst); err != nil || n != len(buf) {
			b.Fatalf("n=%d err=%v", n, err)
		}
	}
}

func BenchmarkParsePipelined100(b *testing.B) {
	benchParse(b, strings.Repeat(multibulk("ADMIT", "demo", "CALL", callID, "PRIORITY", "high"), 100))
}
