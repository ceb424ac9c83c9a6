package node

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cmd/internal/capsctl"
	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/usageevents"
)

// exportGet asks for one export page and returns the status, the body and
// the usageevents.NextTrailer.
func exportGet(t *testing.T, base string, q url.Values) (int, string, string) {
	t.Helper()
	resp, err := http.Get(base + "/v1/usage/export?" + q.Encode())
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		require.Contains(t, resp.Trailer, usageevents.NextTrailer, "announced in the header")
		f, _ := usageevents.ParseFormat(q.Get("format"))
		require.Equal(t, f.ContentType(), resp.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), resp.Trailer.Get(usageevents.NextTrailer)
}

// exportT0 starts a fixed past day, which a node's own metering (of
// today) never writes into.
var exportT0 = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

// devNodeWithUsage starts a --dev node and appends k 10 s intervals from
// exportT0 to its ledger, interval i with the records records(i) gives.
func devNodeWithUsage(t *testing.T, k int, records func(i int) ([]ledger.Usage, []ledger.Witness)) (n *Node, base string) {
	t.Helper()
	n = startNode(t, "--dev")
	for i := range k {
		from := exportT0.Add(time.Duration(i) * 10 * time.Second)
		u, w := records(i)
		_, err := n.ledger.Append(from, from.Add(10*time.Second), u, w)
		require.NoError(t, err)
	}
	return n, "http://" + n.AdminAddr()
}

// GET /v1/usage/export and capsctl usage export on a real node: the
// node's own ledger records in the range as CloudEvents, the same bytes
// on every export, in pages that add up to the whole, the bounds checked
// before any work.
func TestUsageExport(t *testing.T) {
	// Five intervals: 15 usage records and 5 witness records.
	n, base := devNodeWithUsage(t, 5, func(i int) ([]ledger.Usage, []ledger.Witness) {
		return []ledger.Usage{
			{Service: "voice", Attempts: uint64(100 + i), Admitted: uint64(90 + i), Rejected: map[string]uint64{"CAPS": 10}, Tokens: 90},
			{Service: "voice", Account: "acme", Attempts: 40, Admitted: 40, Tokens: 40},
			{Service: "sms", Attempts: 1, Admitted: 1},
		}, []ledger.Witness{{Node: "peer", Seq: uint64(i + 1), Hash: strings.Repeat("ab", 32)}}
	})
	rangeQ := func(kv ...string) url.Values {
		q := url.Values{"format": {"cloudevents"}, "from": {"2025-06-01T00:00:00Z"}, "to": {"2025-06-02T00:00:00Z"}}
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	// What the export must be: the package's own encoding of the records.
	want := func(f usageevents.Format, service string) string {
		var b bytes.Buffer
		w := usageevents.NewWriter(&b, f)
		require.NoError(t, n.ledger.Read(exportT0, exportT0.Add(24*time.Hour), func(_ []byte, r *ledger.Record) error {
			if service == "" || (r.Usage != nil && r.Usage.Service == service) {
				_, err := w.Write(r)
				return err
			}
			return nil
		}))
		require.NoError(t, w.Close())
		return b.String()
	}
	lines := want(usageevents.Lines, "")
	require.Equal(t, 15, strings.Count(lines, "\n"))

	code, body, next := exportGet(t, base, rangeQ())
	require.Equal(t, 200, code, body)
	require.Equal(t, lines, body)
	require.Equal(t, "end", next)
	_, again, _ := exportGet(t, base, rangeQ())
	require.Equal(t, body, again, "a re-export is the same bytes")
	var ev usageevents.Event
	require.NoError(t, json.Unmarshal([]byte(body[:strings.Index(body, "\n")]), &ev))
	require.Equal(t, "capsgate:dev/dev", ev.Source)
	require.Equal(t, "voice", ev.Subject)
	require.Equal(t, "2025-06-01T00:00:10Z", ev.Time)

	code, body, next = exportGet(t, base, rangeQ("format", "cloudevents-batch"))
	require.Equal(t, 200, code, body)
	require.Equal(t, want(usageevents.Batch, ""), body)
	require.Equal(t, "end", next)
	code, body, _ = exportGet(t, base, rangeQ("service", "sms"))
	require.Equal(t, 200, code, body)
	require.Equal(t, want(usageevents.Lines, "sms"), body)
	require.Equal(t, 5, strings.Count(body, "\n"))

	// from and to select events by time (the interval's end), so that
	// back-to-back ranges share none: an interval ending at the bound
	// belongs to the range after it.
	_, first, _ := exportGet(t, base, rangeQ("to", "2025-06-01T00:00:30Z"))
	_, rest, _ := exportGet(t, base, rangeQ("from", "2025-06-01T00:00:30Z"))
	require.Equal(t, 6, strings.Count(first, "\n"))
	require.Equal(t, lines, first+rest)

	// Pages of 4 add up to the whole; the trailer names the next.
	var paged strings.Builder
	pages := 0
	for after := "0"; after != "end"; pages++ {
		code, body, after = exportGet(t, base, rangeQ("limit", "4", "after", after))
		require.Equal(t, 200, code, body)
		require.LessOrEqual(t, strings.Count(body, "\n"), 4)
		paged.WriteString(body)
	}
	require.Equal(t, 4, pages)
	require.Equal(t, lines, paged.String())
	// Exactly a page's worth left: the page says it is the last.
	code, body, next = exportGet(t, base, rangeQ("limit", "15"))
	require.Equal(t, 200, code, body)
	require.Equal(t, "end", next)

	// Bad requests are refused before anything is read.
	for _, c := range []struct {
		q      url.Values
		reason string
	}{
		{url.Values{}, "invalid_format"},
		{rangeQ("format", "json"), "invalid_format"},
		{rangeQ("limit", "0"), "invalid_limit"},
		{rangeQ("limit", "100001"), "invalid_limit"},
		{rangeQ("limit", "-1"), "invalid_limit"},
		{rangeQ("after", "x"), "invalid_after"},
		{rangeQ("service", "bad name"), "invalid_service"},
		{rangeQ("from", "yesterday"), "invalid_range"},
		{rangeQ("to", "2025-05-01T00:00:00Z"), "invalid_range"},
	} {
		code, body, _ := exportGet(t, base, c.q)
		require.Equal(t, 400, code, c.q.Encode())
		require.Contains(t, body, `"reason": "`+c.reason+`"`, c.q.Encode())
	}
	// At most maxExports at once.
	for range maxExports {
		exportSlots <- struct{}{}
	}
	resp, err := http.Get(base + "/v1/usage/export?" + rangeQ().Encode())
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
	require.Contains(t, string(b), `"reason": "busy"`)
	for range maxExports {
		<-exportSlots
	}

	// capsctl: every page, to a file or stdout, the same bytes.
	out := filepath.Join(t.TempDir(), "usage.jsonl")
	var stdout, stderr bytes.Buffer
	args := []string{"--addr", base, "usage", "export", "--format", "cloudevents", "--from", "2025-06-01T00:00:00Z",
		"--to", "2025-06-02T00:00:00Z", "--limit", "4", "--out", out}
	require.Equal(t, 0, capsctl.Main(args, &stdout, &stderr), stderr.String())
	require.Regexp(t, "^wrote 15 usage events to "+regexp.QuoteMeta(out)+`, up to ledger seq \d+ \(--after \d+ goes on from there\)\n$`, stdout.String())
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, lines, string(got))
	stdout.Reset()
	args = []string{"--addr", base, "usage", "export", "--format", "cloudevents-batch", "--from", "2025-06-01T00:00:00Z",
		"--to", "2025-06-02T00:00:00Z", "--limit", "2"}
	require.Equal(t, 0, capsctl.Main(args, &stdout, &stderr), stderr.String())
	require.Equal(t, want(usageevents.Batch, ""), stdout.String())
	stdout.Reset()
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "usage", "export", "--format", "cloudevents", "--service", "bad name"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "400 invalid_service")
	require.Empty(t, stdout.String())
}

// An export the ledger cannot finish is never a short export that looks
// whole: before the first byte it is a 500; after, the answer breaks off
// without its trailer, and capsctl says so and exits 1.
func TestUsageExportCutShort(t *testing.T) {
	n, base := devNodeWithUsage(t, 200, func(int) ([]ledger.Usage, []ledger.Witness) {
		return []ledger.Usage{{Service: "voice", Attempts: 1, Admitted: 1}}, nil
	})
	segs, err := filepath.Glob(filepath.Join(n.cfg.DataDir, "ledger", "seg-*.jsonl"))
	require.NoError(t, err)
	require.Len(t, segs, 1)
	orig, err := os.ReadFile(segs[0])
	require.NoError(t, err)
	// spoil makes the k-th voice record of the segment undecodable (an
	// upper-case digit in its hash), in place.
	spoil := func(k int) {
		b := bytes.Clone(orig)
		at := 0
		for range k {
			at += bytes.Index(b[at:], []byte(`"service":"voice"`)) + 1
		}
		h := at + bytes.Index(b[at:], []byte(`"hash":"`)) + len(`"hash":"`)
		b[h] = 'X'
		require.NoError(t, os.WriteFile(segs[0], b, 0o600))
	}
	q := url.Values{"format": {"cloudevents"}, "to": {"2025-06-02T00:00:00Z"}}

	spoil(3)
	code, body, _ := exportGet(t, base, q)
	require.Equal(t, http.StatusInternalServerError, code)
	require.Contains(t, body, `"reason": "ledger"`)
	require.Contains(t, body, "malformed")

	spoil(150) // well past the first 32 KiB written
	resp, err := http.Get(base + "/v1/usage/export?" + q.Encode())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Error(t, err, "the answer breaks off")
	require.Less(t, strings.Count(string(b), "\n"), 150)
	require.Empty(t, resp.Trailer.Get(usageevents.NextTrailer))

	out := filepath.Join(t.TempDir(), "usage.jsonl")
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, capsctl.Main([]string{"--addr", base, "usage", "export", "--format", "cloudevents", "--out", out}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "capsctl: cannot export usage: the answer of GET /v1/usage/export?after=0&format=cloudevents broke off")
	require.NoFileExists(t, out)
	require.NoError(t, os.WriteFile(segs[0], orig, 0o600))
}
