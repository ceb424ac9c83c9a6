package capsctl

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// capsctl's files are refused in one line, exit 2, when they are a FIFO, a
// directory, a device or over their limit; a licence to add, exit 1.
func TestBadFilesRefused(t *testing.T) {
	f := func(limit int64, code int, want string, args func(bad string) []string) {
		t.Helper()
		for bad, why := range boundedtest.BadFiles(t, limit) {
			var stdout, stderr bytes.Buffer
			start := time.Now()
			got := Main(args(bad), &stdout, &stderr)
			require.Less(t, time.Since(start), time.Second, bad)
			require.Equal(t, code, got, stderr.String())
			require.Empty(t, stdout.String())
			require.Equal(t, "capsctl: "+want+why+"\n", stderr.String())
		}
	}
	f(bounded.KeyFile, 2, "cannot read token file: ", func(bad string) []string { return []string{"--token-file", bad, "cluster"} })
	f(bounded.CertFile, 2, "cannot read --ca-file: ", func(bad string) []string { return []string{"--ca-file", bad, "cluster"} })
	f(bounded.LicenceFile, 1, "cannot read licence file: ", func(bad string) []string {
		return []string{"--addr", "http://127.0.0.1:1", "license", "add", bad}
	})
	var stderr bytes.Buffer
	require.Equal(t, 2, Main([]string{"--ca-file", writeTemp(t, "not pem"), "cluster"}, &bytes.Buffer{}, &stderr))
	require.True(t, strings.HasSuffix(stderr.String(), ": no PEM certificate in it\n"), stderr.String())
}

func writeTemp(t *testing.T, data string) string {
	t.Helper()
	path := t.TempDir() + "/f"
	require.NoError(t, os.WriteFile(path, []byte(data), 0o600))
	return path
}

// recorder is an admin API that answers every request with body and
// notes what was asked.
type recorder struct {
	body string
	asks []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.asks = append(r.asks, req.Method+" "+req.URL.RequestURI())
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(r.body))
}

// A word or a flag a command does not take is a usage error naming it,
// exit 2, before any request; as capslicense's are.
func TestUnexpectedArguments(t *testing.T) {
	rec := &recorder{body: "{}"}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	f := func(want string, args ...string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		require.Equal(t, 2, Main(append([]string{"--addr", srv.URL}, args...), &stdout, &stderr), "%v: %s", args, stderr.String())
		require.Equal(t, "capsctl: "+want+" (capsctl --help)\n", stderr.String(), args)
		require.Empty(t, stdout.String())
		require.Empty(t, rec.asks, args)
	}
	f(`accounts set: unexpected argument "extra"`, "accounts", "set", "voice", "acme", "--tokens", "50", "extra")
	f(`accounts set: unexpected argument "extra"`, "accounts", "set", "voice", "acme", "extra", "--tokens", "50")
	f(`accounts set: unknown flag --bogus`, "accounts", "set", "voice", "acme", "--tokens", "100", "--bogus")
	f(`accounts set: a value is missing after --tokens`, "accounts", "set", "voice", "acme", "--tokens")
	f(`accounts set: invalid value "many" for --tokens: parse error`, "accounts", "set", "voice", "acme", "--tokens", "many")
	f(`accounts set needs --tokens N (N >= 0)`, "accounts", "set", "voice", "acme", "--overage", "none")
	f(`accounts list: unexpected argument "extra"`, "accounts", "list", "voice", "extra")
	f(`cluster: unexpected argument "extra"`, "cluster", "extra")
	f(`status: unexpected argument "extra"`, "status", "voice", "extra")
	f(`license list: unexpected argument "extra"`, "license", "list", "extra")
	f(`license show: unexpected argument "extra"`, "license", "show", "lic-1", "extra")
	f(`license add: unexpected argument "extra"`, "license", "add", "voice.lic", "extra")
	f(`usage: unexpected argument "extra"`, "usage", "--service", "voice", "--from", "2026-12-01T00:00:00Z", "--to", "2026-12-02T00:00:00Z", "extra")
	f(`usage: unknown flag --bogus`, "usage", "--bogus")
	f(`usage export: unexpected argument "extra"`, "usage", "export", "--format", "cloudevents", "extra")
	f(`limits set: unexpected argument "extra"`, "limits", "set", "voice", "k3", "--caps", "5", "extra")
	f(`limits set: unknown flag --bogus`, "limits", "set", "voice", "k3", "--caps", "5", "--bogus")
	f(`limits set needs at least one of --caps N, --burst N, --sessions N, --tokens N`, "limits", "set", "voice", "k3")
	f(`limits get: unexpected argument "extra"`, "limits", "get", "voice", "k3", "extra")
	f(`limits rm: unexpected argument "extra"`, "limits", "rm", "voice", "k3", "extra")
	f(`limits list: unexpected argument "extra"`, "limits", "list", "voice", "extra")
	f(`unknown flag --bogus`, "--bogus", "cluster")

	// What is right is sent.
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, Main([]string{"--addr", srv.URL, "accounts", "set", "voice", "acme", "--tokens", "50"}, &stdout, &stderr), stderr.String())
	require.Equal(t, []string{"PUT /v1/services/voice/accounts/acme"}, rec.asks)
}

// Numbers print as the node wrote them: an int64 past 2^53, or at its
// end, is not rounded through a float64 nor printed with an exponent.
func TestNumbersPrintExactly(t *testing.T) {
	rec := &recorder{body: `{"service": "voice", "limits": {"caps": 9223372036854775807, "caps_share": 4611686018427387904,
		"sessions": 9007199254740993, "tokens": -1}, "node": {"used_caps": 12.5, "tokens_used": 18014398509481986}}`}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, Main([]string{"--addr", srv.URL, "status", "voice"}, &stdout, &stderr), stderr.String())
	require.Equal(t, `limits.caps        9223372036854775807
limits.caps_share  4611686018427387904
limits.sessions    9007199254740993
limits.tokens      -1
node.tokens_used   18014398509481986
node.used_caps     12.5
service            voice
`, stdout.String())
}
