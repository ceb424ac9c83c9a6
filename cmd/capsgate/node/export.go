package node

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/usageevents"
)

// Bounds of GET /v1/usage/export. The node holds one event and a 32 KiB
// write buffer per export however large the ledger, and at most
// maxExports exports at once; a page of at most maxExportLimit events
// keeps one answer to minutes at the worst.
const (
	// DefaultExportLimit is the events of one page when ?limit= is absent.
	DefaultExportLimit = 10000
	// MaxExportLimit is the most events one page may ask for.
	MaxExportLimit = 100000
	// maxExports is how many exports run at once; more are refused with
	// 429 and Retry-After (an export reads the whole ledger from disk).
	maxExports = 2
	// exportWriteTimeout is how long one write to the client may take;
	// each write moves the deadline on, so a long export of a large
	// ledger runs past the server's WriteTimeout while it makes progress.
	exportWriteTimeout = 30 * time.Second
)

// exportSlots holds a token per export running.
var exportSlots = make(chan struct{}, maxExports)

// errPageFull stops the ledger read when a page has its events.
var errPageFull = errors.New("page full")

// getUsageExport serves GET /v1/usage/export?format=cloudevents|
// cloudevents-batch[&service=][&from=][&to=][&after=SEQ][&limit=N]: this
// node's usage records (of the service, whose interval ends in [from,
// to), after ledger seq SEQ) as CloudEvents (package usageevents),
// streamed in ledger order, at most limit events a page; the trailer
// usageevents.NextTrailer says where the next page starts.
func (n *Node) getUsageExport(w http.ResponseWriter, r *http.Request) {
	if n.refuseBrokenLedger(w) {
		return
	}
	q := r.URL.Query()
	format, err := usageevents.ParseFormat(q.Get("format"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_format", err.Error())
		return
	}
	from, to, err := timeRange(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_range", err.Error())
		return
	}
	service, ok := queryName(w, r, "service")
	if !ok {
		return
	}
	after, err := queryUint(q.Get("after"), 0, 0, ^uint64(0))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_after", "after must be a ledger seq (a whole number), got "+q.Get("after"))
		return
	}
	limit, err := queryUint(q.Get("limit"), DefaultExportLimit, 1, MaxExportLimit)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit must be a number of events from 1 to %d, got %s", MaxExportLimit, q.Get("limit")))
		return
	}
	select {
	case exportSlots <- struct{}{}:
		defer func() { <-exportSlots }()
	default:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, "busy", fmt.Sprintf("%d usage exports are running on this node; try again shortly", maxExports))
		return
	}

	w.Header().Set("Content-Type", format.ContentType())
	w.Header().Set("Trailer", usageevents.NextTrailer)
	dw := &deadlineWriter{w: w, rc: http.NewResponseController(w)}
	bw := bufio.NewWriterSize(dw, 32<<10)
	ew := usageevents.NewWriter(bw, format)
	ctx := r.Context()
	var last uint64
	next := "end"
	err = n.ledger.Read(time.Time{}, time.Time{}, func(_ []byte, rec *ledger.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if rec.Seq <= after || rec.Usage == nil || (service != "" && rec.Usage.Service != service) || !inRange(rec.To, from, to) {
			return nil
		}
		if uint64(ew.Count()) == limit {
			next = strconv.FormatUint(last, 10)
			return errPageFull
		}
		last = rec.Seq
		_, err := ew.Write(rec)
		return err
	})
	if errors.Is(err, errPageFull) {
		err = nil
	}
	if err == nil {
		err = ew.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	switch {
	case err != nil && !dw.wrote:
		w.Header().Del("Trailer")
		writeError(w, http.StatusInternalServerError, "ledger", err.Error())
		return
	case err != nil:
		// The status is sent: cut the answer off, so the client sees a
		// broken stream (and no trailer) rather than a short export.
		if ctx.Err() == nil {
			n.log.Warn("cannot export usage", "err", err)
		}
		panic(http.ErrAbortHandler)
	}
	w.Header().Set(usageevents.NextTrailer, next)
}

// inRange reports whether t, an event's time (its record's interval
// end), is in [from, to) (a zero bound is open): consecutive ranges share
// no event, unlike the records that overlap them, which GET /v1/ledger
// serves.
func inRange(t, from, to time.Time) bool {
	return (from.IsZero() || !t.Before(from)) && (to.IsZero() || t.Before(to))
}

// deadlineWriter moves the connection's write deadline on before each
// write (see exportWriteTimeout) and notes that the answer has begun.
type deadlineWriter struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	wrote bool
}

func (d *deadlineWriter) Write(b []byte) (int, error) {
	d.wrote = true
	_ = d.rc.SetWriteDeadline(time.Now().Add(exportWriteTimeout))
	return d.w.Write(b)
}

// queryUint reads a whole number in [lo, hi] from a query value; "" is def.
func queryUint(v string, def, lo, hi uint64) (uint64, error) {
	if v == "" {
		return def, nil
	}
	x, err := strconv.ParseUint(v, 10, 64)
	if err != nil || x < lo || x > hi {
		return 0, errors.New("out of range")
	}
	return x, nil
}
