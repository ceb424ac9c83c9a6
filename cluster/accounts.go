package cluster

import "strings"

// accountBook is what the planner keeps of every account's allocation
// across exchanges, so that an exchange costs what changed rather than
// what exists: a farm may hold 100,000 accounts, most of them idle at any
// moment, and planning each one's budget ten times a second would take
// more than the exchange interval.
//
// An account's budget is planned again (it is dirty) when something it
// depends on moved: its allocation or its charges here (Usage names it),
// a member's report named it (its charges or budget there), a member
// charges it (a rate in a report), the budget itself moved at the last
// plan (it is still converging, or its applied budget lags one exchange),
// or the membership, the side or a member's state changed (every account
// is then planned again once). An account none of that touched is at a
// fixed point of tokenBudget: planning it again would give the same
// budget.
//
// The book also makes the accounts' part of the delta reports (see
// deltaAbove) from what changed, with a slice of the rest in turn, so
// that a report costs what changed too.
type accountBook struct {
	byKey     map[string]*acctEntry
	byService map[string]map[*acctEntry]struct{}
	// allocated is, per service, the sum of the allocations, kept as they
	// change, unsaturated so that a change can be taken back: the engine
	// refuses an allocation that would take the sum past a limited pool
	// (an int64), and an unlimited pool's own budget is not planned (its
	// accounts' are).
	allocated map[string]int64
	dirty     map[string]map[*acctEntry]struct{} // by service
	active    map[*acctEntry]struct{}            // rate meters running
	allDirty  bool
	// slots are the entries by refresh slot; changed the entries whose
	// reported value changed, by the report that first carried it
	// (modulo deltaRepeat). The engine never removes an account, nor its
	// service's pools (a service whose licence lapsed keeps them for
	// when it comes back), so neither does the book.
	slots   [deltaRefresh]map[*acctEntry]struct{}
	changed [deltaRepeat][]*acctEntry
	// moved lists the entries updated or planned since the last report:
	// only they can have changed what it says.
	moved []*acctEntry
}

type acctEntry struct {
	key, service, account string
	size, used            int64
	meter                 *rateMeter
	rate                  float64
	lastUse               float64 // meter time of the last change of used
	// budget is as planned; prev as planned at the exchange before;
	// applied as given to the engine.
	budget, prev, applied int64
	planned, hasPrev      bool
	// touched: Usage named it since the last plan (the engine may have a
	// new pool for it: its applied budget is given again).
	touched bool
	// sent is its value as last reported, first carried by report sentSeq.
	sent    Held
	sentSeq uint64
	hash    uint64 // refreshHash of key
}

func newAccountBook() *accountBook {
	b := &accountBook{byKey: map[string]*acctEntry{}, byService: map[string]map[*acctEntry]struct{}{},
		allocated: map[string]int64{}, dirty: map[string]map[*acctEntry]struct{}{}, active: map[*acctEntry]struct{}{}}
	for i := range b.slots {
		b.slots[i] = map[*acctEntry]struct{}{}
	}
	return b
}

// held is what a report says of the entry.
func (e *acctEntry) held() Held { return Held{Tokens: max(e.used, 0), Budget: e.budget} }

// update takes what Usage says of the accounts at meter time t (those
// that changed; listing others is harmless), measures the rate of those
// being charged and adds it to rates (by pool key).
func (b *accountBook) update(u Usage, t float64, rates map[string]float64) {
	for _, s := range u {
		for _, a := range s.Accounts {
			key := poolKey(s.Name, a.Account)
			e := b.byKey[key]
			if e == nil {
				e = &acctEntry{key: key, service: s.Name, account: a.Account, hash: refreshHash(key), lastUse: t}
				b.byKey[key] = e
				if b.byService[s.Name] == nil {
					b.byService[s.Name] = map[*acctEntry]struct{}{}
				}
				b.byService[s.Name][e] = struct{}{}
				b.slots[e.hash%deltaRefresh][e] = struct{}{}
			}
			if a.Size != e.size {
				b.allocated[s.Name] += a.Size - e.size
				e.size = a.Size
			}
			if a.Used != e.used {
				if e.meter == nil {
					e.meter = &rateMeter{}
					e.meter.push(sample{t: t, n: uint64(max(e.used, 0))})
				}
				e.used, e.lastUse = a.Used, t
				b.active[e] = struct{}{}
			}
			e.touched = true
			b.moved = append(b.moved, e)
			b.mark(e)
		}
	}
	for e := range b.active {
		e.rate = e.meter.push(sample{t: t, n: uint64(max(e.used, 0))})
		if e.rate < 0.01 && t-e.lastUse > rateWindow {
			// Idle for a whole window: its meter is freed.
			e.rate, e.meter = 0, nil
			delete(b.active, e)
			continue
		}
		if e.rate >= 0.01 {
			rates[e.key] = e.rate
			b.mark(e)
		}
	}
}

// markKey makes the account of a pool key dirty, if the book has it.
func (b *accountBook) markKey(key string) {
	if e := b.byKey[key]; e != nil {
		b.mark(e)
	}
}

// mark makes an entry dirty.
func (b *accountBook) mark(e *acctEntry) {
	d := b.dirty[e.service]
	if d == nil {
		d = map[*acctEntry]struct{}{}
		b.dirty[e.service] = d
	}
	d[e] = struct{}{}
}

// take returns the dirty accounts of service to plan, in no order, and
// forgets them as dirty (every account of service when all is set).
func (b *accountBook) take(service string, all bool, buf []*acctEntry) []*acctEntry {
	from := b.dirty[service]
	if all {
		from = b.byService[service]
	}
	for e := range from {
		buf = append(buf, e)
	}
	delete(b.dirty, service)
	return buf
}

// settle records an account's budget as planned at an exchange and
// returns the budget the engine should apply, and whether it must be
// given (it changed, or the engine may have a new pool for it). first:
// the service's pool was not shared at the exchange before, so the
// budget applies at once; otherwise a budget applies one exchange after
// it was reported (the smaller of this one and the last), and an account
// new here applies none until then.
func (b *accountBook) settle(e *acctEntry, next int64, first bool) (applied int64, give bool) {
	switch {
	case first:
		applied = next
	case e.hasPrev:
		applied = min(next, e.prev)
	}
	if next != e.budget || !e.hasPrev || next != e.prev {
		b.mark(e) // still moving: plan it again
	}
	if next != e.budget {
		b.moved = append(b.moved, e)
	}
	e.budget, e.planned = next, true
	e.prev, e.hasPrev = next, true
	give = applied != e.applied || e.touched
	e.applied, e.touched = applied, false
	return applied, give
}

// report adds the accounts to a report's Held: all of them when whole;
// otherwise those that changed in the last deltaRepeat reports and those
// report seq refreshes under stretch (refreshDue).
func (b *accountBook) report(held map[string]Held, seq uint64, whole bool, stretch uint64) {
	for _, e := range b.moved {
		if h := e.held(); h != e.sent {
			e.sent, e.sentSeq = h, seq
			b.changed[seq%deltaRepeat] = append(b.changed[seq%deltaRepeat], e)
		}
	}
	clear(b.moved)
	b.moved = b.moved[:0]
	if whole {
		for _, e := range b.byKey {
			if e.sent != (Held{}) {
				held[e.key] = e.sent
			}
		}
	} else {
		for i := range deltaRepeat {
			for _, e := range b.changed[i] {
				if seq-e.sentSeq < deltaRepeat {
					held[e.key] = e.sent
				}
			}
		}
		for e := range b.slots[seq%deltaRefresh] {
			if e.sent != (Held{}) && refreshDue(e.hash, seq, stretch) {
				held[e.key] = e.sent
			}
		}
	}
	// The oldest report's lists are done with once this one is out.
	next := (seq + 1) % deltaRepeat
	clear(b.changed[next])
	b.changed[next] = b.changed[next][:0]
}

// isAccountKey reports whether a pool key names an account's pool.
func isAccountKey(key string) bool { return strings.IndexByte(key, '/') >= 0 }
