package capsctl

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
	"github.com/capsgate/capsgate/licensing/usageevents"
)

// maxEventLine bounds one line of an export answer: an event is a ledger
// record (at most 64 KiB) in other words.
const maxEventLine = 256 << 10

// usageExport runs `capsctl usage export`: it asks GET /v1/usage/export
// for one page after another until the node says the last is sent, and
// writes the events to --out (whole or not at all: a temporary file
// renamed at the end) or to stdout.
func (c *client) usageExport(args []string) error {
	fs := newFlags("usage export")
	format := fs.String("format", "", "cloudevents|cloudevents-batch")
	service := fs.String("service", "", "service")
	from := fs.String("from", "", "start (RFC 3339)")
	to := fs.String("to", "", "end (RFC 3339)")
	after := fs.Uint64("after", 0, "start after this ledger seq")
	limit := fs.Uint64("limit", 0, "events per request (default: the node's)")
	out := fs.String("out", "", "file to write (default: stdout)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f, err := usageevents.ParseFormat(*format)
	if err != nil {
		return usageError{"usage export: --" + err.Error()}
	}
	if *out != "" {
		if err := checkOut(*out); err != nil {
			return err
		}
	}
	q := url.Values{"format": {usageevents.NameLines}}
	for k, v := range map[string]string{"service": *service, "from": *from, "to": *to} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *limit > 0 {
		q.Set("limit", strconv.FormatUint(*limit, 10))
	}

	dst := c.out
	var tmp *durable.File
	if *out != "" {
		tmp, err = durable.CreateTemp(*out, "."+filepath.Base(*out)+".*", 0o600)
		if err != nil {
			return fmt.Errorf("cannot write --out: %w", err)
		}
		defer tmp.Abort() // not committed: a failed export leaves no file
		dst = tmp
	}
	bw := bufio.NewWriterSize(dst, 64<<10)
	ew := usageevents.NewWriter(bw, f)
	var last []byte // the last event
	for cursor := *after; ; {
		q.Set("after", strconv.FormatUint(cursor, 10))
		next, err := c.exportPage("/v1/usage/export?"+q.Encode(), ew, &last)
		if err != nil {
			return err
		}
		if next == "end" {
			break
		}
		n, err := strconv.ParseUint(next, 10, 64)
		if err != nil || n <= cursor {
			return fmt.Errorf("cannot export usage: the node named %q as the next page after ledger seq %d", next, cursor)
		}
		cursor = n
	}
	if err := ew.Close(); err != nil {
		return fmt.Errorf("cannot write the export: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("cannot write the export: %w", err)
	}
	if tmp == nil {
		return nil
	}
	if err := tmp.Commit(); err != nil {
		return fmt.Errorf("cannot write --out: %w", err)
	}
	fmt.Fprintf(c.out, "wrote %d usage events to %s", ew.Count(), *out)
	var ev struct{ Sequence string }
	if json.Unmarshal(last, &ev) == nil && ev.Sequence != "" {
		seq := strings.TrimLeft(ev.Sequence, "0")
		fmt.Fprintf(c.out, ", up to ledger seq %s (--after %s goes on from there)", seq, seq)
	}
	fmt.Fprintln(c.out)
	return nil
}

// checkOut refuses an --out that cannot become the export: a directory
// (the temporary file, made beside --out, would be renamed over it, and
// for /tmp be made in /), or anything else that is not a regular file
// (renaming over /dev/stdout would replace the device's name). A path
// that does not exist yet is fine.
func checkOut(path string) error {
	info, err := os.Stat(path)
	switch {
	case (err == nil && info.IsDir()) || strings.HasSuffix(path, string(filepath.Separator)):
		return usageError{fmt.Sprintf("usage export: --out %s is a directory: name the file to write, such as %s",
			path, filepath.Join(path, "usage.jsonl"))}
	case err == nil && !info.Mode().IsRegular():
		return usageError{fmt.Sprintf("usage export: --out %s is not a regular file: name a file to write, or leave --out out for standard output", path)}
	}
	return nil
}

// exportPage copies one page of events (JSON Lines) to ew, and the last
// to *last, and returns the node's usageevents.NextTrailer.
func (c *client) exportPage(path string, ew *usageevents.Writer, last *[]byte) (string, error) {
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		return "", fmt.Errorf("bad --addr %q: %w", c.base, err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("cannot reach %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := bounded.ReadAll(resp.Body, 64<<10)
		return "", answerError(http.MethodGet, path, resp, b)
	}
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > maxEventLine {
			return "", fmt.Errorf("cannot export usage: the node sent a line of more than %d bytes", maxEventLine)
		}
		line = append(line, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if next := resp.Trailer.Get(usageevents.NextTrailer); next != "" && len(line) == 0 {
				return next, nil
			}
			return "", fmt.Errorf("cannot export usage: the answer of GET %s was cut short (no %s trailer after a whole line)", path, usageevents.NextTrailer)
		case err != nil:
			return "", fmt.Errorf("cannot export usage: the answer of GET %s broke off: %w", path, err)
		}
		ev := bytes.TrimSuffix(line, []byte("\n"))
		if len(ev) < 2 || ev[0] != '{' || ev[len(ev)-1] != '}' {
			return "", fmt.Errorf("cannot export usage: the node sent a line that is not an event: %.80q", ev)
		}
		if err := ew.WriteEvent(ev); err != nil {
			return "", fmt.Errorf("cannot write the export: %w", err)
		}
		*last = append((*last)[:0], ev...)
		line = line[:0]
	}
}
