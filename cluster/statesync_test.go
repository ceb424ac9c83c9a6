package cluster

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/meter"
	"github.com/capsgate/capsgate/cluster/trunks"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

// The state sync carries the allocations' digest, and the allocations and
// keys' limits themselves only when a member joins: two members holding
// the same send nothing more; a member that missed an allocation or a
// key's setting (a lost direct send) gets it from the other end, over the
// real memberlist transport, at the first push-pull that shows the
// difference once the sender's allocations have held for AllocationSettle
// (not while they are being made); where both hold a different allocation
// of one account, both end with the later.
func TestStateSyncSendsAllocationsWhereDigestsDiffer(t *testing.T) {
	var clock atomic.Int64 // the members' Now, in Unix ns
	clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	settle := func() { clock.Add(int64(AllocationSettle)) }
	type member struct {
		c    *Cluster
		res  *meter.Reserver
		book *trunks.Book
	}
	mk := func(name string) member {
		eng := admission.NewEngine(admission.DefaultConfig())
		res, err := meter.OpenReserver(eng, t.TempDir(), slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		book, err := trunks.Open(t.TempDir(), 0, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = book.Close() })
		c, err := New(Config{NodeName: name, BindAddr: freeAddr(t), Key: bytes.Repeat([]byte{7}, 32),
			Engine: eng, Licences: noLicences{}, Accounts: res, Trunks: book, Now: now, Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.ml.Shutdown() })
		return member{c, res, book}
	}
	sentBefore := stateSent.Get()
	a, b := mk("a"), mk("b")
	_, err := b.c.ml.Join([]string{a.c.cfg.BindAddr})
	require.NoError(t, err)
	digest := func(m member) string { return (*delegate)(m.c).allocationsDigest() }
	require.Equal(t, digest(a), digest(b), "nothing allocated on either")

	var st state
	require.NoError(t, json.Unmarshal((*delegate)(a.c).LocalState(false), &st))
	require.Equal(t, digest(a), st.Allocs)
	require.Empty(t, st.Accounts)

	pushPull := func() {
		fromA, fromB := (*delegate)(a.c).LocalState(false), (*delegate)(b.c).LocalState(false)
		(*delegate)(b.c).MergeRemoteState(fromA, false)
		(*delegate)(a.c).MergeRemoteState(fromB, false)
		a.c.wg.Wait()
		b.c.wg.Wait()
	}
	pushPull()
	require.Equal(t, sentBefore, stateSent.Get(), "equal digests: nothing sent")

	// An allocation and a key's limits reach a only.
	require.NoError(t, a.res.Apply("voice", "acme", admission.Allocation{Tokens: 300, Overage: "none", At: 10}))
	_, err = a.book.Set(trunks.Setting{Service: "voice", Key: "carrier-a", Limit: trunks.Limit{CAPS: 50, Sessions: -1, At: 10}})
	require.NoError(t, err)
	require.NotEqual(t, digest(a), digest(b))
	require.NoError(t, json.Unmarshal((*delegate)(a.c).LocalState(false), &st))
	require.Empty(t, st.Accounts, "a push-pull carries no allocation")
	require.Empty(t, st.Trunks)
	pushPull()
	require.Equal(t, sentBefore, stateSent.Get(), "a's digest just moved, b's was just seen: nothing sent yet")
	clock.Add(int64(AllocationSettle) - 1)
	pushPull()
	require.Equal(t, sentBefore, stateSent.Get(), "a nanosecond short of AllocationSettle")
	clock.Add(1)
	pushPull()
	require.Equal(t, sentBefore+2, stateSent.Get(), "each end sends the other its allocations")
	require.Eventually(t, func() bool { return digest(a) == digest(b) }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, admission.Allocation{Tokens: 300, Overage: "none", At: 10}, b.res.Accounts("voice")["acme"])
	l, ok := b.book.Get("voice", "carrier-a")
	require.True(t, ok)
	require.Equal(t, 50.0, l.CAPS)
	pushPull()
	require.Equal(t, sentBefore+2, stateSent.Get(), "mended: nothing more")

	// Both changed acme, b later: both end with b's.
	require.NoError(t, a.res.Apply("voice", "acme", admission.Allocation{Tokens: 400, Overage: "none", At: 20}))
	require.NoError(t, b.res.Apply("voice", "acme", admission.Allocation{Tokens: 500, Overage: "unlimited", At: 30}))
	pushPull()
	settle()
	pushPull()
	require.Eventually(t, func() bool { return digest(a) == digest(b) }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, int64(500), a.res.Accounts("voice")["acme"].Tokens)

	// A join carries them whole.
	require.NoError(t, json.Unmarshal((*delegate)(a.c).LocalState(true), &st))
	require.Equal(t, map[string]map[string]admission.Allocation{"voice": {"acme": {Tokens: 500, Overage: "unlimited", At: 30}}}, st.Accounts)
	require.Len(t, st.Trunks, 1)

	// A stream of allocations on a that b misses, one before every
	// push-pull: a's digest never holds for AllocationSettle, yet b is
	// sent them once the two have differed for AllocationSync, and not
	// again before another AllocationSync.
	settle()
	pushPull() // equal: nothing apart
	sent := stateSent.Get()
	streamTo := func(until time.Duration) (sends uint64) {
		start := stateSent.Get()
		for i := 0; time.Duration(i)*5*time.Second < until; i++ {
			require.NoError(t, a.res.Apply("voice", fmt.Sprintf("stream-%d", clock.Load()), admission.Allocation{Tokens: 1, Overage: "none", At: clock.Load()}))
			// a's side of a push-pull only: b keeps missing them.
			(*delegate)(a.c).MergeRemoteState((*delegate)(b.c).LocalState(false), false)
			a.c.wg.Wait()
			clock.Add(int64(5 * time.Second))
		}
		return stateSent.Get() - start
	}
	require.Zero(t, streamTo(AllocationSync-time.Second), "apart for less than AllocationSync")
	require.Equal(t, uint64(1), streamTo(10*time.Second), "apart for AllocationSync: sent")
	require.Eventually(t, func() bool { return len(b.res.Accounts("voice")) > 2 }, 5*time.Second, 10*time.Millisecond)
	require.Zero(t, streamTo(AllocationSync-10*time.Second), "not again before another AllocationSync")
	require.Equal(t, uint64(1), streamTo(10*time.Second))
	require.Equal(t, sent+2, stateSent.Get())

	// A member of an earlier release names no digest (and reads no
	// allocation in a state sent to it): it is sent none.
	settle()
	old, _ := json.Marshal(state{Node: "b", ClockMark: now()})
	(*delegate)(a.c).MergeRemoteState(old, false)
	a.c.wg.Wait()
	require.Equal(t, sent+2, stateSent.Get())
}

// A push-pull carries the licences' digest, not the licences: members
// whose digests match send nothing more; a member that missed a licence
// (a lost direct send) gets it from the other end, over the real
// memberlist transport, as soon as a push-pull shows the difference; a
// difference that stays (a document one member refuses) is sent once per
// pair of digests and again only AllocationSync later. A join carries the
// licences both ways.
func TestStateSyncSendsLicencesWhereDigestsDiffer(t *testing.T) {
	vendor, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	other, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	sign := func(k *licensing.VendorKey, id string) []byte {
		b, err := k.Sign(&licensing.License{ID: id, Service: "svc-" + id, CAPS: 100}, time.Now())
		require.NoError(t, err)
		return b
	}
	mk := func(name string, keys ...*licensing.VendorKey) (*Cluster, *registry.Registry) {
		var pubs []ed25519.PublicKey
		for _, k := range keys {
			pubs = append(pubs, k.Public())
		}
		ring, err := licensing.NewKeyring(pubs...)
		require.NoError(t, err)
		eng := admission.NewEngine(admission.DefaultConfig())
		reg, err := registry.Open(registry.Config{Dir: t.TempDir(), Keys: ring, Sink: NewShares(eng), Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		c, err := New(Config{NodeName: name, BindAddr: freeAddr(t), Key: bytes.Repeat([]byte{7}, 32),
			Engine: eng, Licences: reg, Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.ml.Shutdown() })
		return c, reg
	}
	sentBefore, receivedBefore := stateSent.Get(), stateReceived.Get()
	// a also trusts a second vendor key; b does not.
	a, regA := mk("a", vendor, other)
	b, regB := mk("b", vendor)
	_, err = regA.Add(sign(vendor, "x"))
	require.NoError(t, err)
	_, err = regB.Add(sign(vendor, "y"))
	require.NoError(t, err)
	_, err = b.ml.Join([]string{a.cfg.BindAddr})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(regA.List()) == 2 && len(regB.List()) == 2 }, 5*time.Second, 10*time.Millisecond,
		"a join carries the licences both ways")
	require.Equal(t, regA.Digest(), regB.Digest())
	a.wg.Wait()
	b.wg.Wait()
	require.Equal(t, sentBefore, stateSent.Get(), "nor anything more")

	var st state
	require.NoError(t, json.Unmarshal((*delegate)(a).LocalState(false), &st))
	require.Empty(t, st.Documents, "a push-pull carries no licence")
	require.Equal(t, state{Node: "a", Digest: regA.Digest(), ClockMark: st.ClockMark}, st)

	// pushPull does by hand what memberlist's push-pull does: each side
	// merges the other's state.
	pushPull := func() {
		fromA, fromB := (*delegate)(a).LocalState(false), (*delegate)(b).LocalState(false)
		(*delegate)(b).MergeRemoteState(fromA, false)
		(*delegate)(a).MergeRemoteState(fromB, false)
		a.wg.Wait()
		b.wg.Wait()
	}
	pushPull()
	require.Equal(t, sentBefore, stateSent.Get(), "equal digests: nothing sent")

	// z reaches a only (its direct send to b was lost).
	_, err = regA.Add(sign(vendor, "z"))
	require.NoError(t, err)
	pushPull()
	require.Equal(t, sentBefore+2, stateSent.Get(), "each end sends the other its licences")
	require.Eventually(t, func() bool { return len(regB.List()) == 3 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, regA.Digest(), regB.Digest())
	pushPull()
	require.Equal(t, sentBefore+2, stateSent.Get(), "mended: nothing more")

	// A licence b refuses for good: sent once per pair of digests.
	_, err = regA.Add(sign(other, "w"))
	require.NoError(t, err)
	pushPull()
	require.Equal(t, sentBefore+4, stateSent.Get())
	require.Eventually(t, func() bool { return stateReceived.Get() >= receivedBefore+4 }, 5*time.Second, 10*time.Millisecond)
	require.Len(t, regB.List(), 3, "b refuses w")
	pushPull()
	require.Equal(t, sentBefore+4, stateSent.Get(), "the same difference again: not sent again")
	a.mu.Lock()
	o := a.offered[offerKey{node: "b"}]
	o.at = o.at.Add(-AllocationSync)
	a.offered[offerKey{node: "b"}] = o
	a.mu.Unlock()
	pushPull()
	require.Equal(t, sentBefore+5, stateSent.Get(), "AllocationSync later, a sends again; b's offer is not due")
}

// Two licences with the same id and other content, each loaded on one
// member before the members hear of each other (two operators loading at
// once): every member ends with the same one, the one whose content
// hashes lower, whichever member hears of which first; it is stored, so a
// restart keeps it.
func TestSameLicenceIDConverges(t *testing.T) {
	vendor, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	ring, err := licensing.NewKeyring(vendor.Public())
	require.NoError(t, err)
	var docs [2][]byte
	for i, caps := range []int64{100, 900} {
		docs[i], err = vendor.Sign(&licensing.License{ID: "race", Service: "split", CAPS: caps}, time.Now())
		require.NoError(t, err)
	}
	canonical := func(doc []byte) []byte {
		l, err := ring.Verify(doc)
		require.NoError(t, err)
		c, err := l.Canonical()
		require.NoError(t, err)
		return c
	}
	h0, h1 := sha256.Sum256(canonical(docs[0])), sha256.Sum256(canonical(docs[1]))
	winner := int64(100)
	if bytes.Compare(h1[:], h0[:]) < 0 {
		winner = 900
	}
	type member struct {
		c   *Cluster
		reg *registry.Registry
		eng *admission.Engine
		dir string
	}
	mk := func(name string, doc []byte) member {
		m := member{eng: admission.NewEngine(admission.DefaultConfig()), dir: t.TempDir()}
		m.reg, err = registry.Open(registry.Config{Dir: m.dir, Keys: ring, Sink: NewShares(m.eng), Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		_, err = m.reg.Add(doc)
		require.NoError(t, err, "each loads its own: neither has heard of the other's")
		m.c, err = New(Config{NodeName: name, BindAddr: freeAddr(t), Key: bytes.Repeat([]byte{7}, 32),
			Engine: m.eng, Licences: m.reg, Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { _ = m.c.ml.Shutdown() })
		return m
	}
	a, b := mk("a", docs[0]), mk("b", docs[1])
	_, err = b.c.ml.Join([]string{a.c.cfg.BindAddr})
	require.NoError(t, err)
	caps := func(m member) int64 { return m.reg.List()[0].CAPS }
	require.Eventually(t, func() bool { return caps(a) == winner && caps(b) == winner }, 5*time.Second, 10*time.Millisecond,
		"both keep the licence whose content hashes lower (%d CAPS)", winner)
	require.Equal(t, a.reg.Digest(), b.reg.Digest())
	for _, m := range []member{a, b} {
		require.Len(t, m.reg.List(), 1)
		again, err := registry.Open(registry.Config{Dir: m.dir, Keys: ring, Sink: NewShares(admission.NewEngine(admission.DefaultConfig())),
			Log: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		require.Equal(t, winner, again.List()[0].CAPS, "stored: a restart keeps it")
		_ = again.Close()
	}
	// An operator loading the other one on a member is refused there, as
	// before: only a member's send replaces.
	loser := docs[0]
	if winner == 100 {
		loser = docs[1]
	}
	_, err = a.reg.Add(loser)
	require.ErrorContains(t, err, "already loaded with other content")
}
