package resp

import (
	"bytes"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/capsgate/capsgate/admission/names"
)

// OC service [TRUNK key]: the overload feedback a SIP proxy puts in the
// topmost Via of its responses upstream (RFC 7339's oc, oc-algo,
// oc-validity and oc-seq, with RFC 7415's rate algorithm), as flat
// field/value pairs:
//
//	oc           the scope's farm-wide attempts/s (integer, rounded up);
//	             -1: no CAPS limit (never overloaded)
//	oc-algo      "rate"
//	oc-validity  ms the feedback holds: 2000 while overloaded, 0 when not
//	             (upstream stops throttling)
//	oc-seq       the wall-clock time of the answer, "SECONDS.MMM" (the
//	             RFC's form), never less than this node's previous one
//	overloaded   1: the scope's CAPS refused an attempt within the last
//	             second (CAPS, or TRUNK_CAPS for a key), else 0
//	oc-node      this node's part of oc
//	scope        "trunk" when the key's limits are part of it, "licence"
//
// A key without limits of its own is the licence's scope; a service the
// node never had limits for answers oc 0 and is not overloaded. It takes
// no lock and allocates nothing: a proxy may ask it on every refusal.

// ocSeq makes oc-seq: the wall clock in milliseconds, never going back on
// this node (a clock stepped back repeats the last value until it catches
// up), so that upstream, which keeps the feedback of the highest oc-seq,
// takes each answer as the newest.
type ocSeq struct {
	wall func() time.Time // nil: time.Now
	last atomic.Int64
}

// next returns the oc-seq of an answer now, in milliseconds.
func (q *ocSeq) next() int64 {
	now := time.Now
	if q.wall != nil {
		now = q.wall
	}
	ms := now().UnixMilli()
	for {
		last := q.last.Load()
		if ms <= last {
			return last
		}
		if q.last.CompareAndSwap(last, ms) {
			return ms
		}
	}
}

// appendSeq writes ms as oc-seq's "SECONDS.MMM".
func appendSeq(b []byte, ms int64) []byte {
	b = strconv.AppendInt(b, ms/1000, 10)
	f := ms % 1000
	return append(b, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
}

// OC service [TRUNK key]
func (h *Handler) oc(now int64, args [][]byte, out []byte) []byte {
	if len(args) != 2 && len(args) != 4 {
		return wrongArgs(out, "oc")
	}
	if !names.Valid(args[1]) {
		return AppendError(out, errService)
	}
	var trunk []byte
	if len(args) == 4 {
		if !bytes.EqualFold(args[2], []byte("TRUNK")) {
			return AppendError(out, errSyntax)
		}
		if !names.Valid(args[3]) {
			return AppendError(out, errTrunk)
		}
		trunk = args[3]
	}
	f, _ := h.eng.Feedback(now, args[1], trunk) // an unknown service: oc 0
	scope := "licence"
	if f.Trunk {
		scope = "trunk"
	}
	var nb [24]byte
	out = AppendArrayHeader(out, 14)
	out = kvInt(out, "oc", f.Rate)
	out = AppendBulkString(out, "oc-algo")
	out = AppendBulkString(out, "rate")
	out = kvInt(out, "oc-validity", f.Validity().Milliseconds())
	out = AppendBulkString(out, "oc-seq")
	out = AppendBulk(out, appendSeq(nb[:0], h.ocSeq.next()))
	out = kvInt(out, "overloaded", b2i(f.Overloaded))
	out = kvInt(out, "oc-node", f.NodeRate)
	out = AppendBulkString(out, "scope")
	return AppendBulkString(out, scope)
}
