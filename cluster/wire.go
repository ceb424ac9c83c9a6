package cluster

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// ReportWireSize is the size of the message send sends to each other
// member for report r: the message type and the JSON of the report with
// the sender's name and ledger head and identity (head: Node, Seq, Hash,
// Key, Genesis; empty fields are left out, as send leaves them out for a
// node without a ledger). The farm simulator (cluster/sim) counts its
// nodes' reports with it.
func ReportWireSize(head ledger.Witness, r Report) int {
	msg, _ := json.Marshal(demandMsg{Node: head.Node, HeadSeq: head.Seq, HeadHash: head.Hash, HeadKey: head.Key,
		Genesis: head.Genesis, Report: r})
	return len(msg) + 1
}

// Memberlist's own settings, as New sets them (keep the two in step).
const (
	mlProbeInterval    = 200 * time.Millisecond
	mlGossipInterval   = 50 * time.Millisecond
	mlGossipNodes      = 4
	mlPushPullInterval = 5 * time.Second
	// mlPushPullScaleThreshold: past this many members memberlist
	// stretches the push-pull interval (its pushPullScale).
	mlPushPullScaleThreshold = 32
)

// Memberlist's framing, in bytes (memberlist v0.7.0, net.go and
// security.go): a UDP packet carries a CRC (hasCrcMsg and a CRC-32) and,
// with the gossip key set, AES-GCM's version byte, nonce and tag; a TCP
// stream an encryptMsg header (type and length) and the same 29.
const (
	mlPacketFraming = 5 + 29
	mlStreamFraming = 1 + 4 + 29
)

// MemberlistLoad is what memberlist's own traffic on a node depends on.
type MemberlistLoad struct {
	// Members in the farm, this node among them.
	Members int
	// NameLen is the length of a member's name.
	NameLen int
	// Licences is how many licence documents each member holds (one per
	// licensed service) and LicenceBytes the size of one as loaded
	// (licensing/testdata/golden.license: 1,097 bytes).
	Licences, LicenceBytes int
	// Accounts is how many account allocations the members spread.
	Accounts int
}

// MemberlistTraffic is an estimate of what memberlist itself sends from one
// node per second in a steady farm (no member joining, failing or leaving),
// in bytes of UDP and TCP payload: its framing counted, IP, UDP and TCP
// headers not, and before its compression (LZW, used where it makes a
// message smaller: a push-pull's state compresses, a probe does not).
type MemberlistTraffic struct {
	// Probes: every ProbeInterval the node pings one member and, on
	// average, answers one ping with an ack: (ping + ack) / ProbeInterval.
	Probes float64
	// Gossip: every GossipInterval to GossipNodes members, but only what is
	// queued; the cluster queues nothing (licences go directly and by
	// push-pull) and memberlist only membership changes, so 0 when steady.
	Gossip float64
	// PushPull: every PushPullEvery the node opens a TCP push-pull with one
	// member, and on average one member opens one with it; both sides send
	// their whole state (every member's entry, then LocalState: the clock
	// mark and the digests of the licences and of the allocations), so
	// 2 × StateBytes / PushPullEvery. The licences and the account
	// allocations themselves go only to a member that joins or whose
	// digest differs: JoinBytes.
	PushPull      float64
	PushPullEvery time.Duration
	// Ping, Ack and StateBytes are the sizes of one message of each;
	// AllocationBytes what the allocations add to a join's state; JoinBytes
	// the state a join's push-pull sends (licences and allocations in it).
	Ping, Ack, StateBytes, AllocationBytes, JoinBytes int
}

// Total is the bytes per second the node sends.
func (t MemberlistTraffic) Total() float64 { return t.Probes + t.Gossip + t.PushPull }

// Formula states how t is computed, for a report.
func (t MemberlistTraffic) Formula() string {
	return fmt.Sprintf("(ping %d + ack %d) / %v + 2 × state %d / %v (push-pull) + gossip (every %v to %d members: only membership news, 0 when steady); a join's state: %d (allocations %d of it)",
		t.Ping, t.Ack, mlProbeInterval, t.StateBytes, t.PushPullEvery, mlGossipInterval, mlGossipNodes, t.JoinBytes, t.AllocationBytes)
}

// EstimateMemberlist estimates memberlist's own traffic on a node of a farm
// under l, from the settings New gives memberlist and the sizes of its
// messages: msgpack maps keyed by field name (a key costs 1 + its length),
// addresses as 16-byte IPs, sequence and incarnation numbers as 32-bit.
//
//	ping  = 1 type + map 1 + SeqNo 6+5 + Node 5+1+name + SourceAddr 11+2+16
//	        + SourcePort 11+3 + SourceNode 11+1+name + packet framing
//	ack   = 1 type + map 1 + SeqNo 6+5 + Payload 8+1 + packet framing
//	entry = map 1 + Name 5+1+name + Addr 5+2+16 + Port 5+3 + Meta 5+2+meta
//	        + Incarnation 12+5 + State 6+1 + Vsn 4+1+6
//	state = 1 type + header 1+6+3+13+5+5+1 + members × entry + LocalState + stream framing
//
// with meta and LocalState the JSON this package sends (NodeMeta, and
// LocalState's name, digests and clock mark; its licences and allocations
// at a join).
func EstimateMemberlist(l MemberlistLoad) MemberlistTraffic {
	name := l.NameLen
	ping := 1 + 1 + 6 + 5 + 5 + 1 + name + 11 + 2 + 16 + 11 + 3 + 11 + 1 + name + mlPacketFraming
	ack := 1 + 1 + 6 + 5 + 8 + 1 + mlPacketFraming
	m, _ := json.Marshal(meta{Version: Version, RESPAddr: "10.0.0.100:6380", Admin: "10.0.0.100:8080", MaxCAPS: 100000, Stretch: true})
	entry := 1 + 5 + 1 + name + 5 + 2 + 16 + 5 + 3 + 5 + 2 + len(m) + 12 + 5 + 6 + 1 + 4 + 1 + 6
	st := state{Node: strings.Repeat("n", name), Digest: strings.Repeat("0", 32), ClockMark: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Allocs: strings.Repeat("0", 32) + "/" + strings.Repeat("0", 32)}
	steady, _ := json.Marshal(st)
	doc := []byte(strings.Repeat("x", l.LicenceBytes))
	for range l.Licences {
		st.Documents = append(st.Documents, doc)
	}
	if l.Accounts > 0 {
		st.Accounts = map[string]map[string]admission.Allocation{}
		for i := range l.Accounts {
			// Spread over as many services as there are licences.
			svc := fmt.Sprintf("service-%03d", i%max(l.Licences, 1))
			if st.Accounts[svc] == nil {
				st.Accounts[svc] = map[string]admission.Allocation{}
			}
			st.Accounts[svc][fmt.Sprintf("account-%05d", i)] = admission.Allocation{Tokens: 1_000_000_000, Overage: "none", At: 1_767_225_600_000_000_000}
		}
	}
	join, _ := json.Marshal(st)
	st.Documents = nil
	withAllocations, _ := json.Marshal(st)
	stateBytes := 1 + 34 + l.Members*entry + len(steady) + mlStreamFraming
	every := mlPushPullInterval
	if l.Members > mlPushPullScaleThreshold {
		// memberlist's pushPullScale.
		every *= time.Duration(math.Ceil(math.Log2(float64(l.Members))-math.Log2(mlPushPullScaleThreshold)) + 1)
	}
	t := MemberlistTraffic{Ping: ping, Ack: ack, StateBytes: stateBytes, AllocationBytes: len(withAllocations) - len(steady),
		JoinBytes: stateBytes - len(steady) + len(join), PushPullEvery: every,
		Probes: float64(ping+ack) / mlProbeInterval.Seconds()}
	if l.Members > 1 {
		t.PushPull = 2 * float64(stateBytes) / every.Seconds()
	}
	if l.Members <= 1 {
		t.Probes = 0
	}
	return t
}
