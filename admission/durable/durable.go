// Package durable replaces a file so that a crash leaves the old content
// or the new, never a torn file nor a missing one: the new content goes to a
// file aside in the same directory, which is fsync'd, renamed over the
// target, and then the directory is fsync'd so that the rename survives a
// crash too. SyncDir alone makes a file's creation durable.
//
//	f, err := durable.Create(path, 0o600)
//	if err != nil { ... }
//	if _, err := f.Write(data); err != nil {
//		f.Abort() // path is as it was; the file aside is removed
//		...
//	}
//	err = f.Commit() // or durable.WriteFile(path, data, 0o600) for all of it
//
// The errors are those of package os (each names its file), unwrapped, for
// the caller to wrap in a message of its own.
package durable

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TempSuffix names the file aside that Create and WriteFile write: path
// plus TempSuffix. One found at start was left by a crash before its
// rename, and may be removed.
const TempSuffix = ".tmp"

// File is the replacement of a file in progress: the new content is
// written to it (the embedded *os.File is the file aside), then Commit
// puts it in place, or Abort drops it. A File is not safe for concurrent
// use.
type File struct {
	*os.File
	path string // the file replaced
	done bool   // Commit or Abort was called
}

// Create starts the replacement of path through path+TempSuffix, created
// with perm or truncated if a crash left it: for the files of a program's
// own directory, whose start may remove a stale one by its name.
func Create(path string, perm fs.FileMode) (*File, error) {
	f, err := os.OpenFile(path+TempSuffix, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return nil, err
	}
	return &File{File: f, path: path}, nil
}

// CreateTemp starts the replacement of path through a new file in its
// directory, named from pattern as os.CreateTemp names it, with mode perm:
// for a path the user names, beside which path+TempSuffix could be a file
// of someone else's.
func CreateTemp(path, pattern string, perm fs.FileMode) (*File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), pattern)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		_ = os.Remove(f.Name())
		return nil, err
	}
	return &File{File: f, path: path}, nil
}

// Commit fsyncs and closes the file aside, renames it over the path and
// fsyncs the directory. If it fails before the rename the path is as it
// was and the file aside is removed; if the directory's fsync fails, the
// new content is in place but may not survive a crash.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("cannot commit %s: %w", f.Name(), os.ErrClosed)
	}
	f.done = true
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), f.path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return err
	}
	return SyncDir(filepath.Dir(f.path))
}

// Abort closes and removes the file aside, leaving the path as it was. It
// does nothing after Commit or Abort, so that it may be deferred.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.Close()
	_ = os.Remove(f.Name())
}

// WriteFile replaces path with data, with mode perm, through
// path+TempSuffix (see Create and Commit).
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	f, err := Create(path, perm)
	return write(f, err, data)
}

// WriteTemp replaces path with data, with mode perm, through a new file
// named from pattern (see CreateTemp and Commit).
func WriteTemp(path, pattern string, data []byte, perm fs.FileMode) error {
	f, err := CreateTemp(path, pattern, perm)
	return write(f, err, data)
}

// write writes data to f and commits it, unless err (f's creation's).
func write(f *File, err error, data []byte) error {
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// SyncDir fsyncs the directory dir, making the creation, renaming and
// removal of its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
