package node

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// A member's advertised admin address gets this node's admin token only
// as a bare scheme://host:port on the member's own gossip host, and only
// over https when this node's own admin API is served over TLS.
func TestPeerAdminAddressVetted(t *testing.T) {
	plain, tlsNode := &Node{}, &Node{}
	tlsNode.cfg.Admin.TLSCertFile = "admin.crt"
	const gossip = "10.0.0.2:7946"
	for _, c := range []struct {
		addr           string
		plainOK, tlsOK bool
	}{
		{"http://10.0.0.2:8390", true, false},
		{"https://10.0.0.2:8390", true, true},
		{"", false, false},
		{"https://10.0.0.3:8390", false, false},
		{"https://evil.example:443", false, false},
		{"https://10.0.0.2", false, false},
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
		require.Equal(t, c.plainOK, plain.checkPeerAdmin(c.addr, gossip) == nil, "plain node, %q", c.addr)
		require.Equal(t, c.tlsOK, tlsNode.checkPeerAdmin(c.addr, gossip) == nil, "TLS node, %q", c.addr)
	}
	require.NoError(t, plain.checkPeerAdmin("https://[::1]:8390", "[::1]:7946"))
	require.NoError(t, plain.checkPeerAdmin("https://[::ffff:10.0.0.2]:8390", gossip))
	require.ErrorContains(t, tlsNode.checkPeerAdmin("http://10.0.0.2:8390", gossip), "not sent in the clear")
	require.ErrorContains(t, plain.checkPeerAdmin("http://10.0.0.2:8390", "no-port"), "not on the member's gossip host")
}

// A member's admin API that redirects gets no second request: the token
// goes to the address it advertised, not where it points.
func TestPeerAdminNoRedirect(t *testing.T) {
	var elsewhere atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			elsewhere.Add(1)
		}
		_, _ = w.Write([]byte(`{"usage":[]}`))
	}))
	defer target.Close()
	member := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer member.Close()
	n := &Node{adminToken: "t0k3n", peerHTTP: &http.Client{CheckRedirect: noRedirect}}
	req := httptest.NewRequest(http.MethodGet, "/v1/usage", nil)
	gossip := strings.TrimPrefix(member.URL, "http://")
	_, err := n.peerUsage(req, member.URL, gossip, "local=1")
	require.ErrorContains(t, err, "answered 307")
	require.Zero(t, elsewhere.Load(), "no request carried the token elsewhere")
}
