package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
)

func TestLimitServer(t *testing.T) {
	for _, loops := range []int{0, 1} {
		t.Run(fmt.Sprint("loops=", loops), func(t *testing.T) { testLimitServer(t, loops) })
	}
}

func testLimitServer(t *testing.T, loops int) {
	l := NewLimit("127.0.0.1:0")
	l.Loops = loops
	require.NoError(t, l.Start())
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, l.Stop(ctx))
	}()

	// Pipelined commands split byte by byte: one reply per command.
	c, err := net.Dial("tcp", l.Addr())
	require.NoError(t, err)
	defer c.Close()
	in := []byte(strings.Repeat("*2\r\n$5\r\nADMIT\r\n$5\r\nbench\r\n", 50) + "PING\r\n")
	for i := range in {
		_, err := c.Write(in[i : i+1])
		require.NoError(t, err)
	}
	want := bytes.Repeat([]byte(LimitReply), 51)
	got := make([]byte, len(want))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))

	// Through the client, in one pipeline.
	conn, err := client.Dial(context.Background(), l.Addr())
	require.NoError(t, err)
	defer conn.Close()
	d, err := conn.Admit(context.Background(), "bench", client.AdmitOptions{})
	require.NoError(t, err)
	require.Equal(t, client.Decision{Admitted: true, Reason: "OK", Remaining: 1}, d)

	// A malformed frame: an error, then the connection is closed.
	_, err = c.Write([]byte("*1\r\n:1\r\n"))
	require.NoError(t, err)
	rest, err := io.ReadAll(c)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(rest), "-ERR Protocol error"), "%q", rest)
}

func TestServeLimitMainArgs(t *testing.T) {
	for _, args := range [][]string{{"--loops", "257"}, {"--loops", "-1"}, {"--addr", "127.0.0.1:0", "extra"}, {"--nope"}} {
		require.Equal(t, 2, ServeLimitMain(t.Context(), args), "%q", args)
	}
	require.Equal(t, 1, ServeLimitMain(t.Context(), []string{"--addr", "127.0.0.1:99999"}), "cannot listen")
}
