package resp

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// fakeLister is a server's connections without the server: each state's
// addresses derive from its id.
type fakeLister struct{ conns []*ConnState }

func (f *fakeLister) OpenClients(dst []*ConnState) []*ConnState { return append(dst, f.conns...) }

func (f *fakeLister) ClientAddrs(cs *ConnState) (string, string, int, bool) {
	for _, c := range f.conns {
		if c == cs {
			return fmt.Sprintf("127.0.0.1:%d", 40000+cs.id), "127.0.0.1:6390", int(10 + cs.id), true
		}
	}
	return "", "", 0, false
}

// expect returns an f-test for c: the request in gets the replies want,
// is consumed whole and leaves the connection open.
func (c *testConn) expect(t *testing.T) func(in, want string) {
	return func(in, want string) {
		t.Helper()
		got, rest, closed := c.send(in)
		require.Equal(t, want, got, "request %q", in)
		require.Zero(t, rest)
		require.False(t, closed)
	}
}

// bulk encodes s as a bulk string reply.
func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

// line is the CLIENT LIST line capsgate writes for a connection.
func line(id int64, addr string, fd int, name string, age, idle int, flags, lib, ver string) string {
	return fmt.Sprintf("id=%d addr=%s laddr=%s fd=%d name=%s age=%d idle=%d flags=%s db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 "+
		"qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=NULL user=default redir=-1 resp=2 lib-name=%s lib-ver=%s\n",
		id, addr, map[bool]string{true: "127.0.0.1:6390", false: ""}[addr != ""], fd, name, age, idle, flags, lib, ver)
}

func TestCommandReplies(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	admitInfo := "*10\r\n$5\r\nadmit\r\n:-2\r\n*2\r\n+write\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*2\r\n+@write\r\n+@fast\r\n*0\r\n*0\r\n*0\r\n"
	pingInfo := "*10\r\n$4\r\nping\r\n:-1\r\n*2\r\n+fast\r\n+stale\r\n:0\r\n:0\r\n:0\r\n*2\r\n+@fast\r\n+@connection\r\n*0\r\n*0\r\n*0\r\n"
	f(cmd("COMMAND", "COUNT"), ":20\r\n")
	f(cmd("command", "count"), ":20\r\n")
	f(cmd("COMMAND", "INFO", "ADMIT", "get", "ping"), "*3\r\n"+admitInfo+"*-1\r\n"+pingInfo)
	f(cmd("COMMAND", "DOCS", "quota", "get"), "*2\r\n$5\r\nquota\r\n*8\r\n$7\r\nsummary\r\n$34\r\nShow a service's limits and usage.\r\n"+
		"$5\r\nsince\r\n$5\r\n0.1.0\r\n$5\r\ngroup\r\n$8\r\ncapsgate\r\n"+
		"$9\r\narguments\r\n*1\r\n*4\r\n$4\r\nname\r\n$7\r\nservice\r\n$4\r\ntype\r\n$6\r\nstring\r\n")
	f(cmd("COMMAND", "DOCS", "exec"), "*2\r\n$4\r\nexec\r\n*6\r\n$7\r\nsummary\r\n$36\r\nRun the commands queued since MULTI.\r\n"+
		"$5\r\nsince\r\n$5\r\n0.1.0\r\n$5\r\ngroup\r\n$12\r\ntransactions\r\n")
	f(cmd("COMMAND", "DOCS", "get"), "*0\r\n")
	// At most one name a command: a reply to a thousand repeated names
	// would be past what a client may hold.
	many := func(sub string, n int) string {
		return cmd(append([]string{"COMMAND", sub}, slices.Repeat([]string{"admit"}, n)...)...)
	}
	for _, sub := range []string{"INFO", "DOCS"} {
		reply, _, _ := c.send(many(sub, 20))
		require.Equal(t, 20, strings.Count(reply, "$5\r\nadmit\r\n"), sub)
		f(many(sub, 21), "-ERR COMMAND "+sub+" takes at most 20 command names (none: all of them)\r\n")
	}
	f(cmd("COMMAND", "LIST"), "*20\r\n"+bulk("admit")+bulk("release")+bulk("register")+bulk("deregister")+bulk("consume")+
		bulk("quota")+bulk("oc")+bulk("cl.throttle")+bulk("ping")+bulk("echo")+bulk("quit")+bulk("auth")+bulk("hello")+bulk("select")+bulk("info")+
		bulk("command")+bulk("client")+bulk("multi")+bulk("exec")+bulk("discard"))
	f(cmd("COMMAND", "COUNT", "x"), "-ERR wrong number of arguments for 'command|count' command\r\n")
	f(cmd("COMMAND", "GETKEYS", "admit", "demo"), "-ERR unknown subcommand 'GETKEYS'. Try COMMAND HELP.\r\n")

	all, _, _ := c.send(cmd("COMMAND"))
	require.True(t, strings.HasPrefix(all, "*20\r\n"+admitInfo), all)
	require.Equal(t, 20, strings.Count(all, "*10\r\n"))
	info, _, _ := c.send(cmd("COMMAND", "INFO"))
	require.Equal(t, all, info)
	docs, _, _ := c.send(cmd("COMMAND", "DOCS"))
	require.True(t, strings.HasPrefix(docs, "*40\r\n$5\r\nadmit\r\n*8\r\n"), docs)
	help, _, _ := c.send(cmd("COMMAND", "HELP"))
	require.True(t, strings.HasPrefix(help, "*13\r\n+COMMAND <subcommand>"), help)
}

// TestDocArgs: a usage line becomes COMMAND DOCS's argument maps, which
// redis-cli turns back into its help line and hints.
func TestDocArgs(t *testing.T) {
	m := func(kv ...string) string { // a map whose values are bulk strings
		s := fmt.Sprintf("*%d\r\n", len(kv))
		for _, x := range kv {
			s += bulk(x)
		}
		return s
	}
	got := string(appendDocArgs(nil, "service [PRIORITY normal|high] [AUTH user pass] [section ...]"))
	want := "*4\r\n" + m("name", "service", "type", "string") +
		"*10\r\n" + bulk("name") + bulk("priority") + bulk("type") + bulk("oneof") + bulk("token") + bulk("PRIORITY") +
		bulk("flags") + "*1\r\n+optional\r\n" + bulk("arguments") + "*2\r\n" +
		m("name", "normal", "type", "pure-token", "token", "normal") + m("name", "high", "type", "pure-token", "token", "high") +
		"*10\r\n" + bulk("name") + bulk("auth") + bulk("type") + bulk("block") + bulk("token") + bulk("AUTH") +
		bulk("flags") + "*1\r\n+optional\r\n" + bulk("arguments") + "*2\r\n" +
		m("name", "user", "type", "string") + m("name", "pass", "type", "string") +
		"*6\r\n" + bulk("name") + bulk("section") + bulk("type") + bulk("string") + bulk("flags") + "*2\r\n+optional\r\n+multiple\r\n"
	require.Equal(t, want, got)
}

// TestCommandTableMatchesExec: every command COMMAND lists is one exec
// answers (with too few arguments it says so, never "unknown command").
func TestCommandTableMatchesExec(t *testing.T) {
	c := newTestConn(t, "")
	for _, spec := range commandTable {
		if spec.name == "quit" {
			continue // closes the connection
		}
		got, _, _ := c.send(cmd(spec.name))
		require.NotContains(t, got, "unknown command", spec.name)
	}
}

func TestInfo(t *testing.T) {
	c := newTestConn(t, "")
	c.h.SetConnCounter(func() int64 { return 3 })
	require.NoError(t, c.h.eng.SetLimits("urn:x", admission.Limits{Licensed: true, CAPS: 2.5, Sessions: 1, Subscribers: 1, Tokens: 1}))
	f := c.expect(t)
	f(cmd("ADMIT", "demo"), dec(1, "OK", 0, 99))
	f(cmd("ADMIT", "unlic", "PRIORITY", "emergency"), dec(1, "OK", 0, -1))
	services := "# Services\r\nservices:3\r\n" +
		"service_*:name=*,licensed=0,caps=0,caps_used=0.0,sessions=0,subscribers=0,tokens_used=0,admitted=0\r\n" +
		"service_demo:name=demo,licensed=1,caps=1000,caps_used=0.0,sessions=0,subscribers=0,tokens_used=0,admitted=1\r\n" +
		"service_urn%3Ax:name=urn:x,licensed=1,caps=2.50,caps_used=0.0,sessions=0,subscribers=0,tokens_used=0,admitted=0\r\n"
	f(cmd("INFO", "services"), bulk(services))
	f(cmd("INFO", "Persistence"), bulk("# Persistence\r\nloading:0\r\nasync_loading:0\r\n"))
	f(cmd("INFO", "clients", "REPLICATION"), bulk("# Clients\r\nconnected_clients:3\r\n\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"))
	f(cmd("INFO", "keyspace"), bulk("# Keyspace\r\n"))
	f(cmd("INFO", "commandstats"), bulk(""))

	server := `# Server\r\nredis_version:7\.2\.0\r\ncapsgate_version:0\.1\.0\r\nredis_mode:standalone\r\nos:\w+ \w+\r\narch_bits:64\r\n` +
		`process_id:\d+\r\nuptime_in_seconds:\d+\r\nuptime_in_days:0\r\n`
	want := regexp.MustCompile(`^\$\d+\r\n` + server + `\r\n# Clients\r\nconnected_clients:3\r\n\r\n# Persistence\r\nloading:0\r\nasync_loading:0\r\n` +
		`\r\n# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n` + regexp.QuoteMeta(services) + `\r\n# Keyspace\r\n\r\n$`)
	for _, args := range [][]string{{"INFO"}, {"INFO", "default"}, {"INFO", "all"}, {"INFO", "everything"}, {"INFO", "server", "all"}} {
		got, _, _ := c.send(cmd(args...))
		require.Regexp(t, want, got, "%q", args)
	}
}

// TestInfoServicesBounded: past maxInfoServices, INFO says how many it
// shows and where the rest are.
func TestInfoServicesBounded(t *testing.T) {
	c := newTestConn(t, "")
	for i := range 150 {
		require.NoError(t, c.h.eng.SetLimits(fmt.Sprintf("s%03d", i), admission.DevLimits()))
	}
	got, _, _ := c.send(cmd("INFO", "services"))
	require.Equal(t, maxInfoServices, strings.Count(got, "\r\nservice_"))
	require.True(t, strings.HasSuffix(got, "\r\nservices_shown:100\r\nservices_more:see GET /v1/services\r\n\r\n"), got)
	require.Contains(t, got, "services:151\r\n")
	require.Less(t, len(got), 16<<10)
}

// TestInfoAllocatesNothing: once the Services section is cached, INFO is
// built in the loop's reply buffer, so a client pipelining INFOs (14 KB
// each with 100 services) makes no garbage for the collector.
func TestInfoAllocatesNothing(t *testing.T) {
	c := newTestConn(t, "")
	c.h.SetConnCounter(func() int64 { return 3 })
	for i := range 100 {
		require.NoError(t, c.h.eng.SetLimits(fmt.Sprintf("service-%03d", i), admission.DevLimits()))
	}
	for _, in := range []string{cmd("INFO"), cmd("INFO", "services"), cmd("INFO", "server", "CLIENTS", "nothing")} {
		buf := []byte(in)
		out := make([]byte, 0, 64<<10)
		n, first, _ := c.h.Handle(c.clk.Now(), c.cs, buf, out)
		require.Equal(t, len(buf), n)
		require.Greater(t, len(first), 100, in)
		allocs := testing.AllocsPerRun(100, func() {
			c.h.Handle(c.clk.Now(), c.cs, buf, out[:0])
		})
		require.Zero(t, allocs, in)
	}
}

func TestClientCommands(t *testing.T) {
	c := newTestConn(t, "")
	start := c.clk.Now()
	other := NewConnState(7)
	other.lastActive.Store(start)
	c.cs.lastActive.Store(start)
	l := &fakeLister{conns: []*ConnState{other, c.cs}}
	c.h.SetClientLister(l)
	f := c.expect(t)
	f(cmd("CLIENT", "SETINFO", "LIB-NAME", "redis-py"), "+OK\r\n")
	f(cmd("CLIENT", "SETINFO", "lib-ver", "5.0.1"), "+OK\r\n")
	f(cmd("CLIENT", "SETINFO", "LIB-NAME", "a b"), "-ERR lib-name cannot contain spaces, newlines or special characters, and is at most 128 bytes.\r\n")
	f(cmd("CLIENT", "SETINFO", "LIB-VER", strings.Repeat("1", 129)), "-ERR lib-ver cannot contain spaces, newlines or special characters, and is at most 128 bytes.\r\n")
	f(cmd("CLIENT", "SETINFO", "COLOR", "red"), "-ERR Unrecognized option 'COLOR'\r\n")
	f(cmd("CLIENT", "SETINFO", "LIB-NAME"), "-ERR wrong number of arguments for 'client|setinfo' command\r\n")
	f(cmd("CLIENT", "GETNAME"), "$-1\r\n")
	f(cmd("CLIENT", "SETNAME", "proxy-1"), "+OK\r\n")
	f(cmd("CLIENT", "SETNAME", "proxy 1"), "-"+errClientName+"\r\n")
	f(cmd("CLIENT", "SETNAME", strings.Repeat("n", 129)), "-"+errClientName+"\r\n")
	f(cmd("HELLO", "2", "SETNAME", "bad\nname"), "-"+errClientName+"\r\n")
	f(cmd("CLIENT", "GETNAME"), bulk("proxy-1"))
	f(cmd("CLIENT", "ID"), ":1\r\n")
	f(cmd("CLIENT", "NO-EVICT", "on"), "+OK\r\n")
	f(cmd("CLIENT", "NO-TOUCH", "ON"), "+OK\r\n")
	f(cmd("CLIENT", "NO-TOUCH", "maybe"), "-ERR syntax error\r\n")
	f(cmd("CLIENT", "KILL", "ID", "7"), "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n")
	f(cmd("CLIENT"), "-ERR wrong number of arguments for 'client' command\r\n")

	// Five seconds later this connection asks: it is 5 s old and has just
	// sent a command; the other never sent one.
	c.clk.Advance(5 * time.Second)
	c.cs.lastActive.Store(c.clk.Now())
	self := line(1, "127.0.0.1:40001", 11, "proxy-1", 5, 0, "eT", "redis-py", "5.0.1")
	f(cmd("CLIENT", "INFO"), bulk(self))
	them := line(7, "127.0.0.1:40007", 17, "", 5, 5, "N", "", "")
	f(cmd("CLIENT", "LIST"), bulk(self+them))
	f(cmd("CLIENT", "LIST", "TYPE", "normal"), bulk(self+them))
	f(cmd("CLIENT", "LIST", "TYPE", "pubsub"), bulk(""))
	f(cmd("CLIENT", "LIST", "TYPE", "odd"), "-ERR Unknown client type 'odd'\r\n")
	f(cmd("CLIENT", "LIST", "ID", "7", "99"), bulk(them))
	f(cmd("CLIENT", "LIST", "ID", "x"), "-ERR Invalid client ID\r\n")
	f(cmd("CLIENT", "LIST", "NOW"), "-ERR syntax error\r\n")

	// A closed connection (gone from the lister) is not listed, once the
	// next instant's listing is taken.
	c.clk.Advance(time.Second)
	l.conns = l.conns[1:]
	f(cmd("CLIENT", "LIST"), bulk(line(1, "127.0.0.1:40001", 11, "proxy-1", 6, 1, "eT", "redis-py", "5.0.1")))

	help, _, _ := c.send(cmd("CLIENT", "HELP"))
	require.True(t, strings.HasPrefix(help, "*19\r\n+CLIENT <subcommand>"), help)

	// Without a lister, the connection sees only itself, with no address.
	c.h.SetClientLister(nil)
	f(cmd("CLIENT", "INFO"), bulk(line(1, "", -1, "proxy-1", 6, 1, "eT", "redis-py", "5.0.1")))
	f(cmd("CLIENT", "LIST"), bulk(line(1, "", -1, "proxy-1", 6, 1, "eT", "redis-py", "5.0.1")))
}

// TestClientListBounded: over 10,000 connections CLIENT LIST shows the
// 1000 with the lowest ids and says how many it left out; a pipeline of
// listings scans the connections once.
func TestClientListBounded(t *testing.T) {
	c := newTestConn(t, "")
	l := &fakeLister{}
	for id := int64(10_000); id >= 1; id-- { // in no particular order
		cs := NewConnState(id)
		cs.lastActive.Store(c.clk.Now())
		cs.info.update(func(m *clientMeta) {
			m.name, m.libName, m.libVer = strings.Repeat("n", maxClientAttr), strings.Repeat("l", maxClientAttr), strings.Repeat("v", maxClientAttr)
		})
		l.conns = append(l.conns, cs)
	}
	c.cs = l.conns[len(l.conns)-1]
	c.h.SetClientLister(&countingLister{fakeLister: l})
	got, _, _ := c.send(cmd("CLIENT", "LIST"))
	lines := strings.Split(strings.TrimSuffix(got[strings.Index(got, "\r\n")+2:], "\n\r\n"), "\n")
	require.Len(t, lines, maxClientList+1)
	require.True(t, strings.HasPrefix(lines[0], "id=1 "), lines[0])
	require.True(t, strings.HasPrefix(lines[maxClientList-1], "id=1000 "), lines[maxClientList-1])
	require.Equal(t, "truncated=1 shown=1000 total=10000", lines[maxClientList])
	require.Less(t, len(got), 1<<20, "at most 1 MiB with the longest names")

	cl := c.h.clients.(*countingLister)
	cl.scans = 0
	c.clk.Advance(time.Second)
	got, _, _ = c.send(strings.Repeat(cmd("CLIENT", "LIST", "ID", "5000"), 100))
	require.Equal(t, 100, strings.Count(got, "id=5000 "))
	require.Equal(t, 1, cl.scans, "one scan for the pipeline")
	// IDs in any order, repeated or unknown: each connection once, in ID
	// order, the unknown left out (each ID looked up in the snapshot).
	got, _, _ = c.send(cmd("CLIENT", "LIST", "ID", "9000", "3", "3", "77777", "12"))
	picked := strings.Split(strings.TrimSuffix(got[strings.Index(got, "\r\n")+2:], "\n\r\n"), "\n")
	require.Len(t, picked, 3, got)
	for i, id := range []int{3, 12, 9000} {
		require.True(t, strings.HasPrefix(picked[i], fmt.Sprintf("id=%d ", id)), picked[i])
	}
	require.Equal(t, 1, cl.scans)

	// A client's listing stops at its part of the node's reply memory
	// (the server sets outLimit: 32 KiB each with a thousand clients).
	full := lines[:maxClientList]
	lineLen := len(full[0]) + 1
	for _, limit := range []int{1, lineLen, lineLen + 1, 32 << 10} {
		c.cs.outLimit = limit
		got, _, _ = c.send(cmd("CLIENT", "LIST"))
		lines = strings.Split(strings.TrimSuffix(got[strings.Index(got, "\r\n")+2:], "\n\r\n"), "\n")
		shown, size := 0, 0 // lines are added until they reach the limit
		for ; size < limit; shown++ {
			size += len(full[shown]) + 1
		}
		require.Equal(t, fmt.Sprintf("truncated=1 shown=%d total=10000", shown), lines[len(lines)-1], "limit %d", limit)
		require.Len(t, lines, shown+1)
		for i := range shown {
			require.True(t, strings.HasPrefix(lines[i], fmt.Sprintf("id=%d ", i+1)))
		}
		require.Less(t, len(got), limit+2*lineLen)
	}
}

type countingLister struct {
	*fakeLister
	scans int
}

func (c *countingLister) OpenClients(dst []*ConnState) []*ConnState {
	c.scans++
	return c.fakeLister.OpenClients(dst)
}

// ClientAddrs finds the connection by id (the fake's search by pointer
// would take 10,000 steps a line).
func (c *countingLister) ClientAddrs(cs *ConnState) (string, string, int, bool) {
	return fmt.Sprintf("127.0.0.1:%d", 40000+cs.id), "127.0.0.1:6390", int(10 + cs.id), true
}

// TestClientListServer lists the real connections of a real server, asked
// through go-redis from several event loops at once (run with -race).
func TestClientListServer(t *testing.T) {
	e := admission.NewEngine(admission.DefaultConfig())
	h := NewHandler(e, "")
	s := NewServer(Config{Addr: "127.0.0.1:0", EventLoops: 2}, h, admission.NewSystemClock())
	h.SetClientLister(s) // before serving, as node.New does
	require.NoError(t, s.Start())
	t.Cleanup(func() { require.NoError(t, s.Stop(context.Background())) })
	ctx := context.Background()
	const n = 8
	clients := make([]*redis.Client, n)
	for i := range clients {
		clients[i] = redis.NewClient(&redis.Options{Addr: s.Addr(), ClientName: fmt.Sprintf("c%d", i), PoolSize: 1, MaxRetries: -1})
		t.Cleanup(func() { clients[i].Close() })
		require.NoError(t, clients[i].Ping(ctx).Err())
	}
	lists := make(chan string, n)
	for _, c := range clients {
		go func() { l, _ := c.ClientList(ctx).Result(); lists <- l }()
	}
	for range n {
		list := <-lists
		require.Equal(t, n, strings.Count(list, "\n"), list)
		for i := range n {
			require.Regexp(t, fmt.Sprintf(`(?m)^id=\d+ addr=127\.0\.0\.1:\d+ laddr=%s fd=\d+ name=c%d age=\d+ idle=\d+ flags=N db=0 .* lib-name=go-redis\S* lib-ver=%s$`,
				regexp.QuoteMeta(s.Addr()), i, regexp.QuoteMeta(redis.Version())), list)
		}
	}
	info, err := clients[3].ClientInfo(ctx).Result()
	require.NoError(t, err)
	require.Equal(t, "c3", info.Name)
	require.Equal(t, s.Addr(), info.LAddr)
	require.Equal(t, redis.Version(), info.LibVer)
	require.Equal(t, 2, info.Resp)
	require.Positive(t, info.FD)
}

func TestTransactions(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	// What redis-py's pipeline(), go-redis's TxPipelined and ioredis's
	// multi() send: MULTI, the commands, EXEC, in one write.
	f(cmd("MULTI")+cmd("ADMIT", "demo", "CALL", "c1")+cmd("PING")+cmd("ADMIT", "de mo")+cmd("RELEASE", "demo", "c1")+cmd("EXEC"),
		"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n"+dec(1, "OK", 0, 99)+"+PONG\r\n-ERR invalid service name\r\n:1\r\n")
	f(cmd("MULTI"), "+OK\r\n")
	f(cmd("MULTI"), "-ERR MULTI calls can not be nested\r\n")
	f(cmd("EXEC"), "*0\r\n")
	f(cmd("EXEC"), "-ERR EXEC without MULTI\r\n")
	f(cmd("DISCARD"), "-ERR DISCARD without MULTI\r\n")
	f(cmd("MULTI")+cmd("ADMIT", "demo")+cmd("DISCARD")+cmd("EXEC"), "+OK\r\n+QUEUED\r\n+OK\r\n-ERR EXEC without MULTI\r\n")

	// A command refused while queuing discards the transaction at EXEC;
	// what was queued before it does not run.
	abort := "-EXECABORT Transaction discarded because of previous errors.\r\n"
	f(cmd("MULTI")+cmd("ADMIT", "demo", "CALL", "c2")+cmd("NOSUCH")+cmd("PING")+cmd("EXEC"),
		"+OK\r\n+QUEUED\r\n-ERR unknown command 'NOSUCH'\r\n+QUEUED\r\n"+abort)
	f(cmd("RELEASE", "demo", "c2"), ":0\r\n")
	f(cmd("MULTI")+cmd("ADMIT")+cmd("EXEC"), "+OK\r\n-ERR wrong number of arguments for 'admit' command\r\n"+abort)
	f(cmd("MULTI")+cmd("INFO")+cmd("EXEC"), "+OK\r\n-ERR 'info' cannot be queued in a transaction (MULTI)\r\n"+abort)
	big := cmd("ECHO", strings.Repeat("x", 40<<10))
	f(cmd("MULTI")+big+big+cmd("EXEC"),
		"+OK\r\n+QUEUED\r\n-ERR transaction too long: at most 256 commands and 64 KiB between MULTI and EXEC\r\n"+abort)
	// The bounds follow the client's part of the node's reply memory
	// (set by the server at each read; none in this test: the least).
	for _, b := range []struct{ outLimit, commands, kib int }{{0, 256, 64}, {32 << 10, 256, 64}, {64 << 10, 256, 64},
		{256 << 10, 1024, 256}, {1 << 20, 4096, 1024}, {4 << 20, 4096, 1024}} {
		c.cs.outLimit = b.outLimit
		tooLong := fmt.Sprintf("-ERR transaction too long: at most %d commands and %d KiB between MULTI and EXEC\r\n", b.commands, b.kib)
		got, _, _ := c.send(cmd("MULTI") + strings.Repeat(cmd("PING"), b.commands+1) + cmd("EXEC"))
		require.Equal(t, "+OK\r\n"+strings.Repeat("+QUEUED\r\n", b.commands)+tooLong+abort, got, "outLimit %d", b.outLimit)
		got, _, _ = c.send(cmd("MULTI") + strings.Repeat(cmd("PING"), b.commands) + cmd("EXEC"))
		require.True(t, strings.HasSuffix(got, fmt.Sprintf("*%d\r\n", b.commands)+strings.Repeat("+PONG\r\n", b.commands)), "outLimit %d", b.outLimit)
		require.False(t, c.cs.tx != nil)
	}
	// QUOTA's replies (up to 1 KiB each counted) and the commands that
	// may forward work to the cluster have bounds of their own.
	c.cs.outLimit = 1 << 20
	got, _, _ := c.send(cmd("MULTI") + strings.Repeat(cmd("QUOTA", "demo"), 1025) + cmd("EXEC"))
	require.Equal(t, "+OK\r\n"+strings.Repeat("+QUEUED\r\n", 1024)+
		"-ERR transaction too long: its replies would pass 1024 KiB\r\n"+abort, got)
	got, _, _ = c.send(cmd("MULTI") + strings.Repeat(cmd("QUOTA", "demo"), 1024) + cmd("EXEC"))
	require.Equal(t, 1024, strings.Count(got, "$13\r\ncaps_licensed\r\n"), "every QUOTA answered")
	for _, forwarding := range []string{cmd("RELEASE", "demo", "nobody"), cmd("REGISTER", "demo", "s1"), cmd("DEREGISTER", "demo", "s1"),
		cmd("CONSUME", "demo", "acme", "1", "ID", "x")} {
		got, _, _ = c.send(cmd("MULTI") + strings.Repeat(cmd("RELEASE", "demo", "nobody"), MaxForwardQueued) + forwarding + cmd("EXEC"))
		require.Equal(t, "+OK\r\n"+strings.Repeat("+QUEUED\r\n", MaxForwardQueued)+
			"-ERR transaction too long: at most 256 RELEASE, REGISTER, DEREGISTER and CONSUME ... ID between MULTI and EXEC\r\n"+abort, got)
	}
	got, _, _ = c.send(cmd("MULTI") + strings.Repeat(cmd("RELEASE", "demo", "nobody"), MaxForwardQueued) +
		strings.Repeat(cmd("CONSUME", "demo", "acme", "1")+cmd("ADMIT", "demo"), 100) + cmd("EXEC"))
	require.True(t, strings.HasPrefix(got, "+OK\r\n"+strings.Repeat("+QUEUED\r\n", MaxForwardQueued+200)+"*456\r\n"), got[:min(len(got), 300)])

	// What redis-py's pipeline() sends for 1,000 decisions, with one
	// connection open: every one runs, in order.
	c.cs.outLimit = 1 << 20
	var batch strings.Builder
	for i := range 1000 {
		batch.WriteString(cmd("ADMIT", "demo", "CALL", fmt.Sprintf("tx-%d", i)))
	}
	got, _, _ = c.send(cmd("MULTI") + batch.String() + cmd("EXEC"))
	queued := "+OK\r\n" + strings.Repeat("+QUEUED\r\n", 1000) + "*1000\r\n"
	require.True(t, strings.HasPrefix(got, queued), got[:min(len(got), 200)])
	require.Equal(t, 1000, strings.Count(got[len(queued):], "*4\r\n"), "a decision for each")
	c.cs.outLimit = 0

	// QUIT in a transaction closes the connection at once.
	got, _, closed := c.send(cmd("MULTI") + cmd("QUIT"))
	require.Equal(t, "+OK\r\n+OK\r\n", got)
	require.True(t, closed)

	a := newTestConn(t, "s3cret")
	got, _, _ = a.send(cmd("MULTI"))
	require.Equal(t, "-NOAUTH Authentication required.\r\n", got)
}

// A command refused for its arity while a transaction is open flags it,
// as in Redis, whatever the command: EXEC, DISCARD and MULTI too (they run
// at once, not queued). The final EXEC then discards it.
func TestTransactionArityErrorsAbort(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	abort := "-EXECABORT Transaction discarded because of previous errors.\r\n"
	wrong := func(name string) string { return "-ERR wrong number of arguments for '" + name + "' command\r\n" }
	f(cmd("MULTI")+cmd("EXEC", "x")+cmd("EXEC"), "+OK\r\n"+wrong("exec")+abort)
	f(cmd("MULTI")+cmd("PING")+cmd("DISCARD", "x")+cmd("EXEC"), "+OK\r\n+QUEUED\r\n"+wrong("discard")+abort)
	f(cmd("MULTI")+cmd("MULTI", "x")+cmd("PING")+cmd("EXEC"), "+OK\r\n"+wrong("multi")+"+QUEUED\r\n"+abort)
	f(cmd("MULTI")+cmd("ADMIT", "demo", "CALL", "t1")+cmd("EXEC", "x")+cmd("DISCARD"), "+OK\r\n+QUEUED\r\n"+wrong("exec")+"+OK\r\n")
	f(cmd("RELEASE", "demo", "t1"), ":0\r\n")
	// Outside a transaction the same errors flag nothing.
	f(cmd("EXEC", "x")+cmd("MULTI")+cmd("PING")+cmd("EXEC"), wrong("exec")+"+OK\r\n+QUEUED\r\n*1\r\n+PONG\r\n")
}

// Rates print as integers where whole, with two decimals otherwise, and
// one saturated at the end of the range as the largest integer.
func TestAppendRate(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 1: "1", -1: "-1", 2.5: "2.50", 1e15: "1000000000000000.00",
		math.MaxInt64: "9223372036854775807", math.Inf(1): "9223372036854775807", 1e300: "9223372036854775807"} {
		require.Equal(t, want, string(appendRate(nil, v)), "%v", v)
	}
}

// A listing within the snapshot's 100 ms shows what a client changed of
// itself since (its name, library, flags), and a client that connected
// since sees itself.
func TestClientListShowsChangesAtOnce(t *testing.T) {
	c := newTestConn(t, "")
	l := &fakeLister{conns: []*ConnState{c.cs}}
	c.h.SetClientLister(l)
	got, _, _ := c.send(cmd("CLIENT", "LIST"))
	require.Contains(t, got, "id=1 ")
	require.Contains(t, got, " name= ")
	for _, step := range []struct{ send, want string }{
		{cmd("CLIENT", "SETNAME", "proxy-7"), " name=proxy-7 "},
		{cmd("CLIENT", "SETINFO", "LIB-NAME", "go-redis"), " lib-name=go-redis "},
		{cmd("CLIENT", "NO-EVICT", "ON"), " flags=e "},
	} {
		c.send(step.send)
		got, _, _ = c.send(cmd("CLIENT", "LIST"))
		require.Contains(t, got, step.want)
	}
	other := NewConnState(2)
	l.conns = append(l.conns, other)
	c.cs = other
	got, _, _ = c.send(cmd("CLIENT", "LIST"))
	require.Contains(t, got, "id=1 ")
	require.Contains(t, got, "id=2 ")
}

// TestHelloSetNameListed: a name set by HELLO shows in the next CLIENT
// LIST at once, as one set by CLIENT SETNAME does (the listing of the
// instant is rendered again).
func TestHelloSetNameListed(t *testing.T) {
	c := newTestConn(t, "")
	c.h.SetClientLister(&fakeLister{conns: []*ConnState{c.cs}})
	list := func() string { got, _, _ := c.send(cmd("CLIENT", "LIST")); return got }
	require.Contains(t, list(), " name= ")
	got, _, _ := c.send(cmd("HELLO", "2", "SETNAME", "proxy-7"))
	require.True(t, strings.HasPrefix(got, "*14\r\n"), got)
	require.Contains(t, list(), " name=proxy-7 ")
}
