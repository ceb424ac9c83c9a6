// Package bounded reads what an operator or vendor points a program at —
// config, keys, certificates, licences, price sheets, ledgers — with a
// bound checked before the work is done: a file must be a regular file no
// larger than the limit for its kind (a device such as /dev/zero, a FIFO
// or a directory is refused before a byte is read), and a YAML
// document may not expand, through its aliases, past a number of values.
//
// Every error is one line that names the file, so that a program can print
// it and exit.
package bounded

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// The limit for each kind of file. Real files are a small fraction of
// these; what is larger is a mistake (a wrong path, a device) and is
// refused before it is read.
const (
	// ConfigFile bounds capsgate --config: a real one is a few KiB.
	ConfigFile = 1 << 20
	// KeyFile bounds key and secret files: vendor.key, vendor.pub, node.key,
	// node.pub, admin.token_file, resp.password_file, gossip.key_file,
	// capsctl --token-file. Each is under 1 KiB.
	KeyFile = 64 << 10
	// CertFile bounds PEM certificates and keys (admin.tls_cert_file,
	// admin.tls_key_file, capsctl --ca-file): a whole system CA bundle is
	// about 200 KiB.
	CertFile = 1 << 20
	// LicenceFile bounds a licence or revocation file read from disk
	// (capslicense verify/inspect, capsctl license add, the node's stored
	// licences): one is about 1 KiB.
	LicenceFile = 1 << 20
	// PriceSheet bounds capslicense bill --price-sheet.
	PriceSheet = 1 << 20
	// LedgerFile bounds each ledger file capslicense usage verify and bill
	// read whole: a segment is 4 MiB, an export of a month of a busy farm a
	// few hundred MiB.
	LedgerFile = 1 << 30
	// StateFile bounds the one-line state files a node keeps beside its
	// data (clock.hwm, the CAPSGATE_WALL_OFFSET_FILE of tests).
	StateFile = 64 << 10
	// NodeState bounds the node's own state files read at start (the
	// session journal and its snapshot, mapped; the token snapshot and log,
	// mapped, and an older version's tokens.json): they grow with what
	// the node holds (2 M sessions made a 94 MB journal), so the bound is
	// far above any real one; what it refuses is a device or a FIFO put in
	// their place, or a file gone wrong.
	NodeState = 4 << 30
)

// Sentinel errors, wrapped by ReadFile and ReadAll.
var (
	ErrNotRegular = errors.New("not a regular file")
	ErrTooLarge   = errors.New("file too large")
)

// ReadFile reads the regular file at path if it holds at most limit bytes.
// It opens with O_NONBLOCK, so that opening a FIFO does not wait for a
// writer, and looks at what it opened before reading: a FIFO, a device or
// a directory is refused without a byte read, a file over limit by its
// size. A file that grows past limit while it is read is refused too.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, err
	}
	// Read into a buffer of the size stat gave, not one doubled from 512
	// bytes: a 100 MB state snapshot was copied and cleared about twenty
	// times.
	data, err := readAll(f, limit, fi.Size())
	if errors.Is(err, ErrTooLarge) {
		return nil, fmt.Errorf("%s: %w (it grew past the limit of %s while being read)", path, ErrTooLarge, Size(limit))
	}
	if err != nil {
		return nil, err
	}
	return data, nil
}

// MapFile is ReadFile for the node's big state files, mapped instead of
// read: the bytes are the page cache's, not the heap's, so reading a
// snapshot and journals of 10 M entries (gigabytes) does not leave the
// process holding as much again once it has restored them. The caller
// must not use the bytes after calling unmap. A file mapped must not be
// truncated by anyone meanwhile (a read past its new end faults).
func MapFile(path string, limit int64) (b []byte, unmap func(), err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if err := check(path, fi, limit); err != nil {
		return nil, nil, err
	}
	if fi.Size() == 0 {
		return []byte{}, func() {}, nil
	}
	b, err = syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: cannot map it: %w", path, err)
	}
	_ = syscall.Madvise(b, syscall.MADV_SEQUENTIAL) // read once, front to back
	return b, func() { _ = syscall.Munmap(b) }, nil
}

// check refuses what is not a regular file of at most limit bytes.
func check(path string, fi fs.FileInfo, limit int64) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, kind(fi.Mode()))
	}
	if fi.Size() > limit {
		return fmt.Errorf("%s: %w (%d bytes; the limit is %s)", path, ErrTooLarge, fi.Size(), Size(limit))
	}
	return nil
}

// kind names the type of a file that is not regular.
func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "mode " + m.String()
}

// ReadAll reads r to its end if it holds at most limit bytes (standard
// input, an HTTP body); past limit it stops reading and the error wraps
// ErrTooLarge.
func ReadAll(r io.Reader, limit int64) ([]byte, error) { return readAll(r, limit, 0) }

// readAll is ReadAll into a buffer made for size bytes (and a little more,
// so that more than size shows without growing it).
func readAll(r io.Reader, limit, size int64) ([]byte, error) {
	buf := bytes.NewBuffer(make([]byte, 0, min(size, limit)+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(r, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("%w (more than %s)", ErrTooLarge, Size(limit))
	}
	return buf.Bytes(), nil
}

// Size writes a limit in bytes the way a person reads it: "64 KiB",
// "1 MiB", "1000 bytes".
func Size(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
