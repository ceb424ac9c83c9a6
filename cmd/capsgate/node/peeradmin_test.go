package node

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A member's advertised admin address gets this node's admin token only
// as a bare scheme://host:port, and only over https when this node's own
// admin API is served over TLS.
func TestPeerAdminAddressVetted(t *testing.T) {
	plain, tlsNode := &Node{}, &Node{}
	tlsNode.cfg.Admin.TLSCertFile = "admin.crt"
	for _, c := range []struct {
		addr           string
		plainOK, tlsOK bool
	}{
		{"http://10.0.0.2:8390", true, false},
		{"https://10.0.0.2:8390", true, true},
		{"https://[::1]:8390", true, true},
		{"", false, false},
		{"ftp://10.0.0.2:8390", false, false},
		{"https://user:pw@10.0.0.2:8390", false, false},
		{"https://10.0.0.2:8390/collect", false, false},
		{"https://10.0.0.2:8390?x=1", false, false},
		{"https://10.0.0.2:8390#x", false, false},
		{"https:10.0.0.2", false, false},
		{"10.0.0.2:8390", false, false},
		{"https://", false, false},
		{"http://%zz", false, false},
	} {
		require.Equal(t, c.plainOK, plain.checkPeerAdmin(c.addr) == nil, "plain node, %q", c.addr)
		require.Equal(t, c.tlsOK, tlsNode.checkPeerAdmin(c.addr) == nil, "TLS node, %q", c.addr)
	}
	require.ErrorContains(t, tlsNode.checkPeerAdmin("http://10.0.0.2:8390"), "not sent in the clear")
}
