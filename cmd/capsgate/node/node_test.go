package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster/farm"
	"github.com/capsgate/capsgate/cmd/internal/capsctl"
	"github.com/capsgate/capsgate/licensing"
)

// startNode loads a config from flags and runs a node until the test ends.
func startNode(t *testing.T, args ...string) *Node {
	t.Helper()
	args = append([]string{"--resp-addr", farm.FreeAddr(t), "--admin-addr", farm.FreeAddr(t),
		"--gossip-addr", farm.FreeAddr(t), "--data-dir", filepath.Join(t.TempDir(), "not", "yet")}, args...) // later flags win
	cfg, err := Load(args, io.Discard)
	require.NoError(t, err)
	n, err := New(cfg, nil)
	require.NoError(t, err)
	require.NoError(t, n.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, n.Stop(ctx))
		require.NoError(t, n.Stop(ctx), "Stop twice is harmless")
	})
	return n
}

func get(t *testing.T, url, token string) (int, string) { return request(t, "GET", url, token, nil) }

func post(t *testing.T, url, token string, body []byte) (int, string) {
	return request(t, "POST", url, token, body)
}

func request(t *testing.T, method, url, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func admit(t *testing.T, addr string, n int) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write([]byte(strings.Repeat("ADMIT demo\r\n", n)))
	var got []byte
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for bytes.Count(got, []byte("*4\r\n")) < n {
		k, err := c.Read(buf)
		require.NoError(t, err)
		got = append(got, buf[:k]...)
	}
	return string(got)
}

func TestDevNodeAdminAPI(t *testing.T) {
	n := startNode(t, "--dev")
	base := "http://" + n.AdminAddr()
	code, body := get(t, base+"/healthz", "")
	require.Equal(t, 200, code)
	require.Equal(t, "ok\n", body)
	code, _ = get(t, base+"/readyz", "")
	require.Equal(t, 200, code)

	// 150 at once: the burst of 100 passes (plus a token per ms the
	// pipeline took, on a slow machine).
	replies := admit(t, n.RESPAddr(), 150)
	ok, caps := strings.Count(replies, "+OK\r\n"), strings.Count(replies, "+CAPS\r\n")
	require.Equal(t, 150, ok+caps)
	require.GreaterOrEqual(t, ok, 100)
	require.LessOrEqual(t, ok, 105)
	code, body = get(t, base+"/metrics", "")
	require.Equal(t, 200, code)
	for _, want := range []string{
		fmt.Sprintf(`capsgate_admissions_total{service="demo",reason="OK"} %d`, ok),
		fmt.Sprintf(`capsgate_admissions_total{service="demo",reason="CAPS"} %d`, caps),
		`capsgate_licensed_caps{service="demo"} 1000`,
		`capsgate_licensed_sessions{service="demo"} 500`,
		`capsgate_tokens_left{service="demo"} 1000000`,
		`capsgate_decision_seconds_bucket{le="+Inf"}`,
		"# TYPE capsgate_admissions_total counter",
		"# TYPE capsgate_decision_seconds histogram",
	} {
		require.Contains(t, body, want)
	}

	code, body = get(t, base+"/v1/services/demo", "")
	require.Equal(t, 200, code, body)
	var v ServiceView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Equal(t, "demo", v.Service)
	require.Equal(t, Rate(1000), v.Limits.CAPS)
	require.Equal(t, int64(100), v.Limits.Burst)
	require.Equal(t, uint64(ok), v.Node.Admissions["OK"])
	code, body = get(t, base+"/v1/services/nosuch", "")
	require.Equal(t, 404, code)
	require.Contains(t, body, `"reason": "unlicensed"`)
	code, _ = get(t, base+"/v1/services/bad%20name", "")
	require.Equal(t, 400, code)
	code, body = get(t, base+"/v1/nowhere", "")
	require.Equal(t, 404, code)
	require.Contains(t, body, `"reason": "not_found"`)

	// capsctl against the same node.
	var out, errb bytes.Buffer
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "status", "demo"}, &out, &errb), errb.String())
	require.Regexp(t, `(?m)^limits\.caps\s+1000$`, out.String())
	require.Regexp(t, fmt.Sprintf(`(?m)^node\.admissions\.OK\s+%d$`, ok), out.String())
	out.Reset()
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "--json", "status"}, &out, &errb))
	require.Contains(t, out.String(), `"service": "demo"`)
	errb.Reset()
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "status", "nosuch"}, &out, &errb))
	require.Equal(t, "capsctl: GET /v1/services/nosuch: 404 unlicensed: no licence covers service nosuch\n", errb.String())
	errb.Reset()
	require.Equal(t, 1, capsctl.Main([]string{"--addr", "http://" + farm.FreeAddr(t), "status"}, &out, &errb))
	require.Contains(t, errb.String(), "capsctl: cannot reach")
	require.Equal(t, 1, strings.Count(errb.String(), "\n"))
	errb.Reset()
	require.Equal(t, 2, capsctl.Main([]string{"--addr", base, "frobnicate"}, &out, &errb))
	require.Contains(t, errb.String(), `unknown command "frobnicate"`)
}

func TestAdminTokenRequired(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(token, []byte("t0ken-123\n"), 0o600))
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure")
	base := "http://" + n.AdminAddr()
	code, body := get(t, base+"/v1/services", "")
	require.Equal(t, 401, code)
	require.Contains(t, body, `"reason": "unauthorized"`)
	code, _ = get(t, base+"/v1/services", "wrong")
	require.Equal(t, 401, code)
	code, body = get(t, base+"/v1/services", "t0ken-123")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"services": []`, "outside --dev nothing is licensed yet")
	code, _ = get(t, base+"/metrics", "")
	require.Equal(t, 200, code, "/metrics needs no token")
	code, _ = get(t, base+"/healthz", "")
	require.Equal(t, 200, code)

	var out, errb bytes.Buffer
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "status"}, &out, &errb))
	require.Contains(t, errb.String(), "401 unauthorized")
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "--token-file", token, "status"}, &out, &errb))
	// An unlicensed service is refused, but an emergency call passes.
	require.Contains(t, admitUnlicensed(t, n.RESPAddr()), "+UNLICENSED")
}

// With a certificate the admin API speaks HTTPS only; capsctl trusts it
// with --ca-file.
func TestAdminTLS(t *testing.T) {
	dir := secretsDir(t)
	n := startNode(t, "--admin-token-file", dir+"/admin.token", "--gossip-insecure",
		"--admin-tls-cert-file", dir+"/admin.crt", "--admin-tls-key-file", dir+"/admin.key")
	pem, err := os.ReadFile(dir + "/admin.crt")
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pem))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + n.AdminAddr() + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	// Plain HTTP gets no API.
	resp, err = http.Get("http://" + n.AdminAddr() + "/healthz")
	if err == nil {
		resp.Body.Close()
		require.Equal(t, 400, resp.StatusCode, "Go answers plain HTTP on a TLS port with 400")
	}
	var out, errb bytes.Buffer
	base := "https://" + n.AdminAddr()
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "--token-file", dir + "/admin.token", "status"}, &out, &errb),
		"an unknown certificate is refused")
	require.Contains(t, errb.String(), "certificate")
	errb.Reset()
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "--token-file", dir + "/admin.token", "--ca-file", dir + "/admin.crt", "status"}, &out, &errb), errb.String())
}

func admitUnlicensed(t *testing.T, addr string) string {
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, _ = c.Write([]byte("ADMIT voice\r\nADMIT voice PRIORITY emergency\r\n"))
	buf := make([]byte, 4096)
	var got []byte
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for bytes.Count(got, []byte("*4\r\n")) < 2 {
		k, err := c.Read(buf)
		require.NoError(t, err)
		got = append(got, buf[:k]...)
	}
	require.Equal(t, "*4\r\n:0\r\n+UNLICENSED\r\n:60000\r\n:0\r\n*4\r\n:1\r\n+OK\r\n:0\r\n:-1\r\n", string(got))
	return string(got)
}

// vendorFiles makes a vendor key pair and an admin token ("t0k") in a temp dir.
func vendorFiles(t *testing.T) (dir string, key *licensing.VendorKey, token string) {
	t.Helper()
	dir = t.TempDir()
	key, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	require.NoError(t, licensing.WriteKeyFiles(dir, key))
	token = filepath.Join(dir, "admin.token")
	require.NoError(t, os.WriteFile(token, []byte("t0k\n"), 0o600))
	return dir, key, token
}

func TestLicenceAPI(t *testing.T) {
	dir, key, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure", "--cluster-id", "farm-1",
		"--vendor-key", filepath.Join(dir, licensing.PublicKeyFile))
	base := "http://" + n.AdminAddr()
	sign := func(l licensing.License) []byte {
		b, err := key.Sign(&l, time.Now())
		require.NoError(t, err)
		return b
	}
	// Traffic before the licence: a name no licence covers adds no service
	// (its emergency calls are kept under the unlicensed bucket).
	admitUnlicensed(t, n.RESPAddr())
	admitUnlicensed(t, n.RESPAddr())
	require.Nil(t, n.Engine().Service("voice"))
	require.Equal(t, uint64(2), n.Engine().UnknownServiceAdmissions()[admission.UNLICENSED])
	require.Equal(t, uint64(2), n.Engine().Service(admission.UnlicensedBucket).Stats().Emergency)

	lic := sign(licensing.License{ID: "v1", Service: "voice", CAPS: 500, Sessions: 200})
	code, body := post(t, base+"/v1/licenses", "", lic)
	require.Equal(t, 401, code, body)
	code, body = post(t, base+"/v1/licenses", "t0k", lic)
	require.Equal(t, 201, code, body)
	require.Contains(t, body, `"state": "active"`)
	// The engine has the limits when the reply arrives: no delay at all.
	st := n.Engine().Service("voice").Stats()
	require.Equal(t, 500.0, st.Limits.CAPS)
	require.Equal(t, int64(200), st.Limits.Sessions)

	code, body = post(t, base+"/v1/licenses", "t0k", lic)
	require.Equal(t, 200, code, body)
	f := func(body []byte, status int, reason string) {
		t.Helper()
		code, got := post(t, base+"/v1/licenses", "t0k", body)
		require.Equal(t, status, code, got)
		require.Contains(t, got, `"reason": "`+reason+`"`)
	}
	f([]byte("not a licence"), 400, "malformed")
	f(bytes.Repeat([]byte("x"), maxLicenseBytes+1), 413, "too_large")
	f(sign(licensing.License{ID: "old", Service: "voice", CAPS: 5000, NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter: time.Now().Add(-24 * time.Hour)}), 422, "expired")
	f(sign(licensing.License{ID: "x", Service: "voice", CAPS: 5000, Cluster: "farm-2"}), 422, "wrong_cluster")
	f(sign(licensing.License{ID: "v1", Service: "voice", CAPS: 5000}), 422, "replayed")
	f(bytes.Replace(lic, []byte("Caps: 500"), []byte("Caps: 900"), 1), 422, "bad_signature")
	other, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	foreign, err := other.Sign(&licensing.License{ID: "y", Service: "voice", CAPS: 5000}, time.Now())
	require.NoError(t, err)
	f(foreign, 422, "unknown_key")
	require.Equal(t, 500.0, n.Engine().Service("voice").Stats().Limits.CAPS, "refusals change nothing")

	pending := sign(licensing.License{ID: "later", Service: "voice", CAPS: 500, NotBefore: time.Now().Add(time.Hour)})
	code, body = post(t, base+"/v1/licenses", "t0k", pending)
	require.Equal(t, 201, code, body)
	require.Contains(t, body, `"state": "pending"`)
	require.Equal(t, 500.0, n.Engine().Service("voice").Stats().Limits.CAPS)

	code, body = get(t, base+"/v1/licenses", "t0k")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"id": "later"`)
	code, body = get(t, base+"/v1/licenses/v1", "t0k")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"caps": 500`)
	code, _ = get(t, base+"/v1/licenses/none", "t0k")
	require.Equal(t, 404, code)
	code, body = get(t, base+"/v1/services/voice", "t0k")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"licenses": [
    "v1"
  ]`)
}

// TestTwoNodes runs two real nodes in one process, joined by memberlist on
// loopback: a licence loaded on one reaches the other, the CAPS licence is
// split between them, and a RELEASE reaching the node that does not hold
// the call ends it on the one that does.
func TestTwoNodes(t *testing.T) {
	dir, key, token := vendorFiles(t)
	gossipKey := filepath.Join(dir, "gossip.key")
	require.NoError(t, os.WriteFile(gossipKey, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600))
	common := []string{"--admin-token-file", token, "--gossip-key-file", gossipKey, "--cluster-id", "farm-1",
		"--vendor-key", filepath.Join(dir, licensing.PublicKeyFile)}
	g1 := farm.FreeAddr(t)
	a := startNode(t, append(common, "--node-name", "a", "--gossip-addr", g1)...)
	b := startNode(t, append(common, "--node-name", "b", "--join", g1)...)
	require.Eventually(t, func() bool { return len(a.cluster.Members()) == 2 && len(b.cluster.Members()) == 2 },
		10*time.Second, 10*time.Millisecond, "the nodes join")

	lic, err := key.Sign(&licensing.License{ID: "v1", Service: "voice", CAPS: 1000, Sessions: 100}, time.Now())
	require.NoError(t, err)
	code, body := post(t, "http://"+a.AdminAddr()+"/v1/licenses", "t0k", lic)
	require.Equal(t, 201, code, body)
	start := time.Now()
	require.Eventually(t, func() bool {
		s := b.Engine().Service("voice")
		return s != nil && s.Stats().Limits.LicensedCAPS == 1000
	}, 5*time.Second, time.Millisecond, "the licence reaches b")
	t.Logf("licence reached the other node in %s", time.Since(start))
	// Each node has heard the other's part of the licence: until then a
	// node holds back what a member just joined may hold (its first plan
	// of the licence may take nothing), which the even parts applied
	// before the first plan do not show.
	heard := func(n *Node, other string) bool {
		for _, m := range n.cluster.Members() {
			if m.Name == other && m.Shares["voice"] > 0 {
				return true
			}
		}
		return false
	}
	require.Eventually(t, func() bool {
		sa, sb := a.Engine().Service("voice").Stats().Limits, b.Engine().Service("voice").Stats().Limits
		return heard(a, "b") && heard(b, "a") &&
			sa.CAPS+sb.CAPS > 999.9 && sa.CAPS+sb.CAPS < 1000.1 && sa.CAPS < 1000 && sb.CAPS < 1000 && sa.Sessions > 0 && sb.Sessions > 0
	}, 5*time.Second, 10*time.Millisecond, "the licence is split, the shares sum to it, each node has sessions")
	code, body = get(t, "http://"+b.AdminAddr()+"/v1/cluster", "t0k")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"name": "a"`)
	require.Contains(t, body, `"state": "alive"`)

	ca, err := net.Dial("tcp", a.RESPAddr())
	require.NoError(t, err)
	defer ca.Close()
	_, _ = ca.Write([]byte("ADMIT voice CALL c1@pbx\r\n"))
	buf := make([]byte, 256)
	_ = ca.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := ca.Read(buf)
	require.NoError(t, err)
	require.Contains(t, string(buf[:k]), "+OK")
	require.Equal(t, int64(1), a.Engine().Service("voice").Stats().Sessions)
	cb, err := net.Dial("tcp", b.RESPAddr())
	require.NoError(t, err)
	defer cb.Close()
	_, _ = cb.Write([]byte("RELEASE voice c1@pbx\r\n"))
	_ = cb.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err = cb.Read(buf)
	require.NoError(t, err)
	require.Equal(t, ":0\r\n", string(buf[:k]), "b did not hold the call")
	require.Eventually(t, func() bool { return a.Engine().Service("voice").Stats().Sessions == 0 },
		5*time.Second, time.Millisecond, "the RELEASE was forwarded to a")

	// Sessions are shared by what each node holds. Idle, each node may open
	// 50 of the 100; once a holds 30 it may hold 63 (30 + its floor + half
	// the spare), so 30 more fit; then b is left at most the other 40, and
	// the two limits never add up to more than 100.
	open := func(from, to int) {
		var calls strings.Builder
		for i := from; i < to; i++ {
			fmt.Fprintf(&calls, "ADMIT voice CALL s%d@pbx\r\n", i)
		}
		_, _ = ca.Write([]byte(calls.String()))
		require.Eventually(t, func() bool { return a.Engine().Service("voice").Stats().Sessions == int64(to) },
			5*time.Second, time.Millisecond)
	}
	open(0, 30)
	require.Eventually(t, func() bool { return a.Engine().Service("voice").Stats().Limits.Sessions >= 60 },
		5*time.Second, 10*time.Millisecond)
	open(30, 60)
	require.Eventually(t, func() bool {
		la, lb := a.Engine().Service("voice").Stats().Limits, b.Engine().Service("voice").Stats().Limits
		return la.Sessions >= 60 && lb.Sessions <= 40 && la.Sessions+lb.Sessions <= 100
	}, 5*time.Second, 10*time.Millisecond, "session limits follow what each node holds")
	la, lb := a.Engine().Service("voice").Stats().Limits, b.Engine().Service("voice").Stats().Limits
	t.Logf("session limits with 60 open on a: a %d, b %d (licence 100)", la.Sessions, lb.Sessions)
}
