package names

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValid(t *testing.T) {
	for _, ok := range []string{"a", "voice", "A-Z_0.9:x", strings.Repeat("n", MaxLen), "...", ".a", "a.."} {
		require.True(t, Valid([]byte(ok)), "%q", ok)
	}
	for _, bad := range []string{"", ".", "..", strings.Repeat("n", MaxLen+1), "a b", "a/b", "ü", "a\x00", "a\n"} {
		require.False(t, Valid([]byte(bad)), "%q", bad)
	}
	for c := 0; c < 256; c++ {
		want := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._:-", rune(c))
		require.Equal(t, want, Valid([]byte{'x', byte(c)}), "byte %#x", c)
	}
}

func TestValidKey(t *testing.T) {
	for _, ok := range []string{"1", "a84b4c76e66710@pc33.atlanta.com", strings.Repeat("k", MaxKeyLen), "ü", "a/b.."} {
		require.True(t, ValidKey([]byte(ok)), "%q", ok)
	}
	for _, bad := range []string{"", strings.Repeat("k", MaxKeyLen+1), "a b", "a\tb", "a\x7f", "a\r\n"} {
		require.False(t, ValidKey([]byte(bad)), "%q", bad)
	}
}
