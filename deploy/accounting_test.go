package deploy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUnreleased(t *testing.T) {
	log := `{1 1 INVITE a@h} capsgate trace: ADMIT a@h on cg1: 1 OK
{1 1 INVITE b@h} capsgate trace: ADMIT b@h on cg2: 0 CAPS
{1 1 INVITE c@h} capsgate trace: ADMIT c@h on cg1: 1 OK
{1 1 INVITE d@h} capsgate trace: ADMIT d@h on cg3: 1 OK
{1 2 BYE a@h} capsgate trace: RELEASE a@h on cg1: 1 1
{1 2 BYE c@h} capsgate trace: RELEASE c@h on cg1: 1 0
{1 1 INVITE e@h} capsgate trace: ADMIT e@h on cg2: 1 OK
{1 1 INVITE e@h} capsgate trace: ADMIT e@h on cg2: 1 OK
{1 2 BYE e@h} capsgate trace: RELEASE e@h on cg2: 1 1
{1 2 BYE d@h} capsgate trace: RELEASE d@h on cg3: 0
some other line`
	ids, admits, releases := unreleased(log)
	// b refused; a released; c answered :0 (passed on to the other nodes);
	// d's RELEASE failed; e admitted twice, released once.
	assert.Equal(t, []string{"d@h", "e@h"}, ids)
	assert.Equal(t, 6, admits)
	assert.Equal(t, 4, releases)
}

func TestAccountCalls(t *testing.T) {
	sent := map[string]int{"normal": 4, "sos": 1}
	logged := map[string][]call{
		"normal": {{kind: "ok", id: "1", status: "SIP/2.0 200 OK"}, {kind: "rej", id: "2", status: "SIP/2.0 503 Licensed CAPS Exceeded"},
			{kind: "ok", id: "3", status: "SIP/2.0 200 OK"}},
		"sos": {{kind: "ok", id: "s1", status: "SIP/2.0 200 OK"}},
	}
	callee := map[string]*calleeCall{
		"1":  {ruri: "sip:5551234@k", invites: 1},
		"3":  {ruri: "sip:5551234@k", invites: 1},
		"4":  {ruri: "sip:5551234@k", invites: 1}, // lost at the caller
		"s1": {ruri: "urn:service:sos", invites: 1},
	}
	acc := accountCalls(callee, logged, sent)
	assert.Empty(t, acc.problems)
	assert.Equal(t, callAccount{sent: 5, lost: 1, lostSeen: 1, invites: 4, calleeEmergency: 1}, acc)

	// Each way a call can be accounted wrongly is named.
	callee["2"] = &calleeCall{ruri: "sip:5551234@k", invites: 1} // refused, yet forwarded
	callee["3"].invites = 2                                      // forwarded twice
	delete(callee, "1")                                          // forwarded, never arrived
	callee["5"] = &calleeCall{ruri: "sip:5551234@k", invites: 1} // a second call no caller logged
	acc = accountCalls(callee, logged, sent)
	require.Len(t, acc.problems, 4, "%q", acc.problems)
	assert.Contains(t, acc.problems, "call 2 was refused (SIP/2.0 503 Licensed CAPS Exceeded) but reached the callee")
	assert.Contains(t, acc.problems, "the callee got call 3 2 times")
	assert.Contains(t, acc.problems, "call 1 ended SIP/2.0 200 OK at the caller but never reached the callee")
	assert.Contains(t, acc.problems, "the callee got 2 calls no caller logged, but the callers lost only 1")
}

func TestLinesAbout(t *testing.T) {
	text := "x {1 1 INVITE 641-80@h} ADMIT 641-80@h on cg2\n" +
		"x {1 1 INVITE 1641-80@h} ADMIT 1641-80@h on cg1\n" +
		"Call-Id: 641-80@h, receive timeout\n" +
		"Call-Id: 641-80@h.x, other"
	assert.Equal(t, "x {1 1 INVITE 641-80@h} ADMIT 641-80@h on cg2\nCall-Id: 641-80@h, receive timeout", linesAbout(text, "641-80@h", 5))
	assert.Equal(t, "Call-Id: 641-80@h, receive timeout", linesAbout(text, "641-80@h", 1))
}

// A caller's log line is a call whether or not sipp wrote its
// microseconds.
func TestCallLine(t *testing.T) {
	for line, want := range map[string][]string{
		"rej 5-99@127.0.0.1 1796504924.000000.123456.000000 SIP/2.0 503 Licensed CAPS Exceeded": {"rej", "5-99@127.0.0.1", "1796504924", "123456", "SIP/2.0 503 Licensed CAPS Exceeded"},
		"rej 2114-4991@127.0.0.1 1796504924.000000. SIP/2.0 503 Licensed CAPS Exceeded":         {"rej", "2114-4991@127.0.0.1", "1796504924", "", "SIP/2.0 503 Licensed CAPS Exceeded"},
		"ok 7-1@127.0.0.1 1796504924.000000.5.000000 SIP/2.0 200 OK":                            {"ok", "7-1@127.0.0.1", "1796504924", "5", "SIP/2.0 200 OK"},
	} {
		m := callLine.FindStringSubmatch(line)
		require.NotNil(t, m, line)
		require.Equal(t, want, m[1:], line)
	}
	require.Nil(t, callLine.FindStringSubmatch("reg SIP/2.0 200 OK"), "a registration has no call-id")
}
