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

// TestClaimsSettleTies: of two claims of one subscriber the later keeps
// it; of two in the same instant, the one tieKeeps names.
func TestClaimsSettleTies(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	now := clk.Now()
	alice, bob := []byte("sip:alice"), []byte("sip:bob")
	held := func() int64 { return e.Service("voice").Stats().Subscribers }

	// Until the engine tracks claims, the registration's instant stands
	// for its claim.
	_, added := e.RegisterNew(now, svc, bob, 60)
	require.True(t, added)
	require.False(t, e.YieldSubscriber(now, svc, bob, now-1, true), "an earlier claim loses")
	require.True(t, e.YieldSubscriber(now, svc, bob, now+1, true), "a later one wins")
	require.Zero(t, held())

	e.TrackClaims()
	_, added = e.RegisterNew(now, svc, alice, 60)
	require.True(t, added)
	require.False(t, e.YieldSubscriber(now, svc, alice, now-1, false), "an earlier claim loses")
	require.False(t, e.YieldSubscriber(now, svc, alice, now, true), "same instant: kept when tieKeeps")
	require.Equal(t, int64(1), held())
	require.True(t, e.YieldSubscriber(now, svc, alice, now, false), "same instant: let go otherwise")
	require.Zero(t, held())
	require.False(t, e.YieldSubscriber(now, svc, alice, now+1, false), "nothing left to let go")

	_, added = e.RegisterNew(now+5, svc, alice, 60)
	require.True(t, added)
	_, added = e.RegisterNew(now+9, svc, alice, 60)
	require.False(t, added, "a refresh claims nothing")
	require.False(t, e.YieldSubscriber(now+9, svc, alice, now+4, false), "the claim is the registration's, at +5")
	require.True(t, e.YieldSubscriber(now+9, svc, alice, now+6, false), "a later claim wins, though the refresh is later still")
	require.Zero(t, held())
	require.False(t, e.YieldSubscriber(now, []byte("other"), alice, now, false), "an unknown service")
}

// TestClaimsForgetByGeneration: a claim is remembered for ClaimMemory/2 at
// least and ClaimMemory at most, in two generations dropped whole; then
// the registration's last instant stands for it.
func TestClaimsForgetByGeneration(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	e.TrackClaims()
	t0 := clk.Now()
	half := int64(ClaimMemory / 2)
	alice, other := []byte("sip:alice"), []byte("sip:other")
	_, added := e.RegisterNew(t0, svc, alice, 3600)
	require.True(t, added)
	require.True(t, e.Register(t0+half, svc, alice, 3600).Admitted(), "refreshed")
	// A claim made between the registration and its refresh.
	between := t0 + half/2
	require.False(t, e.YieldSubscriber(t0, svc, alice, t0-1, false), "remembered")
	_, added = e.RegisterNew(t0+half, svc, other, 3600) // a new generation: alice's claim in the previous one
	require.True(t, added)
	c := &e.Service("voice").claims
	_, remembered := c.of(KeyOf(alice))
	require.True(t, remembered, "still remembered a generation later")
	require.True(t, e.Deregister(t0+half, svc, other))
	_, added = e.RegisterNew(t0+2*half, svc, other, 3600) // another: alice's generation is dropped
	require.True(t, added)
	_, remembered = c.of(KeyOf(alice))
	require.False(t, remembered, "forgotten after two generations")
	require.Len(t, c.cur, 1)
	require.Len(t, c.prev, 1)
	require.False(t, e.YieldSubscriber(t0+2*half, svc, alice, between, false), "forgotten: the refresh, later, stands for it")
	require.True(t, e.YieldSubscriber(t0+2*half, svc, alice, t0+half+1, false), "a claim after the refresh wins")
}

// TestRestoredSubscriberYields: a registration restored from disk (its
// instant not known) yields to any claim and any DEREGISTER passed on.
func TestRestoredSubscriberYields(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	now := clk.Now()
	alice, bob := []byte("sip:alice"), []byte("sip:bob")
	_, subs, err := e.Restore(now, "voice", []Change{
		{Kind: SubscriberSet, Key: KeyOf(alice), Expires: now + int64(time.Hour)},
		{Kind: SubscriberSet, Key: KeyOf(bob), Expires: now + int64(time.Hour)},
	})
	require.NoError(t, err)
	require.Equal(t, 2, subs)
	require.True(t, e.YieldSubscriber(now, svc, alice, 1, false))
	require.True(t, e.DeregisterBefore(now, svc, bob, 1))
	require.Zero(t, e.Service("voice").Stats().Subscribers)
}

// TestClaimSettledWithItsRegistration: another member's earlier claim,
// settled while a subscriber is being registered here, never lets that
// registration go: the registration and its claim are one step. Each
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
	let := 0
	wg.Go(func() {
		for i, s := range subs {
			settling.Store(int64(i) + 1)
			for again := true; again; {
				again = registered.Load() <= int64(i)
				if e.YieldSubscriber(at, svc, s, at-1, false) {
					let++
				}
			}
		}
	})
	wg.Wait()
	require.Zero(t, let, "an earlier claim let a registration go")
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
