package admission

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func journaling(c *Config) { c.JournalState, c.MaxLog = true, maxLogInTests }

const maxLogInTests = 256

// TestJournalingAllocatesNothing: with the change log on, ADMIT CALL,
// RELEASE, REGISTER and DEREGISTER allocate nothing, whether the journal
// drains the log in time (two buffers alternating) or not (the log is full
// and drops changes until a snapshot).
func TestJournalingAllocatesNothing(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited, TokensPerMinute: 1}
	e, clk := newTestEngine(t, l, journaling)
	require.NoError(t, e.SetAccount("voice", "acme", 1000, Overage{}))
	now := clk.Now()
	s := e.Service("voice")
	call, sub := []byte("a84b4c76e66710@pc33.atlanta.example.com"), []byte("sip:alice@atlanta.example.com")
	spare := make([]Change, 0, 64)
	s.Drain(make([]Change, 0, 64))
	n := 0
	drain := func() {
		if n++; n%8 == 0 { // well before 64 changes
			spare, _ = s.Drain(spare)
		}
	}
	for range 10 { // warm the tables up to their working size
		e.Admit(now, svc, call, acct, Normal)
		e.Release(now, svc, call, 60)
		e.Register(now, svc, sub, 3600)
		e.Deregister(now, svc, sub)
	}
	f := func(name string, fn func()) {
		t.Helper()
		require.Zero(t, testing.AllocsPerRun(1000, fn), name)
	}
	f("admit call + release, drained", func() { e.Admit(now, svc, call, acct, High); e.Release(now, svc, call, 61); drain() })
	f("register + deregister, drained", func() { e.Register(now, svc, sub, 3600); e.Deregister(now, svc, sub); drain() })
	f("register refresh, drained", func() { e.Register(now, svc, sub, 3600); drain() })
	f("admit call + release, log full", func() { e.Admit(now, svc, call, acct, Normal); e.Release(now, svc, call, 0) })
	changes, lost := s.Drain(spare)
	require.True(t, lost, "the undrained log overflowed")
	require.Equal(t, maxLogInTests, cap(changes), "after doubling up to Config.MaxLog")
}

// A log that fills between two drains doubles (the journal fell behind),
// up to Config.MaxLog, and only then drops changes.
func TestTheLogGrowsUpToMaxLog(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l, journaling)
	s := e.Service("voice")
	reg := func(from, n int) {
		for i := from; i < from+n; i++ {
			require.True(t, e.Register(clk.Now(), svc, fmt.Appendf(nil, "sub-%d", i), 3600).Admitted())
		}
	}
	reg(0, 1) // a log not drained yet has no room: lost
	_, lost := s.Drain(make([]Change, 0, 16))
	require.True(t, lost)
	reg(1, 16)
	changes, lost := s.Drain(make([]Change, 0, 16))
	require.False(t, lost)
	require.Len(t, changes, 16)
	require.Equal(t, 16, cap(changes), "exactly full: not grown")
	reg(17, 100) // 16 → 32 → 64 → 128
	changes, lost = s.Drain(make([]Change, 0, 16))
	require.False(t, lost)
	require.Len(t, changes, 100)
	require.Equal(t, 128, cap(changes))
	reg(117, maxLogInTests+1)
	changes, lost = s.Drain(nil)
	require.True(t, lost, "one past Config.MaxLog")
	require.Len(t, changes, maxLogInTests)
}

// TestSnapshotRestoresTheSameState: a snapshot restored into a new engine
// gives the same counts, the same first decisions and releasable calls;
// what has expired by the restore is dropped.
func TestSnapshotRestoresTheSameState(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: 100, Subscribers: 100, Tokens: Unlimited, TokensPerMinute: 1}
	e, clk := newTestEngine(t, l, journaling)
	require.NoError(t, e.SetAccount("voice", "acme", 1000, Overage{}))
	now := clk.Now()
	first := map[string]Decision{}
	for i := range 10 {
		c := fmt.Sprintf("call-%d", i)
		first[c] = e.Admit(now, svc, []byte(c), acct, Normal)
		require.True(t, first[c].Admitted())
	}
	require.True(t, e.Admit(now, svc, []byte("sos"), nil, Emergency).Admitted())
	require.True(t, e.Release(now, svc, []byte("call-9"), 0))
	for i := range 5 {
		require.True(t, e.Register(now, svc, fmt.Appendf(nil, "sub-%d", i), int64(10*(i+1))).Admitted())
	}
	snap, _ := e.Service("voice").Snapshot(now, nil, nil)

	clk.Advance(25 * time.Second) // sub-0 (10 s) and sub-1 (20 s) expire
	e2, _ := newTestEngine(t, l, journaling, func(c *Config) { c.Clock = clk })
	require.NoError(t, e2.SetAccount("voice", "acme", 1000, Overage{}))
	sess, subs, err := e2.Restore(clk.Now(), "voice", snap)
	require.NoError(t, err)
	logged, _ := e2.Service("voice").Drain(make([]Change, 0, 16))
	require.Empty(t, logged, "a restore is not logged")
	require.Equal(t, 10, sess, "9 calls and the emergency one")
	require.Equal(t, 3, subs)
	st := e2.Service("voice").Stats()
	require.Equal(t, int64(9), st.Sessions)
	require.Equal(t, int64(1), st.EmergencySessions)
	require.Equal(t, int64(3), st.Subscribers)
	now = clk.Now()
	for i := range 9 {
		c := fmt.Sprintf("call-%d", i)
		require.Equal(t, first[c], e2.Admit(now, svc, []byte(c), acct, Normal), "a repeat gets the first decision")
	}
	require.Equal(t, st.Admissions, e2.Service("voice").Stats().Admissions, "repeats are not counted")
	require.False(t, e2.Release(now, svc, []byte("call-9"), 0), "released before the snapshot")
	require.True(t, e2.Release(now, svc, []byte("call-0"), 60))
	require.Equal(t, int64(1), e2.Service("voice").Pools()[1].Used, "RELEASE ... SECONDS charges the call's account")
	require.True(t, e2.Release(now, svc, []byte("sos"), 0))
	require.False(t, e2.Deregister(now, svc, []byte("sub-1")), "expired before the restore")
	require.True(t, e2.Deregister(now, svc, []byte("sub-2")))
	changes, lost := e2.Service("voice").Drain(nil)
	require.False(t, lost)
	require.Equal(t, []ChangeKind{SessionClosed, SessionClosed, SubscriberGone}, kinds(changes),
		"what is logged is what changed after the restore")
}

// TestRestoreAppliesChangesInOrder: a journal's changes replayed in order
// leave what the engine had.
func TestRestoreAppliesChangesInOrder(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l, journaling)
	s := e.Service("voice")
	s.Drain(make([]Change, 0, 1024))
	now := clk.Now()
	e.Admit(now, svc, []byte("a"), nil, Normal)
	e.Admit(now, svc, []byte("b"), nil, High)
	e.Release(now, svc, []byte("a"), 0)
	e.Admit(now, svc, []byte("a"), nil, Normal) // a again
	e.Register(now, svc, []byte("x"), 5)
	e.Register(now, svc, []byte("y"), 5)
	e.Register(now, svc, []byte("x"), 50) // refreshed
	e.Deregister(now, svc, []byte("y"))
	e.Register(now, svc, []byte("z"), 5)
	changes, lost := s.Drain(nil)
	require.False(t, lost)
	require.Len(t, changes, 9)

	clk.Advance(10 * time.Second) // z expires; x was refreshed
	e2, _ := newTestEngine(t, l, func(c *Config) { c.Clock = clk })
	sess, subs, err := e2.Restore(clk.Now(), "voice", changes)
	require.NoError(t, err)
	require.Equal(t, 2, sess)
	require.Equal(t, 1, subs)
	require.Equal(t, int64(2), e2.Service("voice").Stats().Sessions)
	require.Equal(t, int64(1), e2.Service("voice").Stats().Subscribers)
	require.True(t, e2.Deregister(clk.Now(), svc, []byte("x")))

	// A service no licence has made yet is created for its sessions.
	_, _, err = e2.Restore(clk.Now(), "other", changes)
	require.NoError(t, err)
	require.Equal(t, int64(2), e2.Service("other").Stats().Sessions)
}

func kinds(cs []Change) []ChangeKind {
	out := make([]ChangeKind, len(cs))
	for i, c := range cs {
		out[i] = c.Kind
	}
	return out
}

// BenchmarkAdmitCallReleaseJournaled is BenchmarkAdmitCallRelease with
// the change log on, drained (two buffers alternating) as the journal's
// flush loop does.
func BenchmarkAdmitCallReleaseJournaled(b *testing.B) {
	e, clk := newTestEngine(b, Limits{Licensed: true, CAPS: 1e9, Sessions: 1 << 30, Subscribers: Unlimited, Tokens: Unlimited}, journaling)
	now := clk.Now()
	s := e.Service("voice")
	s.Drain(make([]Change, 0, 4096))
	spare := make([]Change, 0, 4096)
	calls := make([][]byte, 1024)
	for i := range calls {
		calls[i] = []byte(fmt.Sprintf("%08x-4b1c-11ef-9c3a-0242ac120002@10.0.0.1", i))
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c := calls[i%len(calls)]
		e.Admit(now, svc, c, nil, Normal)
		e.Release(now, svc, c, 0)
		if i%1024 == 1023 {
			spare, _ = s.Drain(spare)
		}
	}
}

// A snapshot taken while the service changes, then the changes logged
// after it, give the service's state: the snapshot takes the lock a chunk
// at a time, and what changes meanwhile is in the new log.
func TestSnapshotWhileChanging(t *testing.T) {
	e, clk := newTestEngine(t, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited},
		func(c *Config) { c.JournalState = true })
	now := clk.Now()
	sub := func(i int) []byte { return []byte{'s', byte(i), byte(i >> 8), byte(i >> 16)} }
	for i := range 50_000 { // several chunks
		require.True(t, e.Register(now, svc, sub(i), 3600).Admitted())
	}
	s := e.Service("voice")
	_, _ = s.Drain(nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 50_000 {
			if i%2 == 0 {
				e.Deregister(now, svc, sub(i))
			} else {
				e.Register(now, svc, sub(50_000+i), 3600)
			}
		}
	}()
	snap, _ := s.Snapshot(now, nil, make([]Change, 0, 1<<17))
	<-done
	after, lost := s.Drain(nil)
	require.False(t, lost)
	state := map[Key]bool{}
	for _, c := range snap {
		state[c.Key] = true
	}
	for _, c := range after {
		switch c.Kind {
		case SubscriberSet:
			state[c.Key] = true
		case SubscriberGone:
			delete(state, c.Key)
		}
	}
	want, _ := s.Snapshot(now, nil, nil)
	require.Len(t, state, len(want))
	for _, c := range want {
		require.True(t, state[c.Key])
	}
	require.Equal(t, 50_000, len(want), "25,000 left, 25,000 came")
}

// A service that logged nothing since its last Drain is drained without
// its lock and keeps its log; the first Drain installs the log, a change
// (or one dropped) is drained at the next, and a snapshot makes the next
// Drain look.
func TestQuietDrain(t *testing.T) {
	l := Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	e, clk := newTestEngine(t, l, journaling)
	now := clk.Now()
	s := e.Service("voice")
	require.False(t, s.quiet.Load(), "no log yet")
	e.Register(now, svc, []byte("sip:dropped@example.com"), 60)
	_, lost := s.Drain(make([]Change, 0, 8))
	require.True(t, lost, "logged before the log was in place")
	require.True(t, s.quiet.Load())

	spare := make([]Change, 0, 8)
	s.mu.Lock() // a quiet Drain does not wait for the lock
	got, lost := s.Drain(spare)
	s.mu.Unlock()
	require.False(t, lost)
	require.Empty(t, got)
	require.Equal(t, cap(spare), cap(got), "buf handed back")

	e.Register(now, svc, []byte("sip:alice@example.com"), 60)
	require.False(t, s.quiet.Load())
	got, lost = s.Drain(spare)
	require.False(t, lost)
	require.Equal(t, []ChangeKind{SubscriberSet}, kinds(got))
	require.True(t, s.quiet.Load())

	// More changes than the log holds at most: one dropped, the next
	// Drain says so.
	for i := range maxLogInTests + 1 {
		e.Register(now, svc, fmt.Appendf(nil, "sip:%d@example.com", i), 60)
	}
	got, lost = s.Drain(got)
	require.True(t, lost)
	require.Len(t, got, maxLogInTests)

	s.SnapshotTo(now, make([]Change, 0, 8), func([]Change) {})
	require.False(t, s.quiet.Load(), "after a snapshot the next Drain looks")
	got, lost = s.Drain(got)
	require.False(t, lost)
	require.Empty(t, got)
	require.True(t, s.quiet.Load())
}

// A REGISTER with the state journal on: the change is logged and its
// service marked for the journal's flush (DrainLogged), which drains the
// log every 4,096 registrations here, passing the drained log back as
// the journal does. Allocation-free once the logs are sized.
func BenchmarkRegisterJournaled(b *testing.B) {
	e, clk := newTestEngine(b, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited},
		func(c *Config) { c.JournalState = true })
	s := e.Service("voice")
	spare := make([]Change, 0, 8192)
	subs := make([][]byte, 4096)
	for i := range subs {
		subs[i] = fmt.Appendf(nil, "sip:+1555%07d@example.net", i)
	}
	now := clk.Now()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.Register(now, svc, subs[i%len(subs)], 60)
		if i%len(subs) == len(subs)-1 {
			e.DrainLogged(func(*Service) {})
			drained, _ := s.Drain(spare)
			spare = drained[:0]
		}
	}
}
