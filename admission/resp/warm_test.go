package resp

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The warm pass of a long read only reads it: inline commands with quoted
// arguments, which Parse unescapes in place, are parsed once, by Handle
// (parsed twice, they read "unbalanced quotes", or arguments with stray
// bytes).
func TestWarmLeavesInputAlone(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	pings := strings.Repeat("PING\r\n", 20) // a read past warmFrom
	pongs := strings.Repeat("+PONG\r\n", 20)
	require.GreaterOrEqual(t, len(`ECHO "x"`+"\r\n"+pings), warmFrom)
	f(`ECHO "hello world"`+"\r\n"+pings, bulk("hello world")+pongs)
	f(`ECHO "ab" "cd"`+"\r\n"+pings, "-ERR wrong number of arguments for 'echo' command\r\n"+pongs)
	f(`ECHO "a\x41\"b" 'c\'d'`+"\r\n"+pings, "-ERR wrong number of arguments for 'echo' command\r\n"+pongs)
	f(`ECHO 'c\'d'`+"\r\n"+`ECHO "a\x41\"b"`+"\r\n"+pings, bulk(`c'd`)+bulk(`aA"b`)+pongs)
	f(`ADMIT demo CALL "c\x41"`+"\r\n"+`ADMIT demo CALL 'c\x41'`+"\r\n"+pings, dec(1, "OK", 0, 99)+dec(1, "OK", 0, 98)+pongs)
	f(cmd("RELEASE", "demo", "cA"), ":1\r\n")
	f(cmd("RELEASE", "demo", `c\x41`), ":1\r\n")

	// warm itself writes nothing, whatever it reads.
	for _, in := range []string{
		`ECHO "hello world"` + "\r\n" + pings,
		`ADMIT demo CALL "a\x41"` + "\r\n" + cmd("ADMIT", "demo", "CALL", "b") + `REGISTER demo 's\'1'` + "\r\n" + pings,
		`ECHO "unbalanced` + "\r\n" + pings,
	} {
		buf := []byte(in)
		c.h.warm(c.cs, buf)
		require.Equal(t, in, string(buf))
	}
}

// TestNoWarmBeforeAuth: a read of a client that has not authenticated to a
// node with a password is refused command by command, and its keys are
// not warmed (the warm pass would take a service's lock and probe the
// index for keys of the client's choosing); once it has, they are.
func TestNoWarmBeforeAuth(t *testing.T) {
	c := newTestConn(t, "s3cret")
	var pipe strings.Builder
	for i := range 16 {
		pipe.WriteString(cmd("REGISTER", "demo", "sub-"+strings.Repeat("x", i)))
	}
	got, _, _ := c.send(pipe.String())
	require.Equal(t, strings.Repeat("-NOAUTH Authentication required.\r\n", 16), got)
	require.Zero(t, cap(c.cs.warmKeys), "nothing warmed")
	c.expect(t)(cmd("AUTH", "s3cret"), "+OK\r\n")
	c.send(pipe.String())
	require.GreaterOrEqual(t, cap(c.cs.warmKeys), 16, "warmed once authenticated")
}
