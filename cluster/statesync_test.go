package cluster

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

type someAllocations struct{}

func (someAllocations) Apply(string, string, admission.Allocation) error { return nil }
func (someAllocations) Allocations() map[string]map[string]admission.Allocation {
	return map[string]map[string]admission.Allocation{"voice": {"acme": {Tokens: 300, Overage: "none"}}}
}

// The state sync carries the account allocations when a member joins and
// at most once every AllocationSync otherwise, not at every push-pull.
func TestStateSyncCarriesAllocationsSparingly(t *testing.T) {
	d := &delegate{cfg: Config{Licences: noLicences{}, Accounts: someAllocations{}}}
	accounts := func(join bool) int {
		var st state
		require.NoError(t, json.Unmarshal(d.LocalState(join), &st))
		return len(st.Accounts)
	}
	require.Equal(t, 1, accounts(false), "the first push-pull")
	require.Equal(t, 0, accounts(false), "the next, within AllocationSync")
	require.Equal(t, 1, accounts(true), "a join, whenever")
	d.allocationsSent = time.Now().Add(-AllocationSync)
	require.Equal(t, 1, accounts(false), "AllocationSync later")
	require.Equal(t, 0, accounts(false))
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
	o := a.offered["b"]
	o.at = o.at.Add(-AllocationSync)
	a.offered["b"] = o
	a.mu.Unlock()
	pushPull()
	require.Equal(t, sentBefore+5, stateSent.Get(), "AllocationSync later, a sends again; b's offer is not due")
}
