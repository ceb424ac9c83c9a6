package node

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriteLinted(t *testing.T) {
	in := "# HELP capsgate_sessions\n# TYPE capsgate_sessions gauge\ncapsgate_sessions{service=\"a\"} 3\n" +
		"# HELP go_cgo_calls_count\n# TYPE go_cgo_calls_count counter\ngo_cgo_calls_count 7\n" +
		"# HELP go_goroutines\n# TYPE go_goroutines gauge\ngo_goroutines 30\n" +
		"# HELP mine Already said.\nmine 1"
	var out bytes.Buffer
	require.NoError(t, writeLinted(&out, []byte(in)))
	require.Equal(t, "# HELP capsgate_sessions Open sessions on this node that count against the licence, by service.\n"+
		"# TYPE capsgate_sessions gauge\ncapsgate_sessions{service=\"a\"} 3\n"+
		"# HELP go_goroutines Go runtime: goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 30\n"+
		"# HELP mine Already said.\nmine 1\n", out.String())
}
