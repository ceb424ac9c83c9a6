package ledger

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// errLineTooLong is lineReader's verdict on a line over MaxLineBytes.
var errLineTooLong = errors.New("line longer than the limit")

// lineReader splits a stream into lines of at most MaxLineBytes, keeping
// each line's newline (the last line may lack it) and offset.
type lineReader struct {
	r   *bufio.Reader
	off int64 // offset of the next line
	n   int   // number of the next line, from 1
	buf []byte
	// whole and nul describe the line next returned last, even one it
	// skipped as too long: whether it ended in a newline (all but the
	// last line of the input do), and whether it held a NUL byte (which
	// no record does, and which a crash leaves where the file grew but
	// its data never reached the disk).
	whole, nul bool
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), n: 1}
}

// next returns the next line, its offset and number. The line is valid
// until the next call. A line over MaxLineBytes is skipped whole and
// reported with errLineTooLong; the end of input is io.EOF.
func (lr *lineReader) next() (line []byte, off int64, n int, err error) {
	off, n = lr.off, lr.n
	lr.buf = lr.buf[:0]
	lr.whole, lr.nul = false, false
	long := false
	for {
		chunk, err := lr.r.ReadSlice('\n')
		lr.off += int64(len(chunk))
		lr.nul = lr.nul || bytes.IndexByte(chunk, 0) >= 0
		if !long {
			if len(lr.buf)+len(chunk) > MaxLineBytes {
				long, lr.buf = true, lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, chunk...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil && !errors.Is(err, io.EOF):
			return nil, off, n, err
		case errors.Is(err, io.EOF) && lr.off == off:
			return nil, off, n, io.EOF
		}
		lr.n++
		lr.whole = err == nil
		if long {
			return nil, off, n, errLineTooLong
		}
		return lr.buf, off, n, nil
	}
}
