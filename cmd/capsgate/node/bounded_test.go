package node

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// Every file start-up reads is refused, in one line naming its key and
// flag, when it is a FIFO, a directory, a device or over its limit, and
// never read to its end: /dev/zero once grew the node to 2 GB.
func TestStartupFilesBounded(t *testing.T) {
	dir := secretsDir(t)
	f := func(limit int64, prefix string, args func(bad string) []string) {
		t.Helper()
		boundedtest.Refused(t, limit, prefix, func(path string) error {
			_, err := Load(append(prodArgs(dir), args(path)...), nil)
			return err
		})
	}
	flag := func(name string) func(string) []string {
		return func(bad string) []string { return []string{name, bad} }
	}
	f(bounded.ConfigFile, "cannot read config file: ", flag("--config"))
	f(bounded.KeyFile, "invalid config: admin.token_file (--admin-token-file): ", flag("--admin-token-file"))
	f(bounded.KeyFile, "invalid config: resp.password_file (--resp-password-file): ", flag("--resp-password-file"))
	f(bounded.KeyFile, "invalid config: gossip.key_file (--gossip-key-file): ", flag("--gossip-key-file"))
	f(bounded.KeyFile, "invalid config: vendor_keys (--vendor-key) entry 2: ",
		func(bad string) []string { return []string{"--vendor-key", dir + "/vendor.pub", "--vendor-key", bad} })
	const tlsWant = "invalid config: admin.tls_cert_file (--admin-tls-cert-file) cannot load the certificate and key (admin.tls_key_file (--admin-tls-key-file)): "
	f(bounded.CertFile, tlsWant, func(bad string) []string {
		return []string{"--admin-tls-cert-file", bad, "--admin-tls-key-file", dir + "/admin.key"}
	})
	f(bounded.CertFile, tlsWant, func(bad string) []string {
		return []string{"--admin-tls-cert-file", dir + "/admin.crt", "--admin-tls-key-file", bad}
	})
}

// A config file of nested aliases and merge keys is refused before it is
// expanded: 760 bytes kept start-up busy past 40 s.
func TestConfigAliasBomb(t *testing.T) {
	dir := secretsDir(t)
	path := writeTestFile(t, dir, "bomb.yaml", boundedtest.Bomb("resp", `addr: ":6390"`))
	_, err := Load(append(prodArgs(dir), "--config", path), nil)
	requireOneLine(t, err, "invalid config file "+path+": "+boundedtest.BombError)

	// Aliases within the bound still work.
	path = writeTestFile(t, dir, "alias.yaml", "resp: &r {max_conns: 7}\nlog: {level: debug}\n")
	c, err := Load(append(prodArgs(dir), "--config", path), nil)
	require.NoError(t, err)
	require.Equal(t, 7, c.RESP.MaxConns)
}

// The node's own files in data_dir are read the same way: a --dev vendor
// key that is a FIFO stops start-up with one line instead of hanging it.
func TestDataDirFilesBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), DevVendorKeyFile)
	require.NoError(t, syscall.Mkfifo(path, 0o600))
	_, err := devVendorKey(filepath.Dir(path))
	requireOneLine(t, err, "cannot read the --dev vendor key: "+path+": not a regular file (a FIFO)")
}

// /metrics renders at most metricsRenders expositions at once (each is
// held whole until written): a scrape beyond them waits for a slot, and
// one whose client gives up meanwhile renders nothing. Each rendering
// starts from the last one's size.
func TestMetricsRendersBounded(t *testing.T) {
	n := startNode(t, "--dev")
	h := n.admin.Handler
	scrape := func(ctx context.Context) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, "/metrics", nil))
		return rec
	}
	first := scrape(context.Background())
	require.Equal(t, http.StatusOK, first.Code)
	require.Contains(t, first.Body.String(), "capsgate_resp_connections")
	require.Positive(t, n.rendered.Load())
	require.Empty(t, n.renders, "every slot given back")

	for range metricsRenders {
		n.renders <- struct{}{} // every slot taken by a rendering
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- scrape(ctx) }()
	cancel()
	gaveUp := <-done
	require.Zero(t, gaveUp.Body.Len(), "nothing rendered for a client that gave up waiting")
	require.Len(t, n.renders, metricsRenders)

	go func() { done <- scrape(context.Background()) }()
	<-n.renders // a rendering ends: the waiting scrape takes its slot
	waited := <-done
	require.Equal(t, http.StatusOK, waited.Code)
	require.Contains(t, waited.Body.String(), "capsgate_resp_connections")
	require.Len(t, n.renders, metricsRenders-1)
}
