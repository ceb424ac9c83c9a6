package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// records is a slog.Handler that keeps what it is given, from any
// goroutine.
type records struct {
	mu   sync.Mutex // guards recs
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}

// lines returns the messages at or above level, each with its
// "suppressed" count, and the sum of those counts.
func (r *records) lines(level slog.Level) (msgs []string, suppressed int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Level < level {
			continue
		}
		msg := rec.Message
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				msg += " suppressed=" + a.Value.String()
				suppressed += a.Value.Int64()
			}
			return true
		})
		msgs = append(msgs, msg)
	}
	return msgs, suppressed
}

func TestLogWriterLimitsEachKind(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	var rec records
	w := newLogWriter(slog.New(&rec), func() time.Time { return now })
	write := func(line string, n int) {
		t.Helper()
		for range n {
			_, err := w.Write([]byte(line + "\n"))
			require.NoError(t, err)
		}
	}
	const decrypt = "[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=127.0.0.1:"
	rejected, suppressed := gossipRejected.Get(), gossipLogsSuppressed.Get()
	write(decrypt+"5000", 25)
	write("[WARN] memberlist: Got invalid checksum for UDP packet: 1, 2", 3) // another kind, not naming a sender
	now = t0.Add(999 * time.Millisecond)
	write(decrypt+"5001", 1)
	now = t0.Add(time.Second) // a new window
	write(decrypt+"5002", 11)
	write("[DEBUG] memberlist: Stream connection from=127.0.0.1:1", 1)

	msgs, n := rec.lines(slog.LevelDebug)
	want := make([]string, 0, 24)
	for range 10 {
		want = append(want, decrypt+"5000")
	}
	want = append(want, "[WARN] memberlist: Got invalid checksum for UDP packet: 1, 2", "[WARN] memberlist: Got invalid checksum for UDP packet: 1, 2",
		"[WARN] memberlist: Got invalid checksum for UDP packet: 1, 2", decrypt+"5002 suppressed=16")
	for range 9 {
		want = append(want, decrypt+"5002")
	}
	want = append(want, "[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
	require.Equal(t, want, msgs)
	require.Equal(t, int64(16), n)
	require.Equal(t, uint64(25+1+11), gossipRejected.Get()-rejected, "every error or warning naming a sender")
	require.Equal(t, uint64(15+1+1), gossipLogsSuppressed.Get()-suppressed)
}

func TestLineKind(t *testing.T) {
	f := func(line, want string) {
		t.Helper()
		require.Equal(t, want, lineKind(line))
	}
	f("[ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=127.0.0.1:5000", "[ERR] Decrypt packet failed")
	f("[ERR] memberlist: msg type (12) not supported from=127.0.0.1:5000", "[ERR] msg type ")
	f("[ERR] memberlist: failed to receive: EOF from=127.0.0.1:5000", "[ERR] failed to receive")
	f("[WARN] memberlist: Got ping for unexpected node 'x' from=1.2.3.4:5", "[WARN] Got ping for unexpected node ")
	f("[DEBUG] memberlist: Stream connection from=127.0.0.1:1", "[DEBUG] Stream connection from")
	f("no level at all", "no level at all")
}

// A real memberlist node, with a gossip key, sent 20,000 UDP packets of
// garbage: every one is counted, and the log holds at most
// gossipLogBurst lines a second (it held 20,000).
func TestGarbageUDPIsCountedNotLogged(t *testing.T) {
	var rec records
	addr := freeAddr(t)
	c, err := New(Config{NodeName: "a", BindAddr: addr, Key: bytes.Repeat([]byte{7}, 32),
		Engine: admission.NewEngine(admission.DefaultConfig()), Log: slog.New(&rec)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.ml.Shutdown() })

	conn, err := net.Dial("udp", addr)
	require.NoError(t, err)
	defer conn.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	before := gossipRejected.Get()
	const packets, batch = 20000, 500
	start := time.Now()
	for sent := 0; sent < packets; sent += batch {
		for range batch {
			b := make([]byte, 1+rng.IntN(200))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			_, err := conn.Write(b)
			require.NoError(t, err)
		}
		// Wait for the node to take the batch, so that none is lost in a
		// full socket buffer and the count can be exact.
		require.Eventually(t, func() bool { return gossipRejected.Get()-before >= uint64(sent+batch) },
			10*time.Second, time.Millisecond, "packets counted: %d of %d", gossipRejected.Get()-before, sent+batch)
	}
	took := time.Since(start)
	require.Equal(t, uint64(packets), gossipRejected.Get()-before, "every packet counted, once")

	// Random bytes take three paths through memberlist (most fail to
	// decrypt; a first byte of 244 makes them labelled packets, whose
	// label is cut short or refused): three kinds of line.
	lines, suppressed := rec.lines(slog.LevelWarn)
	kinds := map[string]int{}
	for _, l := range lines {
		kinds[lineKind(l)]++
	}
	bound := gossipLogBurst * len(kinds) * (int(took/gossipLogWindow) + 2)
	t.Logf("%d packets in %v: %d log lines (bound %d), %d suppressed before the last line logged; %v", packets, took.Round(time.Millisecond), len(lines), bound, suppressed, kinds)
	require.LessOrEqual(t, len(kinds), 3)
	require.Contains(t, kinds, "[ERR] Decrypt packet failed")
	require.LessOrEqual(t, len(lines), bound)
	// Lines logged and lines said to be suppressed account for no more
	// than the packets (the rest were suppressed after the last line).
	require.LessOrEqual(t, int64(len(lines))+suppressed, int64(packets))
}
