package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
	"github.com/capsgate/capsgate/cmd/capsgate/node"
)

// devNode starts an in-process `capsgate --dev` on free loopback ports
// (service demo: 1000 CAPS, burst 100, 500 sessions) until the test ends.
func devNode(t testing.TB) string {
	t.Helper()
	cfg, err := node.Load([]string{"--dev", "--resp-addr", farm.FreeAddr(t), "--admin-addr", farm.FreeAddr(t),
		"--gossip-addr", farm.FreeAddr(t), "--data-dir", filepath.Join(t.TempDir(), "data")}, io.Discard)
	require.NoError(t, err)
	n, err := node.New(cfg, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	require.NoError(t, n.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, n.Stop(ctx))
	})
	return n.RESPAddr()
}

func newClient(t testing.TB, addr string) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.Config{Addr: addr})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestAgainstDevNode(t *testing.T) {
	addr := devNode(t)
	c := newClient(t, addr)
	ctx := context.Background()

	t.Run("burst then CAPS", func(t *testing.T) {
		conn, err := c.Get(ctx)
		require.NoError(t, err)
		defer c.Put(conn)
		// 300 ADMITs in one round trip: the bucket's burst of 100 (plus
		// what refills while they are decided), the rest CAPS.
		p := conn.Pipeline()
		for range 300 {
			p.AppendString("ADMIT", "demo")
		}
		require.NoError(t, p.Exec(ctx))
		require.Equal(t, 300, p.Len())
		admitted := 0
		for i := range p.Len() {
			d, err := p.Reply(i).Decision()
			require.NoError(t, err)
			if d.Admitted {
				require.Equal(t, client.Decision{Admitted: true, Reason: "OK", Remaining: d.Remaining}, d)
				admitted++
				continue
			}
			require.Equal(t, "CAPS", d.Reason)
			require.Positive(t, d.RetryAfterMs)
		}
		require.GreaterOrEqual(t, admitted, 100)
		require.LessOrEqual(t, admitted, 110)
		d, err := c.Admit(ctx, "demo", client.AdmitOptions{Priority: client.PriorityEmergency})
		require.NoError(t, err)
		require.Equal(t, client.Decision{Admitted: true, Reason: "OK", Remaining: -1}, d, "emergency passes an empty bucket")
	})

	t.Run("unlicensed", func(t *testing.T) {
		d, err := c.Admit(ctx, "nosuch", client.AdmitOptions{})
		require.NoError(t, err)
		require.False(t, d.Admitted)
		require.Equal(t, "UNLICENSED", d.Reason)
	})

	t.Run("release", func(t *testing.T) {
		time.Sleep(150 * time.Millisecond) // the bucket refills
		d, err := c.Admit(ctx, "demo", client.AdmitOptions{Call: "call-1", Account: "acme"})
		require.NoError(t, err)
		require.True(t, d.Admitted, "%+v", d)
		again, err := c.Admit(ctx, "demo", client.AdmitOptions{Call: "call-1", Account: "acme"})
		require.NoError(t, err)
		require.Equal(t, d, again, "a repeat of an open call gets the first decision")
		ok, err := c.Release(ctx, "demo", "call-1", 0)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = c.Release(ctx, "demo", "call-1", 0)
		require.NoError(t, err)
		require.False(t, ok)
	})

	t.Run("register", func(t *testing.T) {
		d, err := c.Register(ctx, "demo", "alice", time.Minute)
		require.NoError(t, err)
		require.Equal(t, client.Decision{Admitted: true, Reason: "OK", Remaining: 9999}, d)
		d, err = c.Register(ctx, "demo", "alice", 0)
		require.NoError(t, err)
		require.Equal(t, int64(9999), d.Remaining, "a refresh does not count twice")
		ok, err := c.Deregister(ctx, "demo", "alice")
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = c.Deregister(ctx, "demo", "alice")
		require.NoError(t, err)
		require.False(t, ok)
	})

	t.Run("consume", func(t *testing.T) {
		d, err := c.Consume(ctx, "demo", "acme", 10, "bill-1")
		require.NoError(t, err)
		require.True(t, d.Admitted)
		left := d.Remaining
		d, err = c.Consume(ctx, "demo", "acme", 10, "bill-1")
		require.NoError(t, err)
		require.Equal(t, left, d.Remaining, "a repeated ID is not charged twice")
		q, err := c.Quota(ctx, "demo")
		require.NoError(t, err)
		require.Equal(t, "10000", q["subscribers_licensed"])
		require.Equal(t, strconv.FormatInt(left, 10), q["tokens_left"])
	})

	t.Run("errors carry the server's text", func(t *testing.T) {
		_, err := c.Do(ctx, []byte("NOSUCH"))
		var se *client.ServerError
		require.ErrorAs(t, err, &se)
		require.Equal(t, "ERR unknown command 'NOSUCH'", se.Msg)
		require.Equal(t, "ERR", se.Prefix())
		_, err = c.Admit(ctx, "bad name!", client.AdmitOptions{})
		require.EqualError(t, err, "ERR invalid service name")
		_, err = c.Do(ctx, []byte("admit"))
		require.EqualError(t, err, "ERR wrong number of arguments for 'admit' command")
		r, err := c.Do(ctx, []byte("PING"))
		require.NoError(t, err, "the connection goes on after error replies")
		require.Equal(t, "PONG", string(r.Str))
	})

	t.Run("deadline", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
		defer cancel()
		time.Sleep(time.Millisecond)
		_, err := c.Admit(dctx, "demo", client.AdmitOptions{})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		_, err = c.Admit(ctx, "demo", client.AdmitOptions{Priority: client.PriorityEmergency})
		require.NoError(t, err, "the pool replaces what a deadline broke")
	})
}

func TestPipelineAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	addr := devNode(t)
	conn, err := client.Dial(context.Background(), addr)
	require.NoError(t, err)
	defer conn.Close()
	frame := client.AppendCommand(nil, "ADMIT", "demo")
	p := conn.Pipeline()
	ctx := context.Background()
	run := func() {
		for range 32 {
			p.AppendFrame(frame, 1)
		}
		if err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range p.Len() {
			if _, err := p.Reply(i).Decision(); err != nil {
				t.Fatal(err)
			}
		}
	}
	run()
	require.Zero(t, testing.AllocsPerRun(100, run))
	admit := func() {
		if _, err := conn.Admit(ctx, "demo", client.AdmitOptions{Priority: client.PriorityHigh}); err != nil {
			t.Fatal(err)
		}
	}
	admit()
	require.Zero(t, testing.AllocsPerRun(100, admit))
}

func TestClosedConn(t *testing.T) {
	addr := devNode(t)
	conn, err := client.Dial(context.Background(), addr)
	require.NoError(t, err)
	require.NoError(t, conn.Close())
	_, err = conn.Admit(context.Background(), "demo", client.AdmitOptions{})
	require.True(t, errors.Is(err, client.ErrClosed), "%v", err)
	c := newClient(t, addr)
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	_, err = c.Admit(context.Background(), "demo", client.AdmitOptions{})
	require.ErrorIs(t, err, client.ErrClosed)
}

// A Client whose every connection is in use fails a call whose context
// ends while it waits with ErrPoolBusy (the wait was on this side), and
// serves it once a connection is given back.
func TestPoolBusy(t *testing.T) {
	addr := devNode(t)
	c, err := client.New(context.Background(), client.Config{Addr: addr, PoolSize: 1})
	require.NoError(t, err)
	defer c.Close()
	held, err := c.Get(context.Background())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.Do(ctx, []byte("PING"))
	require.ErrorIs(t, err, client.ErrPoolBusy)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	c.Put(held)
	r, err := c.Do(context.Background(), []byte("PING"))
	require.NoError(t, err)
	require.Equal(t, "PONG", string(r.Str))
}

func BenchmarkPipeline64(b *testing.B) {
	addr := devNode(b)
	conn, err := client.Dial(context.Background(), addr)
	require.NoError(b, err)
	defer conn.Close()
	frame := client.AppendCommand(nil, "ADMIT", "demo")
	p := conn.Pipeline()
	b.ReportAllocs()
	for b.Loop() {
		for range 64 {
			p.AppendFrame(frame, 1)
		}
		if err := p.Exec(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(64*b.N), "ns/command")
}

func TestStream(t *testing.T) {
	addr := devNode(t)
	conn, err := client.Dial(context.Background(), addr)
	require.NoError(t, err)
	// A pipeline's deadline first: Split must not keep it.
	_, err = conn.Do(context.Background(), []byte("PING"))
	require.NoError(t, err)
	s := conn.Split()
	s.SetTimeout(0)
	ping := client.AppendCommand(nil, "PING")
	// One request, then three in one write; replies in order.
	require.NoError(t, s.Send(ping))
	require.NoError(t, s.Send(append(append(client.AppendCommand(nil, "ECHO", "a"), client.AppendCommand(nil, "ECHO", "b")...), ping...)))
	for _, want := range []string{"PONG", "a", "b", "PONG"} {
		r, err := s.Receive()
		require.NoError(t, err)
		require.Equal(t, want, string(r.Str))
	}
	// With no timeout, Receive waits until the stream is closed.
	got := make(chan error, 1)
	go func() { _, err := s.Receive(); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("Receive returned %v with nothing sent", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, s.Close())
	select {
	case err := <-got:
		require.Error(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close does not end a Receive")
	}
	require.Error(t, s.Send(ping))

	// With a timeout, Receive gives up.
	conn, err = client.Dial(context.Background(), addr)
	require.NoError(t, err)
	defer conn.Close()
	s = conn.Split()
	s.SetTimeout(50 * time.Millisecond)
	_, err = s.Receive()
	require.Error(t, err)
}
