package meter

import (
	"crypto/ed25519"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing/ledger"
)

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

const h64 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

func newEngine(t *testing.T) (*admission.Engine, *admission.FakeClock) {
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock, cfg.DurableTokens = clk, true
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("pre", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 50000, TokensPerAttempt: 1}))
	return e, clk
}

func openLedger(t *testing.T, dir string) *ledger.Ledger {
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	l, err := ledger.Open(ledger.Options{Dir: dir + "/ledger", Node: "n1", Cluster: "c", Key: key, Clock: func() time.Time { return t0 }})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// reserver opens dir's token state for e and makes the first reservations.
func reserver(t *testing.T, e *admission.Engine, dir string) *Reserver {
	t.Helper()
	res, err := OpenReserver(e, dir, slog.Default())
	require.NoError(t, err)
	require.NoError(t, res.Step(t0))
	return res
}

func records(t *testing.T, l *ledger.Ledger) []*ledger.Record {
	var out []*ledger.Record
	require.NoError(t, l.Read(time.Time{}, time.Time{}, func(_ []byte, r *ledger.Record) error {
		out = append(out, r)
		return nil
	}))
	return out
}

func TestIntervalRecords(t *testing.T) {
	dir := t.TempDir()
	e, clk := newEngine(t)
	res := reserver(t, e, dir)
	led := openLedger(t, dir)
	m, err := New(e, led, res, func() []ledger.Witness { return []ledger.Witness{{Node: "n2", Seq: 7, Hash: h64}} }, t0)
	require.NoError(t, err)
	require.NoError(t, res.SetAccount("pre", "acme", admission.Allocation{Tokens: 20000, Overage: "none"}))
	for range 30 {
		require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	}
	require.True(t, e.Consume(clk.Now(), []byte("pre"), []byte("acme"), 40, nil).Admitted())
	require.False(t, e.Consume(clk.Now(), []byte("pre"), []byte("acme"), 19961, nil).Admitted())
	require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Emergency).Admitted())
	require.NoError(t, m.Flush(t0.Add(10*time.Second)))
	recs := records(t, led)
	require.Len(t, recs, 3, "service, account, witness")
	u := recs[0].Usage
	require.Equal(t, "pre", u.Service)
	require.Equal(t, uint64(30), u.Attempts)
	require.Equal(t, uint64(30), u.Admitted)
	require.Equal(t, uint64(1), u.Emergency)
	require.Equal(t, uint64(70), u.Tokens, "30 attempts + 40 consumed")
	require.Equal(t, "acme", recs[1].Usage.Account)
	require.Equal(t, uint64(40), recs[1].Usage.Tokens)
	require.Equal(t, &ledger.Witness{Node: "n2", Seq: 7, Hash: h64}, recs[2].Witness)

	// The next interval holds only what happened in it.
	require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	require.NoError(t, m.Flush(t0.Add(20*time.Second)))
	recs = records(t, led)
	require.Len(t, recs, 5)
	require.Equal(t, uint64(1), recs[3].Usage.Attempts)
	require.Equal(t, uint64(1), recs[3].Usage.Tokens)
}

// A crash loses the engine's memory; the reservation on disk brings the
// charges back (at most one block more), and the first record after the
// restart carries what the ledger had not yet recorded.
func TestRestartNeverUndercounts(t *testing.T) {
	dir := t.TempDir()
	e, clk := newEngine(t)
	res := reserver(t, e, dir)
	led := openLedger(t, dir)
	m, err := New(e, led, res, nil, t0)
	require.NoError(t, err)
	charge := func(e *admission.Engine, n int) (ok int) {
		for range n {
			if e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted() {
				ok++
			}
		}
		return ok
	}
	require.Equal(t, 200, charge(e, 200))
	require.NoError(t, m.Flush(t0.Add(10*time.Second)))
	require.NoError(t, res.Step(t0.Add(10*time.Second)))
	// Charges run into the reservation (MinBlock = 1000): beyond it, OVERLOAD.
	got := charge(e, 1000)
	require.Equal(t, 800, got, "charges stop at the reservation until the next Step")
	require.Equal(t, admission.OVERLOAD, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason)
	// kill -9: no flush, no final write.

	e2, _ := newEngine(t)
	res2, err := OpenReserver(e2, dir, slog.Default())
	require.NoError(t, err)
	res2.Restore()
	used := e2.Service("pre").Stats().TokensUsed
	require.GreaterOrEqual(t, used, int64(1000), "every acknowledged charge is back")
	require.LessOrEqual(t, used, int64(1000+MinBlock), "over by at most one block")
	m2, err := New(e2, led, res2, nil, t0.Add(20*time.Second))
	require.NoError(t, err)
	require.NoError(t, m2.Flush(t0.Add(30*time.Second)))
	recs := records(t, led)
	var ledgered uint64
	for _, r := range recs {
		ledgered += r.Usage.Tokens
	}
	require.Equal(t, uint64(used), ledgered, "the ledger has every token the restored pool counts")
}

// A clean stop writes the exact charges: the next start counts none twice.
func TestCleanStopIsExact(t *testing.T) {
	dir := t.TempDir()
	e, clk := newEngine(t)
	res := reserver(t, e, dir)
	for range 10 {
		require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	}
	require.NoError(t, res.Close())
	e2, _ := newEngine(t)
	res2, err := OpenReserver(e2, dir, slog.Default())
	require.NoError(t, err)
	res2.Restore()
	require.Equal(t, int64(10), e2.Service("pre").Stats().TokensUsed)
}

// The engine wakes the reserver when a pool has less than half a step
// left, and when a charge found no reservation.
func TestEngineWakesTheReserver(t *testing.T) {
	clk := admission.NewFakeClock()
	wake := make(chan struct{}, 1)
	cfg := admission.DefaultConfig()
	cfg.Clock, cfg.DurableTokens, cfg.ReserveWake = clk, true, wake
	e := admission.NewEngine(cfg)
	require.NoError(t, e.SetLimits("pre", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
		Subscribers: admission.Unlimited, Tokens: 50000, TokensPerAttempt: 1}))
	<-wake // a new service
	require.Equal(t, admission.OVERLOAD, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Reason, "nothing reserved yet")
	<-wake
	res, err := OpenReserver(e, t.TempDir(), slog.Default())
	require.NoError(t, err)
	require.NoError(t, res.Step(t0)) // the refused charge and 1000 reserved, wake below 500 left
	for range 501 {
		require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	}
	require.Len(t, wake, 0, "500 left: not yet")
	require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	require.Len(t, wake, 1, "499 left: woken")
}

// Without Config.AwaitReserve (tools, tests), a charge larger than what is
// left of the reservation is refused (OVERLOAD) until the next
// reservation, which covers it, up to the end of the range. A node's
// charges wait for it instead (anysize_test.go).
func TestChargeLargerThanAStep(t *testing.T) {
	f := func(tokens, units int64) {
		t.Helper()
		clk := admission.NewFakeClock()
		cfg := admission.DefaultConfig()
		cfg.Clock, cfg.DurableTokens = clk, true
		e := admission.NewEngine(cfg)
		require.NoError(t, e.SetLimits("pre", admission.Limits{Licensed: true, CAPS: admission.Unlimited, Sessions: admission.Unlimited,
			Subscribers: admission.Unlimited, Tokens: tokens}))
		res := reserver(t, e, t.TempDir())
		d := e.Consume(clk.Now(), []byte("pre"), nil, units, nil)
		require.Equal(t, admission.OVERLOAD, d.Reason, "more than the first step of %d", MinBlock)
		require.NoError(t, res.Step(t0.Add(StepEvery)))
		d = e.Consume(clk.Now(), []byte("pre"), nil, units, nil)
		require.Equal(t, admission.OK, d.Reason, "%+v", d)
		require.NoError(t, res.Step(t0.Add(2*StepEvery)))
		require.True(t, e.Consume(clk.Now(), []byte("pre"), nil, 1, nil).Admitted())
	}
	f(5000, 3000)
	f(admission.Unlimited, 3000)
	f(math.MaxInt64, math.MaxInt64-1)
	f(admission.Unlimited, math.MaxInt64)
}

// A token state that is not a regular file stops the start in one line
// instead of blocking it or being read without end: the snapshot, the log
// and an older version's tokens.json alike.
func TestTokenStateNotAFile(t *testing.T) {
	for _, name := range []string{SnapshotFile, LogFile, LegacyStateFile} {
		dir := t.TempDir()
		path := filepath.Join(dir, name)
		require.NoError(t, syscall.Mkfifo(path, 0o600))
		_, err := OpenReserver(admission.NewEngine(admission.DefaultConfig()), dir, slog.Default())
		require.EqualError(t, err, "cannot read the token state: "+path+": not a regular file (a FIFO)")
		require.NoError(t, os.Remove(path))
		require.NoError(t, os.Symlink("/dev/zero", path))
		_, err = OpenReserver(admission.NewEngine(admission.DefaultConfig()), dir, slog.Default())
		require.EqualError(t, err, "cannot read the token state: "+path+": not a regular file (a character device)")
	}
}

// A trunk key's record per interval: its attempts by the decision they
// got, its peak sessions; none for a key that did nothing; a part of the
// service's totals, which count every attempt once.
func TestTrunkKeyRecords(t *testing.T) {
	dir := t.TempDir()
	e, clk := newEngine(t)
	require.NoError(t, e.SetLimits("voice", admission.Limits{Licensed: true, CAPS: 1000, Sessions: 3, Subscribers: admission.Unlimited,
		Tokens: admission.Unlimited}))
	for _, k := range []string{"carrier-a", "carrier-b", "idle"} {
		require.NoError(t, e.SetLimits(admission.TrunkName("voice", k), admission.Limits{Licensed: true, CAPS: 1000, Burst: 5, Sessions: 2,
			Subscribers: admission.Unlimited, Tokens: admission.Unlimited}))
	}
	led := openLedger(t, dir)
	m, err := New(e, led, nil, nil, t0)
	require.NoError(t, err)
	now := clk.Now()
	admit := func(call, key string) admission.Reason {
		var c []byte
		if call != "" {
			c = []byte(call)
		}
		return e.AdmitTrunk(now, []byte("voice"), c, nil, []byte(key), admission.Normal).Reason
	}
	require.Equal(t, admission.OK, admit("a1", "carrier-a"))
	require.Equal(t, admission.OK, admit("a2", "carrier-a"))
	require.Equal(t, admission.TRUNK_SESSIONS, admit("a3", "carrier-a"))
	require.Equal(t, admission.OK, admit("b1", "carrier-b"))
	require.Equal(t, admission.SESSIONS, admit("b2", "carrier-b"), "the licence's 3 sessions")
	for range 4 {
		admit("", "carrier-b")
	}
	require.Equal(t, admission.TRUNK_CAPS, admit("", "carrier-b"), "its burst of 5")
	require.True(t, e.Release(now, []byte("voice"), []byte("a1"), 0))
	require.NoError(t, m.Flush(t0.Add(10*time.Second)))
	recs := records(t, led)
	require.Len(t, recs, 3, "the service's, carrier-a's, carrier-b's")
	require.Equal(t, uint64(10), recs[0].Usage.Attempts)
	require.Equal(t, ledger.Usage{Service: "voice", Trunk: "carrier-a", Attempts: 3, Admitted: 2,
		Rejected: map[string]uint64{"TRUNK_SESSIONS": 1}, PeakSessions: 2}, *recs[1].Usage)
	require.Equal(t, ledger.Usage{Service: "voice", Trunk: "carrier-b", Attempts: 7, Admitted: 5,
		Rejected: map[string]uint64{"SESSIONS": 1, "TRUNK_CAPS": 1}, PeakSessions: 1}, *recs[2].Usage)

	// Next interval: carrier-a still holds a session (its peak), carrier-b
	// too; nothing else happened.
	require.NoError(t, m.Flush(t0.Add(20*time.Second)))
	recs = records(t, led)
	require.Len(t, recs, 6)
	require.Equal(t, ledger.Usage{Service: "voice", Trunk: "carrier-a", PeakSessions: 1}, *recs[4].Usage)
	require.Equal(t, ledger.Usage{Service: "voice", Trunk: "carrier-b", PeakSessions: 1}, *recs[5].Usage)
}
