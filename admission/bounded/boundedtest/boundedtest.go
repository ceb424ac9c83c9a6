// Package boundedtest makes the files and documents every reader of
// package bounded is tested with.
package boundedtest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/bounded"
)

// BadFiles makes, in a temporary directory, a file of each kind a reader
// must refuse, and returns each with the error bounded.ReadFile gives it at
// limit: a FIFO no one writes to, a directory, a regular (sparse) file of
// limit+1 bytes, /dev/zero and /dev/urandom.
func BadFiles(t testing.TB, limit int64) map[string]string {
	t.Helper()
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(limit+1)) // sparse: no memory, no disk
	require.NoError(t, f.Close())
	return map[string]string{
		fifo:           fifo + ": not a regular file (a FIFO)",
		dir:            dir + ": not a regular file (a directory)",
		big:            big + ": file too large (" + strconv.FormatInt(limit+1, 10) + " bytes; the limit is " + bounded.Size(limit) + ")",
		"/dev/zero":    "/dev/zero: not a regular file (a character device)",
		"/dev/urandom": "/dev/urandom: not a regular file (a character device)",
	}
}

// Bomb is YAML of nested merge keys under key: 13 levels of nine aliases
// each of the level below, the first level a mapping of inner. About 760
// bytes that expand to 9^13 values; yaml.v3 alone would work on it for
// minutes. bounded.YAML refuses it at line 8.
func Bomb(key, inner string) string {
	parts := []string{"&a0 {" + inner + "}"}
	for i := 1; i < 14; i++ {
		refs := strings.TrimSuffix(strings.Repeat("*a"+strconv.Itoa(i-1)+",", 9), ",")
		parts = append(parts, "&a"+strconv.Itoa(i)+" {<<: ["+refs+"]}")
	}
	return key + ":\n  <<: [\n    " + strings.Join(parts, ",\n    ") + "]\n"
}

// BombError is what bounded.YAML says of Bomb.
const BombError = "line 8: the document expands to more than 100000 values (aliases and merge keys followed); write the values out"

// Refused checks that read refuses each of BadFiles(t, limit) within a
// second, with the error prefix followed by what bounded.ReadFile says of
// the file.
func Refused(t testing.TB, limit int64, prefix string, read func(path string) error) {
	t.Helper()
	for bad, why := range BadFiles(t, limit) {
		start := time.Now()
		err := read(bad)
		require.Less(t, time.Since(start), time.Second, bad)
		require.EqualError(t, err, prefix+why)
	}
}
