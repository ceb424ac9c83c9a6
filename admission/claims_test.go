package admission

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func subsOnly(n int64) Limits {
	return Limits{Licensed: true, CAPS: 1, Sessions: Unlimited, Subscribers: n, Tokens: Unlimited}
}

// settled is what YieldSubscriber reports.
type settled struct {
	let       bool
	reclaimAt int64
	reclaim   bool
}

func yield(e *Engine, now int64, sub []byte, at int64, tieKeeps bool) settled {
	let, reclaimAt, reclaim := e.YieldSubscriber(now, svc, sub, at, tieKeeps)
	return settled{let, reclaimAt, reclaim}
}

var (
	letGo    = settled{let: true}
	keptHere = settled{} // by this node's own claim (or nothing to let go)
)

// keptFor is a registration kept for its instant at: claimed again then.
func keptFor(at int64) settled { return settled{reclaimAt: at, reclaim: true} }

// TestClaimsSettleTies: of two claims of one subscriber the later keeps
// it; of two in the same instant, the one tieKeeps names.
func TestClaimsSettleTies(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	now := clk.Now()
	alice, bob := []byte("sip:alice"), []byte("sip:bob")
	held := func() int64 { return e.Service("voice").Stats().Subscribers }

	// Until the engine tracks claims, the registration's instant stands
	// for its claim, and a registration kept for it is claimed again.
	_, added := e.RegisterNew(now, svc, bob, 60)
	require.True(t, added)
	require.Equal(t, keptFor(now), yield(e, now, bob, now-1, true), "an earlier claim loses")
	require.Equal(t, keptFor(now), yield(e, now, bob, now, true), "same instant: kept when tieKeeps")
	require.Equal(t, letGo, yield(e, now, bob, now, false), "same instant: let go otherwise")
	require.Zero(t, held())

	e.TrackClaims()
	_, added = e.RegisterNew(now, svc, alice, 60)
	require.True(t, added)
	require.Equal(t, keptHere, yield(e, now, alice, now-1, false), "an earlier claim loses to this node's")
	require.Equal(t, keptHere, yield(e, now, alice, now, true), "same instant: kept when tieKeeps")
	require.Equal(t, int64(1), held())
	require.Equal(t, letGo, yield(e, now, alice, now, false), "same instant: let go otherwise")
	require.Zero(t, held())
	require.Equal(t, keptHere, yield(e, now, alice, now+1, false), "nothing left to let go")

	_, added = e.RegisterNew(now+5, svc, alice, 60)
	require.True(t, added)
	_, added = e.RegisterNew(now+9, svc, alice, 60)
	require.False(t, added, "a refresh claims nothing")
	require.Equal(t, keptHere, yield(e, now+9, alice, now+4, false), "the claim is the registration's, at +5")
	require.Equal(t, letGo, yield(e, now+9, alice, now+6, false), "a later claim wins, though the refresh is later still")
	require.Zero(t, held())
	let, _, reclaim := e.YieldSubscriber(now, []byte("other"), alice, now, false)
	require.False(t, let || reclaim, "an unknown service")
}

// TestClaimsForgetByAge: a claim is remembered for ClaimMemory, in two
// generations dropped whole (by the next claims, or by Tick); then the
// registration's last instant stands for it.
func TestClaimsForgetByAge(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	e.TrackClaims()
	t0 := clk.Now()
	half, memory := int64(ClaimMemory/2), int64(ClaimMemory)
	alice, other := []byte("sip:alice"), []byte("sip:other")
	s := e.Service("voice")
	remembered := func(now int64) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.claims.of(KeyOf(alice), now)
		return ok
	}
	_, added := e.RegisterNew(t0, svc, alice, 3600)
	require.True(t, added)
	require.True(t, e.Register(t0+half, svc, alice, 3600).Admitted(), "refreshed")
	require.True(t, remembered(t0+memory))
	require.False(t, remembered(t0+memory+1), "older than ClaimMemory")
	// A claim made between the registration and its refresh: let go while
	// the claim at t0 is remembered, kept for the refresh after.
	between := t0 + half/2
	require.Equal(t, keptFor(t0+half), yield(e, t0+memory+1, alice, between, false))
	require.Equal(t, letGo, yield(e, t0+memory+1, alice, t0+half+1, false), "a claim after the refresh wins")

	// Generations: the next claims drop them whole.
	_, added = e.RegisterNew(t0+2*memory, svc, other, 3600)
	require.True(t, added)
	require.Len(t, s.claims.cur, 1)
	require.Nil(t, s.claims.prev, "alice's generation is dropped")
	// Tick drops what a quiet service holds.
	e.Tick(t0 + 3*memory - 1)
	require.NotNil(t, s.claims.cur)
	require.True(t, s.claimsHeld.Load())
	e.Tick(t0 + 2*memory + memory + half)
	require.Nil(t, s.claims.cur)
	require.Nil(t, s.claims.prev)
	require.False(t, s.claimsHeld.Load())
}

// TestRestoredSubscriberYields: a registration restored from disk (its
// instant not known) yields to any claim and any DEREGISTER passed on.
func TestRestoredSubscriberYields(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	e.TrackClaims()
	now := clk.Now()
	alice, bob := []byte("sip:alice"), []byte("sip:bob")
	_, subs, err := e.Restore(now, "voice", []Change{
		{Kind: SubscriberSet, Key: KeyOf(alice), Expires: now + int64(time.Hour)},
		{Kind: SubscriberSet, Key: KeyOf(bob), Expires: now + int64(time.Hour)},
	})
	require.NoError(t, err)
	require.Equal(t, 2, subs)
	require.Equal(t, letGo, yield(e, now, alice, 1, false))
	require.True(t, e.DeregisterBefore(now, svc, bob, 1))
	require.Zero(t, e.Service("voice").Stats().Subscribers)
}

// TestClaimSettledWithItsRegistration: another member's earlier claim,
// settled while a subscriber is being registered here, never lets that
// registration go, and always finds its claim: the registration and its
// claim are one step. Each
// registration starts once the claims for it are being settled, over and
// over until it has returned.
func TestClaimSettledWithItsRegistration(t *testing.T) {
	const n = 2000
	e, clk := newTestEngine(t, subsOnly(n))
	e.TrackClaims()
	at := clk.Now()
	subs := make([][]byte, n)
	for i := range subs {
		subs[i] = fmt.Appendf(nil, "sip:%d@example.net", i)
	}
	var settling, registered atomic.Int64 // the subscriber each is at, plus one
	var wg sync.WaitGroup
	wg.Go(func() {
		for i, s := range subs {
			for settling.Load() <= int64(i) {
				runtime.Gosched()
			}
			if _, added := e.RegisterNew(at, svc, s, 60); !added {
				t.Errorf("%s: not added", s)
			}
			registered.Store(int64(i) + 1)
		}
	})
	let, reclaimed := 0, 0
	wg.Go(func() {
		for i, s := range subs {
			settling.Store(int64(i) + 1)
			for again := true; again; {
				again = registered.Load() <= int64(i)
				switch yield(e, at, s, at-1, false) {
				case letGo:
					let++
				case keptFor(at):
					reclaimed++ // kept for the registration's instant: its claim was not written with it
				}
			}
		}
	})
	wg.Wait()
	require.Zero(t, let, "an earlier claim let a registration go")
	require.Zero(t, reclaimed, "a registration found without its claim")
	require.Equal(t, int64(n), e.Service("voice").Stats().Subscribers)
}

// TestDeregisterBefore: a DEREGISTER passed on from another member ends a
// registration made before it, not one made (or refreshed) after it; a
// registration restored from disk is taken as made before any.
func TestDeregisterBefore(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	t0 := clk.Now()
	alice := []byte("sip:alice")
	held := func() int64 { return e.Service("voice").Stats().Subscribers }
	ms := int64(time.Millisecond)

	require.True(t, e.Register(t0, svc, alice, 60).Admitted())
	require.False(t, e.DeregisterBefore(t0, svc, alice, t0-ms), "sent before the registration")
	require.Equal(t, int64(1), held())
	require.True(t, e.DeregisterBefore(t0, svc, alice, t0), "sent at its instant")
	require.Zero(t, held())
	require.False(t, e.DeregisterBefore(t0, svc, alice, t0+ms), "nothing to end")

	require.True(t, e.Register(t0, svc, alice, 60).Admitted())
	require.True(t, e.Register(t0+5*ms, svc, alice, 60).Admitted(), "refreshed")
	require.False(t, e.DeregisterBefore(t0+5*ms, svc, alice, t0+4*ms), "sent before the refresh")
	require.True(t, e.DeregisterBefore(t0+5*ms, svc, alice, t0+6*ms), "sent after it")

	// The default TTL, and the longest.
	require.True(t, e.Register(t0, svc, alice, 0).Admitted())
	require.False(t, e.DeregisterBefore(t0, svc, alice, t0-ms))
	require.True(t, e.Register(t0+ms, svc, alice, MaxTTL).Admitted())
	require.False(t, e.DeregisterBefore(t0+ms, svc, alice, t0))
	require.True(t, e.DeregisterBefore(t0+ms, svc, alice, t0+ms))

	// Expired: nothing to end.
	require.True(t, e.Register(t0, svc, alice, 1).Admitted())
	require.False(t, e.DeregisterBefore(t0+2e9, svc, alice, t0+2e9))
	require.False(t, e.DeregisterBefore(t0, []byte("other"), alice, t0))
}

func TestRegisteredValue(t *testing.T) {
	const ms = int64(time.Millisecond)
	for _, c := range []struct {
		ttl  int64 // ns
		want registered
	}{{0, 0}, {-ms, 0}, {ms - 1, 0}, {ms, 1}, {ms + 1, 1}, {int64(MaxTTL) * 1e9, registered(MaxTTL * 1000)},
		{math.MaxUint32 * ms, math.MaxUint32}, {(math.MaxUint32 + 1) * ms, 0}, {math.MaxInt64 / 2, 0}} {
		r := registeredFor(1000, 1000+c.ttl)
		require.Equal(t, c.want, r, c.ttl)
		at, known := r.at(1000 + c.ttl)
		require.Equal(t, r != 0, known)
		if known {
			require.GreaterOrEqual(t, at, int64(1000), "never before the registration")
			require.Less(t, at, 1000+ms, "within a millisecond of it")
		}
	}
}

// TestClaimAfterOneSettled: a registration made from a batch whose instant
// is older than a claim settled here just before it (nothing held then)
// claims at the clock's instant under the lock, later than that claim, so
// the two members do not both keep the subscriber.
func TestClaimAfterOneSettled(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	e.TrackClaims()
	batch := clk.Now()
	clk.Advance(10 * time.Millisecond)
	alice := []byte("sip:alice")
	other := batch + int64(5*time.Millisecond) // the other member's claim, made after the batch began
	require.Equal(t, keptHere, yield(e, clk.Now(), alice, other, false), "nothing held yet")
	_, added, at := e.RegisterClaimed(batch, svc, alice, 60)
	require.True(t, added)
	require.Equal(t, clk.Now(), at, "the clock's instant, not the batch's")
	require.Equal(t, keptHere, yield(e, clk.Now(), alice, other, false), "its claim is the later one")
	_, _, at = e.RegisterClaimed(batch, []byte("none"), alice, 60)
	require.Equal(t, batch, at, "an unknown service: the batch's instant")
}
