package node

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// limitedServer serves "ok" behind a connLimit of max connections, over
// TLS when tc is not nil, as Start does.
func limitedServer(t *testing.T, max int, tc *tls.Config) (addr string, l *connLimit, opened func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l = newConnLimit(ln, max)
	gauge := make(chan int, 1)
	gauge <- 0
	l.count = func(open int) { <-gauge; gauge <- open }
	var served net.Listener = l
	if tc != nil {
		served = tls.NewListener(l, tc)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		// A minute: the silent connections of a test outlast a slow machine.
		ReadHeaderTimeout: time.Minute, MaxHeaderBytes: adminMaxHeaderBytes, ConnState: l.ConnState,
	}
	go func() { _ = srv.Serve(served) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), l, func() int { n := <-gauge; gauge <- n; return n }
}

// idleConns is how many connections l holds idle between requests.
func idleConns(l *connLimit) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.idle)
}

// getOn sends one keep-alive GET /healthz on c and requires 200.
func getOn(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	_, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: capsgate\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(r, nil)
	require.NoError(t, err)
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// requireClosed requires that the server has closed c.
func requireClosed(t *testing.T, c net.Conn) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	n, err := c.Read(make([]byte, 1))
	require.Equal(t, 0, n)
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "closed, not silent: %v", err)
}

// TestAdminConnsReclaimIdle: at the bound, a new connection closes the one
// idle longest, and is served.
func TestAdminConnsReclaimIdle(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[withTLS], func(t *testing.T) {
			var tc *tls.Config
			dial := func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
			if withTLS {
				certPEM, keyPEM := selfSigned(t)
				cert, err := tls.X509KeyPair(certPEM, keyPEM)
				require.NoError(t, err)
				tc = &tls.Config{Certificates: []tls.Certificate{cert}}
				dial = func(addr string) (net.Conn, error) {
					return tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
				}
			}
			addr, l, opened := limitedServer(t, 2, tc)
			reclaimed, refused := adminConnsClosed.Get(), adminConnsRefused.Get()

			var conns []net.Conn
			var readers []*bufio.Reader
			for i := 0; i < 2; i++ {
				c, err := dial(addr)
				require.NoError(t, err)
				defer c.Close()
				conns, readers = append(conns, c), append(readers, bufio.NewReader(c))
				getOn(t, c, readers[i])
				require.Eventually(t, func() bool { return idleConns(l) == i+1 }, 10*time.Second, time.Millisecond)
			}
			require.Equal(t, 2, opened())
			// The first one is used again: the second, opened later, is now
			// the longest idle.
			getOn(t, conns[0], readers[0])
			require.Eventually(t, func() bool { return idleConns(l) == 2 }, 10*time.Second, time.Millisecond)

			third, err := dial(addr)
			require.NoError(t, err)
			defer third.Close()
			getOn(t, third, bufio.NewReader(third))
			requireClosed(t, conns[1])
			getOn(t, conns[0], readers[0])
			require.Equal(t, uint64(1), adminConnsClosed.Get()-reclaimed)
			require.Equal(t, uint64(0), adminConnsRefused.Get()-refused)
			require.Equal(t, 2, opened())

			third.Close()
			conns[0].Close()
			require.Eventually(t, func() bool { return opened() == 0 }, 10*time.Second, time.Millisecond)
			require.Equal(t, 0, idleConns(l))
		})
	}
}

// TestAdminConnsRefuseWhenBusy: at the bound with no connection idle, a new
// one is closed at once and counted, and one closing makes room again.
func TestAdminConnsRefuseWhenBusy(t *testing.T) {
	addr, l, opened := limitedServer(t, 2, nil)
	reclaimed, refused := adminConnsClosed.Get(), adminConnsRefused.Get()

	// Two connections that send nothing: waiting for their header, not idle.
	var silent []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		silent = append(silent, c)
	}
	require.Eventually(t, func() bool { return opened() == 2 }, 10*time.Second, time.Millisecond)

	for i := 1; i <= 3; i++ {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		requireClosed(t, c)
		c.Close()
		require.Equal(t, uint64(i), adminConnsRefused.Get()-refused)
	}
	require.Equal(t, uint64(0), adminConnsClosed.Get()-reclaimed)
	require.Equal(t, 2, opened())
	require.Equal(t, 0, idleConns(l))

	silent[0].Close()
	require.Eventually(t, func() bool { return opened() == 1 }, 10*time.Second, time.Millisecond)
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	getOn(t, c, bufio.NewReader(c))
	require.Equal(t, uint64(3), adminConnsRefused.Get()-refused)
}

// TestAdminConnsHeaderBound: a header past adminMaxHeaderBytes is answered
// 431 and its connection closed; one within it is served.
func TestAdminConnsHeaderBound(t *testing.T) {
	addr, _, _ := limitedServer(t, 4, nil)
	for _, tc := range []struct {
		size int
		want int
	}{{adminMaxHeaderBytes / 2, http.StatusOK}, {adminMaxHeaderBytes + 8192, http.StatusRequestHeaderFieldsTooLarge}} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		req := "GET /x HTTP/1.1\r\nHost: capsgate\r\nX-Pad: " + strings.Repeat("a", tc.size) + "\r\n\r\n"
		go func() { _, _ = io.WriteString(c, req) }()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		require.Equal(t, tc.want, resp.StatusCode, tc.size)
	}
}

// TestAdminPortBounded: a started node's admin port holds admin.max_conns
// connections: the hook and the listener are the node's.
func TestAdminPortBounded(t *testing.T) {
	n := startNode(t, "--dev", "--admin-max-conns", "1")
	addr := n.AdminAddr()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	healthy := func() bool {
		resp, err := client.Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	refused := adminConnsRefused.Get()
	silent, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer silent.Close()
	released := func() bool { return adminConns.Get() == 1 } // the silent one
	require.Eventually(t, released, 10*time.Second, time.Millisecond)
	// Accepted in the order dialled: the silent one holds the bound.
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	requireClosed(t, c)
	c.Close()
	require.Equal(t, uint64(1), adminConnsRefused.Get()-refused)
	silent.Close()
	require.Eventually(t, healthy, 10*time.Second, 10*time.Millisecond)

	// Idle between requests, a connection is reclaimed for the next (once
	// the probes' connections are let go).
	require.Eventually(t, func() bool { return adminConns.Get() == 0 }, 10*time.Second, time.Millisecond)
	c, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	getOn(t, c, bufio.NewReader(c))
	reclaimed := adminConnsClosed.Get()
	require.Eventually(t, healthy, 10*time.Second, 10*time.Millisecond)
	requireClosed(t, c)
	require.Equal(t, uint64(1), adminConnsClosed.Get()-reclaimed)
}

// TestAdminConnsPerSource: one source holds at most three quarters of the
// bound; past that its new connection reclaims its own longest idle, never
// another source's, or is closed; another source still gets in.
func TestAdminConnsPerSource(t *testing.T) {
	addr, l, opened := limitedServer(t, 8, nil) // 6 a source
	require.Equal(t, 6, l.perSource)
	from := func(ip string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return d.Dial("tcp", addr)
	}
	reclaimed, refused := adminConnsClosed.Get(), adminConnsRefused.Get()

	// Another source's connection, idle between requests.
	other, err := from("127.0.0.2")
	require.NoError(t, err)
	defer other.Close()
	getOn(t, other, bufio.NewReader(other))
	require.Eventually(t, func() bool { return idleConns(l) == 1 }, 10*time.Second, time.Millisecond)

	// Six connections from one source, its bound: five silent, one idle.
	var mine net.Conn
	for i := 0; i < 6; i++ {
		c, err := from("127.0.0.1")
		require.NoError(t, err)
		defer c.Close()
		if i == 0 {
			mine = c
		}
	}
	getOn(t, mine, bufio.NewReader(mine))
	require.Eventually(t, func() bool { return idleConns(l) == 2 }, 10*time.Second, time.Millisecond)
	// Its seventh reclaims its own idle one, not the other source's.
	seventh, err := from("127.0.0.1")
	require.NoError(t, err)
	defer seventh.Close()
	getOn(t, seventh, bufio.NewReader(seventh))
	requireClosed(t, mine)
	require.Equal(t, uint64(1), adminConnsClosed.Get()-reclaimed)
	reclaimed = adminConnsClosed.Get()
	// Six silent ones, none of the source's idle: the seventh gives way to
	// one more that sends nothing.
	seventh.Close()
	require.Eventually(t, func() bool { return opened() == 6 }, 10*time.Second, time.Millisecond)
	silent, err := from("127.0.0.1")
	require.NoError(t, err)
	defer silent.Close()
	require.Eventually(t, func() bool { return opened() == 7 }, 10*time.Second, time.Millisecond)
	require.Equal(t, 1, idleConns(l), "the other source's")
	c, err := from("127.0.0.1")
	require.NoError(t, err)
	requireClosed(t, c)
	c.Close()
	require.Equal(t, uint64(1), adminConnsRefused.Get()-refused, "none of its own idle: closed, though the bound has room")
	require.Equal(t, uint64(0), adminConnsClosed.Get()-reclaimed, "the other source's idle one is not taken")
	getOn(t, other, bufio.NewReader(other)) // still served

	// Another source gets in (the eighth connection).
	third, err := from("127.0.0.3")
	require.NoError(t, err)
	defer third.Close()
	getOn(t, third, bufio.NewReader(third))
	require.Equal(t, 8, opened())
}
