package cluster

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Memberlist logs one line per packet or stream it refuses: 20,000 UDP
// packets of garbage on the gossip port made 20,000 ERROR lines. Each line
// naming a sender is counted; at most gossipLogBurst lines of each kind
// are logged per gossipLogWindow, and the next line logged of a kind says
// how many of that kind were suppressed before it.
var (
	gossipRejected       = metrics.NewCounter(`capsgate_cluster_gossip_rejected_total`)
	gossipLogsSuppressed = metrics.NewCounter(`capsgate_cluster_gossip_log_dropped_total`)
)

const (
	gossipLogWindow = time.Second
	gossipLogBurst  = 10
	// gossipLogKinds bounds the kinds tracked; lines of further kinds share
	// one. Memberlist has about 60 format strings.
	gossipLogKinds = 128
)

// logWriter sends memberlist's log lines to slog, at debug level but its
// warnings and errors at their level, rate-limited per kind of line. It is
// the io.Writer of memberlist's log.Logger, which writes one line per call
// from any goroutine.
type logWriter struct {
	l   *slog.Logger
	now func() time.Time

	mu    sync.Mutex // guards kinds
	kinds map[string]*logKind
}

// logKind is the window of one kind of line.
type logKind struct {
	start      time.Time // of the current window
	logged     int       // lines logged in the window
	suppressed int       // lines dropped since the last one logged
}

func newLogWriter(l *slog.Logger, now func() time.Time) *logWriter {
	return &logWriter{l: l, now: now, kinds: map[string]*logKind{}}
}

func (w *logWriter) Write(p []byte) (int, error) {
	s := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelDebug
	switch {
	case strings.HasPrefix(s, "[ERR] "):
		level = slog.LevelError
	case strings.HasPrefix(s, "[WARN] "):
		level = slog.LevelWarn
	}
	if level > slog.LevelDebug && strings.Contains(s, " from=") {
		gossipRejected.Inc()
	}
	suppressed, ok := w.allow(lineKind(s))
	if !ok {
		gossipLogsSuppressed.Inc()
		return len(p), nil
	}
	if suppressed > 0 {
		w.l.Log(context.Background(), level, s, "suppressed", suppressed)
	} else {
		w.l.Log(context.Background(), level, s)
	}
	return len(p), nil
}

// allow says whether a line of kind may be logged now and, if so, how many
// of its kind were suppressed since the last one logged.
func (w *logWriter) allow(kind string) (suppressed int, ok bool) {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	k := w.kinds[kind]
	if k == nil {
		if len(w.kinds) >= gossipLogKinds {
			kind = ""
			k = w.kinds[kind]
		}
		if k == nil {
			k = &logKind{start: now}
			w.kinds[kind] = k
		}
	}
	if now.Sub(k.start) >= gossipLogWindow {
		k.start, k.logged = now, 0
	}
	if k.logged >= gossipLogBurst {
		k.suppressed++
		return 0, false
	}
	k.logged++
	suppressed, k.suppressed = k.suppressed, 0
	return suppressed, true
}

// lineKind is a memberlist line's level and format up to its first
// variable part: "[ERR] memberlist: Decrypt packet failed" for
// "[ERR] memberlist: Decrypt packet failed: no installed keys could
// decrypt the message from=127.0.0.1:5000".
func lineKind(s string) string {
	level, rest, _ := strings.Cut(s, " ")
	rest = strings.TrimPrefix(rest, "memberlist: ")
	if i := strings.IndexAny(rest, ":(%'\"0123456789="); i >= 0 {
		rest = rest[:i]
	}
	return level + " " + rest
}
