package deploy

// Per-trunk limits through Kamailio: two carriers' trunks over one licence
// and a farm of three capsgate nodes. kamailio.cfg takes each call's trunk
// key from the X-Trunk header (CG_TRUNK_HEADER: the SBC in front sets it)
// and asks ADMIT ... TRUNK key; the trunks' sipp callers (trunk.xml) put
// RFC 7339's ";oc" in their Via, so every 503 for TRUNK_CAPS carries the
// overload feedback (oc=RATE;oc-algo="rate";oc-validity=MS;oc-seq=SEQ).

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsgate/capsgate/cluster/farm"
)

const (
	// trunkLimit is each trunk key's CAPS limit; trunkSessions its
	// sessions limit (not binding: about trunkLimit × holdCall are open).
	trunkLimit    = 100
	trunkSessions = 1000
	// trunkFor is how long the trunks call.
	trunkFor = 10 * time.Second
	// trunkLicence is the licence's CAPS: larger than both trunks' offers
	// together, so that only trunk A's own limit binds.
	trunkLicence = 1000
)

// trunkLimits is what GET /v1/services/{service}/limits/{key} shows of
// this node's part of a key's limits.
type trunkLimits struct {
	Node struct {
		CAPS         *float64          `json:"caps"`
		Burst        int64             `json:"burst"`
		SessionsOpen int64             `json:"sessions_open"`
		Admitted     uint64            `json:"admitted"`
		Refused      map[string]uint64 `json:"refused"`
	} `json:"node"`
}

// keyParts returns every node's part of key's limits.
func keyParts(c *farm.Cluster, key string) ([]trunkLimits, error) {
	var out []trunkLimits
	for _, n := range c.Nodes() {
		var v trunkLimits
		if err := n.GetJSON("/v1/services/"+service+"/limits/"+key, &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// ocParams is the overload feedback trunk.xml logs after a 503's status.
var ocParams = regexp.MustCompile(`^;oc=(\d+);oc-algo="rate";oc-validity=(\d+);oc-seq=(\d+)\.(\d{3})$`)

func TestKamailioTrunks(t *testing.T) {
	needProcesses(t)
	tools := needTools(t, "kamailio", "sipp", "timeout")
	start := time.Now()

	c := startCluster(t, 3, "--caps", strconv.Itoa(trunkLicence))
	c.WaitCAPS(service, trunkLicence, 5*time.Second)
	keys := []string{"carrier-a", "carrier-b"}
	for i, key := range keys {
		if out, code := c.Ctl(i+1, "limits", "set", service, key, "--caps", strconv.Itoa(trunkLimit),
			"--sessions", strconv.Itoa(trunkSessions)); code != 0 {
			t.Fatalf("capsctl limits set %s: %s", key, out)
		}
	}
	// Every node enforces its part of both keys, the parts summing to the
	// limit; the bound's burst is the sum of the parts' depths.
	var burst int64
	for _, key := range keys {
		if err := eventually(5*time.Second, func() error {
			parts, err := keyParts(c, key)
			if err != nil {
				return err
			}
			sum, depth := 0.0, int64(0)
			for _, p := range parts {
				if p.Node.CAPS == nil {
					return fmt.Errorf("a node has no part of %s yet", key)
				}
				sum += *p.Node.CAPS
				depth += p.Node.Burst
			}
			if sum < 0.99*trunkLimit || sum > 1.0001*trunkLimit {
				return fmt.Errorf("%s's parts sum to %.2f, not %d", key, sum, trunkLimit)
			}
			if key == keys[0] {
				burst = depth
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	px := startProxy(t, tools, c, `CG_TRUNK_HEADER="X-Trunk"`)
	t.Logf("3 capsgate nodes, licence %d CAPS; %s and %s limited to %d CAPS (burst %d over the farm) and %d sessions; Kamailio on %s; ready after %s",
		trunkLicence, keys[0], keys[1], trunkLimit, burst, trunkSessions, px.addr, time.Since(start).Round(time.Millisecond))

	// Trunk A offers twice its limit, trunk B 60 % of its own, at once.
	rateA, rateB := 2*trunkLimit, trunkLimit*6/10
	callsA, callsB := int(float64(rateA)*trunkFor.Seconds()), int(float64(rateB)*trunkFor.Seconds())
	runStart := time.Now()
	a := startSipp(t, tools, "carrier-a", px.addr, trunkFor+20*time.Second, "trunk.xml",
		"-key", "ruri", "sip:5551234@"+px.addr, "-key", "trunk", keys[0], "-r", strconv.Itoa(rateA),
		"-m", strconv.Itoa(callsA), "-d", strconv.Itoa(int(holdCall.Milliseconds())))
	b := startSipp(t, tools, "carrier-b", px.addr, trunkFor+20*time.Second, "trunk.xml",
		"-key", "ruri", "sip:5551234@"+px.addr, "-key", "trunk", keys[1], "-r", strconv.Itoa(rateB),
		"-m", strconv.Itoa(callsB), "-d", strconv.Itoa(int(holdCall.Milliseconds())))
	gotA, gotB := a.results(t, trunkFor+25*time.Second), b.results(t, trunkFor+25*time.Second)
	runEnd := time.Now()

	// Every admitted call released: no session left open on any node, for
	// either key nor the licence.
	released, ok := awaitReleased(t, runEnd, func() error {
		for _, key := range keys {
			parts, err := keyParts(c, key)
			if err != nil {
				return err
			}
			for i, p := range parts {
				if p.Node.SessionsOpen != 0 {
					return fmt.Errorf("%s: %s has %d sessions open", c.Node(i+1).Name, key, p.Node.SessionsOpen)
				}
			}
		}
		return sessionsReleased(c)
	})
	if !ok {
		traceCalls(t, px.k, true, map[string][]call{keys[0]: gotA, keys[1]: gotB}, a, b)
	}

	// Trunk A: held to its limit for the farm, over the span it offered.
	ta, tb := tally(gotA), tally(gotB)
	span := gotA[len(gotA)-1].at.Sub(gotA[0].at).Seconds()
	span = max(span, float64(callsA-1)/float64(rateA))
	bound := trunkLimit*span + float64(burst)
	low := 0.9 * trunkLimit * span
	t.Logf("%s, %d/s offered for %.2f s: forwarded %d (%.1f/s), refused %d, other %d (bound %d × %.2f + burst %d = %.0f, at least %.0f)",
		keys[0], rateA, span, ta.forwarded, float64(ta.forwarded)/span, ta.rejected, ta.other, trunkLimit, span, burst, bound, low)
	t.Logf("%s, %d/s offered: forwarded %d, refused %d, other %d, of %d; sessions of both keys back to 0 on every node %s after the last call",
		keys[1], rateB, tb.forwarded, tb.rejected, tb.other, callsB, released.Round(time.Millisecond))
	if float64(ta.forwarded) > bound || float64(ta.forwarded) < low {
		t.Errorf("%s forwarded %d, want between %.0f and %.0f", keys[0], ta.forwarded, low, bound)
	}
	if tb.rejected+tb.other > 0 || tb.forwarded != callsB {
		t.Errorf("%s: %s of %d calls, want every one forwarded", keys[1], tb, callsB)
		for _, call := range gotB {
			if call.kind != "ok" {
				t.Logf("%s call %s: %s %s after the start:\n%s", keys[1], call.id, call.status,
					call.at.Sub(runStart).Round(time.Millisecond), linesAbout(px.k.tail(100000), call.id, 5))
			}
		}
	}
	if ta.forwarded+ta.rejected != callsA || ta.other > 0 {
		t.Errorf("%s: %s of %d calls, want each forwarded or refused", keys[0], ta, callsA)
	}

	// Every refusal is 503 Trunk CAPS Exceeded with no Retry-After and the
	// overload feedback in the topmost Via: the key's farm-wide rate,
	// "rate", 2000 ms, an oc-seq of the run's wall-clock time.
	withOC, seqs := 0, map[string]int{}
	badOC := 0
	for _, call := range gotA {
		if call.kind != "rej" {
			continue
		}
		status, params, _ := strings.Cut(call.status, ";")
		if status != "SIP/2.0 503 Trunk CAPS Exceeded" {
			t.Errorf("call %s refused with %q, want 503 Trunk CAPS Exceeded without Retry-After", call.id, call.status)
			continue
		}
		m := ocParams.FindStringSubmatch(";" + params)
		if params == "" || m == nil {
			badOC++
			continue
		}
		sec, _ := strconv.ParseInt(m[3], 10, 64)
		at := time.Unix(sec, 0)
		if m[1] != strconv.Itoa(trunkLimit) || m[2] != "2000" || at.Before(runStart.Add(-time.Second)) || at.After(runEnd.Add(time.Second)) {
			badOC++
			continue
		}
		withOC++
		seqs[m[3]+"."+m[4]]++
	}
	t.Logf("%s's 503s with oc=%d;oc-algo=\"rate\";oc-validity=2000;oc-seq=<run time> in the Via: %d of %d (%d distinct oc-seq); without or other: %d",
		keys[0], trunkLimit, withOC, ta.rejected, len(seqs), badOC)
	if withOC != ta.rejected || ta.rejected == 0 {
		t.Errorf("%d of %d refusals of %s carried the overload feedback, want all", withOC, ta.rejected, keys[0])
	}

	// capsgate's counters agree with the callers.
	var refusedA, refusedB, admittedA, admittedB uint64
	for i, key := range keys {
		parts, err := keyParts(c, key)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			if i == 0 {
				refusedA += p.Node.Refused["TRUNK_CAPS"]
				admittedA += p.Node.Admitted
			} else {
				refusedB += p.Node.Refused["TRUNK_CAPS"]
				admittedB += p.Node.Admitted
			}
		}
	}
	t.Logf("capsgate counted %s: %d admitted, %d refused TRUNK_CAPS; %s: %d admitted, %d refused; whole test %s",
		keys[0], admittedA, refusedA, keys[1], admittedB, refusedB, time.Since(start).Round(time.Millisecond))
	if admittedA != uint64(ta.forwarded) || refusedA != uint64(ta.rejected) || admittedB != uint64(tb.forwarded) || refusedB != 0 {
		t.Errorf("capsgate's counts differ from what the callers saw")
	}
	if t.Failed() {
		t.Logf("Kamailio log, last lines:\n%s", px.k.tail(40))
	}
}
