package cluster

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/memberlist"
)

// Packed messages. memberlist can compress every packet and stream it
// sends (LZW), but it makes a new compressor, a new decompressor and a
// new buffer for each: on an idle member of a farm of 1,000 licences and
// 100,000 accounts its LZW writers and readers were 23 MB of the 92.6 MB
// allocated in 10 s (its reports, and every probe and acknowledgement),
// which its collector and the runtime's scavenger then paid for. Its compression is off; this node deflates
// what is worth it itself, with compressors it keeps: a message of
// packAbove bytes or more, to a member whose metadata says it reads
// packed messages (meta.Packs), goes as msgPacked and the message
// deflated. A member of an earlier release is sent messages as they are
// (and reads them: memberlist reads compressed and plain alike).
// memberlist's own push-pull (LocalState: at a join, every licence and
// allocation) now goes uncompressed: its receiver is not known to read
// packed state.
const (
	msgPacked = 'z'
	// packAbove: shorter messages go as they are (a probe's worth of
	// bytes gains nothing from deflating).
	packAbove = 512
	// maxUnpacked bounds what a packed message may inflate to, as
	// memberlist bounds what its compressed messages may (40 MiB): a
	// whole report of a farm's 100,000 accounts is about 5 MB of JSON,
	// the allocations sent to a member that lacks them 7 MB.
	maxUnpacked = 40 << 20
	// keepUnpacked bounds the buffers kept for the next message: one
	// that held a whole report is let go.
	keepUnpacked = 1 << 20
)

var (
	packedSent     = metrics.NewCounter(`capsgate_gossip_packed_total{direction="sent"}`)
	packedReceived = metrics.NewCounter(`capsgate_gossip_packed_total{direction="received"}`)
	packedRefused  = metrics.NewCounter(`capsgate_gossip_packed_refused_total`)

	deflaters = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed) // BestSpeed is a valid level
		return w
	}}
	inflaters sync.Pool // of io.ReadCloser that are flate.Resetters
	unpacked  = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

// pack returns msg as msgPacked and msg deflated, or nil when deflating
// does not make it shorter.
func pack(msg []byte) []byte {
	if len(msg) < packAbove {
		return nil
	}
	out := bytes.NewBuffer(make([]byte, 0, len(msg)/2+64))
	out.WriteByte(msgPacked)
	w := deflaters.Get().(*flate.Writer)
	defer func() {
		w.Reset(io.Discard) // holds no output while in the pool
		deflaters.Put(w)
	}()
	w.Reset(out)
	if _, err := w.Write(msg); err != nil || w.Close() != nil || out.Len() >= len(msg) {
		return nil
	}
	return out.Bytes()
}

// noInput is what a pooled inflater reads from: nothing (a Reset only
// keeps it).
var noInput = bytes.NewReader(nil)

var (
	errUnpackedTooLarge = errors.New("a packed message inflates past its bound")
	errPackedInPacked   = errors.New("a packed message holds another")
)

// unpack inflates a packed message's payload (what follows msgPacked)
// into a buffer of the pool: the caller hands it back (release) once done
// with the message, and keeps nothing of it. A payload that is not
// deflate, inflates past maxUnpacked or holds another packed message is
// refused.
func unpack(payload []byte) (*bytes.Buffer, error) {
	return unpackAtMost(payload, maxUnpacked)
}

// unpackAtMost is unpack with a bound of limit bytes.
func unpackAtMost(payload []byte, limit int64) (*bytes.Buffer, error) {
	src := bytes.NewReader(payload)
	var r io.ReadCloser
	if v := inflaters.Get(); v != nil {
		r = v.(io.ReadCloser)
		if err := r.(flate.Resetter).Reset(src, nil); err != nil {
			return nil, err
		}
	} else {
		r = flate.NewReader(src)
	}
	defer func() {
		_ = r.(flate.Resetter).Reset(noInput, nil) // holds no payload while in the pool
		inflaters.Put(r)
	}()
	buf := unpacked.Get().(*bytes.Buffer)
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	switch {
	case err != nil:
	case n > limit:
		err = errUnpackedTooLarge
	case n > 0 && buf.Bytes()[0] == msgPacked:
		err = errPackedInPacked
	}
	if err != nil {
		release(buf)
		return nil, err
	}
	return buf, nil
}

// release hands a buffer of unpack's back to its pool, unless it grew
// past keepUnpacked.
func release(buf *bytes.Buffer) {
	if buf.Cap() <= keepUnpacked {
		unpacked.Put(buf)
	}
}

// packing is one message as it goes to each member: packed for those
// that read packed messages (deflated once, for the first of them), as it
// is for the others.
type packing struct {
	plain  []byte
	packed []byte
	tried  bool
	mu     sync.Mutex
}

// to returns the bytes to send a member; packs says whether it reads
// packed messages.
func (p *packing) to(packs bool) []byte {
	if !packs {
		return p.plain
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tried {
		p.packed, p.tried = pack(p.plain), true
	}
	if p.packed == nil {
		return p.plain
	}
	return p.packed
}

// readsPacked reports whether member name's metadata says it reads
// packed messages.
func (c *Cluster) readsPacked(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[name]
	return p != nil && p.packs
}

// packedFor returns msg as it goes to member m (packing.to).
func (c *Cluster) packedFor(m *memberlist.Node, msg *packing) []byte {
	return msg.to(c.readsPacked(m.Name))
}
