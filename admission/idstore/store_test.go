package idstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// farm is an engine with a store on a fake clock whose wall clock is
// derived from it, so a "restart" (a new engine and store on the same
// directory, the clock going on) keeps the wall time.
type farm struct {
	t     *testing.T
	dir   string
	clk   *admission.FakeClock
	epoch time.Time
	ids   *Store
	eng   *admission.Engine
}

const window = 30 * 24 * time.Hour

func newFarm(t *testing.T, dir string, epoch time.Time, maxKeys int64) *farm {
	t.Helper()
	f := &farm{t: t, dir: dir, clk: admission.NewFakeClock(), epoch: epoch}
	f.open(maxKeys)
	return f
}

func (f *farm) wall() time.Time { return f.epoch.Add(time.Duration(f.clk.Now())) }

func (f *farm) open(maxKeys int64) {
	f.t.Helper()
	ids, err := Open(Config{Dir: f.dir, Clock: f.clk, Wall: f.wall, MaxKeys: maxKeys})
	if err != nil {
		f.t.Fatal(err)
	}
	f.ids = ids
	f.eng = admission.NewEngine(admission.Config{Clock: f.clk, IdempotencyWindow: window, Keys: ids})
	if err := f.eng.SetLimits("bill", admission.Limits{Licensed: true, CAPS: 1000, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 1_000_000}); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = f.ids.Close() })
}

// restart closes the store as a crash would leave it after the last Flush
// (Close commits nothing new: the caller flushed) and opens it again with
// a new engine, the clock and epoch moved so that wall time goes on.
func (f *farm) restart() {
	f.t.Helper()
	if err := f.ids.Close(); err != nil {
		f.t.Fatal(err)
	}
	clk := admission.NewFakeClock()
	f.epoch = f.wall().Add(-time.Duration(clk.Now()))
	f.clk = clk
	f.open(0)
}

func (f *farm) used() int64 { return f.eng.Service("bill").Stats().TokensUsed }

// consume sends CONSUME bill acct units ID id and checks the decision and
// the tokens used after it.
func (f *farm) consume(id string, units int64, wantOK bool, wantUsed int64) admission.Decision {
	f.t.Helper()
	d := f.eng.Consume(f.clk.Now(), []byte("bill"), []byte("acct"), units, []byte(id))
	if d.Admitted() != wantOK {
		f.t.Fatalf("CONSUME %s: %+v, want admitted=%v", id, d, wantOK)
	}
	if u := f.used(); u != wantUsed {
		f.t.Fatalf("CONSUME %s: %d tokens used, want %d", id, u, wantUsed)
	}
	return d
}

func (f *farm) tick(d time.Duration) {
	f.t.Helper()
	f.clk.Advance(d)
	f.eng.Tick(f.clk.Now())
	if err := f.ids.Flush(); err != nil {
		f.t.Fatal(err)
	}
}

// TestRepeatAfterHotSetAndRestart: a repeat is answered from the hot set,
// then (the hot set long gone) from the store, then after a restart, each
// time with the first decision and uncharged.
func TestRepeatAfterHotSetAndRestart(t *testing.T) {
	f := newFarm(t, t.TempDir(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	first := f.consume("inv-1", 7, true, 7)
	if d := f.consume("inv-1", 7, true, 7); d != first {
		t.Fatalf("hot repeat: %+v, want %+v", d, first)
	}
	// Not yet flushed: the pending key answers (the hot set is gone).
	f.clk.Advance(3 * time.Second)
	f.eng.Tick(f.clk.Now())
	if d := f.consume("inv-1", 7, true, 7); d != first {
		t.Fatalf("pending repeat: %+v, want %+v", d, first)
	}
	f.tick(time.Second)
	f.tick(10 * 24 * time.Hour)
	if d := f.consume("inv-1", 7, true, 7); d != first {
		t.Fatalf("repeat after 10 days: %+v, want %+v", d, first)
	}
	f.consume("inv-2", 5, true, 12)
	f.tick(FlushEvery)
	f.restart()
	// A new engine: nothing used, and both keys are answered uncharged.
	if d := f.consume("inv-1", 7, true, 0); d != first {
		t.Fatalf("repeat after restart: %+v, want %+v", d, first)
	}
	f.consume("inv-2", 5, true, 0)
	f.consume("inv-3", 1, true, 1)
	// Another account's same ID is another key.
	if d := f.eng.Consume(f.clk.Now(), []byte("bill"), []byte("other"), 2, []byte("inv-1")); !d.Admitted() || f.used() != 3 {
		t.Fatalf("other account's inv-1: %+v, used %d", d, f.used())
	}
}

// TestWindowEnd: a key is answered until its window ends and charged again
// after it; the expiry scan deletes it from the store.
func TestWindowEnd(t *testing.T) {
	f := newFarm(t, t.TempDir(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	f.consume("k", 3, true, 3)
	f.tick(FlushEvery)
	if n := f.ids.Len(); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	f.tick(window - time.Second - FlushEvery)
	f.consume("k", 3, true, 3) // the last second of the window
	f.restart()                // expiries are wall-clock: a restart keeps them
	f.consume("k", 3, true, 0)
	f.tick(time.Second)
	if n := f.ids.Len(); n != 0 {
		t.Fatalf("after the window: Len = %d, want 0 (expired and deleted)", n)
	}
	f.consume("k", 3, true, 3) // a new charge, a new window
	f.tick(FlushEvery)
	f.consume("k", 3, true, 3)
}

// TestExpiryIsBounded: a Flush looks at ExpireScan records at most, once
// every ExpireEvery, and a pass deletes everything expired.
func TestExpiryIsBounded(t *testing.T) {
	clk := admission.NewFakeClock()
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(Config{Dir: t.TempDir(), Clock: clk, Wall: func() time.Time { return epoch.Add(time.Duration(clk.Now())) }, ExpireScan: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 1000 {
		exp := clk.Now() + int64(time.Hour)
		if i%2 == 0 {
			exp = clk.Now() + int64(time.Minute)
		}
		s.Remember(admission.KeyOf(fmt.Appendf(nil, "k%d", i)), exp, admission.Decision{Reason: admission.OK, Remaining: int64(i)})
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := s.Len(); n < 1000-100 {
		t.Fatalf("one flush deleted %d keys, more than it looked at (100)", 1000-n)
	}
	for range 10 {
		clk.Advance(ExpireEvery)
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Len(); n != 500 {
		t.Fatalf("after a pass: Len = %d, want 500", n)
	}
	for i := range 1000 {
		d, ok := s.Lookup(admission.KeyOf(fmt.Appendf(nil, "k%d", i)), clk.Now())
		if ok != (i%2 == 1) || (ok && d.Remaining != int64(i)) {
			t.Fatalf("k%d: %+v %v", i, d, ok)
		}
	}
}

// TestFull: at MaxKeys a new ID is refused OVERLOAD; a repeat and a
// CONSUME without ID are not.
func TestFull(t *testing.T) {
	f := newFarm(t, t.TempDir(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 2)
	f.consume("a", 1, true, 1)
	f.consume("b", 1, true, 2)
	f.tick(FlushEvery)
	if d := f.consume("c", 1, false, 2); d.Reason != admission.OVERLOAD {
		t.Fatalf("new ID in a full store: %+v, want OVERLOAD", d)
	}
	f.consume("a", 1, true, 2)
	if d := f.eng.Consume(f.clk.Now(), []byte("bill"), []byte("acct"), 1, nil); !d.Admitted() {
		t.Fatalf("CONSUME without ID: %+v", d)
	}
}

// TestNoIDAllocatesNothing: the CONSUME path without ID stays free of
// allocation with a store configured; with a hot ID too.
func TestNoIDAllocatesNothing(t *testing.T) {
	f := newFarm(t, t.TempDir(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	svc, acct, id := []byte("bill"), []byte("acct"), []byte("hot")
	f.eng.Consume(f.clk.Now(), svc, acct, 1, id)
	for _, c := range []struct {
		name string
		id   []byte
	}{{"without ID", nil}, {"hot ID", id}} {
		if n := testing.AllocsPerRun(1000, func() { f.eng.Consume(f.clk.Now(), svc, acct, 1, c.id) }); n != 0 {
			t.Errorf("CONSUME %s: %v allocations, want 0", c.name, n)
		}
	}
}

// TestRecordConsumed: a member's ID lands in the store; a repeat here is
// not charged, after the hot set and after a restart.
func TestRecordConsumed(t *testing.T) {
	f := newFarm(t, t.TempDir(), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 0)
	d := admission.Decision{Reason: admission.OK, Remaining: 42}
	if !f.eng.RecordConsumed(f.clk.Now(), []byte("bill"), []byte("acct"), []byte("m-1"), d) {
		t.Fatal("RecordConsumed of a new ID reported a conflict")
	}
	f.tick(time.Hour)
	if f.eng.RecordConsumed(f.clk.Now(), []byte("bill"), []byte("acct"), []byte("m-1"), d) {
		t.Fatal("RecordConsumed of a known ID did not report it")
	}
	f.restart()
	if got := f.consume("m-1", 9, true, 0); got != d {
		t.Fatalf("repeat of a member's ID: %+v, want %+v", got, d)
	}
}

// TestLastAlive: a store never committed to has no LastAlive; after a
// commit, the next Open's LastAlive is that commit's wall time, and the
// expiry scan keeps the mark while it deletes expired keys.
func TestLastAlive(t *testing.T) {
	epoch := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	f := newFarm(t, t.TempDir(), epoch, 0)
	if !f.ids.LastAlive().IsZero() {
		t.Fatalf("a new store: LastAlive %v, want zero", f.ids.LastAlive())
	}
	f.consume("a-1", 1, true, 1)
	f.tick(time.Minute)
	committed := f.wall()
	f.restart()
	if got := f.ids.LastAlive(); !got.Equal(committed) {
		t.Fatalf("LastAlive %v, want %v", got, committed)
	}
	// Past the window every key expires; the mark stays.
	for range 3 {
		f.tick(window)
	}
	f.consume("a-1", 1, true, 1) // charged again: expired
	f.tick(time.Second)
	committed = f.wall()
	f.restart()
	if got := f.ids.LastAlive(); !got.Equal(committed) {
		t.Fatalf("after expiry: LastAlive %v, want %v", got, committed)
	}
}
