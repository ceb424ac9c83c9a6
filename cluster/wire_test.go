package cluster

import (
	"bytes"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/loopback"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// ReportWireSize is the size of what send sends each other member, with
// and without a ledger head.
func TestReportWireSize(t *testing.T) {
	head := ledger.Witness{Node: "a", Seq: 123456, Hash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Key: "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=", Genesis: "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"}
	mk := func(name string, withLedger bool) *Cluster {
		cfg := Config{NodeName: name, BindAddr: freeAddr(t), Key: bytes.Repeat([]byte{7}, 32),
			Engine: admission.NewEngine(admission.DefaultConfig()), Licences: noLicences{}, Log: slog.New(slog.DiscardHandler)}
		if withLedger {
			cfg.LedgerHead = func() (uint64, string) { return head.Seq, head.Hash }
			cfg.LedgerIdentity = func() (string, string) { return head.Key, head.Genesis }
		}
		c, err := New(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.ml.Shutdown() })
		return c
	}
	r := Report{Demand: map[string]float64{"voice": 312.5, "sms": 0.25}, TokenRate: map[string]float64{"voice/acme": 12},
		Held:    map[string]Held{"voice": {Sessions: 40, Owed: 3}, "voice/acme": {Tokens: 900, Budget: 5000}},
		Applied: map[string]Share{"voice": {CAPS: 0.3333333333333333, Sessions: 0.5, Subscribers: -1, Depth: 0.25}}}
	for _, withLedger := range []bool{true, false} {
		a, b := mk("a", withLedger), mk("b", false)
		_, err := b.ml.Join([]string{a.cfg.BindAddr})
		require.NoError(t, err)
		require.Eventually(t, func() bool { return a.ml.NumMembers() == 2 }, 5*time.Second, 10*time.Millisecond)
		w := ledger.Witness{Node: "a"}
		if withLedger {
			w = head
		}
		before := bytesSent.Get()
		a.send(r)
		require.Equal(t, uint64(ReportWireSize(w, r)), bytesSent.Get()-before, "ledger %v", withLedger)
	}
}

// The estimate of memberlist's own traffic: probes do not grow with the
// farm, push-pulls grow with it and stretch past 32 members, and nothing
// is sent by a node alone.
func TestEstimateMemberlist(t *testing.T) {
	f := func(members int, every time.Duration) MemberlistTraffic {
		t.Helper()
		e := EstimateMemberlist(MemberlistLoad{Members: members, NameLen: 4, Licences: 1, LicenceBytes: 1097})
		require.Equal(t, every, e.PushPullEvery, "%d members", members)
		return e
	}
	one, three, thirty, hundred := f(1, 5*time.Second), f(3, 5*time.Second), f(32, 5*time.Second), f(100, 15*time.Second)
	require.Zero(t, one.Total())
	require.Equal(t, three.Probes, hundred.Probes)
	require.InDelta(t, float64(three.Ping+three.Ack)*5, three.Probes, 1e-9)
	require.Zero(t, three.Gossip)
	require.Less(t, three.PushPull, thirty.PushPull)
	require.InDelta(t, 2*float64(hundred.StateBytes)/15, hundred.PushPull, 1e-9)
	more := EstimateMemberlist(MemberlistLoad{Members: 3, NameLen: 4, Licences: 10, LicenceBytes: 1097, Accounts: 100})
	// The licences go at a join (as base64 in JSON), not in every state.
	require.Equal(t, three.StateBytes, more.StateBytes)
	require.Greater(t, three.JoinBytes, three.StateBytes+1097*4/3)
	require.Greater(t, more.JoinBytes, three.JoinBytes+9*1097*4/3+more.AllocationBytes)
	// The allocations go at a join, not in every state (its digest does).
	require.Greater(t, more.AllocationBytes, 100*50)
	require.InDelta(t, 2*float64(more.StateBytes)/5, more.PushPull, 1e-9)
}

// freeAddr is a loopback address whose TCP and UDP ports are free, for a
// memberlist node of a test.
func freeAddr(t *testing.T) string {
	t.Helper()
	addrs, err := loopback.FreeAddrs(1)
	require.NoError(t, err)
	return addrs[0]
}
