package resp

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// A RELEASE of a call this node does not hold marks it ended: its late
// ADMIT is answered but opens no session, and so does that ADMIT's SIP
// retransmission, answered the same and not counted again.
func TestAdmitAfterReleaseRetransmitted(t *testing.T) {
	c := newTestConn(t, "")
	f := c.expect(t)
	f(cmd("RELEASE", "demo", "e1"), ":0\r\n")
	f(cmd("ADMIT", "demo", "CALL", "e1"), dec(1, "OK", 0, 99))
	f(cmd("ADMIT", "demo", "CALL", "e1"), dec(1, "OK", 0, 99))
	got, _, _ := c.send(cmd("QUOTA", "demo"))
	require.Contains(t, got, "$13\r\nsessions_used\r\n:0\r\n")
	require.Equal(t, uint64(1), c.h.eng.Service("demo").Stats().Admissions[admission.OK], "counted once")
	f(cmd("RELEASE", "demo", "e1"), ":0\r\n")
}
