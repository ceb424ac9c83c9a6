package node

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cmd/internal/capsctl"
	"github.com/capsgate/capsgate/licensing"
)

// adminAnswer sends method path with Authorization auth ("": none) and
// returns the status, the Allow header and the body.
func adminAnswer(t *testing.T, base, method, path, auth string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(""))
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("Allow"), string(b)
}

// requireAPIError checks a body is the admin API's JSON error.
func requireAPIError(t *testing.T, body, reason, msg string) {
	t.Helper()
	var e apiError
	require.NoError(t, json.Unmarshal([]byte(body), &e), body)
	require.Equal(t, apiError{Error: msg, Reason: reason}, e)
}

// A method an existing path does not serve is 405 with the methods it
// does serve in Allow (RFC 9110 §15.5.6), as an API error; a path served
// with no method stays 404.
func TestAdminWrongMethod(t *testing.T) {
	n := startNode(t, "--dev")
	base := "http://" + n.AdminAddr()
	f := func(method, path, allow string) {
		t.Helper()
		code, gotAllow, body := adminAnswer(t, base, method, path, "")
		require.Equal(t, http.StatusMethodNotAllowed, code, "%s %s: %s", method, path, body)
		require.Equal(t, allow, gotAllow, "%s %s", method, path)
		requireAPIError(t, body, "method_not_allowed", method+" is not allowed on "+path+"; allowed: "+allow)
	}
	f("DELETE", "/v1/licenses/dev-demo", "GET, HEAD")
	f("PUT", "/v1/licenses", "GET, HEAD, POST")
	f("GET", "/v1/services/demo/accounts/acme", "PUT")
	f("POST", "/v1/services/demo/limits/k3", "GET, HEAD, PUT, DELETE")
	f("PATCH", "/v1/usage", "GET, HEAD")
	f("POST", "/metrics", "GET, HEAD")
	f("DELETE", "/healthz", "GET, HEAD")
	for _, path := range []string{"/v1/nothing", "/nothing", "/v1/licenses/a/b"} {
		code, allow, body := adminAnswer(t, base, "POST", path, "")
		require.Equal(t, http.StatusNotFound, code, path)
		require.Empty(t, allow, path)
		requireAPIError(t, body, "not_found", "no such endpoint: POST "+path)
	}
	code, _, _ := adminAnswer(t, base, "HEAD", "/metrics", "")
	require.Equal(t, http.StatusOK, code)
}

// The bearer scheme is case-insensitive (RFC 9110 §11.1), the token is
// not; a request without the token hears 401 whatever its method.
func TestAdminBearerScheme(t *testing.T) {
	_, _, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure")
	base := "http://" + n.AdminAddr()
	f := func(auth string, want int) {
		t.Helper()
		code, _, body := adminAnswer(t, base, "GET", "/v1/licenses", auth)
		require.Equal(t, want, code, "%q: %s", auth, body)
	}
	f("Bearer t0k", http.StatusOK)
	f("bearer t0k", http.StatusOK)
	f("BEARER t0k", http.StatusOK)
	f("Bearer   t0k", http.StatusOK)
	f("Bearer T0K", http.StatusUnauthorized)
	f("bearer t0k2", http.StatusUnauthorized)
	f("Bearert0k", http.StatusUnauthorized)
	f("Basic t0k", http.StatusUnauthorized)
	f("t0k", http.StatusUnauthorized)
	f("", http.StatusUnauthorized)
	code, allow, body := adminAnswer(t, base, "PUT", "/v1/licenses", "")
	require.Equal(t, http.StatusUnauthorized, code)
	require.Empty(t, allow)
	requireAPIError(t, body, "unauthorized", "a valid bearer token is required (admin.token_file)")
}

// ?service= of GET /v1/usage is a name as everywhere else: one that is
// not is refused (400 invalid_service) as GET /v1/usage/export does,
// rather than matching nothing.
func TestUsageServiceName(t *testing.T) {
	n := startNode(t, "--dev")
	const rng = "&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"
	for _, path := range []string{"/v1/usage", "/v1/usage/export"} {
		for _, service := range []string{"../x", "..", ".", "a%20b", "a%2Fb", strings.Repeat("a", 65)} {
			code, body := rawRequest(t, n.AdminAddr(), "GET", path+"?format=cloudevents&service="+service+rng, "")
			require.Equal(t, http.StatusBadRequest, code, "%s %s: %s", path, service, body)
			name := strings.NewReplacer("%20", " ", "%2F", "/").Replace(service)
			requireAPIError(t, body, "invalid_service", `invalid service name "`+name+`": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
		}
		code, body := rawRequest(t, n.AdminAddr(), "GET", path+"?format=cloudevents&service=demo"+rng, "")
		require.Equal(t, http.StatusOK, code, body)
	}
}

// A CAPS limit is written as an exact integer when it is one; the sum of
// licences saturated at math.MaxInt64 (2^63 as a float64) as
// 9223372036854775807, not encoding/json's 9223372036854776000.
func TestRateJSON(t *testing.T) {
	f := func(r Rate, want string) {
		t.Helper()
		b, err := json.Marshal(r)
		require.NoError(t, err)
		require.Equal(t, want, string(b))
		var back float64
		require.NoError(t, json.Unmarshal(b, &back))
		require.Equal(t, float64(r), back, "reads back as the same float64")
	}
	f(Rate(math.MaxInt64), "9223372036854775807")
	f(Rate(math.MaxInt64/2+1), "4611686018427387904")
	f(Rate(1<<53+2), "9007199254740994")
	f(1000, "1000")
	f(0, "0")
	f(-1, "-1")
	f(12.5, "12.5")
	f(1e15+0.5, "1000000000000000.5")
	_, err := json.Marshal(Rate(math.NaN()))
	require.Error(t, err)
}

// Two licences of the largest CAPS and sessions on a real node: the
// admin API writes the saturated limits exactly, and capsctl prints them
// as written.
func TestLargestLimitsExact(t *testing.T) {
	dir, key, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure", "--vendor-key", filepath.Join(dir, licensing.PublicKeyFile))
	base := "http://" + n.AdminAddr()
	for _, id := range []string{"max-1", "max-2"} {
		lic, err := key.Sign(&licensing.License{ID: id, Service: "voice", CAPS: math.MaxInt64, Sessions: 1<<53 + 1}, time.Now())
		require.NoError(t, err)
		code, body := post(t, base+"/v1/licenses", "t0k", lic)
		require.Equal(t, 201, code, body)
	}
	code, body := get(t, base+"/v1/services/voice", "t0k")
	require.Equal(t, 200, code, body)
	require.Contains(t, body, `"caps": 9223372036854775807,`)
	require.Contains(t, body, `"caps_share": 9223372036854775807,`)
	require.Contains(t, body, `"sessions": 18014398509481986,`)
	var out, errb bytes.Buffer
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "--token-file", token, "status", "voice"}, &out, &errb), errb.String())
	require.Regexp(t, `(?m)^limits\.caps\s+9223372036854775807$`, out.String())
	require.Regexp(t, `(?m)^limits\.sessions\s+18014398509481986$`, out.String())
}

// A --dev node whose admin API listens beyond loopback without a token
// says so; on loopback, or with a token, it says nothing.
func TestDevAdminWarning(t *testing.T) {
	for addr, warns := range map[string]bool{
		"127.0.0.1:8390": false, "[::1]:8390": false, "localhost:8390": false, "127.0.0.2:8390": false,
		"0.0.0.0:8390": true, "[::]:8390": true, "10.0.0.1:8390": true, "example.net:8390": true,
	} {
		w := devAdminWarning(addr, false)
		require.Equal(t, warns, w != "", addr)
		if warns {
			require.Equal(t, "the admin API listens on "+addr+" without a token: anyone who reaches it may load licences and allocate tokens (give --admin-token-file, or a loopback --admin-addr)", w)
		}
		require.Empty(t, devAdminWarning(addr, true), addr)
	}
}
