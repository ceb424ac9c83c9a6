package ledger

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// The node's key files are refused in one line when they are a FIFO, a
// directory, a device or over bounded.KeyFile, never read to their end.
func TestKeyFilesBounded(t *testing.T) {
	boundedtest.Refused(t, bounded.KeyFile, "cannot read node public key: ", func(path string) error {
		_, err := LoadNodePublicKey(path)
		return err
	})
	dir := t.TempDir()
	path := filepath.Join(dir, NodeKeyFile)
	f := func(make func() error, want string) {
		t.Helper()
		require.NoError(t, os.RemoveAll(path))
		require.NoError(t, make())
		_, err := LoadOrCreateNodeKey(dir)
		require.EqualError(t, err, "cannot read node key: "+path+want)
	}
	f(func() error { return syscall.Mkfifo(path, 0o600) }, ": not a regular file (a FIFO)")
	f(func() error { return os.Mkdir(path, 0o700) }, ": not a regular file (a directory)")
	f(func() error { return os.Symlink("/dev/urandom", path) }, ": not a regular file (a character device)")
	f(func() error { return os.WriteFile(path, make([]byte, bounded.KeyFile+1), 0o600) }, ": file too large (65537 bytes; the limit is 64 KiB)")
}
