package deploy

// Kamailio (deploy/kamailio/kamailio.cfg, Debian's kamailio and
// kamailio-redis-modules) in front of real capsgate nodes, driven by sipp
// (Debian's sip-tester) as callers, callee and registrar, all on loopback:
//
//   sipp callers ──UDP──▶ Kamailio ──UDP──▶ sipp callee / sipp registrar
//                            │ ndb_redis: ADMIT, RELEASE, REGISTER, DEREGISTER
//                            ▼
//                     capsgate node(s) (cluster/farm)
//
// Service voice is licensed for licensedCAPS; normal callers offer twice
// that for overloadFor while emergency callers (112 and urn:service:sos)
// call alongside; then a second licence of licensedCAPS is loaded and the
// forwarded rate must rise at once. Every call is accounted for three
// ways: what the callers saw (200 forwarded, 503 refused with the reason
// phrase and no Retry-After), what the callee saw, and capsgate's own
// counters; every admitted call must be released (sessions back to 0).

import (
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsgate/capsgate/cluster/farm"
)

const (
	// service is the capsgate service Kamailio counts calls against.
	service = "voice"
	// licensedCAPS is L: sipp offers 2 × L. 200 leaves room on 2 cores for
	// capsgate, Kamailio and three sipp processes (the stack does ~5,000
	// calls/s here), so what is measured is capsgate's limit.
	licensedCAPS = 200
	// overloadFor is how long 2 × L is offered before the second licence.
	overloadFor = 10500 * time.Millisecond
	// raisedFor is how long it goes on after the second licence.
	raisedFor = 4500 * time.Millisecond
	// holdCall is how long an answered call lasts before its BYE.
	holdCall = time.Second
	// emergencyCPS and sosCPS are the emergency callers' rates (112 and
	// urn:service:sos): never refused, whatever the overload.
	emergencyCPS, sosCPS = 10, 5
	// subscribersLicensed of subscribersOffered registrations are admitted.
	subscribersLicensed, subscribersOffered = 15, 20
	// busyCalls and cancelledCalls end with 486 and CANCEL/487.
	busyCalls, cancelledCalls = 10, 10
)

// scenarios is where the sipp scenarios live.
var scenarios = filepath.Join("kamailio", "sipp")

func TestKamailioOneNode(t *testing.T) { testKamailio(t, 1) }

func TestKamailioThreeNodes(t *testing.T) { testKamailio(t, 3) }

func testKamailio(t *testing.T, nodes int) {
	needProcesses(t)
	tools := needTools(t, "kamailio", "sipp", "timeout")
	start := time.Now()

	c := startCluster(t, nodes, "--caps", strconv.Itoa(licensedCAPS), "--subscribers", strconv.Itoa(subscribersLicensed))
	c.WaitCAPS(service, licensedCAPS, 5*time.Second)
	// The bound's burst is the buckets' depths once every node has planned
	// its part: before its first plan a node enforces nothing and its
	// depth reads 0 (a CI run read a burst of 0 and bounded 2,138 calls
	// by 2,124).
	if err := c.AwaitShares(service, licensedCAPS, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var burst float64
	for _, n := range c.Nodes() {
		q, err := quota(n, service)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := strconv.ParseFloat(q["caps_burst"], 64)
		burst += b
	}
	px := startProxy(t, tools, c)
	kam, uasPort, regPort, k, uas, registrar := px.addr, px.uasPort, px.regPort, px.k, px.uas, px.registrar
	t.Logf("%d capsgate node(s), Kamailio on %s, callee on :%d, registrar on :%d; licensed %d CAPS (burst %g), ready after %s",
		nodes, kam, uasPort, regPort, licensedCAPS, burst, time.Since(start).Round(time.Millisecond))

	// REGISTER: Expires as the TTL, DEREGISTER on Expires: 0.
	reg := runSipp(t, tools, "register", kam, 15*time.Second, "register.xml",
		"-key", "expires", "3600", "-key", "domain", "example.com",
		"-r", "50", "-m", strconv.Itoa(subscribersOffered))
	regCounts := countStatus(reg)
	registered := regCounts["SIP/2.0 200 OK"]
	t.Logf("REGISTER of %d subscribers, %d licensed: %v", subscribersOffered, subscribersLicensed, regCounts)
	// One node admits exactly the licence. A cluster shares it by what each
	// node holds plus an even part of the rest, so the last nodes-1 slots
	// may go unused when the registrations happen to arrive at a node whose
	// part is used up.
	if registered > subscribersLicensed || registered < subscribersLicensed-(nodes-1) ||
		regCounts["SIP/2.0 503 Licensed Subscribers Exceeded"] != subscribersOffered-registered {
		t.Errorf("registrations: %v, want %d × 200 (%d with %d nodes) and the rest 503 Licensed Subscribers Exceeded",
			regCounts, subscribersLicensed, subscribersLicensed-(nodes-1), nodes)
	}
	if got := quotaSum(t, c, "subscribers_used"); got != registered {
		t.Errorf("subscribers_used %d after %d registrations", got, registered)
	}
	unreg := runSipp(t, tools, "unregister", kam, 15*time.Second, "register.xml",
		"-key", "expires", "0", "-key", "domain", "example.com",
		"-r", "50", "-m", strconv.Itoa(subscribersOffered))
	if got := countStatus(unreg)["SIP/2.0 200 OK"]; got != subscribersOffered {
		t.Errorf("%d of %d unregistrations got 200", got, subscribersOffered)
	}
	if err := eventually(2*time.Second, func() error {
		if got := quotaSum(t, c, "subscribers_used"); got != 0 {
			return fmt.Errorf("subscribers_used %d after Expires: 0 for every one", got)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Overload: 2 × L normal calls for overloadFor + raisedFor, emergency
	// calls alongside, a second licence after overloadFor.
	total := overloadFor + raisedFor
	offered := 2 * licensedCAPS
	runStart := time.Now()
	normal := startSipp(t, tools, "normal", kam, total+30*time.Second, "uac.xml",
		"-key", "ruri", "sip:5551234@"+kam, "-r", strconv.Itoa(offered),
		"-m", strconv.Itoa(int(float64(offered)*total.Seconds())), "-d", strconv.Itoa(int(holdCall.Milliseconds())))
	emergency := startSipp(t, tools, "emergency", kam, total+30*time.Second, "uac.xml",
		"-key", "ruri", "sip:112@"+kam, "-r", strconv.Itoa(emergencyCPS),
		"-m", strconv.Itoa(int(emergencyCPS*total.Seconds())), "-d", strconv.Itoa(int(holdCall.Milliseconds())))
	sos := startSipp(t, tools, "sos", kam, total+30*time.Second, "uac.xml",
		"-key", "ruri", "urn:service:sos", "-r", strconv.Itoa(sosCPS),
		"-m", strconv.Itoa(int(sosCPS*total.Seconds())), "-d", strconv.Itoa(int(holdCall.Milliseconds())))

	time.Sleep(time.Until(runStart.Add(overloadFor)))
	loadAt := time.Now()
	loadOn := c.Node(nodes) // the last node: the licence spreads from there
	if err := loadOn.PostLicense(c.Issue("--service", service, "--caps", strconv.Itoa(licensedCAPS))); err != nil {
		t.Fatal(err)
	}
	loaded := time.Now()
	if err := c.AwaitCAPS(service, 2*licensedCAPS, 2*time.Second); err != nil {
		t.Errorf("second licence: %v", err)
	}
	spread := time.Since(loadAt)

	normalCalls := normal.results(t, total+25*time.Second)
	emergencyCalls := emergency.results(t, 15*time.Second)
	sosCalls := sos.results(t, 15*time.Second)

	// Failed and cancelled calls are released too.
	busy := runSipp(t, tools, "busy", kam, 15*time.Second, "uac.xml",
		"-key", "ruri", "sip:busy@"+kam, "-r", "20", "-m", strconv.Itoa(busyCalls))
	cancelled := runSipp(t, tools, "cancel", kam, 15*time.Second, "cancel.xml",
		"-key", "ruri", "sip:cancel@"+kam, "-r", "20", "-m", strconv.Itoa(cancelledCalls))

	// Every admitted call released: sessions back to 0 on every node.
	released, ok := awaitReleased(t, time.Now(), func() error { return sessionsReleased(c) })
	leaked := !ok
	defer traceCalls(t, k, leaked, map[string][]call{"normal": normalCalls, "emergency": emergencyCalls,
		"sos": sosCalls, "busy": busy, "cancel": cancelled}, normal, emergency, sos)

	// What the callers saw.
	// Phase 1: answered before the second licence's load began. Phase 2:
	// answered from a second after it to the planned end of the offer (a
	// call answered later was delayed, e.g. by a retransmission).
	firstReply, lastReply := normalCalls[0].at, normalCalls[len(normalCalls)-1].at
	end2 := runStart.Add(total)
	if lastReply.Before(end2) {
		end2 = lastReply
	}
	before, after := split(normalCalls, loadAt, loaded.Add(time.Second))
	after, _ = split(after, end2, end2)
	nb, na := tally(before), tally(after)
	window1 := loadAt.Sub(runStart).Seconds()
	window2 := end2.Sub(loaded.Add(time.Second)).Seconds()
	bound := 1.01*licensedCAPS*window1 + burst + 1
	t.Logf("overload, %d CAPS offered against %d licensed for %.1f s: forwarded %d, rejected %d (%.1f forwarded/s; SPEC bound 1.01 × %d × %.1f + burst %g = %.0f); %s",
		offered, licensedCAPS, window1, nb.forwarded, nb.rejected, float64(nb.forwarded)/loadAt.Sub(firstReply).Seconds(),
		licensedCAPS, window1, burst, bound, nb)
	// The forwarded rate after the load: the share of the offer forwarded
	// (timing-proof), and forwarded per second of the window.
	rate2 := float64(offered) * float64(na.forwarded) / float64(max(1, na.forwarded+na.rejected))
	t.Logf("second licence loaded on %s: %d CAPS everywhere %s after the load (%s to POST); over the next %.1f s from a second after it: forwarded %d, rejected %d (%.1f forwarded/s; %.1f %% of the offer = %.1f/s)",
		loadOn.Name, 2*licensedCAPS, spread.Round(time.Millisecond), loaded.Sub(loadAt).Round(time.Millisecond),
		window2, na.forwarded, na.rejected, float64(na.forwarded)/window2, 100*rate2/float64(offered), rate2)
	all := tally(normalCalls)
	t.Logf("normal calls in all: forwarded %d, rejected %d, other %d, of %d sent", all.forwarded, all.rejected, all.other, len(normalCalls))
	ec, sc := tally(emergencyCalls), tally(sosCalls)
	t.Logf("emergency calls (112): forwarded %d, rejected %d; urn:service:sos: forwarded %d, rejected %d", ec.forwarded, ec.rejected, sc.forwarded, sc.rejected)
	bc, cc := countStatus(busy), countStatus(cancelled)
	t.Logf("busy calls: %v; cancelled calls: %v; sessions back to 0 %s after the last call", bc, cc, released.Round(time.Millisecond))
	t.Logf("whole test %s", time.Since(start).Round(time.Millisecond))

	// The SPEC bound, over the overload window (decisions before the
	// second licence: replies that came before its load began).
	if float64(nb.forwarded) > bound {
		t.Errorf("forwarded %d before the second licence, over %.1f s: more than 1.01 × %d × %.1f + burst %g = %.0f",
			nb.forwarded, window1, licensedCAPS, window1, burst, bound)
	}
	if low := 0.9 * licensedCAPS * loadAt.Sub(firstReply).Seconds(); float64(nb.forwarded) < low {
		t.Errorf("forwarded %d before the second licence, want about %d/s (at least %.0f)", nb.forwarded, licensedCAPS, low)
	}
	if nb.rejected < int(0.3*float64(nb.forwarded)) {
		t.Errorf("only %d rejected against %d forwarded: 2 × L was not offered", nb.rejected, nb.forwarded)
	}
	if rate2 < 1.5*licensedCAPS || na.forwarded < int(licensedCAPS*window2) {
		t.Errorf("forwarded %d (%.1f/s of the offer) after the second licence, want close to %d/s", na.forwarded, rate2, 2*licensedCAPS)
	}
	if all.other > 0 {
		t.Errorf("%d normal calls ended neither 200 nor 503: %v", all.other, all.statuses)
	}
	for status := range all.statuses {
		if strings.Contains(status, " 503 ") && status != "SIP/2.0 503 Licensed CAPS Exceeded" {
			t.Errorf("a refusal %q: want 503 Licensed CAPS Exceeded without Retry-After", status)
		}
	}
	for name, tl := range map[string]callTally{"112": ec, "urn:service:sos": sc} {
		if tl.forwarded == 0 || tl.rejected+tl.other > 0 {
			t.Errorf("emergency calls to %s: %s; want every one forwarded", name, tl)
		}
	}
	if bc["SIP/2.0 486 Busy Here"] != busyCalls {
		t.Errorf("busy calls: %v, want %d × 486", bc, busyCalls)
	}
	if cc["SIP/2.0 487 Request Terminated"] != cancelledCalls {
		t.Errorf("cancelled calls: %v, want %d × 487", cc, cancelledCalls)
	}

	// Call by call: what the callers saw against what the callee saw. A
	// caller that gave up on a call (no final reply within sipp's
	// -recv_timeout, on a machine too busy to keep up) logged nothing for
	// it; such lost calls are counted and may be a few, but every call the
	// callee saw, lost or not, must have been admitted by capsgate.
	uas.stop(syscall.SIGUSR1, 5*time.Second)
	registrar.stop(syscall.SIGUSR1, 5*time.Second)
	invites, err := readAll(filepath.Join(uas.dir, "uas_*_logs.log"))
	if err != nil {
		t.Fatal(err)
	}
	callee := calleeCalls(t, invites)
	sent := map[string]int{"normal": int(float64(offered) * total.Seconds()),
		"emergency": int(emergencyCPS * total.Seconds()), "sos": int(sosCPS * total.Seconds()),
		"busy": busyCalls, "cancel": cancelledCalls}
	logged := map[string][]call{"normal": normalCalls, "emergency": emergencyCalls, "sos": sosCalls,
		"busy": busy, "cancel": cancelled}
	acc := accountCalls(callee, logged, sent)
	for _, p := range acc.problems {
		t.Error(p)
	}
	t.Logf("the callee got %d INVITEs of %d calls (%d emergency); the callers lost %d calls, %d of them seen by the callee",
		acc.invites, len(callee), acc.calleeEmergency, acc.lost, acc.lostSeen)
	if limit := max(3, acc.sent/200); acc.lost > limit {
		t.Errorf("the callers lost %d of %d calls (no final reply), more than %d", acc.lost, acc.sent, limit)
	}

	// capsgate's own counters agree with the callee, call for call.
	nodesList := c.Nodes()
	okSample := fmt.Sprintf(`capsgate_admissions_total{service="%s",reason="OK"}`, service)
	capsSample := fmt.Sprintf(`capsgate_admissions_total{service="%s",reason="CAPS"}`, service)
	emSample := fmt.Sprintf(`capsgate_emergency_admissions_total{service="%s"}`, service)
	admitted, err1 := sumMetric(nodesList, okSample)
	refused, err2 := sumMetric(nodesList, capsSample)
	emerg, err3 := sumMetric(nodesList, emSample)
	if err := firstErr(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	t.Logf("capsgate counted %g admitted, %g refused (CAPS), %g emergency", admitted, refused, emerg)
	if want := len(callee) - acc.calleeEmergency; int(admitted) != want {
		t.Errorf("capsgate admitted %g, the callee got %d calls that were not emergency calls", admitted, want)
	}
	// A lost call the callee never saw may have been refused.
	if int(refused) < all.rejected || int(refused) > all.rejected+acc.lost-acc.lostSeen {
		t.Errorf("capsgate refused %g for CAPS, the callers saw %d refused and lost %d calls the callee never saw",
			refused, all.rejected, acc.lost-acc.lostSeen)
	}
	if int(emerg) != acc.calleeEmergency {
		t.Errorf("capsgate counted %g emergency calls, the callee got %d", emerg, acc.calleeEmergency)
	}
	if acc.lost > 0 {
		for _, r := range []*sippRun{normal, emergency, sos} {
			t.Logf("sipp %s errors, last lines:\n%s", r.name, lastChars(r.errors(), 1500))
		}
	}
	if t.Failed() {
		t.Logf("Kamailio log, last lines:\n%s", k.tail(40))
	}
}

// sessionsReleased reports the first node still holding a session or an
// emergency session of service.
func sessionsReleased(c *farm.Cluster) error {
	for _, n := range c.Nodes() {
		q, err := quota(n, service)
		if err != nil {
			return err
		}
		if q["sessions_used"] != "0" || q["sessions_emergency"] != "0" {
			return fmt.Errorf("%s: sessions_used %s, sessions_emergency %s", n.Name, q["sessions_used"], q["sessions_emergency"])
		}
	}
	return nil
}

// awaitReleased waits up to 10 s for check to find every admitted call
// released and returns how long after since it did; it fails the test
// and reports false if it never does.
func awaitReleased(t *testing.T, since time.Time, check func() error) (time.Duration, bool) {
	t.Helper()
	var released time.Duration
	if err := eventually(10*time.Second, func() error {
		if err := check(); err != nil {
			return err
		}
		released = time.Since(since)
		return nil
	}); err != nil {
		t.Errorf("every admitted call released: %v", err)
		return 0, false
	}
	return released, true
}

// startCluster starts nodes capsgate nodes and loads a licence for service
// with the given limits on the first.
func startCluster(t *testing.T, nodes int, limits ...string) *farm.Cluster {
	t.Helper()
	c := farm.New(t, nodes)
	if nodes > 1 {
		c.WaitMembers(nodes, 10*time.Second)
	}
	c.LoadLicense(1, c.Issue(append([]string{"--service", service}, limits...)...))
	return c
}

// proxy is Kamailio on addr with the sipp callee and registrar behind it.
type proxy struct {
	addr             string
	uasPort, regPort int
	k                *proc
	uas, registrar   *sippRun
}

// startProxy starts the sipp callee and registrar, and Kamailio in front of
// them asking c's nodes (with CG_TRACE and the extra -A defines).
func startProxy(t *testing.T, tools map[string]string, c *farm.Cluster, extra ...string) proxy {
	t.Helper()
	dir := t.TempDir()
	var px proxy
	px.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	px.uasPort, px.regPort = freePort(t), freePort(t)
	px.uas = startSippServer(t, tools, "callee", "uas.xml", px.uasPort)
	px.registrar = startSippServer(t, tools, "registrar", "registrar.xml", px.regPort)
	defines := []string{
		`CG_SERVICE="` + service + `"`,
		fmt.Sprintf("CG_SERVERS=%d", len(c.Nodes())),
		fmt.Sprintf(`CG_NEXT_HOP="sip:127.0.0.1:%d"`, px.uasPort),
		fmt.Sprintf(`CG_REGISTRAR="sip:127.0.0.1:%d"`, px.regPort),
		"CG_TRACE", // every ADMIT and RELEASE logged, to name a call left unreleased
	}
	defines = append(defines, extra...)
	for i, n := range c.Nodes() {
		host, port, _ := net.SplitHostPort(n.RESPAddr)
		defines = append(defines, fmt.Sprintf(`CG_SERVER%d="name=cg%d;addr=%s;port=%s"`, i+1, i+1, host, port))
	}
	px.k = startKamailio(t, tools["kamailio"], dir, px.addr, defines...)
	return px
}

// startKamailio runs kamailio.cfg listening on addr (UDP) with the given
// -A defines, and waits until it answers OPTIONS.
func startKamailio(t *testing.T, bin, dir, addr string, defines ...string) *proc {
	t.Helper()
	cfg, err := filepath.Abs(filepath.Join("kamailio", "kamailio.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{bin, "-DD", "-E", "-f", cfg, "-Y", dir, "-P", filepath.Join(dir, "kamailio.pid"),
		"-m", "512", "-M", "8", "-l", "udp:" + addr, "-A", `CG_RUNDIR="` + dir + `"`}
	for _, d := range defines {
		argv = append(argv, "-A", d)
	}
	k := startProc(t, dir, "kamailio", argv...)
	if err := eventually(15*time.Second, func() error {
		if !k.running() {
			return fmt.Errorf("kamailio exited: %v\n%s", k.err, k.tail(20))
		}
		return sipOptions(addr)
	}); err != nil {
		t.Fatalf("Kamailio on %s did not answer OPTIONS: %v\n%s", addr, err, k.tail(20))
	}
	return k
}

// sipOptions sends OPTIONS to the proxy at addr and wants a 200.
func sipOptions(addr string) error {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	msg := "OPTIONS sip:" + addr + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";rport;branch=z9hG4bK-" + id + "\r\n" +
		"From: <sip:probe@" + local + ">;tag=" + id + "\r\n" +
		"To: <sip:" + addr + ">\r\n" +
		"Call-ID: probe-" + id + "\r\n" +
		"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(string(buf[:n]), "SIP/2.0 200") {
		return fmt.Errorf("OPTIONS answered %q", strings.SplitN(string(buf[:n]), "\r\n", 2)[0])
	}
	return nil
}

// sippRun is one sipp process in a directory of its own (its -trace_logs
// files land there).
type sippRun struct {
	*proc
	dir      string
	scenario string
}

// sippOptions are every sipp's: loopback, no terminal, logs and errors to
// files, unexpected messages (a 180 that Kamailio's workers reordered
// behind the 200) not fatal.
var sippOptions = []string{"-i", "127.0.0.1", "-nostdin", "-trace_logs", "-trace_err",
	"-default_behaviors", "all,-abortunexp", "-recv_timeout", "10000"}

// startSipp starts a sipp client of scenario against the proxy at target,
// ended with SIGUSR1 (finish the calls under way, then exit) after limit.
func startSipp(t *testing.T, tools map[string]string, name, target string, limit time.Duration, scenario string, args ...string) *sippRun {
	t.Helper()
	dir := t.TempDir()
	sf, err := filepath.Abs(filepath.Join(scenarios, scenario))
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{tools["timeout"], "-s", "USR1", "-k", "10", strconv.Itoa(int(math.Ceil(limit.Seconds()))),
		tools["sipp"], target, "-sf", sf, "-p", strconv.Itoa(freePort(t))}
	argv = append(append(argv, sippOptions...), args...)
	return &sippRun{proc: startProc(t, dir, name, argv...), dir: dir, scenario: strings.TrimSuffix(scenario, ".xml")}
}

// startSippServer starts a sipp server of scenario (callee, registrar) on
// port; stop it with SIGUSR1.
func startSippServer(t *testing.T, tools map[string]string, name, scenario string, port int) *sippRun {
	t.Helper()
	dir := t.TempDir()
	sf, err := filepath.Abs(filepath.Join(scenarios, scenario))
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{tools["sipp"], "-sf", sf, "-p", strconv.Itoa(port)}, sippOptions...)
	return &sippRun{proc: startProc(t, dir, name, argv...), dir: dir, scenario: strings.TrimSuffix(scenario, ".xml")}
}

// runSipp runs a sipp client to its end and returns its calls.
func runSipp(t *testing.T, tools map[string]string, name, target string, limit time.Duration, scenario string, args ...string) []call {
	t.Helper()
	return startSipp(t, tools, name, target, limit, scenario, args...).results(t, limit+15*time.Second)
}

// errors returns what sipp wrote to its error log (-trace_err), or "".
func (s *sippRun) errors() string {
	text, _ := readAll(filepath.Join(s.dir, s.scenario+"_*_errors.log"))
	return text
}

// call is one call's outcome as a caller logged it.
type call struct {
	kind   string    // ok (200), rej (503 from the proxy), fail (486), cancel (487), reg
	id     string    // its Call-ID (empty for reg)
	at     time.Time // when its final reply arrived (zero for reg)
	status string    // the status line, and a Retry-After header if there was one
}

// callLine is a caller's log line: "KIND CALL-ID SEC.000000.USEC.000000 STATUS"
// (sipp once wrote the usec as nothing, "SEC.000000. STATUS": that line is
// a call too).
var callLine = regexp.MustCompile(`^(\w+) (\S+) (\d+)\.\d+\.(?:(\d+)\.\d+)? (.*)$`)

// results waits up to d for the sipp client to end and returns its calls in
// the order their final replies came.
func (s *sippRun) results(t *testing.T, d time.Duration) []call {
	t.Helper()
	if err := s.wait(d); err != nil {
		// sipp exits 1 when some calls failed; the logs tell which.
		if s.running() {
			t.Fatalf("sipp %s: %v\n%s", s.name, err, s.tail(20))
		}
	}
	text, err := readAll(filepath.Join(s.dir, s.scenario+"_*_logs.log"))
	if err != nil {
		t.Fatalf("sipp %s: %v (exit %v)\n%s\n%s", s.name, err, s.err, s.tail(20), lastChars(s.errors(), 2000))
	}
	var calls []call
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if m := callLine.FindStringSubmatch(line); m != nil {
			sec, _ := strconv.ParseInt(m[3], 10, 64)
			usec, _ := strconv.ParseInt(m[4], 10, 64)
			calls = append(calls, call{kind: m[1], id: m[2], at: time.Unix(sec, usec*1000), status: m[5]})
		} else if kind, status, ok := strings.Cut(line, " "); ok {
			calls = append(calls, call{kind: kind, status: status})
		}
	}
	if len(calls) == 0 {
		t.Fatalf("sipp %s logged no call:\n%s", s.name, s.tail(20))
	}
	return calls
}

// countStatus counts calls by status line.
func countStatus(calls []call) map[string]int {
	out := map[string]int{}
	for _, c := range calls {
		out[c.status]++
	}
	return out
}

// split returns the calls answered before from, and those answered at or
// after to.
func split(calls []call, from, to time.Time) (before, after []call) {
	for _, c := range calls {
		switch {
		case c.at.Before(from):
			before = append(before, c)
		case !c.at.Before(to):
			after = append(after, c)
		}
	}
	return before, after
}

// callTally counts calls forwarded (200), rejected (503) and else.
type callTally struct {
	forwarded, rejected, other int
	statuses                   map[string]int
}

func tally(calls []call) callTally {
	tl := callTally{statuses: countStatus(calls)}
	for _, c := range calls {
		switch c.kind {
		case "ok":
			tl.forwarded++
		case "rej":
			tl.rejected++
		default:
			tl.other++
		}
	}
	return tl
}

func (tl callTally) String() string {
	return fmt.Sprintf("forwarded %d, rejected %d, other %d %v", tl.forwarded, tl.rejected, tl.other, tl.statuses)
}

// traceLine is a line kamailio.cfg logs with CG_TRACE: "capsgate trace:
// ADMIT|RELEASE CALL-ID on cgN: RESULT [VALUE]".
var traceLine = regexp.MustCompile(`capsgate trace: (ADMIT|RELEASE) (\S+) on (\S+): (\S*) ?(\S*)`)

// byeLine is CG_TRACE's line for a BYE in a tracked dialog, with the
// dialog's state once the BYE was seen (Kamailio's dialog module: 1
// unconfirmed, 2 early, 3 confirmed without ACK, 4 confirmed, 5 ended).
var byeLine = regexp.MustCompile(`capsgate trace: BYE \S+ in dialog state (\S+)`)

// unreleased returns, from a Kamailio log with CG_TRACE, the calls capsgate
// admitted (ADMIT ... 1) that no node answered a RELEASE for, in order, and
// how many ADMIT and RELEASE lines there were. (A node that does not hold
// the call answers :0 and passes the RELEASE on to the others.)
func unreleased(log string) (ids []string, admits, releases int) {
	var order []string
	open := map[string]int{}
	for _, line := range strings.Split(log, "\n") {
		m := traceLine.FindStringSubmatch(line)
		switch {
		case m == nil:
		case m[1] == "ADMIT":
			admits++
			if m[4] == "1" {
				if _, seen := open[m[2]]; !seen {
					order = append(order, m[2])
				}
				open[m[2]]++
			}
		default:
			releases++
			if m[4] == "1" {
				open[m[2]]--
			}
		}
	}
	for _, id := range order {
		if open[id] > 0 {
			ids = append(ids, id)
		}
	}
	return ids, admits, releases
}

// traceCalls logs what Kamailio traced and, when calls were left
// unreleased (explain), for the first calls Kamailio admitted and never
// released, what their callers saw and Kamailio's log lines about them. It
// returns how often Kamailio found a node unreachable (missed answers).
func traceCalls(t *testing.T, k *proc, explain bool, logged map[string][]call, callers ...*sippRun) (missed int) {
	t.Helper()
	b, err := os.ReadFile(k.log)
	if err != nil {
		t.Errorf("no Kamailio log: %v", err)
		return 0
	}
	log := string(b)
	missed = strings.Count(log, "unreachable, trying the next node")
	ids, admits, releases := unreleased(log)
	byes := map[string]int{}
	for _, m := range byeLine.FindAllStringSubmatch(log, -1) {
		byes[m[1]]++
	}
	t.Logf("Kamailio traced %d ADMITs and %d RELEASEs; %d admitted calls without an answered RELEASE; BYEs by dialog state %v, %d without a To tag; %d in-dialog requests matched no dialog; a node was unreachable %d times",
		admits, releases, len(ids), byes, strings.Count(log, "without a To tag"), strings.Count(log, "matches no dialog"), missed)
	if !explain {
		return missed
	}
	outcome := map[string]string{}
	for name, calls := range logged {
		for _, c := range calls {
			outcome[c.id] = name + " caller: " + c.kind + " " + c.status
		}
	}
	var errLog strings.Builder
	for _, r := range callers {
		errLog.WriteString(r.errors())
	}
	for _, id := range ids[:min(len(ids), 5)] {
		if outcome[id] == "" {
			outcome[id] = "no caller logged it"
		}
		t.Logf("call %s (%s)\nKamailio:\n%s\nits caller's errors:\n%s", id, outcome[id],
			linesAbout(log, id, 25), linesAbout(errLog.String(), id, 5))
	}
	return missed
}

// linesAbout returns the last n lines of text that name call-id as a whole
// word.
func linesAbout(text, id string, n int) string {
	word := regexp.MustCompile(`(^|[^\w-])` + regexp.QuoteMeta(id) + `($|[^\w.@-])`)
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if word.MatchString(line) {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// emergencyURI is a request-URI kamailio.cfg admits as an emergency call.
var emergencyURI = regexp.MustCompile(`^(urn:service:sos|sip:112@)`)

// calleeCall is a call as the callee saw it.
type calleeCall struct {
	ruri    string
	invites int // INVITEs that started a call at the callee (1 unless one was forwarded twice)
}

// calleeCalls reads the callee's log lines, "INVITE REQUEST-URI CALL-ID",
// into its calls by Call-ID.
func calleeCalls(t *testing.T, log string) map[string]*calleeCall {
	t.Helper()
	out := map[string]*calleeCall{}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "INVITE" {
			t.Fatalf("callee log line %q: want INVITE REQUEST-URI CALL-ID", line)
		}
		c := out[f[2]]
		if c == nil {
			c = &calleeCall{ruri: f[1]}
			out[f[2]] = c
		}
		c.invites++
	}
	return out
}

// callAccount is the callers' calls set against the callee's.
type callAccount struct {
	sent            int      // calls the callers made
	lost            int      // calls they logged no final reply for
	lostSeen        int      // lost calls that reached the callee
	invites         int      // INVITEs the callee got
	calleeEmergency int      // emergency calls among the callee's
	problems        []string // calls accounted wrongly
}

// accountCalls checks, call by call, that every call the callers saw
// forwarded (200, 486, 487) reached the callee exactly once, that no
// refused call reached it, and that every call the callee got was made by
// a caller. logged and sent are by caller name.
func accountCalls(callee map[string]*calleeCall, logged map[string][]call, sent map[string]int) callAccount {
	var acc callAccount
	known := map[string]bool{}
	problem := func(format string, args ...any) {
		if len(acc.problems) < 20 {
			acc.problems = append(acc.problems, fmt.Sprintf(format, args...))
		}
	}
	for name, calls := range logged {
		acc.sent += sent[name]
		if len(calls) > sent[name] {
			problem("caller %s logged %d calls of %d made", name, len(calls), sent[name])
		}
		acc.lost += max(0, sent[name]-len(calls))
		for _, c := range calls {
			if known[c.id] {
				problem("caller %s logged call %s twice", name, c.id)
			}
			known[c.id] = true
			got := callee[c.id]
			switch {
			case c.kind == "rej" && got != nil:
				problem("call %s was refused (%s) but reached the callee", c.id, c.status)
			case c.kind != "rej" && got == nil:
				problem("call %s ended %s at the caller but never reached the callee", c.id, c.status)
			}
		}
	}
	for id, c := range callee {
		acc.invites += c.invites
		if c.invites != 1 {
			problem("the callee got call %s %d times", id, c.invites)
		}
		if emergencyURI.MatchString(c.ruri) {
			acc.calleeEmergency++
		}
		if !known[id] {
			acc.lostSeen++
		}
	}
	if acc.lostSeen > acc.lost {
		problem("the callee got %d calls no caller logged, but the callers lost only %d", acc.lostSeen, acc.lost)
	}
	return acc
}

// quotaSum adds an integer QUOTA field over every node.
func quotaSum(t *testing.T, c *farm.Cluster, field string) int {
	t.Helper()
	sum := 0
	for _, n := range c.Nodes() {
		q, err := quota(n, service)
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.Atoi(q[field])
		if err != nil {
			t.Fatalf("%s: QUOTA %s %s = %q", n.Name, service, field, q[field])
		}
		sum += v
	}
	return sum
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func lastChars(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// TestKamailioStalledNode stops one of three nodes (SIGSTOP) for longer
// than ndb_redis waits for an answer, while calls go on. Kamailio asks the
// next node for the calls the stalled node did not answer; the stalled node,
// once it runs again, admits what it had been asked all the same. Those
// calls must be released there too: kamailio.cfg remembers the nodes that
// missed their answer and sends the extra RELEASE that reaches them.
func TestKamailioStalledNode(t *testing.T) {
	needProcesses(t)
	tools := needTools(t, "kamailio", "sipp", "timeout")
	const caps, rate, calls = 1000, 100, 700
	c := startCluster(t, 3, "--caps", strconv.Itoa(caps))
	c.WaitCAPS(service, caps, 5*time.Second)
	px := startProxy(t, tools, c)

	callers := startSipp(t, tools, "normal", px.addr, 40*time.Second, "uac.xml",
		"-key", "ruri", "sip:5551234@"+px.addr, "-r", strconv.Itoa(rate), "-m", strconv.Itoa(calls), "-d", "1000")
	stalled := c.Node(1)
	// The test's own ADMIT, read by the stalled node only once it runs
	// again: a stalled node answers what waited in its sockets.
	probe, err := net.DialTimeout("tcp", stalled.RESPAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	time.Sleep(2 * time.Second)
	if err := syscall.Kill(stalled.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	const probeID = "stalled-node-probe"
	if _, err := fmt.Fprintf(probe, "ADMIT %s CALL %s\r\n", service, probeID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := syscall.Kill(stalled.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	_ = probe.SetDeadline(time.Now().Add(5 * time.Second))
	const admittedReply = "*4\r\n:1\r\n+OK\r\n"
	answer := make([]byte, len(admittedReply))
	if _, err := io.ReadFull(probe, answer); err != nil || string(answer) != admittedReply {
		t.Fatalf("the ADMIT written while %s was stopped: answer %q, %v; want %q...", stalled.Name, answer, err, admittedReply)
	}
	if _, err := fmt.Fprintf(probe, "RELEASE %s %s\r\n", service, probeID); err != nil {
		t.Fatal(err)
	}
	got := callers.results(t, 45*time.Second)
	tl := tally(got)
	t.Logf("calls: %s, of %d made", tl, calls)
	if tl.forwarded != calls {
		t.Errorf("%d of %d calls forwarded, want all (%d CAPS licensed, %d offered)", tl.forwarded, calls, caps, rate)
	}

	released := eventually(10*time.Second, func() error { return sessionsReleased(c) })
	if released != nil {
		t.Errorf("every admitted call released: %v", released)
	}
	missed := traceCalls(t, px.k, released != nil, map[string][]call{"normal": got}, callers)

	// The stall happened as meant: Kamailio gave up on the stalled node,
	// and that node admitted, once running again, every call whose ADMIT
	// Kamailio had given up on there; the others had admitted those calls
	// too. Each Kamailio child gives up on a node once (then skips it for
	// ndb_redis's disable_time), on an ADMIT or on a RELEASE, whichever
	// it sent first: its log names the request of each.
	px.uas.stop(syscall.SIGUSR1, 5*time.Second)
	invites, err := readAll(filepath.Join(px.uas.dir, "uas_*_logs.log"))
	if err != nil {
		t.Fatal(err)
	}
	callee := calleeCalls(t, invites)
	okSample := fmt.Sprintf(`capsgate_admissions_total{service="%s",reason="OK"}`, service)
	admitted, err := sumMetric(c.Nodes(), okSample)
	if err != nil {
		t.Fatal(err)
	}
	klog, err := os.ReadFile(px.k.log)
	if err != nil {
		t.Fatal(err)
	}
	gaveUp := gaveUpOn(string(klog), "cg1")
	late := int(admitted) - len(callee) - 1 // the probe
	t.Logf("the callee got %d calls; capsgate admitted %g besides the probe: %d late, by the stalled node, after Kamailio missed its answer %d times and gave up on it during %v",
		len(callee), admitted-1, late, missed, gaveUp)
	if missed == 0 || len(gaveUp) == 0 {
		t.Errorf("Kamailio missed %d answers and gave up on %s %d times: want the stall seen", missed, stalled.Name, len(gaveUp))
	}
	if late != gaveUp["INVITE"] {
		t.Errorf("%d late admissions: want one for each of the %d ADMITs Kamailio gave up on at the stalled node", late, gaveUp["INVITE"])
	}
}

// giveUpLine is ndb_redis disabling a server after a request to it failed,
// in the context of the SIP request (method) being handled.
var giveUpLine = regexp.MustCompile(`\{\S+ \S+ (\w+) [^}]*\} ndb_redis \[[^]]*\]: redis_count_err_and_disable\(\): REDIS server (\S+) disabled`)

// gaveUpOn counts, by SIP method, the requests during which Kamailio's
// ndb_redis gave up on server.
func gaveUpOn(log, server string) map[string]int {
	out := map[string]int{}
	for _, m := range giveUpLine.FindAllStringSubmatch(log, -1) {
		if m[2] == server {
			out[m[1]]++
		}
	}
	return out
}
