package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestClients drives a real `capsgate --dev` with the Redis clients
// applications use (go-redis, redis-py, ioredis) as they use them:
// connect (with their own handshake: HELLO, CLIENT SETNAME, SETINFO, an
// INFO ready check), PING, INFO parsed by the library, COMMAND COUNT and
// COMMAND INFO, CLIENT INFO and LIST, ADMIT, QUOTA and RELEASE as raw
// commands, a pipeline and a transaction (MULTI ... EXEC, what redis-py's
// pipeline() sends by default). Each client gets a node of its own, so every
// figure is exact: the first ADMIT finds the bucket full (99 left of 100).
// redis-py and ioredis are what .ci/run installs (Debian python3-redis;
// ioredis from testdata/clients/package.json): missing, the test fails
// under CI=true and is skipped elsewhere.
func TestClients(t *testing.T) {
	t.Run("go-redis", testGoRedis)
	t.Run("redis-py", func(t *testing.T) {
		p, got := runCheck(t, findPython(t), "redis_py_check.py")
		// redis-py parses INFO values: numbers become numbers, and a
		// service line's k=v pairs a dict.
		require.JSONEq(t, `{"redis_version":"7.2.0","loading":0,"connected_clients":1,"role":"master","services":1,
			"service_demo":{"name":"demo","licensed":1,"caps":1000,"caps_used":0.0,"sessions":0,"subscribers":0,"tokens_used":0,"admitted":0}}`,
			string(got.Info))
		require.JSONEq(t, `{"services":1,"service_demo":{"name":"demo","licensed":1,"caps":1000,"caps_used":0.0,
			"sessions":0,"subscribers":0,"tokens_used":0,"admitted":0}}`, string(got.InfoServices))
		require.JSONEq(t, `["arch_bits","async_loading","capsgate_version","connected_clients","connected_slaves","loading",
			"os","process_id","redis_mode","redis_version","role","service_demo","services","uptime_in_days","uptime_in_seconds"]`,
			string(got.InfoEverything))
		require.JSONEq(t, `{"name":"admit","arity":-2,"flags":["write","fast"],"first_key_pos":1,"last_key_pos":1,"step_count":1,
			"tips":[],"key_specifications":[],"subcommands":[]}`, string(got.Command))
		// redis-py's CLIENT INFO parser turns these fields into integers
		// (and fails without them); the line ends with "\n", as Redis's.
		ci := decode[map[string]any](t, got.ClientInfo)
		for _, k := range []string{"id", "age", "idle", "db", "sub", "psub", "multi", "qbuf", "qbuf-free", "obl", "argv-mem", "oll", "omem", "tot-mem"} {
			require.IsType(t, float64(0), ci[k], k)
		}
		require.Equal(t, jsonString(got.ClientID), jsonString(ci["id"]))
		require.Equal(t, "py-check", ci["name"])
		require.Equal(t, p.resp, ci["laddr"])
		require.EqualValues(t, -1, ci["multi"])
		checkPipeline(t, got.Pipeline, `[[1,"OK",0,-1],true,{"loading":0,"async_loading":0}]`)
		require.JSONEq(t, `[[1,"OK",0,-1],true]`, string(got.Transaction), "pipeline() with MULTI and EXEC")
		require.JSONEq(t, `[1000,1000]`, string(got.Transaction1000), "pipeline() of 1,000 ADMITs")
		require.JSONEq(t, `true`, string(got.AuthDefaultUser), "user default and a password, no password set")
		checkReport(t, p, got, "py-check", "py-1")
	})
	t.Run("ioredis", func(t *testing.T) {
		p, got := runCheck(t, findIORedis(t), "ioredis_check.js")
		require.Equal(t, "ready", got.Status, "the ready check (INFO, loading:0) passed")
		// ioredis leaves INFO a string: the check parses it as the ready
		// check does, and a service line's k=v pairs into an object.
		require.JSONEq(t, `{"redis_version":"7.2.0","loading":"0","connected_clients":"1","role":"master","services":"1",
			"service_demo":{"name":"demo","licensed":"1","caps":"1000","caps_used":"0.0","sessions":"0","subscribers":"0","tokens_used":"0","admitted":"0"}}`,
			string(got.Info))
		require.JSONEq(t, `{"services":"1","service_demo":{"name":"demo","licensed":"1","caps":"1000","caps_used":"0.0",
			"sessions":"0","subscribers":"0","tokens_used":"0","admitted":"0"}}`, string(got.InfoServices))
		require.JSONEq(t, `["admit",-2,["write","fast"],1,1,1,["@write","@fast"],[],[],[]]`, string(got.Command))
		ci := decode[map[string]string](t, got.ClientInfo)
		require.Equal(t, map[string]string{"name": "node-check", "laddr": p.resp, "lib-name": "ioredis", "lib-ver": got.Version,
			"db": "0", "flags": "N", "resp": "2", "user": "default", "multi": "-1"},
			pick(ci, "name", "laddr", "lib-name", "lib-ver", "db", "flags", "resp", "user", "multi"))
		require.Equal(t, ci["id"], jsonString(got.ClientID))
		checkPipeline(t, got.Pipeline, `[[1,"OK",0,-1],"PONG","# Persistence\r\nloading:0\r\nasync_loading:0\r\n"]`)
		require.JSONEq(t, `[[1,"OK",0,-1],"PONG"]`, string(got.Transaction), "multi() ... exec()")
		checkReport(t, p, got, "node-check", "node-1")
	})
}

func testGoRedis(t *testing.T) {
	p := startDev(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: p.resp, ClientName: "go-check", MaxRetries: -1, PoolSize: 1})
	defer rdb.Close()
	require.Equal(t, "PONG", rdb.Ping(ctx).Val())

	info, err := rdb.InfoMap(ctx).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"Clients", "Keyspace", "Persistence", "Replication", "Server", "Services"}, slices.Sorted(maps.Keys(info)))
	require.Equal(t, "0", info["Persistence"]["loading"])
	require.Equal(t, "1", info["Clients"]["connected_clients"])
	require.Equal(t, map[string]string{"services": "1",
		"service_demo": "name=demo,licensed=1,caps=1000,caps_used=0.0,sessions=0,subscribers=0,tokens_used=0,admitted=0"}, info["Services"])

	n, err := rdb.Do(ctx, "COMMAND", "COUNT").Int()
	require.NoError(t, err)
	require.Equal(t, 20, n)
	cmds, err := rdb.Command(ctx).Result()
	require.NoError(t, err)
	require.Len(t, cmds, 20)
	require.Equal(t, &redis.CommandInfo{Name: "admit", Arity: -2, Flags: []string{"write", "fast"}, ACLFlags: []string{"@write", "@fast"},
		FirstKeyPos: 1, LastKeyPos: 1, StepCount: 1}, withoutPolicy(cmds["admit"]))
	require.True(t, cmds["quota"].ReadOnly)

	ci, err := rdb.ClientInfo(ctx).Result()
	require.NoError(t, err)
	id, err := rdb.ClientID(ctx).Result()
	require.NoError(t, err)
	require.Equal(t, id, ci.ID)
	require.Equal(t, "go-check", ci.Name)
	require.Equal(t, p.resp, ci.LAddr)
	require.True(t, strings.HasPrefix(ci.LibName, "go-redis("), ci.LibName)
	require.Equal(t, redis.Version(), ci.LibVer)
	require.Equal(t, 2, ci.Resp)
	require.Equal(t, -1, ci.Multi)
	list, err := rdb.ClientList(ctx).Result()
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(list, "\n"), list)
	require.Contains(t, list, " name=go-check ")

	admit, err := rdb.Do(ctx, "ADMIT", "demo", "CALL", "go-1").Slice()
	require.NoError(t, err)
	require.Equal(t, []any{int64(1), "OK", int64(0), int64(99)}, admit)
	q, err := rdb.Do(ctx, "QUOTA", "demo").Slice()
	require.NoError(t, err)
	quota := map[string]any{}
	for i := 0; i+1 < len(q); i += 2 {
		quota[q[i].(string)] = q[i+1]
	}
	require.Equal(t, map[string]any{"caps_licensed": "1000", "sessions_licensed": int64(500), "sessions_used": int64(1),
		"license_state": "active"}, pick(quota, "caps_licensed", "sessions_licensed", "sessions_used", "license_state"))
	after, err := rdb.InfoMap(ctx, "services").Result()
	require.NoError(t, err)
	require.Contains(t, after["Services"]["service_demo"], ",sessions=1,subscribers=0,tokens_used=0,admitted=1")
	require.Equal(t, int64(1), rdb.Do(ctx, "RELEASE", "demo", "go-1").Val())
	require.Equal(t, int64(0), rdb.Do(ctx, "RELEASE", "demo", "go-1").Val())

	pipe := rdb.Pipeline()
	e := pipe.Do(ctx, "ADMIT", "demo", "PRIORITY", "emergency")
	ping := pipe.Ping(ctx)
	pers := pipe.InfoMap(ctx, "persistence")
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	require.Equal(t, []any{int64(1), "OK", int64(0), int64(-1)}, e.Val())
	require.Equal(t, "PONG", ping.Val())
	require.Equal(t, map[string]map[string]string{"Persistence": {"loading": "0", "async_loading": "0"}}, pers.Val())

	var txAdmit *redis.Cmd
	var txPing *redis.StatusCmd
	_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		txAdmit = p.Do(ctx, "ADMIT", "demo", "PRIORITY", "emergency")
		txPing = p.Ping(ctx)
		return nil
	})
	require.NoError(t, err, "MULTI ... EXEC")
	require.Equal(t, []any{int64(1), "OK", int64(0), int64(-1)}, txAdmit.Val())
	require.Equal(t, "PONG", txPing.Val())

	// 1,000 decisions in one MULTI ... EXEC: every one runs.
	var big []*redis.Cmd
	_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for range 1000 {
			big = append(big, p.Do(ctx, "ADMIT", "demo", "PRIORITY", "emergency"))
		}
		return nil
	})
	require.NoError(t, err, "MULTI, 1,000 ADMITs, EXEC")
	for _, c := range big {
		require.Equal(t, []any{int64(1), "OK", int64(0), int64(-1)}, c.Val())
	}

	// A client set up with a user and a password connects to a node
	// without one, as to Redis's default user without a password.
	authed := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr, Username: "default", Password: "anything",
		MaxRetries: -1, DialTimeout: 5 * time.Second})
	defer authed.Close()
	require.Equal(t, "PONG", authed.Ping(ctx).Val(), "AUTH default anything")
	wrong := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr, Username: "admin", Password: "anything",
		MaxRetries: -1, DialTimeout: 5 * time.Second})
	defer wrong.Close()
	require.ErrorContains(t, wrong.Ping(ctx).Err(), "WRONGPASS")
}

// clientReport is what a check script prints: each reply as its client
// library returned it.
type clientReport struct {
	Version        string          `json:"version"`
	Status         string          `json:"status"`
	Ping           json.RawMessage `json:"ping"`
	Info           json.RawMessage `json:"info"`
	InfoServices   json.RawMessage `json:"info_services"`
	InfoEverything json.RawMessage `json:"info_everything"`
	CommandCount   int             `json:"command_count"`
	Command        json.RawMessage `json:"command"`
	ClientInfo     json.RawMessage `json:"client_info"`
	ClientList     json.RawMessage `json:"client_list"`
	ClientID       json.RawMessage `json:"client_id"`
	ClientGetName  string          `json:"client_getname"`
	Admit          json.RawMessage `json:"admit"`
	Quota          json.RawMessage `json:"quota"`
	InfoAfter      json.RawMessage `json:"info_after"`
	Release        int             `json:"release"`
	ReleaseAgain   int             `json:"release_again"`
	Pipeline       json.RawMessage `json:"pipeline"`
	Transaction    json.RawMessage `json:"transaction"`
	// redis-py only: pipeline() with 1,000 ADMITs (replies, admitted),
	// and PING from a client set up with user default and a password.
	Transaction1000 json.RawMessage `json:"transaction_1000"`
	AuthDefaultUser json.RawMessage `json:"auth_default_user"`
}

// checkReport checks what every client sees alike.
func checkReport(t *testing.T, p *proc, got clientReport, name, call string) {
	t.Helper()
	require.Contains(t, []string{"true", `"PONG"`}, string(got.Ping))
	require.Equal(t, 20, got.CommandCount)
	require.Equal(t, name, got.ClientGetName)
	list := decode[[]map[string]any](t, got.ClientList)
	require.Len(t, list, 1, "this client's connection alone")
	require.Equal(t, map[string]any{"id": jsonString(got.ClientID), "name": name, "laddr": p.resp, "db": "0", "flags": "N"},
		pick(list[0], "id", "name", "laddr", "db", "flags"))
	require.JSONEq(t, `[1,"OK",0,99]`, string(got.Admit), "ADMIT demo CALL %s", call)
	quota := decode[map[string]any](t, got.Quota)
	require.Equal(t, map[string]any{"caps_licensed": "1000", "sessions_licensed": 500.0, "sessions_used": 1.0, "license_state": "active"},
		pick(quota, "caps_licensed", "sessions_licensed", "sessions_used", "license_state"))
	after := decode[map[string]any](t, got.InfoAfter)
	delete(after, "caps_used") // the rate over the last second: depends on timing
	require.Equal(t, map[string]string{"name": "demo", "licensed": "1", "caps": "1000", "sessions": "1", "subscribers": "0",
		"tokens_used": "0", "admitted": "1"}, texts(after))
	require.Equal(t, 1, got.Release)
	require.Equal(t, 0, got.ReleaseAgain)
}

func checkPipeline(t *testing.T, got json.RawMessage, want string) {
	t.Helper()
	require.JSONEq(t, want, string(got), "pipelined emergency ADMIT, PING, INFO persistence")
}

// runCheck runs a check script of testdata/clients against a node of its
// own and decodes its report.
func runCheck(t *testing.T, interpreter, script string) (*proc, clientReport) {
	t.Helper()
	p := startDev(t)
	host, port, _ := strings.Cut(p.resp, ":")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, interpreter, filepath.Join("testdata", "clients", script), host, port)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "%s: %s\ncapsgate: %s", script, stderr.String(), p.out.String())
	var report clientReport
	require.NoError(t, json.Unmarshal(out, &report), "%s printed %s", script, out)
	t.Logf("%s: client library %s", script, report.Version)
	return p, report
}

// needClient fails the test under CI=true, where .ci/run installs every
// client, and skips it elsewhere, saying how to install what is missing.
func needClient(t *testing.T, what, install string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing; .ci/run installs it (%s)", what, install)
	}
	t.Skipf("%s is missing (%s)", what, install)
}

// findPython returns a Python 3 that imports redis: Debian's python3-redis
// is in /usr/bin/python3's path, which may not be the first python3 on
// PATH (pyenv, a virtualenv).
func findPython(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range append(candidates, "/usr/bin/python3") {
		if exec.Command(p, "-c", "import redis").Run() == nil {
			return p
		}
	}
	needClient(t, "redis-py (python3 -c 'import redis')", "apt-get install python3-redis")
	return ""
}

// findIORedis returns node once ioredis is installed beside the check
// script (testdata/clients/node_modules).
func findIORedis(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join("testdata", "clients", "node_modules", "ioredis", "package.json"))
	}
	if err != nil {
		needClient(t, "node with ioredis", "apt-get install nodejs npm; npm ci --prefix cmd/capsgate/testdata/clients")
	}
	return node
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(raw, &v), "%s", raw)
	return v
}

// jsonString renders a decoded or raw JSON scalar as its text, so that 1,
// 1.0 and "1" compare alike.
func jsonString(v any) string {
	switch v := v.(type) {
	case json.RawMessage:
		return strings.Trim(string(v), `"`)
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// texts renders every value of m with jsonString.
func texts(m map[string]any) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = jsonString(v)
	}
	return out
}

// pick returns the given keys of m.
func pick[V any](m map[string]V, keys ...string) map[string]V {
	out := make(map[string]V, len(keys))
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

// withoutPolicy drops the routing policy go-redis derives from a command's
// tips (capsgate sends none).
func withoutPolicy(c *redis.CommandInfo) *redis.CommandInfo {
	cp := *c
	cp.CommandPolicy = nil
	return &cp
}
