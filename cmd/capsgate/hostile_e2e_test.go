package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pinger sends PING every 10 ms on its own connection for d, from its own
// process (testdata/hostile/pinger.py: a load the test makes in its own
// runtime must not delay the clean client), and returns each answer's
// latency once d has passed.
func pinger(t *testing.T, addr string, d time.Duration) func() []time.Duration {
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	cmd := exec.Command(python3(t), "testdata/hostile/pinger.py", host, port, fmt.Sprint(d.Seconds()))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	return func() []time.Duration {
		require.NoError(t, cmd.Wait(), out.String())
		var lat []time.Duration
		for _, l := range strings.Fields(out.String()) {
			us, err := strconv.ParseInt(l, 10, 64)
			require.NoError(t, err, out.String())
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		require.NotEmpty(t, lat)
		return lat
	}
}

// python3 is the Python the tests run helper scripts with: missing, the
// test fails in CI and is skipped elsewhere.
func python3(t *testing.T) string {
	p, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is missing: .ci/run installs it")
		}
		t.Skip("python3 is missing (apt-get install python3)")
	}
	return p
}

// p99 and worst of a set of latencies.
func tail(lat []time.Duration) (p99, worst time.Duration) {
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[len(s)*99/100], s[len(s)-1]
}

// Clients that pipeline small requests with large replies (INFO with 100
// licensed services: 6 bytes in, 15 KB out) and never read them: each
// holds at most its part of the node's reply memory (nothing more runs
// for it) and of its request memory (then it is closed), and a clean
// client's answers are not held meanwhile. Measured once:
// the clean client's p99 and worst beside the same client's before the
// attack, and the node's RSS.
func TestNonReadersHurtNoOne(t *testing.T) {
	v := newVendor(t)
	p := v.node(t)
	for i := range 100 {
		lic := v.issue(t, fmt.Sprintf("s%03d.lic", i), "--service", fmt.Sprintf("service-%03d", i), "--caps", "10")
		body, err := os.ReadFile(lic)
		require.NoError(t, err)
		req, err := http.NewRequest("POST", "http://"+p.admin+"/v1/licenses", bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer tok-1")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 201, resp.StatusCode)
	}
	info := dial(t, p.resp)
	_, err := info.c.Write([]byte("INFO\r\n"))
	require.NoError(t, err)
	size, err := strconv.Atoi(strings.TrimPrefix(info.line(t), "$"))
	require.NoError(t, err)
	require.Greater(t, size, 10_000, "INFO with 100 services")

	p99Before, worstBefore := tail(pinger(t, p.resp, 3*time.Second)())
	rssBefore := int64(rssKB(t, p.cmd.Process.Pid))

	// 20 clients, each sending 1,000,000 INFOs (6 MB) and reading nothing,
	// in writes of 10,000 (a writer of 6-byte strings under the race
	// detector would take a core of the two from the node it measures).
	const attackers, each, batch = 20, 1_000_000, 10_000
	clean := pinger(t, p.resp, 10*time.Second)
	var wg sync.WaitGroup
	for range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.resp)
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // open until the test ends: the node closes it
			_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			chunk := []byte(strings.Repeat("INFO\r\n", batch))
			for range each / batch {
				if _, err := c.Write(chunk); err != nil {
					return // closed by the node
				}
			}
		}()
	}
	var peak int64
	sampling := make(chan struct{})
	go func() {
		defer close(sampling)
		for range 100 { // 10 s at most
			peak = max(peak, int64(rssKB(t, p.cmd.Process.Pid)))
			time.Sleep(100 * time.Millisecond)
		}
	}()
	wg.Wait()
	<-sampling
	lat := clean()
	for i, l := range lat {
		if l > 20*time.Millisecond {
			t.Logf("slow ping %d: %v", i, l)
		}
	}
	p99, worst := tail(lat)
	closed := scrape(t, p.admin, "capsgate_resp_input_limit_closed_total")
	t.Logf("clean client: p99 %v, worst %v before the attack; p99 %v, worst %v during it; RSS %d MiB before, %d MiB at the peak; %v of %d attackers closed",
		p99Before, worstBefore, p99, worst, rssBefore>>10, peak>>10, closed, attackers)
	require.Equal(t, float64(attackers), closed, "every non-reading client is closed")
	require.LessOrEqual(t, p99, p99Before+10*time.Millisecond, "p99 moved")
	require.LessOrEqual(t, worst, worstBefore+100*time.Millisecond, "worst moved")
	// 32 MiB of replies and 32 MiB of requests among 21 connections, the
	// buffers that hold them growing by copies, and the garbage collector's
	// heap goal (twice what is live).
	require.LessOrEqual(t, peak-rssBefore, int64(200<<10), "RSS growth in KiB")
}

// scrape reads one sample of a metric from a node's /metrics; the test
// fails if it is not there.
func scrape(t *testing.T, admin, name string) float64 {
	t.Helper()
	v, ok := sample(t, admin, name)
	if !ok {
		t.Fatalf("no %s in /metrics", name)
	}
	return v
}

// sample reads one sample of a metric from a node's /metrics, and whether
// it is there (a service's gauges appear once its licence arrived). Safe
// in a require.Eventually condition: it fails nothing itself.
func sample(t *testing.T, admin, name string) (float64, bool) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}

// A client flooding one node with RELEASEs for calls nobody holds (each is
// forwarded to the cluster) does not crowd out another client's RELEASEs
// through the same node for calls the other node holds: all 1,000 are
// carried, none dropped, and the other node ends every session. The flood
// is slowed to what the cluster carries instead.
func TestForwardFloodDropsNothing(t *testing.T) {
	v := newVendor(t)
	a := v.node(t)
	b := start(t, "--cluster-id", "farm-1", "--data-dir", t.TempDir(), "--vendor-key", v.pub, "--admin-token-file", v.token,
		"--gossip-insecure", "--node-name", "b", "--join", a.gossip)
	lic := v.issue(t, "voice.lic", "--service", "voice", "--caps", "100000", "--sessions", "100000")
	out, code := v.ctl(t, a, "license", "add", lic)
	require.Zero(t, code, out)
	require.Eventually(t, func() bool {
		va, oka := sample(t, a.admin, `capsgate_licensed_sessions{service="voice"}`)
		vb, okb := sample(t, b.admin, `capsgate_licensed_sessions{service="voice"}`)
		return oka && okb && va > 0 && vb > 0
	}, 15*time.Second, 50*time.Millisecond, "both nodes enforce a part of the licence")

	// 1,000 calls held on b.
	cb := dial(t, b.resp)
	var opens strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&opens, "ADMIT voice CALL legit-%d\r\n", i)
	}
	_, err := cb.c.Write([]byte(opens.String()))
	require.NoError(t, err)
	for i := range 1000 {
		admitted, reason, _, _ := cb.decision(t)
		require.True(t, admitted, "call %d: %s", i, reason)
	}

	// The flood through a: up to 2,000,000 RELEASEs of unknown calls, for
	// at most 10 s, read as they come.
	flood := dial(t, a.resp)
	stop := make(chan struct{})
	var flooded atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		w := bufio.NewWriterSize(flood.c, 64<<10)
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 2_000_000 && time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := fmt.Fprintf(w, "RELEASE voice nobody-%d\r\n", i); err != nil {
				return
			}
		}
		_ = w.Flush()
	})
	wg.Go(func() {
		_ = flood.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, err := flood.r.ReadSlice('\n'); err != nil {
				return
			}
			flooded.Add(1)
		}
	})
	time.Sleep(500 * time.Millisecond)

	// Meanwhile the 1,000 legitimate RELEASEs through a.
	ca := dial(t, a.resp)
	var rels strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&rels, "RELEASE voice legit-%d\r\n", i)
	}
	_, err = ca.c.Write([]byte(rels.String()))
	require.NoError(t, err)
	for i := range 1000 {
		require.Equal(t, ":0", ca.line(t), "release %d: a does not hold it", i)
	}
	require.Eventually(t, func() bool {
		v, ok := sample(t, b.admin, `capsgate_sessions{service="voice"}`)
		return ok && v == 0
	}, 20*time.Second, 50*time.Millisecond, "b ended every session")
	close(stop)
	flood.c.Close()
	wg.Wait()
	dropped := scrape(t, a.admin, "capsgate_gossip_forward_dropped_total")
	t.Logf("the flood got %d answers meanwhile; %v operations dropped", flooded.Load(), dropped)
	require.Zero(t, dropped)
}

// State any client could grow is bounded: 150,000 emergency calls with new
// call-ids (never refused by a licence) hold at most
// priority.max_emergency_sessions (here 50,000) sessions, the rest refused
// OVERLOAD; 10,000 made-up service names behind them add no service (one
// bucket, "*"), so /metrics stays small; a clean client is answered
// throughout. Measured once: RSS, /metrics size and the clean client's tail.
func TestStateFloodsAreBounded(t *testing.T) {
	p := startDev(t, "--priority-max-emergency-sessions", "50000")
	rssBefore := int64(rssKB(t, p.cmd.Process.Pid))
	clean := pinger(t, p.resp, 8*time.Second)
	c := dial(t, p.resp)
	var admitted, overload int
	const calls, batch = 150_000, 1000
	for sent := 0; sent < calls; sent += batch {
		var b strings.Builder
		for i := sent; i < sent+batch; i++ {
			fmt.Fprintf(&b, "ADMIT made-up-%d CALL sos-%d PRIORITY emergency\r\n", i%10_000, i)
		}
		_, err := c.c.Write([]byte(b.String()))
		require.NoError(t, err)
		for range batch {
			ok, reason, _, _ := c.decision(t)
			switch {
			case ok:
				admitted++
			case reason == "OVERLOAD":
				overload++
			default:
				t.Fatalf("emergency call refused %s", reason)
			}
		}
	}
	peak := int64(rssKB(t, p.cmd.Process.Pid))
	lat := clean()
	p99, worst := tail(lat)
	resp, err := http.Get("http://" + p.admin + "/metrics")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	services := 0
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "capsgate_emergency_sessions{") {
			services++
		}
	}
	t.Logf("%d admitted, %d OVERLOAD; RSS %d -> %d MiB; /metrics %d bytes, %d services with emergency sessions; clean client p99 %v, worst %v",
		admitted, overload, rssBefore>>10, peak>>10, len(body), services, p99, worst)
	require.Equal(t, 50_000, admitted)
	require.Equal(t, calls-50_000, overload)
	require.Equal(t, float64(50_000), scrape(t, p.admin, `capsgate_emergency_sessions{service="*"}`))
	require.LessOrEqual(t, services, 2, "the dev service and the bucket, not one per made-up name")
	require.Less(t, len(body), 64<<10, "/metrics stays small")
	// 50,000 sessions at about 100 bytes each, their journal, and the
	// garbage collector's heap goal.
	require.LessOrEqual(t, peak-rssBefore, int64(64<<10), "RSS growth in KiB")
	require.LessOrEqual(t, worst, 100*time.Millisecond, "the clean client's worst answer")
}
