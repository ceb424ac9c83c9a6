package capsctl

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing/usageevents"
)

// fakeExport is a node's GET /v1/usage/export over events numbered 1 to
// n, in pages of ?limit= (default 3); page, if set, answers instead.
// Each request's Authorization header goes to auths.
type fakeExport struct {
	n     int
	asks  []string
	auths []string
	page  func(w http.ResponseWriter, r *http.Request)
}

func (f *fakeExport) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.asks = append(f.asks, r.URL.RawQuery)
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	if r.URL.Path != "/v1/usage/export" || r.URL.Query().Get("format") != "cloudevents" {
		http.Error(w, "unexpected", http.StatusTeapot)
		return
	}
	if f.page != nil {
		f.page(w, r)
		return
	}
	after, _ := strconv.Atoi(r.URL.Query().Get("after"))
	limit := 3
	if v := r.URL.Query().Get("limit"); v != "" {
		limit, _ = strconv.Atoi(v)
	}
	w.Header().Set("Trailer", usageevents.NextTrailer)
	next := "end"
	for seq := after + 1; seq <= f.n; seq++ {
		if seq > after+limit {
			next = strconv.Itoa(after + limit)
			break
		}
		fmt.Fprintf(w, "{\"sequence\":\"%020d\"}\n", seq)
	}
	w.Header().Set(usageevents.NextTrailer, next)
}

func events(from, to int) []string {
	var out []string
	for seq := from; seq <= to; seq++ {
		out = append(out, fmt.Sprintf("{\"sequence\":\"%020d\"}", seq))
	}
	return out
}

func runExport(t *testing.T, f *fakeExport, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	var o, e bytes.Buffer
	code = Main(append([]string{"--addr", srv.URL, "usage", "export"}, args...), &o, &e)
	return code, o.String(), e.String()
}

// capsctl usage export follows the pages to the end and writes one
// stream: JSON Lines, or one JSON array over every page.
func TestUsageExportPages(t *testing.T) {
	f := &fakeExport{n: 7}
	code, out, errs := runExport(t, f, "--format", "cloudevents", "--service", "voice", "--from", "2026-12-01T00:00:00Z")
	require.Equal(t, 0, code, errs)
	require.Equal(t, strings.Join(events(1, 7), "\n")+"\n", out)
	require.Equal(t, []string{
		"after=0&format=cloudevents&from=2026-12-01T00%3A00%3A00Z&service=voice",
		"after=3&format=cloudevents&from=2026-12-01T00%3A00%3A00Z&service=voice",
		"after=6&format=cloudevents&from=2026-12-01T00%3A00%3A00Z&service=voice",
	}, f.asks)

	require.Equal(t, []string{"", "", ""}, f.auths)

	f = &fakeExport{n: 4}
	token := writeTemp(t, "t0ken\n")
	srv := httptest.NewServer(f)
	defer srv.Close()
	var o, e bytes.Buffer
	args := []string{"--addr", srv.URL, "--token-file", token, "usage", "export", "--format", "cloudevents-batch", "--limit", "2", "--after", "1"}
	require.Equal(t, 0, Main(args, &o, &e), e.String())
	require.Equal(t, "[\n"+strings.Join(events(2, 4), ",\n")+"\n]\n", o.String())
	require.Equal(t, []string{"after=1&format=cloudevents&limit=2", "after=3&format=cloudevents&limit=2"}, f.asks)
	require.Equal(t, []string{"Bearer t0ken", "Bearer t0ken"}, f.auths)

	code, out, errs = runExport(t, &fakeExport{}, "--format", "cloudevents-batch")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "[]\n", out)

	// --out: the file, whole, and one line on stdout.
	path := filepath.Join(t.TempDir(), "usage.jsonl")
	code, out, errs = runExport(t, &fakeExport{n: 5}, "--format", "cloudevents", "--out", path)
	require.Equal(t, 0, code, errs)
	require.Equal(t, "wrote 5 usage events to "+path+", up to ledger seq 5 (--after 5 goes on from there)\n", out)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, strings.Join(events(1, 5), "\n")+"\n", string(got))
	code, out, errs = runExport(t, &fakeExport{}, "--format", "cloudevents", "--out", path)
	require.Equal(t, 0, code, errs)
	require.Equal(t, "wrote 0 usage events to "+path+"\n", out)
	got, err = os.ReadFile(path)
	require.NoError(t, err)
	require.Empty(t, got)
}

// A failed export says why in one line, exits non-zero and leaves no
// --out file behind (nor a temporary one).
func TestUsageExportFails(t *testing.T) {
	f := func(page func(w http.ResponseWriter, r *http.Request), want string) {
		t.Helper()
		dir := t.TempDir()
		code, out, errs := runExport(t, &fakeExport{page: page}, "--format", "cloudevents", "--out", filepath.Join(dir, "usage.jsonl"))
		require.Equal(t, 1, code)
		require.Empty(t, out)
		require.Contains(t, errs, want)
		require.Equal(t, 1, strings.Count(errs, "\n"), errs)
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Empty(t, entries)
	}
	f(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(events(1, 1)[0] + "\n"))
	}, "was cut short (no Capsgate-Export-Next trailer after a whole line)")
	f(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", usageevents.NextTrailer)
		_, _ = w.Write([]byte(`{"seq`))
		w.Header().Set(usageevents.NextTrailer, "end")
	}, "was cut short")
	f(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", usageevents.NextTrailer)
		w.Header().Set(usageevents.NextTrailer, r.URL.Query().Get("after")) // never moves on
	}, `the node named "0" as the next page after ledger seq 0`)
	f(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("not an event\n"))
	}, "the node sent a line that is not an event")
	f(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("x"), maxEventLine+1))
	}, fmt.Sprintf("the node sent a line of more than %d bytes", maxEventLine))
	f(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error": "2 usage exports are running", "reason": "busy"}`))
	}, "capsctl: GET /v1/usage/export?after=0&format=cloudevents: 429 busy: 2 usage exports are running")

	// Bad arguments: exit 2 before any request.
	for _, args := range [][]string{{}, {"--format", "json"}, {"--format", "cloudevents", "extra"}, {"--format", "cloudevents", "--limit", "-1"}} {
		fe := &fakeExport{}
		code, _, errs := runExport(t, fe, args...)
		require.Equal(t, 2, code, args)
		require.Contains(t, errs, "capsctl: usage export", args)
		require.Empty(t, fe.asks)
	}
}

// An --out that cannot become the export file is refused in one line,
// exit 2, before any request: a directory (the temporary file would be
// made beside it, in its parent, and the rename fail at the end), or
// anything else that is not a regular file.
func TestUsageExportOutNotAFile(t *testing.T) {
	dir := t.TempDir()
	f := func(out, want string) {
		t.Helper()
		fe := &fakeExport{n: 3}
		code, stdout, stderr := runExport(t, fe, "--format", "cloudevents", "--out", out)
		require.Equal(t, 2, code, stderr)
		require.Empty(t, stdout)
		require.Equal(t, "capsctl: usage export: "+want+" (capsctl --help)\n", stderr)
		require.Empty(t, fe.asks, "refused before any request")
	}
	f(dir, "--out "+dir+" is a directory: name the file to write, such as "+filepath.Join(dir, "usage.jsonl"))
	f(dir+"/", "--out "+dir+"/ is a directory: name the file to write, such as "+filepath.Join(dir, "usage.jsonl"))
	f(filepath.Join(dir, "new")+"/", "--out "+filepath.Join(dir, "new")+"/ is a directory: name the file to write, such as "+filepath.Join(dir, "new", "usage.jsonl"))
	f(os.DevNull, "--out "+os.DevNull+" is not a regular file: name a file to write, or leave --out out for standard output")

	// A file in that directory is written, its temporary file beside it.
	out := filepath.Join(dir, "usage.jsonl")
	code, stdout, stderr := runExport(t, &fakeExport{n: 3}, "--format", "cloudevents", "--out", out)
	require.Equal(t, 0, code, stderr)
	require.Equal(t, "wrote 3 usage events to "+out+", up to ledger seq 3 (--after 3 goes on from there)\n", stdout)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)
}
