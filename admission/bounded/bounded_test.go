package bounded_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	. "github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/bounded/boundedtest"
)

// readers are ReadFile and MapFile, the latter copying out and unmapping.
var readers = map[string]func(path string, limit int64) ([]byte, error){
	"ReadFile": ReadFile,
	"MapFile": func(path string, limit int64) ([]byte, error) {
		b, unmap, err := MapFile(path, limit)
		if err != nil {
			return nil, err
		}
		defer unmap()
		return bytes.Clone(b), nil
	},
}

func TestReadFileRefuses(t *testing.T) {
	const limit = 1 << 10
	for name, read := range readers {
		for path, want := range boundedtest.BadFiles(t, limit) {
			data, err := read(path, limit)
			require.Nil(t, data, name)
			require.EqualError(t, err, want, name)
			require.True(t, errors.Is(err, ErrNotRegular) || errors.Is(err, ErrTooLarge), path)
		}
		_, err := read(filepath.Join(t.TempDir(), "none"), limit)
		require.ErrorIs(t, err, fs.ErrNotExist)
		require.Regexp(t, "^open .*/none: no such file or directory$", err.Error())
	}
}

func TestReadFileReads(t *testing.T) {
	for name, read := range readers {
		dir := t.TempDir()
		f := func(size int, limit int64) {
			t.Helper()
			path := filepath.Join(dir, "f")
			want := []byte(strings.Repeat("x", size))
			require.NoError(t, os.WriteFile(path, want, 0o600))
			got, err := read(path, limit)
			require.NoError(t, err, name)
			require.Equal(t, want, got, name)
		}
		f(0, 0)
		f(0, 10)
		f(10, 10) // exactly the limit
		f(5000, 1<<20)
		// A symlink to a regular file is read; to a device, refused.
		link := filepath.Join(dir, "link")
		require.NoError(t, os.Symlink(filepath.Join(dir, "f"), link))
		_, err := read(link, 1<<20)
		require.NoError(t, err)
		zero := filepath.Join(dir, "zero")
		require.NoError(t, os.Symlink("/dev/zero", zero))
		_, err = read(zero, 1<<20)
		require.EqualError(t, err, zero+": not a regular file (a character device)", name)
	}
}

func TestReadAll(t *testing.T) {
	got, err := ReadAll(strings.NewReader("abc"), 3)
	require.NoError(t, err)
	require.Equal(t, "abc", string(got))
	zero, err := os.Open("/dev/zero")
	require.NoError(t, err)
	defer zero.Close()
	_, err = ReadAll(zero, 1<<20)
	require.EqualError(t, err, "file too large (more than 1 MiB)")
	require.ErrorIs(t, err, ErrTooLarge)
}

func TestSize(t *testing.T) {
	f := func(n int64, want string) {
		t.Helper()
		require.Equal(t, want, Size(n))
	}
	f(0, "0 bytes")
	f(1000, "1000 bytes")
	f(64<<10, "64 KiB")
	f(1<<20, "1 MiB")
	f(3<<30, "3 GiB")
	f(1<<20+1, "1048577 bytes")
}

func TestYAML(t *testing.T) {
	f := func(doc string, limit int, want string) {
		t.Helper()
		var n yaml.Node
		require.NoError(t, yaml.Unmarshal([]byte(doc), &n))
		err := YAML(&n, limit)
		if want == "" {
			require.NoError(t, err)
			return
		}
		require.EqualError(t, err, want)
	}
	// The document, the mapping, 2 keys, 1, the list and its 2 entries: 8.
	f("a: 1\nb: [x, y]\n", 8, "")
	f("a: 1\nb: [x, y]\n", 7, "line 1: the document expands to more than 7 values (aliases and merge keys followed); write the values out")
	// Each alias counts 1 and what it refers to: 2 + (1+3) + 2 × (1+1+3) = 16.
	f("a: &x [1, 2]\nb: *x\nc: *x\n", 16, "")
	f("a: &x [1, 2]\nb: *x\nc: *x\n", 15, "line 1: the document expands to more than 15 values (aliases and merge keys followed); write the values out")
	f(boundedtest.Bomb("resp", `addr: ":6390"`), MaxYAMLValues, boundedtest.BombError)
	f("a: &x [*x]\n", 100, "line 1: an alias refers to the node that holds it")
	// yaml.v3 panicked decoding this into a struct (found by FuzzPriceSheet).
	f("plans:\n  - &p {0}\n  - {<<,*p}", 100, "line 3: a mapping key must be a plain value, got an alias (*p)")
	f("? [a]\n: b\n", 100, "line 1: a mapping key must be a plain value, got a list")
	f("? {a: b}\n: c\n", 100, "line 1: a mapping key must be a plain value, got a mapping")
}

func TestYAMLError(t *testing.T) {
	var v struct{ A int }
	err := yaml.Unmarshal([]byte("a: x\nb: [\n"), &v)
	require.Error(t, err)
	require.NotContains(t, YAMLError(err).Error(), "\n")
	err = yaml.Unmarshal([]byte("a: x\n"), &v)
	require.EqualError(t, YAMLError(err), "line 1: cannot unmarshal !!str `x` into int")
}
