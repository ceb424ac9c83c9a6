package usageevents

import (
	"fmt"
	"io"

	"github.com/capsgate/capsgate/licensing/ledger"
)

// NextTrailer is the HTTP trailer that ends every whole answer of a
// node's GET /v1/usage/export: "end" when the answer holds the last
// event asked for, else the ?after= of the next page. An answer without
// it was cut short.
const NextTrailer = "Capsgate-Export-Next"

// Format is how events are laid out in a stream.
type Format int

// Formats.
const (
	// Lines is one event per line (JSON Lines): what a stream of any
	// length can be, and what jq, split or a loop of curl -d reads.
	Lines Format = iota
	// Batch is one JSON array of events, the CloudEvents JSON batch
	// format (application/cloudevents-batch+json): one request body for
	// OpenMeter's POST /api/v1/events.
	Batch
)

// Format names, as --format and ?format= take them.
const (
	NameLines = "cloudevents"
	NameBatch = "cloudevents-batch"
)

// ParseFormat reads a format name.
func ParseFormat(s string) (Format, error) {
	switch s {
	case NameLines:
		return Lines, nil
	case NameBatch:
		return Batch, nil
	}
	return 0, fmt.Errorf("format must be %s (JSON Lines) or %s (a JSON array), got %q", NameLines, NameBatch, s)
}

// ContentType returns the media type of a stream in format f.
func (f Format) ContentType() string {
	if f == Batch {
		return "application/cloudevents-batch+json"
	}
	return "application/x-ndjson"
}

// Writer writes events to a stream in one format: in Lines each event
// and a newline; in Batch "[", the events separated by ",\n" each on its
// own line, and "]" with a newline ("[]\n" for none). It holds one event
// at a time; the caller buffers the stream. Not safe for concurrent use.
type Writer struct {
	w      io.Writer
	format Format
	n      int
	err    error
}

// NewWriter returns a Writer of format f to w.
func NewWriter(w io.Writer, f Format) *Writer { return &Writer{w: w, format: f} }

// Write writes r's event; it writes nothing and returns false if r is
// not a usage record.
func (w *Writer) Write(r *ledger.Record) (bool, error) {
	ev, ok, err := Encode(r)
	if !ok || err != nil {
		return false, err
	}
	return true, w.WriteEvent(ev)
}

// WriteEvent writes one event already encoded (a JSON object, no
// newline), such as a line of a stream in Lines.
func (w *Writer) WriteEvent(ev []byte) error {
	prefix, suffix := "", "\n"
	if w.format == Batch {
		prefix, suffix = ",\n", ""
		if w.n == 0 {
			prefix = "[\n"
		}
	}
	w.write([]byte(prefix))
	w.write(ev)
	w.write([]byte(suffix))
	w.n++
	return w.err
}

// write writes b unless an earlier write failed.
func (w *Writer) write(b []byte) {
	if w.err == nil && len(b) > 0 {
		_, w.err = w.w.Write(b)
	}
}

// Count returns the number of events written.
func (w *Writer) Count() int { return w.n }

// Close ends the stream (a Batch's closing bracket). It does not close
// the underlying writer.
func (w *Writer) Close() error {
	if w.format != Batch {
		return w.err
	}
	end := "\n]\n"
	if w.n == 0 {
		end = "[]\n"
	}
	w.write([]byte(end))
	return w.err
}
