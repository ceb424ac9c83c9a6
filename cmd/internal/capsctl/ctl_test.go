package capsctl

import (
	"bytes"
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
