package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
	"github.com/capsgate/capsgate/cmd/internal/capsctl"
	"github.com/capsgate/capsgate/licensing"
)

// send pipelines cmds over one connection and returns the replies' reason
// words (or error lines), in order.
func send(t *testing.T, addr string, cmds ...string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	var b strings.Builder
	for _, cmd := range cmds {
		b.WriteString(cmd + "\r\n")
	}
	_, err = c.Write([]byte(b.String()))
	require.NoError(t, err)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	var out []string
	for len(out) < len(cmds) {
		k, err := c.Read(buf)
		require.NoError(t, err)
		got = append(got, buf[:k]...)
		out = out[:0]
		lines := strings.Split(string(got), "\r\n")
		for i := 0; i < len(lines); i++ {
			switch line := lines[i]; {
			case strings.HasPrefix(line, "*4") && i+2 < len(lines):
				out = append(out, lines[i+2]) // a decision: its reason
				i += 4
			case strings.HasPrefix(line, "+"), strings.HasPrefix(line, "-"), strings.HasPrefix(line, ":"):
				out = append(out, line)
			}
		}
	}
	return out
}

func ctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := capsctl.Main(args, &out, &errb)
	return code, out.String(), errb.String()
}

// A key's limits through capsctl and the admin API: set, enforced by
// ADMIT ... TRUNK, listed, removed, and kept across a restart.
func TestTrunkLimitsAdmin(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	respAddr, adminAddr := farm.FreeAddr(t), farm.FreeAddr(t)
	args := []string{"--dev", "--data-dir", data, "--resp-addr", respAddr, "--admin-addr", adminAddr, "--gossip-addr", farm.FreeAddr(t),
		"--trunks-limits", "demo/from-config caps=5 sessions=1"}
	cfg, err := Load(args, io.Discard)
	require.NoError(t, err)
	n, err := New(cfg, nil)
	require.NoError(t, err)
	require.NoError(t, n.Start())
	base := "http://" + adminAddr

	code, out, errs := ctl(t, "--addr", base, "limits", "set", "demo", "carrier-a", "--caps", "10", "--burst", "3", "--sessions", "2")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^caps\s+10$`, out)
	require.Regexp(t, `(?m)^node\.burst\s+3$`, out)
	code, _, errs = ctl(t, "--addr", base, "limits", "set", "demo", "carrier-a", "--caps", "-1")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "--caps must be a number of 0 or more")
	code, _, errs = ctl(t, "--addr", base, "limits", "set", "demo", "carrier-a")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "needs at least one of")
	code, _, errs = ctl(t, "--addr", base, "limits", "set", "demo", "a#b", "--caps", "1")
	require.Equal(t, 2, code)
	require.Contains(t, errs, `invalid key name "a#b"`)

	// Three calls on the key: two sessions, the third refused by the key;
	// attempts without a call: the burst of 3, less the 2 taken.
	got := send(t, respAddr, "ADMIT demo CALL c1 TRUNK carrier-a", "ADMIT demo CALL c2 TRUNK carrier-a", "ADMIT demo CALL c3 TRUNK carrier-a",
		"ADMIT demo TRUNK carrier-a", "ADMIT demo TRUNK carrier-a", "ADMIT demo TRUNK other", "ADMIT demo TRUNK a#b", "ADMIT demo TRUNK x TRUNK y")
	require.Equal(t, []string{"+OK", "+OK", "+TRUNK_SESSIONS", "+OK", "+TRUNK_CAPS", "+OK", "-ERR invalid trunk key", "-ERR syntax error"}, got)
	require.Equal(t, []string{"+OK", "+TRUNK_SESSIONS"}, send(t, respAddr, "ADMIT demo CALL d1 TRUNK from-config", "ADMIT demo CALL d2 TRUNK from-config"))

	code, body := get(t, base+"/metrics", "")
	require.Equal(t, 200, code)
	for _, want := range []string{
		"capsgate_trunk_keys 2\n",
		`capsgate_trunk_admissions_total{service="demo",reason="OK"} 4` + "\n",
		`capsgate_trunk_admissions_total{service="demo",reason="TRUNK_CAPS"} 1` + "\n",
		`capsgate_trunk_admissions_total{service="demo",reason="TRUNK_SESSIONS"} 2` + "\n",
		`capsgate_trunk_top_sessions{service="demo",key="carrier-a"} 2` + "\n",
		`capsgate_trunk_top_sessions{service="demo",key="from-config"} 1` + "\n",
		`capsgate_trunk_top_refused{service="demo",key="carrier-a"} 2` + "\n",
		`capsgate_trunk_top_refused{service="demo",key="from-config"} 1` + "\n",
	} {
		require.Contains(t, body, want)
	}
	require.NotContains(t, body, `key="other"`, "a key with no limits is not named")

	code, body = get(t, base+"/v1/services/demo/limits/carrier-a", "")
	require.Equal(t, 200, code, body)
	var v TrunkView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	require.Equal(t, int64(2), v.Node.SessionsOpen)
	require.Equal(t, uint64(3), v.Node.Admitted)
	require.Equal(t, map[string]uint64{"TRUNK_CAPS": 1, "TRUNK_SESSIONS": 1}, v.Node.Refused)

	code, body = request(t, "PUT", base+"/v1/services/demo/limits/carrier-b", "", []byte(`{"caps": 1, "CAPS": 2}`))
	require.Equal(t, 400, code)
	require.Contains(t, body, "invalid_body")
	code, body = request(t, "PUT", base+"/v1/services/demo/limits/carrier-b", "", []byte(`{"sessions": -1}`))
	require.Equal(t, 400, code)
	require.Contains(t, body, "sessions must be 0 or more")
	code, body = request(t, "PUT", base+"/v1/services/demo/limits/carrier-b", "", []byte(`{"caps": 1e10}`))
	require.Equal(t, 400, code)
	require.Contains(t, body, "caps must be between 0 and 1e+09")
	code, body = request(t, "PUT", base+"/v1/services/demo/limits/carrier-b", "", []byte(`{"sessions": 0}`))
	require.Equal(t, 201, code, body)
	code, _ = request(t, "PUT", base+"/v1/services/demo/limits/carrier-b", "", []byte(`{"sessions": 1}`))
	require.Equal(t, 200, code, "a change")

	code, body = get(t, base+"/v1/services/demo/limits?limit=2", "")
	require.Equal(t, 200, code)
	var list TrunkList
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	require.Len(t, list.Keys, 2)
	require.Equal(t, "carrier-a", list.Keys[0].Key)
	require.Equal(t, "carrier-b", list.Next)
	code, out, _ = ctl(t, "--addr", base, "--json", "limits", "list", "demo", "--after", "carrier-b")
	require.Equal(t, 0, code)
	list = TrunkList{}
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list.Keys, 1)
	require.Equal(t, "from-config", list.Keys[0].Key)
	require.Empty(t, list.Next)

	code, _, errs = ctl(t, "--addr", base, "limits", "rm", "demo", "carrier-b")
	require.Equal(t, 0, code, errs)
	code, _, errs = ctl(t, "--addr", base, "limits", "rm", "demo", "carrier-b")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "404 unknown_key")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, n.Stop(ctx))

	// Restarted (the same flags): the limits set through the API are back,
	// and so are the key's open sessions.
	cfg, err = Load(args, io.Discard)
	require.NoError(t, err)
	n, err = New(cfg, nil)
	require.NoError(t, err)
	require.NoError(t, n.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, n.Stop(ctx))
	})
	require.Equal(t, []string{"+TRUNK_SESSIONS", ":1", "+OK"}, send(t, respAddr, "ADMIT demo CALL c3 TRUNK carrier-a", "RELEASE demo c1",
		"ADMIT demo CALL c3 TRUNK carrier-a"), "two sessions back")
	code, _ = get(t, base+"/v1/services/demo/limits/carrier-b", "")
	require.Equal(t, 404, code, "the removal holds")
}

// The keys' metrics stay bounded: TopTrunks keys per top-N metric, one
// series per service and reason, however many keys have limits.
func TestTrunkMetricsBounded(t *testing.T) {
	args := []string{"--dev"}
	var cmds []string
	for i := range 3 * TopTrunks {
		args = append(args, "--trunks-limits", fmt.Sprintf("demo/k%02d caps=0 sessions=5", i))
		for range i + 1 {
			cmds = append(cmds, fmt.Sprintf("ADMIT demo TRUNK k%02d", i))
		}
	}
	n := startNode(t, args...)
	got := send(t, n.RESPAddr(), cmds...)
	require.Len(t, got, len(cmds))
	require.Equal(t, []string{"+TRUNK_CAPS"}, slices.Compact(got))
	code, body := get(t, "http://"+n.AdminAddr()+"/metrics", "")
	require.Equal(t, 200, code)
	require.Contains(t, body, fmt.Sprintf("capsgate_trunk_keys %d\n", 3*TopTrunks))
	require.Equal(t, TopTrunks, strings.Count(body, "capsgate_trunk_top_refused{"))
	for i := 3*TopTrunks - TopTrunks; i < 3*TopTrunks; i++ {
		require.Contains(t, body, fmt.Sprintf(`capsgate_trunk_top_refused{service="demo",key="k%02d"} %d`+"\n", i, i+1), "the most refused")
	}
	require.Zero(t, strings.Count(body, "capsgate_trunk_top_sessions{"), "none holds a session")
	require.Equal(t, 2, strings.Count(body, "capsgate_trunk_admissions_total{"), "OK and TRUNK_CAPS of one service")
}

// A key's token pool: set with its limits (capsctl, the admin API, the
// config, before the licence comes), charged by ADMIT ... TRUNK,
// refusing TRUNK_TOKENS when spent, shown with the key; a pool the
// licence cannot give changes nothing.
func TestTrunkTokenPoolAdmin(t *testing.T) {
	dir, key, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure", "--vendor-key", filepath.Join(dir, licensing.PublicKeyFile),
		"--trunks-limits", "pre/from-config caps=100 tokens=3")
	base := "http://" + n.AdminAddr()
	armored, err := key.Sign(&licensing.License{ID: "pre-1", Service: "pre", CAPS: 1000, Tokens: 1000, TokensPerAttempt: 1}, time.Now())
	require.NoError(t, err)
	code, body := post(t, base+"/v1/licenses", "t0k", armored)
	require.Equal(t, 201, code, body)

	code, out, errs := ctl(t, "--addr", base, "--token-file", token, "limits", "set", "pre", "carrier-a", "--caps", "50", "--tokens", "5")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `(?m)^pool\.tokens\s+5$`, out)
	code, _, errs = ctl(t, "--addr", base, "--token-file", token, "limits", "set", "pre", "carrier-a", "--overage", "none")
	require.Equal(t, 2, code)
	require.Contains(t, errs, "needs at least one of")

	adm := func(key string, k int) []string {
		cmds := make([]string, k)
		for i := range cmds {
			cmds[i] = "ADMIT pre TRUNK " + key
		}
		return send(t, n.RESPAddr(), cmds...)
	}
	require.Equal(t, []string{"+OK", "+OK", "+OK", "+OK", "+OK", "+TRUNK_TOKENS", "+TRUNK_TOKENS"}, adm("carrier-a", 7))
	require.Equal(t, []string{"+OK", "+OK", "+OK", "+TRUNK_TOKENS"}, adm("from-config", 4), "the config's pool, given when the licence came")
	require.Equal(t, []string{"+OK", "+OK"}, adm("no-pool", 2), "the licence's pool")

	view := func(key string) TrunkView {
		code, body := get(t, base+"/v1/services/pre/limits/"+key, "t0k")
		require.Equal(t, 200, code, body)
		var v TrunkView
		require.NoError(t, json.Unmarshal([]byte(body), &v))
		return v
	}
	v := view("carrier-a")
	require.Equal(t, &AccountView{Account: "carrier-a", Tokens: 5, Overage: "none", Used: 5, Left: 0}, v.Pool)
	require.Equal(t, map[string]uint64{"TRUNK_TOKENS": 2}, v.Node.Refused)
	code, body = get(t, base+"/v1/services/pre/accounts", "t0k")
	require.Equal(t, 200, code)
	require.Contains(t, body, `"account": "carrier-a"`, "the pool is the account's of the key's name")

	// Limits set again without tokens leave the pool as it is.
	code, body = request(t, "PUT", base+"/v1/services/pre/limits/carrier-a", "t0k", []byte(`{"caps": 60}`))
	require.Equal(t, 200, code, body)
	require.Equal(t, int64(5), view("carrier-a").Pool.Tokens)

	for _, c := range []struct {
		body, want string
		code       int
	}{
		{`{"tokens": -1}`, "tokens must be 0 or more", 400},
		{`{"caps": 1, "overage": "none"}`, `the policy of the key's token pool`, 400},
		{`{"tokens": 1, "overage": "some"}`, "overage", 400},
		{`{"caps": 1, "tokens": 2000}`, "invalid_allocation", 422},
	} {
		code, body := request(t, "PUT", base+"/v1/services/pre/limits/carrier-b", "t0k", []byte(c.body))
		require.Equal(t, c.code, code, "%s: %s", c.body, body)
		require.Contains(t, body, c.want, c.body)
	}
	code, _ = get(t, base+"/v1/services/pre/limits/carrier-b", "t0k")
	require.Equal(t, 404, code, "a refused pool sets no limits")
	code, body = request(t, "PUT", base+"/v1/services/pre/limits/carrier-b", "t0k", []byte(`{"tokens": 0}`))
	require.Equal(t, 201, code, body)
	require.Equal(t, []string{"+TRUNK_TOKENS"}, adm("carrier-b", 1), "a pool of 0")
}
