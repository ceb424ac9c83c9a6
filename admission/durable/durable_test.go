package durable_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	. "github.com/capsgate/capsgate/admission/durable"
)

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// withUmask runs the test under umask 022, the usual one, so that the
// modes asked for are the modes got.
func withUmask(t *testing.T) {
	old := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestWriteFile(t *testing.T) {
	withUmask(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	f := func(data string, perm fs.FileMode) {
		t.Helper()
		require.NoError(t, WriteFile(path, []byte(data), perm))
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, data, string(got))
		require.Equal(t, []string{"state"}, entries(t, dir), "no file aside left")
		fi, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, perm, fi.Mode().Perm())
	}
	f("first", 0o600)                         // created
	f("second, longer than the first", 0o644) // replaced, with the new file's mode
	f("", 0o640)                              // replaced by nothing
	// A stale file aside that a crash left is overwritten, not appended to.
	require.NoError(t, os.WriteFile(path+TempSuffix, []byte("stale and long"), 0o600))
	f("fresh", 0o600)
}

// A replacement that fails, at any step, leaves the old content and no
// file aside.
func TestFailureKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	require.NoError(t, WriteFile(path, []byte("old"), 0o600))
	old := func() {
		t.Helper()
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "old", string(got))
	}

	// Abandoned after a write (the caller's failure): Abort.
	f, err := Create(path, 0o600)
	require.NoError(t, err)
	_, err = f.WriteString("half of the new")
	require.NoError(t, err)
	f.Abort()
	old()
	require.Equal(t, []string{"state"}, entries(t, dir))

	// A write that fails: the file aside is closed under it.
	f, err = Create(path, 0o600)
	require.NoError(t, err)
	require.NoError(t, f.File.Close())
	_, err = f.Write([]byte("new"))
	require.Error(t, err)
	err = f.Commit()
	require.ErrorIs(t, err, os.ErrClosed)
	old()
	require.Equal(t, []string{"state"}, entries(t, dir))

	// The file aside cannot be made (a directory has its name).
	require.NoError(t, os.Mkdir(path+TempSuffix, 0o700))
	err = WriteFile(path, []byte("new"), 0o600)
	require.ErrorContains(t, err, path+TempSuffix)
	old()
	require.NoError(t, os.Remove(path+TempSuffix))

	// The rename fails (the target is a directory that is not empty): the
	// directory is as it was and the file aside is gone.
	sub := filepath.Join(dir, "sub")
	require.NoError(t, os.MkdirAll(filepath.Join(sub, "x"), 0o700))
	err = WriteFile(sub, []byte("new"), 0o600)
	require.ErrorContains(t, err, sub)
	require.Equal(t, []string{"x"}, entries(t, sub))
	require.Equal(t, []string{"state", "sub"}, entries(t, dir))
}

// CreateTemp writes aside under a new name made from the pattern, never an
// existing file's, with the mode asked for.
func TestCreateTemp(t *testing.T) {
	withUmask(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "usage.jsonl")
	mine := path + TempSuffix // a file of the user's, beside the target
	require.NoError(t, os.WriteFile(mine, []byte("mine"), 0o644))

	f, err := CreateTemp(path, ".usage.jsonl.*", 0o640)
	require.NoError(t, err)
	require.Equal(t, dir, filepath.Dir(f.Name()))
	require.Regexp(t, `^\.usage\.jsonl\.[0-9]+$`, filepath.Base(f.Name()))
	_, err = f.WriteString("events")
	require.NoError(t, err)
	require.NoError(t, f.Commit())
	f.Abort() // after Commit: nothing

	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "events", string(got))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o640), fi.Mode().Perm())
	got, err = os.ReadFile(mine)
	require.NoError(t, err)
	require.Equal(t, "mine", string(got))
	require.Equal(t, []string{"usage.jsonl", "usage.jsonl.tmp"}, entries(t, dir))
	require.ErrorIs(t, f.Commit(), os.ErrClosed, "a second Commit")

	f, err = CreateTemp(path, ".usage.jsonl.*", 0o600)
	require.NoError(t, err)
	f.Abort()
	require.Equal(t, []string{"usage.jsonl", "usage.jsonl.tmp"}, entries(t, dir))

	// WriteTemp is the same for a whole buffer.
	require.NoError(t, WriteTemp(path, ".usage.jsonl.*", []byte("more events"), 0o600))
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "more events", string(got))
	fi, err = os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o600), fi.Mode().Perm())
	require.Equal(t, []string{"usage.jsonl", "usage.jsonl.tmp"}, entries(t, dir))
}

// A directory that is not there is an error that names the path.
func TestMissingDir(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no", "such")
	path := filepath.Join(missing, "state")
	f := func(err error) {
		t.Helper()
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.ErrorContains(t, err, missing)
	}
	f(WriteFile(path, []byte("x"), 0o600))
	_, err := Create(path, 0o600)
	f(err)
	_, err = CreateTemp(path, ".state.*", 0o600)
	f(err)
	f(WriteTemp(path, ".state.*", []byte("x"), 0o600))
	f(SyncDir(missing))
	require.NoError(t, SyncDir(dir))
}
