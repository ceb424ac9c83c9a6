package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// rssKB is a process's resident set in KiB.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			require.NoError(t, err)
			return kb
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestOverload offers 10 × the licence over 1000 connections: every
// request is answered, the rejections come back fast, the node's memory
// stays bounded and its goroutines return to where they were.
func TestOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	const conns, licensed = 1000, 1000
	d := farm.Seconds(t, "CAPSGATE_OVERLOAD_SECONDS", 10*time.Second) // 60 for the full run
	c := farm.New(t, 1)
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", strconv.Itoa(licensed)))
	goroutines0 := metric(t, n, "go_goroutines")
	rss0 := rssKB(t, n.Pid())

	var sent, answered, admitted atomic.Int64
	lat := make([][]time.Duration, conns) // rejections' latencies, per connection
	perConn := float64(10*licensed) / conns
	start := time.Now().Add(200 * time.Millisecond)
	var wg sync.WaitGroup
	var dialErrs atomic.Int64
	for i := range conns {
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", n.RESPAddr, 5*time.Second)
			if err != nil {
				dialErrs.Add(1)
				return
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			frame := []byte("*2\r\n$5\r\nADMIT\r\n$5\r\nvoice\r\n")
			total := int(perConn * d.Seconds())
			// Spread the connections' sends over the interval.
			offset := time.Duration(float64(i) / conns * float64(time.Second) / perConn)
			for k := range total {
				at := start.Add(offset + time.Duration(float64(k)*float64(time.Second)/perConn))
				time.Sleep(time.Until(at))
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				t0 := time.Now()
				if _, err := conn.Write(frame); err != nil {
					return
				}
				sent.Add(1)
				ok, _, _, err := readDecision(r)
				if err != nil {
					return
				}
				answered.Add(1)
				if ok {
					admitted.Add(1)
				} else {
					lat[i] = append(lat[i], time.Since(t0))
				}
			}
		})
	}
	// Memory while the load runs.
	peak := rss0
	done := make(chan struct{})
	var mon sync.WaitGroup
	mon.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(500 * time.Millisecond):
				peak = max(peak, rssKB(t, n.Pid()))
			}
		}
	})
	wg.Wait()
	close(done)
	mon.Wait()
	elapsed := time.Since(start)

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	p := func(q float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[int(q*float64(len(all)-1))]
	}
	time.Sleep(500 * time.Millisecond) // connections closed
	goroutines1 := metric(t, n, "go_goroutines")
	t.Logf("%d connections, %d/s offered (10 × %d CAPS) for %v: sent %d, answered %d, admitted %d (%.0f/s); "+
		"rejections p50 %v, p99 %v, max %v; RSS %d KiB before, %d KiB at most; goroutines %s before, %s after",
		conns, 10*licensed, licensed, d, sent.Load(), answered.Load(), admitted.Load(), float64(admitted.Load())/elapsed.Seconds(),
		p(0.5), p(0.99), p(1), rss0, peak, goroutines0, goroutines1)
	require.Zero(t, dialErrs.Load(), "every connection accepted")
	require.Equal(t, sent.Load(), answered.Load(), "every request answered")
	require.Equal(t, int64(float64(conns)*float64(int(perConn*d.Seconds()))), sent.Load(), "everything was sent")
	assert.LessOrEqual(t, float64(admitted.Load()), 1.01*licensed*elapsed.Seconds()+200, "no more than the licence admitted")
	assert.Less(t, peak-rss0, 200<<10, "memory stays bounded (less than 200 MiB more)")
	g0, _ := strconv.Atoi(goroutines0)
	g1, _ := strconv.Atoi(goroutines1)
	assert.LessOrEqual(t, g1, g0+5, "no goroutine leak")
}

// TestSlowClientsHurtNoOne: a client that sends a byte at a time and one
// that pipelines without ever reading do not stop another client's
// answers.
func TestSlowClientsHurtNoOne(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	c := farm.New(t, 1)
	n := c.Node(1)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "100000"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// A byte at a time, one every 10 ms.
	var trickled atomic.Int64
	wg.Go(func() {
		conn, err := net.Dial("tcp", n.RESPAddr)
		if err != nil {
			return
		}
		defer conn.Close()
		frame := []byte("*2\r\n$5\r\nADMIT\r\n$5\r\nvoice\r\n")
		r := bufio.NewReader(conn)
		for {
			for _, b := range frame {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				if _, err := conn.Write([]byte{b}); err != nil {
					return
				}
			}
			if ok, _, _, err := readDecision(r); err == nil && ok {
				trickled.Add(1)
			}
		}
	})
	// Pipelines without reading until the node gives up on it.
	var flooded atomic.Int64
	wg.Go(func() {
		conn, err := net.Dial("tcp", n.RESPAddr)
		if err != nil {
			return
		}
		defer conn.Close()
		batch := []byte(strings.Repeat("*2\r\n$5\r\nADMIT\r\n$5\r\nvoice\r\n", 1000))
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = conn.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := conn.Write(batch); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					continue // its buffers are full: it keeps not reading
				}
				return
			}
			flooded.Add(1000)
		}
	})
	// Meanwhile a normal client is answered, every time, promptly.
	time.Sleep(300 * time.Millisecond)
	var worst time.Duration
	for k := range 500 {
		t0 := time.Now()
		ok, reason, _, err := n.Decision("ADMIT", "voice")
		require.NoError(t, err, "request %d", k)
		require.True(t, ok, reason)
		worst = max(worst, time.Since(t0))
		time.Sleep(2 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("500 ADMITs on a fresh connection each while a client trickles a byte every 10 ms (%d answered) and one pipelines %d without reading: worst %v",
		trickled.Load(), flooded.Load(), worst)
	require.Positive(t, trickled.Load(), "the trickling client is answered too")
	assert.Less(t, worst, time.Second, "nobody waits behind a slow client")
}
