package admission

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

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

	// Until the engine tracks claims, a registration here claims nothing:
	// any claim takes it.
	_, added := e.RegisterNew(now, svc, bob, 60)
	require.True(t, added)
	require.True(t, e.YieldSubscriber(now, svc, bob, now-1, true), "no claim remembered: let go")
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
	_, added = e.RegisterNew(now+6, svc, alice, 60)
	require.False(t, added, "a refresh claims nothing")
	require.False(t, e.YieldSubscriber(now+6, svc, alice, now+4, false), "the claim is the registration's, at +5")
	require.True(t, e.YieldSubscriber(now+6, svc, alice, now+6, false), "a later claim wins")
	require.Zero(t, held())
	require.False(t, e.YieldSubscriber(now, []byte("other"), alice, now, false), "an unknown service")
}

// TestClaimsForgetByGeneration: a claim is remembered for ClaimMemory/2 at
// least and ClaimMemory at most, in two generations dropped whole.
func TestClaimsForgetByGeneration(t *testing.T) {
	e, clk := newTestEngine(t, subsOnly(10))
	e.TrackClaims()
	t0 := clk.Now()
	half := int64(ClaimMemory / 2)
	alice, other := []byte("sip:alice"), []byte("sip:other")
	_, added := e.RegisterNew(t0, svc, alice, 3600)
	require.True(t, added)
	require.False(t, e.YieldSubscriber(t0, svc, alice, t0-1, false), "remembered")
	_, added = e.RegisterNew(t0+half, svc, other, 3600) // a new generation: alice's claim in the previous one
	require.True(t, added)
	require.False(t, e.YieldSubscriber(t0+half, svc, alice, t0-1, false), "still remembered a generation later")
	require.True(t, e.Deregister(t0+half, svc, other))
	_, added = e.RegisterNew(t0+2*half, svc, other, 3600) // another: alice's generation is dropped
	require.True(t, added)
	require.True(t, e.YieldSubscriber(t0+2*half, svc, alice, t0-1, false), "forgotten after two generations")
	c := &e.Service("voice").claims
	require.Len(t, c.cur, 1)
	require.Len(t, c.prev, 1)
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
