package node

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// DefaultAdminMaxConns bounds the admin API's connections at once. Its
// clients are an operator's tools, a Prometheus or two and the farm's other
// members asking for usage summaries: tens of connections. Each holds two
// 4 KiB buffers and a goroutine idle, and at most adminMaxHeaderBytes more
// while its request's header is read.
const DefaultAdminMaxConns = 1024

// adminMaxHeaderBytes bounds a request's header on the admin API: a bearer
// token and a client's usual headers fit many times over.
const adminMaxHeaderBytes = 64 << 10

var (
	adminConns        = metrics.NewGauge(`capsgate_admin_connections`, nil)
	adminConnsRefused = metrics.NewCounter(`capsgate_admin_connections_refused_total`)
	adminConnsClosed  = metrics.NewCounter(`capsgate_admin_connections_reclaimed_total`)
)

// connLimit bounds the connections of an http.Server. A connection past the
// bound first closes the one idle longest between requests, since a
// keep-alive connection can otherwise sit for the server's IdleTimeout and
// a client holding many would shut the operator (and Prometheus) out; when
// none is idle, the new connection is closed at once and counted. A
// connection waiting for its header is held for ReadHeaderTimeout at most
// and one being answered for WriteTimeout, so the bound cannot be held for
// longer than those by a client sending nothing.
//
// One source address holds at most three quarters of the bound (all of a
// bound below 4): past that, its new connection closes its own longest idle
// or is closed, so a quarter stays for the others (the operator, Prometheus)
// whatever one client opens.
//
// It wraps the TCP listener (inside any TLS one), and its ConnState hook
// must be the server's.
type connLimit struct {
	net.Listener
	max, perSource int

	mu       sync.Mutex
	open     int
	bySource map[netip.Addr]int
	idle     map[*limitedConn]time.Time // connections between requests, since when
	count    func(open int)             // reports the open count (a gauge)
}

func newConnLimit(ln net.Listener, max int) *connLimit {
	return &connLimit{Listener: ln, max: max, perSource: max - max/4, bySource: make(map[netip.Addr]int),
		idle: make(map[*limitedConn]time.Time), count: func(open int) { adminConns.Set(float64(open)) }}
}

// sourceOf is the address a connection comes from (the zero Addr when it
// is not TCP).
func sourceOf(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// Accept returns the next connection the bound admits.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
		adminConnsRefused.Inc()
		_ = c.Close()
	}
}

// admit counts c in, reclaiming the longest-idle connection at the bound
// (its source's own at the source's bound), or returns nil when every
// connection it could reclaim is busy.
func (l *connLimit) admit(c net.Conn) *limitedConn {
	src := sourceOf(c)
	l.mu.Lock()
	if full, mine := l.open >= l.max, l.bySource[src] >= l.perSource; full || mine {
		var oldest *limitedConn
		var since time.Time
		for ic, t := range l.idle {
			if (!mine || ic.src == src) && (oldest == nil || t.Before(since)) {
				oldest, since = ic, t
			}
		}
		if oldest == nil {
			l.mu.Unlock()
			return nil
		}
		l.releaseLocked(oldest)
		l.mu.Unlock()
		adminConnsClosed.Inc()
		_ = oldest.Conn.Close() // the server sees a closed connection and ends it
		l.mu.Lock()
	}
	l.open++
	l.bySource[src]++
	l.count(l.open)
	l.mu.Unlock()
	return &limitedConn{Conn: c, l: l, src: src}
}

// releaseLocked counts lc out, once.
func (l *connLimit) releaseLocked(lc *limitedConn) {
	if lc.released {
		return
	}
	lc.released = true
	delete(l.idle, lc)
	l.open--
	if l.bySource[lc.src]--; l.bySource[lc.src] == 0 {
		delete(l.bySource, lc.src)
	}
	l.count(l.open)
}

// ConnState is the server's hook: it keeps which connections are idle.
func (l *connLimit) ConnState(c net.Conn, state http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case lc.released:
	case state == http.StateIdle:
		l.idle[lc] = time.Now()
	default:
		delete(l.idle, lc)
	}
}

// limitedConn is a connection counted by its connLimit until closed.
type limitedConn struct {
	net.Conn
	l        *connLimit
	src      netip.Addr
	released bool // guarded by l.mu
}

func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.releaseLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
