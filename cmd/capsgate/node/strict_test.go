package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cmd/internal/capsctl"
	"github.com/capsgate/capsgate/licensing"
)

// rawRequest sends a request line as written (no client cleans its path)
// and returns the status code and body.
func rawRequest(t *testing.T, addr, method, path, body string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", method, path, len(body), body)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// The admin API takes exactly one JSON value with no key twice and no
// other key, and names as the SPEC has them; whatever it refuses changes
// nothing.
func TestAdminRefusesLooseInput(t *testing.T) {
	n := startNode(t, "--dev")
	base := "http://" + n.AdminAddr()
	state := func() string {
		code, body := get(t, base+"/v1/services/demo/accounts", "")
		require.Equal(t, 200, code, body)
		b, _ := json.Marshal(n.reserver.Allocations())
		return body + string(b)
	}
	code, body := request(t, "PUT", base+"/v1/services/demo/accounts/acme", "", []byte(`{"tokens": 10}`))
	require.Equal(t, 200, code, body)
	before := state()
	f := func(method, path, body string, status int, reason, msg string) {
		t.Helper()
		code, got := rawRequest(t, n.AdminAddr(), method, path, body)
		require.Equal(t, status, code, got)
		var e apiError
		require.NoError(t, json.Unmarshal([]byte(got), &e), got)
		require.Equal(t, apiError{Error: msg, Reason: reason}, e)
		require.Equal(t, before, state(), "a refused request changes nothing")
	}
	const want = `want {"tokens": N, "overage": "none|percent:N|unlimited"}: `
	put := func(body, msg string) {
		t.Helper()
		f("PUT", "/v1/services/demo/accounts/acme", body, 400, "invalid_body", want+msg)
	}
	put(`{"tokens": 99} {"tokens": 5}`, "data after the JSON value at offset 15")
	put(`{"tokens": 99}x`, "data after the JSON value at offset 14")
	put(`{"tokens": 99, "tokens": 5}`, `duplicate key "tokens"`)
	put(`{"tokens": 99, "t\u006fkens": 5}`, `duplicate key "tokens"`)
	put(`{"TOKENS": 99}`, `unknown key "TOKENS"`)
	put(`{"tokens": 99, "extra": 1}`, `unknown key "extra"`)
	put(`{"tokens": 9223372036854775808}`, "json: cannot unmarshal number 9223372036854775808 into Go struct field AccountBody.tokens of type int64")
	put(`{"overage": "none"}`, `no "tokens"`)
	put(`{"overage": `+strings.Repeat("[", 1000), "nested more than 32 deep")
	put(``, "no JSON value")
	f("PUT", "/v1/services/demo/accounts/acme", `{"tokens": 1, "overage": "`+strings.Repeat("x", maxAccountBody)+`"}`, 413, "too_large", "the body is at most 4096 bytes")
	f("PUT", "/v1/services/demo/accounts/%2E%2E", `{"tokens": 1}`, 400, "invalid_account", `invalid account name "..": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("PUT", "/v1/services/demo/accounts/%2e", `{"tokens": 1}`, 400, "invalid_account", `invalid account name ".": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("PUT", "/v1/services/%2E%2E/accounts/acme", `{"tokens": 1}`, 400, "invalid_service", `invalid service name "..": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("PUT", "/v1/services/demo/accounts/a%2Fb", `{"tokens": 1}`, 400, "invalid_account", `invalid account name "a/b": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("PUT", "/v1/services/demo/accounts/"+strings.Repeat("a", 65), `{"tokens": 1}`, 400, "invalid_account", `invalid account name "`+strings.Repeat("a", 65)+`": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("GET", "/v1/services/%2E%2E/accounts", "", 400, "invalid_service", `invalid service name "..": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	f("GET", "/v1/services/%2E", "", 400, "invalid_service", `invalid service name ".": want [A-Za-z0-9._:-]{1,64}, not . or ..`)
	// A literal dot-segment never reaches a handler: the path is cleaned
	// and the client sent elsewhere.
	code, _ = rawRequest(t, n.AdminAddr(), "PUT", "/v1/services/demo/accounts/..", `{"tokens": 1}`)
	require.Equal(t, 307, code)
	require.Equal(t, before, state())

	// capsctl refuses such names before it sends anything.
	var out, errb bytes.Buffer
	require.Equal(t, 2, capsctl.Main([]string{"--addr", base, "accounts", "set", "demo", "..", "--tokens", "1"}, &out, &errb))
	require.Equal(t, `capsctl: invalid account name "..": want [A-Za-z0-9._:-]{1,64}, not . or .. (capsctl --help)`+"\n", errb.String())
	// And over RESP, the same names are refused.
	c, err := client.Dial(context.Background(), n.RESPAddr())
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Consume(context.Background(), "demo", "..", 1, "")
	require.EqualError(t, err, "ERR invalid account name")
	_, err = c.Admit(context.Background(), "..", client.AdmitOptions{Priority: client.PriorityEmergency})
	require.EqualError(t, err, "ERR invalid service name")
}

// A licence file loads every licence and revocation in it, or none, through
// the admin API and capsctl.
func TestLicenceFileOfSeveralDocuments(t *testing.T) {
	dir, key, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure", "--vendor-key", filepath.Join(dir, licensing.PublicKeyFile))
	base := "http://" + n.AdminAddr()
	sign := func(l licensing.License) []byte {
		b, err := key.Sign(&l, time.Now())
		require.NoError(t, err)
		return b
	}
	revoke := func(id string, ids ...string) []byte {
		b, err := key.Revoke(&licensing.Revocation{ID: id, Revokes: ids}, time.Now())
		require.NoError(t, err)
		return b
	}
	state := func() string {
		_, a := get(t, base+"/v1/licenses", "t0k")
		_, b := get(t, base+"/v1/services", "t0k")
		return a + b
	}
	a := sign(licensing.License{ID: "a", Service: "voice", CAPS: 500, Sessions: 100})
	b := sign(licensing.License{ID: "b", Service: "voice", CAPS: 500, Sessions: 100})

	// Two licences: both load and stack.
	code, body := post(t, base+"/v1/licenses", "t0k", append(append([]byte{}, a...), b...))
	require.Equal(t, 201, code, body)
	var res LicenseResult
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	require.Len(t, res.Results, 2)
	require.Len(t, res.Licenses, 2)
	require.Equal(t, "a", res.Result.ID)
	require.Equal(t, "b", res.Results[1].ID)
	st := n.Engine().Service("voice").Stats()
	require.Equal(t, 1000.0, st.Limits.CAPS)
	require.Equal(t, int64(200), st.Limits.Sessions)

	// A replacement and the revocation of what it replaces, with capsctl.
	c := sign(licensing.License{ID: "c", Service: "voice", CAPS: 3000})
	file := filepath.Join(t.TempDir(), "renewal.license")
	require.NoError(t, writeFile(file, append(append([]byte{}, c...), revoke("r1", "a", "b")...)))
	var out, errb bytes.Buffer
	require.Equal(t, 0, capsctl.Main([]string{"--addr", base, "--token-file", token, "license", "add", file}, &out, &errb), errb.String())
	require.Equal(t, "loaded licence c for service voice: active\nloaded revocation r1\n", out.String())
	st = n.Engine().Service("voice").Stats()
	require.Equal(t, 3000.0, st.Limits.CAPS)
	require.Equal(t, int64(-1), st.Limits.Sessions)

	// A refused document refuses the file.
	before := state()
	f := func(text []byte, status int, reason, msg string) {
		t.Helper()
		code, got := post(t, base+"/v1/licenses", "t0k", text)
		require.Equal(t, status, code, got)
		var e apiError
		require.NoError(t, json.Unmarshal([]byte(got), &e), got)
		require.Equal(t, apiError{Error: msg, Reason: reason}, e)
		require.Equal(t, before, state(), "a refused file changes nothing")
	}
	d := sign(licensing.License{ID: "d", Service: "voice", CAPS: 1})
	f(append(append([]byte{}, d...), a...), 422, "revoked",
		"document 2 of 2 (licence at line 29): licence a was revoked by r1; nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))")
	f(append(append([]byte{}, d...), d[:200]...), 400, "malformed",
		"malformed: the licence at line 29 has no -----END CAPSGATE LICENSE----- line (truncated?); the file holds 2 documents: licence (line 1), licence (line 29)")
	pub := licensing.MarshalVendorPublicKey(key.Public())
	f(append(append([]byte{}, d...), pub...), 400, "malformed",
		"malformed: line 29 begins a vendor public key, which is not a licence or revocation; the file holds 1 document: licence (line 1)")
	out.Reset()
	errb.Reset()
	require.NoError(t, writeFile(file, append(append([]byte{}, d...), a...)))
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "--token-file", token, "license", "add", file}, &out, &errb))
	require.Equal(t, "capsctl: POST /v1/licenses: 422 revoked: document 2 of 2 (licence at line 29): licence a was revoked by r1; nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))\n", errb.String())
	require.Equal(t, before, state())
}

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }
