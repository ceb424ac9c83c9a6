package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing/registry"
)

// BenchmarkReportSize measures what one member's report weighs on the wire
// (the demandMsg sent to every other member every ExchangeInterval) as a
// function of the services with traffic and the accounts charging tokens
// on that member: REPORT_SERVICES and REPORT_ACCOUNTS (per service).
func BenchmarkReportSize(b *testing.B) {
	for _, c := range []struct{ services, accounts int }{{1, 0}, {10, 0}, {100, 0}, {1000, 0}, {1, 100}, {10, 100}, {100, 100}, {1000, 100}} {
		b.Run(fmt.Sprintf("services=%d/accounts=%d", c.services, c.accounts), func(b *testing.B) {
			size, idle := reportSize(c.services, c.accounts)
			b.ReportMetric(float64(size), "bytes/report")
			b.ReportMetric(float64(size)/float64(max(c.services*(1+c.accounts), 1)), "bytes/pool")
			b.ReportMetric(float64(idle), "idle-bytes/report")
		})
	}
}

// reportSize is the size of a member's report after two exchanges in which
// each of services services offered attempts, held sessions and charged
// tokens to its pool and to each of accounts accounts (every entry
// changed: a delta as large as a whole report), and after as many
// exchanges again in which nothing changed (a delta: the entries whose
// turn it is to be refreshed).
func reportSize(services, accounts int) (busy, idle int) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	live := []string{"a", "b", "c"}
	p := NewPlanner("a", PolicyConfig{ReclaimAfter: 3 * time.Second}, 100*time.Millisecond)
	for _, n := range live {
		p.Joined(t0.Add(-time.Second), n)
	}
	lic := map[string]admission.Limits{}
	for s := range services {
		lic[fmt.Sprintf("svc-%04d", s)] = admission.Limits{Licensed: true, CAPS: 1000, Sessions: 10000,
			Subscribers: 100000, Tokens: 1 << 40}
	}
	var r Report
	size := func() int {
		msg, _ := json.Marshal(demandMsg{Node: "a", HeadSeq: 123456, HeadHash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Report: r})
		return len(msg) + 1
	}
	for step := range 3 + 3*deltaRepeat {
		if step == 3 {
			busy = size()
		}
		use := min(step, 2)
		var u Usage
		for s := range services {
			su := ServiceUsage{Name: fmt.Sprintf("svc-%04d", s), Offered: uint64(use * 100), Sessions: 50,
				Subscribers: 500, PoolUsed: int64(use * 1000), Depth: 100, Avail: 60}
			for a := range accounts {
				su.Accounts = append(su.Accounts, AccountUsage{Account: fmt.Sprintf("acct-%05d", a), Size: 1 << 20, Used: int64(use * 10)})
			}
			u = append(u, su)
		}
		r = p.Plan(t0.Add(time.Duration(step)*ExchangeInterval), live, lic, u).Report
	}
	return busy, size()
}

// A report too large for a UDP packet (3,000 services with traffic, their
// names and figures random enough that compression leaves it over
// 64 KiB) reaches
// the other member over TCP; a small one as a packet. Before, the big one
// was refused by the socket and never arrived.
func TestBigReportsGoOverTCP(t *testing.T) {
	a, b := joinedPair(t)
	heard := func(service string) bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		v := b.planner.peers["a"]
		return v != nil && v.report.Demand[service] > 0
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for _, services := range []int{10, 3000} {
		r := Report{Demand: map[string]float64{}, Applied: map[string]Share{}}
		var last string
		for range services {
			last = fmt.Sprintf("svc-%x", rng.Uint64())
			r.Demand[last] = 1 + rng.Float64()*1000
			r.Applied[last] = Share{CAPS: rng.Float64(), Depth: rng.Float64(), Sessions: rng.Float64(), Subscribers: rng.Float64()}
		}
		streamed := reportsStreamed.Get()
		a.send(r)
		require.Eventually(t, func() bool { return heard(last) }, 5*time.Second, 10*time.Millisecond, "%d services", services)
		if services == 3000 {
			require.Equal(t, streamed+1, reportsStreamed.Get(), "sent over TCP")
		} else {
			require.Equal(t, streamed, reportsStreamed.Get(), "sent as a packet")
		}
	}
}

// noLicences is a node that holds no licence.
type noLicences struct{}

func (noLicences) Documents() [][]byte                          { return nil }
func (noLicences) Digest() string                               { return "" }
func (noLicences) Load([]byte) ([]registry.Result, error)       { return nil, nil }
func (noLicences) LoadShared([]byte) ([]registry.Result, error) { return nil, nil }
func (noLicences) ClockMark() time.Time                         { return time.Time{} }
func (noLicences) ObserveMark(time.Time)                        {}

// joinedPair returns two bare members, a and b, on loopback with a gossip
// key, once each has met the other.
func joinedPair(t *testing.T) (a, b *Cluster) {
	t.Helper()
	a, b = bareMember(t, "a"), bareMember(t, "b")
	_, err := b.ml.Join([]string{a.cfg.BindAddr})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hasMet(a, "b") && hasMet(b, "a") }, 5*time.Second, 10*time.Millisecond)
	return a, b
}

// bareMember is a member named name on loopback with a gossip key, no
// licences, not joined.
func bareMember(t *testing.T, name string) *Cluster {
	t.Helper()
	c, err := New(Config{NodeName: name, BindAddr: freeAddr(t), Key: bytes.Repeat([]byte{7}, 32),
		Engine: admission.NewEngine(admission.DefaultConfig()), Licences: noLicences{}, Log: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.ml.Shutdown() })
	return c
}

// hasMet reports whether c has met the member named other.
func hasMet(c *Cluster, other string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[other]
	return p != nil && p.met
}
