package registry_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

type fixture struct {
	t    *testing.T
	dir  string
	key  *licensing.VendorKey
	eng  *admission.Engine
	wall time.Time
	reg  *registry.Registry
	logs *bytes.Buffer
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	key, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	f := &fixture{t: t, dir: t.TempDir(), key: key, wall: t0}
	f.open()
	return f
}

// open (re)opens the registry on the fixture's directory with a new engine.
func (f *fixture) open() {
	f.t.Helper()
	keys, err := licensing.NewKeyring(f.key.Public())
	require.NoError(f.t, err)
	f.eng = admission.NewEngine(admission.DefaultConfig())
	f.logs = &bytes.Buffer{}
	f.reg, err = registry.Open(registry.Config{Dir: f.dir, ClusterID: "farm-1", Keys: keys, ClockTolerance: 5 * time.Minute,
		Wall: func() time.Time { return f.wall }, Sink: cluster.NewShares(f.eng), Log: slog.New(slog.NewTextHandler(f.logs, nil))})
	require.NoError(f.t, err)
}

func (f *fixture) sign(l licensing.License) []byte {
	f.t.Helper()
	b, err := f.key.Sign(&l, f.wall)
	require.NoError(f.t, err)
	return b
}

func (f *fixture) limits(service string) admission.Limits {
	s := f.eng.Service(service)
	if s == nil {
		return admission.Limits{}
	}
	return s.Stats().Limits
}

func (f *fixture) state(id string) string {
	v, ok := f.reg.Get(id)
	require.True(f.t, ok, id)
	return v.State
}

func reasonIs(t *testing.T, err error, reason string) {
	t.Helper()
	var le *registry.LoadError
	require.True(t, errors.As(err, &le), "%v", err)
	require.Equal(t, reason, le.Reason, err.Error())
}

func TestStackingAndStatesAtExactInstants(t *testing.T) {
	f := newFixture(t)
	end := t0.Add(30 * 24 * time.Hour)
	res, err := f.reg.Add(f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500, Sessions: 100, NotAfter: end, Grace: 72 * time.Hour}))
	require.NoError(t, err)
	require.Equal(t, registry.Result{Kind: "license", ID: "a", Service: "voice", State: "active", New: true}, res)
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	require.Equal(t, int64(100), f.limits("voice").Sessions)
	require.Equal(t, int64(admission.Unlimited), f.limits("voice").Subscribers, "no licence sets subscribers: not limited")

	_, err = f.reg.Add(f.sign(licensing.License{ID: "b", Service: "voice", CAPS: 500, NotAfter: end.Add(time.Hour)}))
	require.NoError(t, err)
	require.Equal(t, 1000.0, f.limits("voice").CAPS, "licences stack")
	require.Equal(t, int64(100), f.limits("voice").Sessions)

	f.wall = end.Add(-time.Nanosecond)
	require.Equal(t, end, f.reg.Tick(), "the next change is a's not_after")
	require.Equal(t, "active", f.state("a"))
	f.wall = end
	f.reg.Tick()
	require.Equal(t, "grace", f.state("a"))
	require.Equal(t, 1000.0, f.limits("voice").CAPS, "grace keeps the limits")
	f.wall = end.Add(time.Hour)
	f.reg.Tick()
	require.Equal(t, "expired", f.state("b"))
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	require.Equal(t, "grace", f.limits("voice").State, "only a licence in grace is left")
	f.wall = end.Add(72 * time.Hour)
	require.True(t, f.reg.Tick().IsZero(), "nothing will change any more")
	require.Equal(t, "expired", f.state("a"))
	require.False(t, f.limits("voice").Licensed)
	require.Equal(t, admission.UNLICENSED, f.eng.Admit(1, []byte("voice"), nil, nil, admission.Normal).Reason)
	require.Equal(t, admission.OK, f.eng.Admit(1, []byte("voice"), nil, nil, admission.Emergency).Reason)
}

func TestPendingThenActive(t *testing.T) {
	f := newFixture(t)
	start := t0.Add(time.Hour)
	res, err := f.reg.Add(f.sign(licensing.License{ID: "p", Service: "sms", CAPS: 10, NotBefore: start}))
	require.NoError(t, err)
	require.Equal(t, "pending", res.State)
	require.Nil(t, f.eng.Service("sms"), "a pending licence gives nothing yet")
	f.wall = start
	f.reg.Tick()
	require.Equal(t, 10.0, f.limits("sms").CAPS)
}

func TestRefusalsChangeNothing(t *testing.T) {
	f := newFixture(t)
	good := f.sign(licensing.License{ID: "g", Service: "voice", CAPS: 500})
	_, err := f.reg.Add(good)
	require.NoError(t, err)
	f.wall = t0.Add(time.Minute)
	res, err := f.reg.Add(good)
	require.NoError(t, err)
	require.False(t, res.New, "loading again is idempotent")

	other, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	foreign, err := other.Sign(&licensing.License{ID: "x", Service: "voice", CAPS: 9000}, f.wall)
	require.NoError(t, err)
	_, err = f.reg.Add(foreign)
	reasonIs(t, err, registry.ReasonUnknownKey)
	_, err = f.reg.Add([]byte("hello"))
	reasonIs(t, err, registry.ReasonMalformed)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "g", Service: "voice", CAPS: 5000}))
	reasonIs(t, err, registry.ReasonReplayed)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "c", Service: "voice", CAPS: 5000, Cluster: "farm-2"}))
	reasonIs(t, err, registry.ReasonWrongCluster)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "e", Service: "voice", CAPS: 5000,
		NotBefore: t0.Add(-48 * time.Hour), NotAfter: t0.Add(-24 * time.Hour), Grace: time.Hour}))
	reasonIs(t, err, registry.ReasonExpired)
	future, err := f.key.Sign(&licensing.License{ID: "f", Service: "voice", CAPS: 5000}, f.wall.Add(time.Hour))
	require.NoError(t, err)
	_, err = f.reg.Add(future)
	reasonIs(t, err, registry.ReasonClockSkew)
	require.Contains(t, err.Error(), "the node's clock is wrong")

	require.Len(t, f.reg.List(), 1)
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	files, _ := filepath.Glob(filepath.Join(f.dir, "*.lic"))
	require.Len(t, files, 1)
}

func TestRevocation(t *testing.T) {
	f := newFixture(t)
	_, err := f.reg.Add(f.sign(licensing.License{ID: "addon-1", Service: "voice", CAPS: 100}))
	require.NoError(t, err)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "addon-2", Service: "voice", CAPS: 100}))
	require.NoError(t, err)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "consolidated", Service: "voice", CAPS: 500}))
	require.NoError(t, err)
	require.Equal(t, 700.0, f.limits("voice").CAPS)
	rev, err := f.key.Revoke(&licensing.Revocation{ID: "rev-1", Revokes: []string{"addon-1", "addon-2"}, Reason: "consolidated"}, f.wall)
	require.NoError(t, err)
	res, err := f.reg.Add(rev)
	require.NoError(t, err)
	require.Equal(t, registry.Result{Kind: "revocation", ID: "rev-1", New: true}, res)
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	require.Equal(t, "revoked", f.state("addon-1"))
	res, err = f.reg.Add(rev)
	require.NoError(t, err)
	require.False(t, res.New)
	// A revoked licence cannot come back, not even after a restart, and it
	// is still listed as revoked.
	f.open()
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	require.Equal(t, "revoked", f.state("addon-1"))
	require.NotContains(t, f.logs.String(), "refusing")
	_, err = f.reg.Add(f.sign(licensing.License{ID: "addon-1", Service: "voice", CAPS: 100}))
	reasonIs(t, err, registry.ReasonRevoked)
}

func TestRestartReverifies(t *testing.T) {
	f := newFixture(t)
	_, err := f.reg.Add(f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500}))
	require.NoError(t, err)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "b", Service: "video", CAPS: 50}))
	require.NoError(t, err)
	require.NoError(t, f.reg.Close())
	// Alter one stored licence: it is refused with a log line, the other loads.
	path := filepath.Join(f.dir, "a.lic")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	i := bytes.Index(b, []byte("\n\n")) + 10
	b[i] ^= 0x01
	require.NoError(t, os.WriteFile(path, b, 0o600))
	f.open()
	require.Contains(t, f.logs.String(), "refusing a stored licence")
	require.Contains(t, f.logs.String(), "a.lic")
	require.Nil(t, f.eng.Service("voice"))
	require.Equal(t, 50.0, f.limits("video").CAPS)
	_, ok := f.reg.Get("a")
	require.False(t, ok)
}

func TestClockRollbackNeverRevives(t *testing.T) {
	f := newFixture(t)
	end := t0.Add(24 * time.Hour)
	_, err := f.reg.Add(f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500, NotAfter: end}))
	require.NoError(t, err)
	f.wall = end.Add(time.Minute)
	f.reg.Tick()
	require.False(t, f.limits("voice").Licensed)
	// NTP-sized steps back are tolerated without an alarm.
	f.wall = end.Add(-time.Minute)
	f.reg.Tick()
	back, _ := f.reg.ClockRollback()
	require.False(t, back)
	require.False(t, f.limits("voice").Licensed)
	// A clock set back a day: still expired, and the alarm is up.
	f.wall = t0
	f.reg.Tick()
	back, by := f.reg.ClockRollback()
	require.True(t, back)
	require.Equal(t, 24*time.Hour+time.Minute, by)
	require.Equal(t, "expired", f.state("a"))
	require.False(t, f.limits("voice").Licensed)
	// The mark survives a restart with the clock still wrong.
	require.NoError(t, f.reg.Close())
	f.open()
	require.Contains(t, f.logs.String(), "wall clock is behind the clock high-water mark")
	require.Equal(t, "expired", f.state("a"))
	var m bytes.Buffer
	f.reg.WriteMetrics(&m)
	require.Contains(t, m.String(), "capsgate_clock_rollback 1")
	require.Contains(t, m.String(), `capsgate_license_state{license="a",service="voice",state="expired"} 1`)
	require.Contains(t, m.String(), `capsgate_license_expiry_seconds{license="a",service="voice"} -60`)
}

// TestPeerClockMarkTooFarAheadIsRefused: one member booting with its clock
// years ahead must not expire the farm's licences.
func TestPeerClockMarkTooFarAheadIsRefused(t *testing.T) {
	f := newFixture(t)
	_, err := f.reg.Add(f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500, NotAfter: t0.Add(24 * time.Hour)}))
	require.NoError(t, err)
	f.reg.ObserveMark(t0.Add(365 * 24 * time.Hour))
	f.reg.Tick()
	require.Equal(t, "active", f.state("a"))
	require.Contains(t, f.logs.String(), "not taking its clock mark")
	// A mark within the tolerance is taken (the peer's clock is a bit ahead).
	f.reg.ObserveMark(t0.Add(4 * time.Minute))
	require.Equal(t, t0.Add(4*time.Minute), f.reg.ClockMark())
}

// A monthly licence's pools start empty at each calendar month (UTC), by
// the licence clock, and never in between; leap years included.
func TestMonthlyPeriods(t *testing.T) {
	f := newFixture(t)
	f.wall = time.Date(2028, 1, 31, 23, 0, 0, 0, time.UTC)
	res, err := f.reg.Add(f.sign(licensing.License{ID: "m1", Service: "pre", CAPS: 1000, Tokens: 100, Period: licensing.PeriodMonthly,
		NotBefore: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}))
	require.NoError(t, err)
	require.True(t, res.New)
	clk := admission.NewFakeClock()
	spend := func(n int64) admission.Decision {
		return f.eng.Consume(clk.Now(), []byte("pre"), []byte("x"), n, nil)
	}
	left := func() int64 { return f.eng.Service("pre").Stats().TokensLeft }
	require.True(t, spend(100).Admitted())
	require.Equal(t, admission.TOKENS, spend(1).Reason)

	step := func(to time.Time, wantLeft int64, next time.Time) {
		t.Helper()
		f.wall = to
		require.Equal(t, next, f.reg.Tick(), "next change after %v", to)
		require.Equal(t, wantLeft, left(), "tokens left at %v", to)
	}
	// Still January: nothing back; the next change is 1 February.
	step(time.Date(2028, 1, 31, 23, 59, 59, 0, time.UTC), 0, time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC))
	// February of a leap year: a full pool.
	step(time.Date(2028, 2, 1, 0, 0, 0, 0, time.UTC), 100, time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC))
	require.True(t, spend(60).Admitted())
	step(time.Date(2028, 2, 29, 23, 59, 59, 0, time.UTC), 40, time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC))
	step(time.Date(2028, 3, 1, 0, 0, 0, 0, time.UTC), 100, time.Date(2028, 4, 1, 0, 0, 0, 0, time.UTC))
	require.True(t, spend(100).Admitted())
	// A year end, and February of a common year.
	step(time.Date(2028, 12, 31, 23, 59, 0, 0, time.UTC), 100, time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC))
	require.True(t, spend(30).Admitted())
	step(time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC), 100, time.Date(2029, 2, 1, 0, 0, 0, 0, time.UTC))
	step(time.Date(2029, 2, 28, 23, 59, 59, 0, time.UTC), 100, time.Date(2029, 3, 1, 0, 0, 0, 0, time.UTC))
	// Metered usage over every period keeps growing.
	require.Equal(t, int64(290), f.eng.Service("pre").Stats().TokensUsed)
	// A clock set back does not bring a pool back.
	require.True(t, spend(100).Admitted())
	step(time.Date(2028, 12, 1, 0, 0, 0, 0, time.UTC), 0, time.Date(2029, 3, 1, 0, 0, 0, 0, time.UTC))
}

// A top-up licence adds to the pool at once; used tokens stay used.
func TestTopUpRefillsThePool(t *testing.T) {
	f := newFixture(t)
	clk := admission.NewFakeClock()
	spend := func(n int64) admission.Decision {
		return f.eng.Consume(clk.Now(), []byte("pre"), []byte("x"), n, nil)
	}
	_, err := f.reg.Add(f.sign(licensing.License{ID: "base", Service: "pre", CAPS: 100, Tokens: 1000, Overage: "percent:10"}))
	require.NoError(t, err)
	require.True(t, spend(1000).Admitted())
	require.Equal(t, int64(0), f.eng.Service("pre").Stats().TokensLeft)
	require.True(t, spend(100).Admitted(), "10 % overage")
	require.Equal(t, admission.TOKENS, spend(1).Reason)
	_, err = f.reg.Add(f.sign(licensing.License{ID: "topup-1", Service: "pre", Tokens: 500, Overage: "percent:10"}))
	require.NoError(t, err)
	// 1500 in the pool now, 1100 used: 400 left, and overage is 10 % of 1500.
	require.Equal(t, int64(400), f.eng.Service("pre").Stats().TokensLeft)
	require.Equal(t, admission.Decision{Reason: admission.OK, Remaining: 0}, spend(400))
	require.True(t, spend(150).Admitted())
	require.Equal(t, admission.TOKENS, spend(1).Reason)
	st := f.eng.Service("pre").Stats()
	require.Equal(t, int64(1650), st.TokensUsed)
	require.Equal(t, int64(250), st.Overage, "overage is metered when it is used: the 100 beyond the first pool stay overage")
}

// A stored licence that is not a regular file is logged and skipped, and a
// clock mark that is one stops the node in one line: neither blocks Open.
func TestStoredFilesBounded(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, f.reg.Close())
	fifo := filepath.Join(f.dir, "x.lic")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	f.open()
	require.Contains(t, f.logs.String(), `msg="cannot read a stored licence file" file=`+fifo+` err="`+fifo+`: not a regular file (a FIFO)"`)
	require.NoError(t, f.reg.Close())

	mark := filepath.Join(f.dir, "clock.hwm")
	require.NoError(t, os.Remove(mark))
	require.NoError(t, syscall.Mkfifo(mark, 0o600))
	_, err := registry.Open(registry.Config{Dir: f.dir})
	require.EqualError(t, err, "cannot read the clock high-water mark: "+mark+": not a regular file (a FIFO)")
}

// The same licence document again (every member's state sync carries
// every licence) is answered from what was loaded, not verified again; a
// licence revoked since is still refused.
func TestSameDocumentAgain(t *testing.T) {
	f := newFixture(t)
	doc := f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500})
	first, err := f.reg.Add(doc)
	require.NoError(t, err)
	require.True(t, first.New)
	again, err := f.reg.Add(doc)
	require.NoError(t, err)
	first.New = false
	require.Equal(t, first, again)
	rev, err := f.key.Revoke(&licensing.Revocation{ID: "rev-a", Revokes: []string{"a"}, Reason: "test"}, f.wall)
	require.NoError(t, err)
	_, err = f.reg.Add(rev)
	require.NoError(t, err)
	_, err = f.reg.Add(doc)
	reasonIs(t, err, registry.ReasonRevoked)
	require.Equal(t, 0.0, f.limits("voice").CAPS)
}

// The digests kept to answer a loaded licence's document again are one a
// loaded licence: documents refused (another cluster's, expired) and
// other armourings of a loaded one (CRLF line ends, as mail leaves them)
// add none, however many are sent.
func TestVerifiedDigestsBounded(t *testing.T) {
	f := newFixture(t)
	doc := f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500})
	_, err := f.reg.Add(doc)
	require.NoError(t, err)
	require.Equal(t, 1, registry.VerifiedLen(f.reg))
	crlf := bytes.ReplaceAll(doc, []byte("\n"), []byte("\r\n"))
	for i := range 50 {
		again, err := f.reg.Add(append(bytes.Repeat([]byte("\n"), i), crlf...))
		require.NoError(t, err)
		require.Equal(t, "a", again.ID)
		_, err = f.reg.Add(f.sign(licensing.License{ID: fmt.Sprintf("other-%d", i), Service: "voice", CAPS: 1, Cluster: "farm-2"}))
		reasonIs(t, err, registry.ReasonWrongCluster)
		_, err = f.reg.Add(f.sign(licensing.License{ID: fmt.Sprintf("old-%d", i), Service: "voice", CAPS: 1, NotAfter: t0.Add(-time.Hour)}))
		reasonIs(t, err, registry.ReasonExpired)
	}
	require.Equal(t, 1, registry.VerifiedLen(f.reg))
	require.Equal(t, 500.0, f.limits("voice").CAPS)
	// A second licence loaded: two.
	_, err = f.reg.Add(f.sign(licensing.License{ID: "b", Service: "voice", CAPS: 100}))
	require.NoError(t, err)
	require.Equal(t, 2, registry.VerifiedLen(f.reg))
}

// Two registries holding the same documents, loaded in any order and
// after a restart, give the same digest; each licence or revocation added
// changes it, a refused or repeated one does not. A revoked or expired
// licence is not sent to the other members (Documents) nor named by the
// digest: a registry that refused it gives the same digest.
func TestDigestNamesTheDocuments(t *testing.T) {
	a, b := newFixture(t), newFixture(t)
	b.key = a.key
	b.open()
	empty := a.reg.Digest()
	require.Len(t, empty, 32)
	require.Equal(t, empty, b.reg.Digest())
	one := a.sign(licensing.License{ID: "one", Service: "voice", CAPS: 100})
	two := a.sign(licensing.License{ID: "two", Service: "video", CAPS: 50})
	rev, err := a.key.Revoke(&licensing.Revocation{ID: "rev-one", Revokes: []string{"one"}, Reason: "test"}, a.wall)
	require.NoError(t, err)
	seen := map[string]bool{empty: true}
	for _, doc := range [][]byte{one, two, rev} {
		_, err := a.reg.Add(doc)
		require.NoError(t, err)
		d := a.reg.Digest()
		require.False(t, seen[d], "each document changes the digest")
		seen[d] = true
	}
	require.Len(t, a.reg.Documents(), 2, "the revocation and two, not the revoked one")
	for _, doc := range [][]byte{rev, two, one} {
		_, _ = b.reg.Add(doc) // one is refused: revoked
	}
	full := a.reg.Digest()
	require.Equal(t, full, b.reg.Digest(), "b refused the revoked licence a holds")
	_, err = a.reg.Add(two)
	require.NoError(t, err)
	other, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	forged, err := other.Sign(&licensing.License{ID: "three", Service: "video", CAPS: 5}, a.wall)
	require.NoError(t, err)
	_, err = a.reg.Add(forged)
	require.Error(t, err)
	require.Equal(t, full, a.reg.Digest(), "a repeated or refused document changes nothing")
	a.open()
	require.Equal(t, full, a.reg.Digest(), "after a restart")
	c := newFixture(t)
	c.key = a.key
	c.open()
	for _, doc := range [][]byte{two, one, rev} {
		_, _ = c.reg.Add(doc)
	}
	require.Equal(t, full, c.reg.Digest(), "the same documents in another order")

	// A licence that expires leaves the digest; a registry that never
	// loaded it (it came after the expiry) gives the same one.
	until := a.wall.Add(time.Hour)
	short := a.sign(licensing.License{ID: "short", Service: "fax", CAPS: 5, NotAfter: until})
	_, err = a.reg.Add(short)
	require.NoError(t, err)
	require.NotEqual(t, full, a.reg.Digest())
	require.Len(t, a.reg.Documents(), 3)
	a.wall = a.wall.Add(2 * time.Hour)
	a.reg.Tick()
	require.Equal(t, "expired", a.state("short"))
	require.Equal(t, full, a.reg.Digest(), "expired: not named")
	require.Len(t, a.reg.Documents(), 2)
}
