package resp

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// With a member secret (a farm with a gossip key), the markers members
// send each other are refused from a client, and change nothing; a
// connection authenticated as MemberUser sends them as before. A wrong
// secret, or none set, is WRONGPASS; the default user is unaffected.
func TestMembersOnlyMarkers(t *testing.T) {
	h := throttleHandler(t, 8, admission.NewFakeClock())
	require.NoError(t, h.eng.SetLimits("demo", admission.Limits{Licensed: true, CAPS: 1, Sessions: -1, Subscribers: -1, Tokens: 10}))
	h.password = []byte("client-pw")
	h.SetMemberSecret("s3cret")
	c := &testConn{h: h, cs: NewConnState(1), clk: admission.NewFakeClock()}
	f := c.expect(t)
	f(cmd("AUTH", "client-pw"), "+OK\r\n")
	stats := func() admission.Stats { return h.eng.Service("demo").Stats() }
	before := stats()
	f(cmd("ADMIT", "demo", "SPILLED", "n2"), "-ERR ADMIT ... SPILLED is sent by cluster members only (AUTH capsgate-member ...)\r\n")
	f(cmd("CONSUME", "demo", "a", "2", "ID", "r-1", "ROUTED", "n2"), "-ERR CONSUME ... ROUTED is sent by cluster members only (AUTH capsgate-member ...)\r\n")
	f(cmd("CL.THROTTLE", "user:1", "0", "1", "60", "1", "ROUTED", "n2"), "-ERR CL.THROTTLE ... ROUTED is sent by cluster members only (AUTH capsgate-member ...)\r\n")
	require.Equal(t, before, stats(), "nothing counted")
	// The same without the markers, from the client: decided as usual.
	f(cmd("CL.THROTTLE", "user:1", "0", "1", "60", "1"), "*5\r\n:0\r\n:1\r\n:0\r\n:-1\r\n:60\r\n")

	f(cmd("AUTH", MemberUser, "wrong"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
	require.False(t, c.cs.member)
	f(cmd("AUTH", MemberUser, "s3cret"), "+OK\r\n")
	f(cmd("ADMIT", "demo", "SPILLED", "n2"), dec(1, "OK", 0, 0))
	f(cmd("ADMIT", "demo", "SPILLED", "n2"), dec(0, "CAPS", 1000, 0))
	require.Equal(t, uint64(1), stats().SpilledIn, "a member's spilled attempt, counted apart")
	f(cmd("CONSUME", "demo", "a", "2", "ID", "r-1", "ROUTED", "n2"), dec(1, "OK", 0, 8))
	f(cmd("CL.THROTTLE", "user:1", "0", "1", "60", "1", "ROUTED", "n2"), "*5\r\n:1\r\n:1\r\n:0\r\n:60\r\n:60\r\n")
	// AUTH as the default user again: a client, not a member.
	f(cmd("AUTH", "default", "client-pw"), "+OK\r\n")
	f(cmd("ADMIT", "demo", "SPILLED", "n2"), "-ERR ADMIT ... SPILLED is sent by cluster members only (AUTH capsgate-member ...)\r\n")

	// Without a member secret, no one is MemberUser.
	h.SetMemberSecret("")
	other := &testConn{h: h, cs: NewConnState(2), clk: c.clk}
	other.expect(t)(cmd("AUTH", MemberUser, "s3cret"), "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
	require.False(t, other.cs.authed)
}
