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

// warm touches the index slot of each key, then the entry each slot
// holds, and returns something of what it read (so that the reads are
// not elided). Called with the owner's mutex held.
func (t *table[V]) warm(keys []Key) (sink int64) {
	for _, k := range keys {
		h := t.idx.hash(k)
		s := t.idx.segmentOf(h)
		sink += int64(s.slots[h&uint32(len(s.slots)-1)].at)
	}
	for _, k := range keys {
		h := t.idx.hash(k)
		s := t.idx.segmentOf(h)
		if at := s.slots[h&uint32(len(s.slots)-1)].at; at > 0 {
			sink += t.ent(at - 1).exp
		}
	}
	return sink
}
