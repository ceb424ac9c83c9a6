package client

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A server that hangs up makes netpoll close the connection and free its
// send buffer on its poller: the next command fails with ErrClosed before
// asking netpoll for room (a Malloc into the freed buffer panicked in
// netpoll and brought down a node spilling to a member that had closed
// the connection).
func TestCommandAfterTheServerHungUp(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	hang := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		<-hang
		_ = c.Close()
	}()
	ctx := context.Background()
	c, err := Dial(ctx, l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	close(hang)
	require.Eventually(t, func() bool { return !c.nc.IsActive() }, 5*time.Second, time.Millisecond)
	_, err = c.Do(ctx, []byte("PING"))
	require.ErrorIs(t, err, ErrClosed)
	p := c.Pipeline()
	p.AppendString("PING")
	require.ErrorIs(t, p.Exec(ctx), ErrClosed)
	require.ErrorIs(t, c.Split().Send([]byte("*1\r\n$4\r\nPING\r\n")), ErrClosed)
}
