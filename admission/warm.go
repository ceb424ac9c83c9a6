package admission

// Warm is for a pipelined batch of commands on one service: it touches
// the places of their keys in the subscriber table (subscribers) or the
// session table, and the entries those places hold, so that the batch's
// cache misses overlap instead of each command paying for its own in
// turn when it runs. A table of millions of entries is far larger than
// the cache: nearly every command's first look at the index misses, and
// the misses of one command wait for each other (the slot, then the
// entry it points to), while those of different keys need not. Warm
// changes nothing; the commands then run as before. keys are KeyOf of the
// commands' subscribers or call-ids.
func (e *Engine) Warm(service []byte, subscribers bool, keys []Key) {
	s := e.service(service)
	if s == nil || len(keys) == 0 {
		return
	}
	s.mu.Lock()
	if subscribers {
		s.warmed = s.subscribers.warm(keys)
	} else {
		s.warmed = s.sessions.warm(keys)
	}
	s.mu.Unlock()
}

// warm touches, for each key, the index's cache lines where its probe
// starts (the line of its home slot and the next, where a probe at 3/4
// load often runs on), then the entry of the slot whose hash is the
// key's, if any (a key not yet there costs no entry). It returns
// something of what it read, so that the reads are made. Called with the
// owner's mutex held.
func (t *table[V]) warm(keys []Key) (sink int64) {
	for _, k := range keys {
		h := t.idx.hash(k)
		s := t.idx.segmentOf(h)
		mask := uint32(len(s.slots) - 1)
		p := h & mask
		sink += int64(s.slots[p].at) + int64(s.slots[((p|(slotsPerLine-1))+1)&mask].at)
	}
	for _, k := range keys {
		h := t.idx.hash(k)
		s := t.idx.segmentOf(h)
		mask := uint32(len(s.slots) - 1)
		for p, n := h&mask, 0; n < slotsPerLine; p, n = (p+1)&mask, n+1 {
			o := s.slots[p]
			if o.at == 0 {
				break
			}
			if o.h == h {
				sink += t.ent(o.at - 1).exp
				break
			}
		}
	}
	return sink
}

// slotsPerLine is how many index slots a 64-byte cache line holds.
const slotsPerLine = 8
