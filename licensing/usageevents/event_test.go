package usageevents

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing/ledger"
)

var update = flag.Bool("update", false, "rewrite the golden exports in testdata")

// sample returns the records of testdata/ledger.jsonl: a copy of the
// billing package's sample (two nodes witnessing each other, six hourly
// intervals of voice with an account, sms and fax), fixed here so that
// the golden exports are of one ledger for good.
func sample(t testing.TB) []*ledger.Record {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "ledger.jsonl"))
	require.NoError(t, err)
	var out []*ledger.Record
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		r, err := ledger.Decode(line)
		require.NoError(t, err)
		require.NoError(t, r.Check())
		out = append(out, r)
	}
	return out
}

func export(t testing.TB, records []*ledger.Record, f Format) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b, f)
	for _, r := range records {
		_, err := w.Write(r)
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	return b.Bytes()
}

// The export of the sample ledger, byte for byte (go test -update
// rewrites the golden files after a deliberate change; a change of the
// bytes is a change of what billing tools receive, and of the ids a
// change of what they deduplicate).
func TestGolden(t *testing.T) {
	records := sample(t)
	for _, c := range []struct {
		format Format
		file   string
	}{{Lines, "export.jsonl.golden"}, {Batch, "export.json.golden"}} {
		got := export(t, records, c.format)
		path := filepath.Join("testdata", c.file)
		if *update {
			require.NoError(t, os.WriteFile(path, got, 0o644))
		}
		want, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "%s differs: go test -update rewrites it after a deliberate change", path)
	}
}

// The same ledger gives the same bytes on every export, records decoded
// again or not; every event is valid CloudEvents JSON with the required
// attributes; ids are unique, and one per usage record.
func TestDeterministic(t *testing.T) {
	records := sample(t)
	first := export(t, records, Lines)
	require.Equal(t, first, export(t, sample(t), Lines))

	var usage, events int
	ids := map[string]bool{}
	for _, r := range records {
		if r.Usage != nil {
			usage++
		}
	}
	for _, line := range bytes.Split(bytes.TrimSuffix(first, []byte("\n")), []byte("\n")) {
		events++
		var ev map[string]any
		require.NoError(t, json.Unmarshal(line, &ev))
		for _, attr := range []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "sequence", "data"} {
			require.Contains(t, ev, attr)
		}
		require.Equal(t, "1.0", ev["specversion"])
		require.Equal(t, Type, ev["type"])
		_, err := time.Parse(time.RFC3339, ev["time"].(string))
		require.NoError(t, err)
		id := ev["id"].(string)
		require.False(t, ids[id], "id %s twice", id)
		ids[id] = true
	}
	require.Equal(t, usage, events)
	require.Less(t, usage, len(records), "the sample has witness records, which make no event")

	// The batch is a JSON array of the same events.
	var batch []json.RawMessage
	require.NoError(t, json.Unmarshal(export(t, records, Batch), &batch))
	require.Len(t, batch, events)
	require.Equal(t, "[]\n", string(export(t, nil, Batch)))
	require.Empty(t, export(t, nil, Lines))
}

// Ids are RFC 9562 version 5 UUIDs any library recomputes: these were
// computed with Python's uuid.uuid5.
func TestID(t *testing.T) {
	records := sample(t)
	f := func(r *ledger.Record, want string) {
		t.Helper()
		require.Equal(t, want, ID(r))
		ev, ok := FromRecord(r)
		require.True(t, ok)
		require.Equal(t, want, ev.ID)
	}
	f(records[0], "d6543066-b14f-5a9f-8fb2-6286b558795f") // prod-eu n1 seq 1 voice
	f(records[1], "f7073353-7531-5ce4-b33d-e0ec88696193") // prod-eu n1 seq 2 voice/acme-mobile

	// Each part of the name changes the id: a node whose ledger started
	// again (a new key, seq from 1) does not repeat its old ids.
	base := *records[0]
	u := *base.Usage
	base.Usage = &u
	seen := map[string]bool{ID(&base): true}
	for _, change := range []func(r *ledger.Record){
		func(r *ledger.Record) { r.Cluster = "prod-us" },
		func(r *ledger.Record) { r.Node = "n2" },
		func(r *ledger.Record) { r.Key = records[len(records)-1].Key },
		func(r *ledger.Record) { r.Seq = 2 },
		func(r *ledger.Record) { r.Usage.Service = "sms" },
		func(r *ledger.Record) { r.Usage.Account = "acme" },
	} {
		r := base
		u := *base.Usage
		r.Usage = &u
		change(&r)
		require.False(t, seen[ID(&r)])
		seen[ID(&r)] = true
	}
}

func TestEvent(t *testing.T) {
	r := sample(t)[1]
	ev, ok := FromRecord(r)
	require.True(t, ok)
	require.Equal(t, "capsgate:prod-eu/n1", ev.Source)
	require.Equal(t, "voice/acme-mobile", ev.Subject)
	require.Equal(t, "2025-06-01T01:00:00Z", ev.Time, "the interval's end")
	require.Equal(t, "00000000000000000002", ev.Sequence)
	require.Equal(t, map[string]uint64{"CAPS": 0, "SESSIONS": 0, "SUBSCRIBERS": 0, "TOKENS": 0, "UNLICENSED": 0, "OVERLOAD": 0}, ev.Data.Rejected)
	require.Equal(t, r.Hash, ev.Data.Hash)

	// Rejects: every known reason, others kept, the total saturating.
	r.Usage.Rejected = map[string]uint64{"CAPS": ^uint64(0), "NEW_REASON": 2}
	ev, _ = FromRecord(r)
	require.Equal(t, ^uint64(0), ev.Data.RejectedTotal)
	require.Equal(t, uint64(2), ev.Data.Rejected["NEW_REASON"])
	require.Len(t, ev.Data.Rejected, 7)

	_, ok = FromRecord(&ledger.Record{Witness: &ledger.Witness{Node: "n2", Seq: 1}})
	require.False(t, ok, "a witness record makes no event")
	require.Equal(t, "capsgate:prod%20eu/n%2F1", Source("prod eu", "n/1"))
}

func TestParseFormat(t *testing.T) {
	f := func(s string, want Format, ct string) {
		t.Helper()
		got, err := ParseFormat(s)
		require.NoError(t, err)
		require.Equal(t, want, got)
		require.Equal(t, ct, got.ContentType())
	}
	f("cloudevents", Lines, "application/x-ndjson")
	f("cloudevents-batch", Batch, "application/cloudevents-batch+json")
	for _, bad := range []string{"", "json", "CloudEvents"} {
		_, err := ParseFormat(bad)
		require.Error(t, err, bad)
	}
}

// A failed write is returned, and every later one fails the same way.
func TestWriterError(t *testing.T) {
	w := NewWriter(&failAfter{n: 2}, Batch) // "[\n" and the first event
	require.NoError(t, w.WriteEvent([]byte("{}")))
	err := w.WriteEvent([]byte("{}"))
	require.ErrorIs(t, err, errFull)
	require.ErrorIs(t, w.WriteEvent([]byte("{}")), errFull)
	require.ErrorIs(t, w.Close(), errFull)
}

var errFull = errors.New("full")

// failAfter takes n writes, then fails.
type failAfter struct{ n int }

func (f *failAfter) Write(b []byte) (int, error) {
	if f.n == 0 {
		return 0, errFull
	}
	f.n--
	return len(b), nil
}
