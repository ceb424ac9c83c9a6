package meter

import (
	"bytes"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// storeWith opens a store in dir and commits one write per element of
// writes, each setting the pools it names; it returns the store and the
// state it holds.
func storeWith(t *testing.T, dir string, writes ...map[string]int64) (*tokenStore, fileState) {
	t.Helper()
	st, state, err := openStore(dir, slog.Default())
	require.NoError(t, err)
	for _, w := range writes {
		for acct, v := range w {
			p := &poolState{Reserved: v, Ledgered: v / 2, Base: -v}
			state.serviceOf("voice").Pools[acct] = p
			st.pool("voice", acct, p)
		}
		require.NoError(t, st.commit(&state))
	}
	return st, state
}

func reopen(t *testing.T, dir string) fileState {
	t.Helper()
	st, state, err := openStore(dir, slog.Default())
	require.NoError(t, err)
	require.NoError(t, st.close())
	return state
}

// Every value of an entry comes back as written, the extremes included,
// from the log and from a snapshot.
func TestTokenLogValues(t *testing.T) {
	dir := t.TempDir()
	st, state, err := openStore(dir, slog.Default())
	require.NoError(t, err)
	s := state.serviceOf("svc.a-1:x")
	s.PeriodID = math.MaxInt64
	st.period("svc.a-1:x", math.MaxInt64)
	for acct, p := range map[string]*poolState{
		"":     {Reserved: math.MaxInt64, Ledgered: math.MaxInt64, Base: math.MaxInt64},
		"zero": {},
		"one":  {Reserved: 1, Ledgered: 1, Base: 1},
		"neg":  {Reserved: math.MinInt64, Ledgered: -1, Base: math.MinInt64},
	} {
		s.Pools[acct] = p
		st.pool("svc.a-1:x", acct, p)
	}
	for acct, a := range map[string]admission.Allocation{
		"zero": {Overage: "none"},
		"one":  {Tokens: 1, Overage: "percent:1", At: 1},
		"max":  {Tokens: math.MaxInt64, Overage: "unlimited", At: maxAllocationAt},
	} {
		if s.Accounts == nil {
			s.Accounts = map[string]admission.Allocation{}
		}
		s.Accounts[acct] = a
		st.alloc("svc.a-1:x", acct, a)
	}
	require.NoError(t, st.commit(&state))
	require.Equal(t, state, reopen(t, dir), "from the log")
	require.NoError(t, st.compact(&state))
	require.Equal(t, state, reopen(t, dir), "from the snapshot")
	require.NoError(t, st.close())
}

// A write whose fsync never returned, cut anywhere or left as zeros, is
// cut away at the start with a log line; the writes before it stay, and
// the log takes new ones after.
func TestTokenLogTornTail(t *testing.T) {
	f := func(name string, tear func(b []byte, last int) []byte) {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			st, _ := storeWith(t, dir, map[string]int64{"a": 1, "b": 2}, map[string]int64{"a": 3})
			last := int(st.logSize)
			_, want := storeWith(t, t.TempDir(), map[string]int64{"a": 1, "b": 2}, map[string]int64{"a": 3})
			st2, _ := storeWith(t, dir, map[string]int64{"a": 5, "c": 6}) // the write torn below
			require.NoError(t, st2.close())
			require.NoError(t, st.close())
			path := filepath.Join(dir, LogFile)
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, tear(b, last), 0o600))

			var logged bytes.Buffer
			st3, got, err := openStore(dir, slog.New(slog.NewTextHandler(&logged, nil)))
			require.NoError(t, err)
			require.Equal(t, want, got)
			require.Contains(t, logged.String(), "cut a torn write from the end of the token log")
			fi, err := os.Stat(path)
			require.NoError(t, err)
			require.Equal(t, int64(last), fi.Size(), "cut")
			got.serviceOf("voice").Pools["d"] = &poolState{Reserved: 7}
			st3.pool("voice", "d", got.Services["voice"].Pools["d"])
			require.NoError(t, st3.commit(&got))
			require.NoError(t, st3.close())
			require.Equal(t, got, reopen(t, dir), "a write after the cut")
		})
	}
	f("header cut", func(b []byte, last int) []byte { return b[:last+3] })
	f("payload cut", func(b []byte, last int) []byte { return b[:len(b)-1] })
	f("checksum wrong", func(b []byte, last int) []byte { b[len(b)-1] ^= 1; return b })
	f("zeros", func(b []byte, last int) []byte { clear(b[last:]); return b })
}

// A bad frame with good ones after it is not a torn write: the start is
// refused, saying what to do.
func TestTokenLogCorruptMiddle(t *testing.T) {
	dir := t.TempDir()
	st, _ := storeWith(t, dir, map[string]int64{"a": 1}, map[string]int64{"a": 2}, map[string]int64{"a": 3})
	require.NoError(t, st.close())
	path := filepath.Join(dir, LogFile)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[headerSize+frameHead] ^= 0x40 // the first frame's first entry
	require.NoError(t, os.WriteFile(path, b, 0o600))
	_, _, err = openStore(dir, slog.Default())
	require.EqualError(t, err, "cannot read the token state "+path+": frame at byte 16: checksum mismatch (restore it from a backup; removing it would under-count)")
	// And a snapshot that does not read is refused whole.
	dir = t.TempDir()
	st, state := storeWith(t, dir, map[string]int64{"a": 1})
	require.NoError(t, st.compact(&state))
	require.NoError(t, st.close())
	path = filepath.Join(dir, SnapshotFile)
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b[:len(b)-1], 0o600))
	_, _, err = openStore(dir, slog.Default())
	require.ErrorContains(t, err, "cannot read the token state "+path+": ")
	require.ErrorContains(t, err, "(restore it from a backup; removing it would under-count)")
}

// A compaction stopped at any point (kill -9) leaves a state that reads
// as it was, and that takes writes again.
func TestTokenLogCompactionCrash(t *testing.T) {
	for _, point := range []string{"snapshot written", "snapshot renamed", "log written", ""} {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			st, state := storeWith(t, dir, map[string]int64{"a": 1, "b": 2})
			require.NoError(t, st.compact(&state)) // a first snapshot
			st.pool("voice", "a", &poolState{Reserved: 9})
			state.Services["voice"].Pools["a"] = &poolState{Reserved: 9}
			require.NoError(t, st.commit(&state))
			st.crash = func(p string) bool { return p == point }
			err := st.compact(&state)
			if point != "" {
				require.ErrorIs(t, err, errCrash)
			}
			got := reopen(t, dir)
			require.Equal(t, state, got)
			st2, got, err := openStore(dir, slog.Default())
			require.NoError(t, err)
			got.Services["voice"].Pools["c"] = &poolState{Reserved: 3}
			st2.pool("voice", "c", got.Services["voice"].Pools["c"])
			require.NoError(t, st2.commit(&got))
			require.NoError(t, st2.close())
			require.Equal(t, got, reopen(t, dir))
		})
	}
}

// The log is compacted once it outgrows max(minCompact, 2 × the snapshot):
// the files stay bounded by the state, not by the writes.
func TestTokenLogCompacts(t *testing.T) {
	dir := t.TempDir()
	st, state, err := openStore(dir, slog.Default())
	require.NoError(t, err)
	for i := range int64(400_000) {
		p := state.serviceOf("voice").Pools["a"]
		if p == nil {
			p = &poolState{}
			state.Services["voice"].Pools["a"] = p
		}
		p.Reserved = i
		st.pool("voice", "a", p)
		if i%1000 == 999 {
			require.NoError(t, st.commit(&state))
		}
	}
	require.NoError(t, st.close())
	require.Equal(t, uint64(1), st.gen, "compacted once (4 MiB of 400,000 entries)")
	fi, err := os.Stat(filepath.Join(dir, LogFile))
	require.NoError(t, err)
	require.Less(t, fi.Size(), int64(minCompact))
	require.Equal(t, int64(399_999), reopen(t, dir).Services["voice"].Pools["a"].Reserved)
}

// The tokens.json of an older version opens with every reservation and
// allocation, becomes a snapshot and is removed.
func TestTokenStateMigration(t *testing.T) {
	dir := t.TempDir()
	legacy := `{"services":{"pre":{"period_id":3,"pools":{"":{"reserved":9223372036854775807,"ledgered":10,"base":5},` +
		`"acme":{"reserved":2000,"ledgered":1500,"base":0}},"accounts":{"acme":{"tokens":3000,"overage":"percent:10","at":17}}},` +
		`"other":{"pools":{"":{"reserved":1,"ledgered":0,"base":0}}}}}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, LegacyStateFile), []byte(legacy), 0o600))
	e, _ := newEngine(t)
	res, err := OpenReserver(e, dir, slog.Default())
	require.NoError(t, err)
	want := fileState{Services: map[string]*serviceState{
		"pre": {PeriodID: 3, Pools: map[string]*poolState{"": {Reserved: math.MaxInt64, Ledgered: 10, Base: 5}, "acme": {Reserved: 2000, Ledgered: 1500}},
			Accounts: map[string]admission.Allocation{"acme": {Tokens: 3000, Overage: "percent:10", At: 17}}},
		"other": {Pools: map[string]*poolState{"": {Reserved: 1}}},
	}}
	require.Equal(t, want, res.state)
	require.NoFileExists(t, filepath.Join(dir, LegacyStateFile))
	require.Equal(t, want, reopen(t, dir))
	res.Restore()
	acme, ok := e.Service("pre").Pool("acme")
	require.True(t, ok)
	require.Equal(t, int64(3000), acme.Size)
	require.Equal(t, int64(2000), acme.Total, "charged up to its reservation")
	require.Equal(t, int64(1500), res.Ledgered("pre", "acme"))
}

// A step writes the pools that moved, not the idle ones: with 1,000 idle
// accounts, a charge to one appends one entry.
func TestStepWritesWhatMoved(t *testing.T) {
	e, _ := newEngine(t)
	require.NoError(t, e.SetLimits("pre", bigLimits))
	res := reserver(t, e, t.TempDir())
	for i := range 1000 {
		require.NoError(t, res.SetAccount("pre", accountName(i), admission.Allocation{Tokens: 1 << 40, Overage: "none"}))
	}
	require.NoError(t, res.Step(t0))
	size := res.store.logSize
	require.NoError(t, res.Step(t0.Add(StepEvery)))
	require.Equal(t, size, res.store.logSize, "nothing moved, nothing written")
	for range 600 {
		require.True(t, e.Consume(e.Now(), []byte("pre"), []byte(accountName(7)), 1, nil).Admitted())
	}
	require.NoError(t, res.Step(t0.Add(2*StepEvery)))
	// kind, "pre", "a7", reserved 1600 (2 bytes), ledgered 0, base 0
	require.Equal(t, int64(frameHead+1+4+3+2+1+1), res.store.logSize-size, "one frame of one pool entry")
	p, _ := e.Service("pre").Pool(accountName(7))
	require.Equal(t, int64(1600), p.Durable)
}

// A Step after Close (a loop that had not stopped) writes nothing: the
// exact charges Close wrote stay.
func TestStepAfterClose(t *testing.T) {
	dir := t.TempDir()
	e, clk := newEngine(t)
	res := reserver(t, e, dir)
	for range 600 { // the reservation (1,000) runs below half a lookahead: a step would move it
		require.True(t, e.Admit(clk.Now(), []byte("pre"), nil, nil, admission.Normal).Admitted())
	}
	require.NoError(t, res.Close())
	require.EqualError(t, res.Step(t0.Add(time.Second)), "cannot write the token log: closed")
	require.Equal(t, int64(600), reopen(t, dir).Services["pre"].Pools[""].Reserved)
}

// AllocationsDigest is the same on two nodes holding the same allocations,
// whatever order they came in and whichever first asked for it; it moves
// with an allocation changed, comes back when the change is taken back,
// and is the same after a restart.
func TestAllocationsDigest(t *testing.T) {
	open := func(dir string) *Reserver {
		r, err := OpenReserver(admission.NewEngine(admission.DefaultConfig()), dir, slog.Default())
		require.NoError(t, err)
		return r
	}
	allocs := []struct {
		svc, acct string
		a         admission.Allocation
	}{
		{"voice", "acme", admission.Allocation{Tokens: 300, Overage: "none", At: 1}},
		{"voice", "globex", admission.Allocation{Tokens: 0, Overage: "unlimited", At: 2}},
		{"sms", "acme", admission.Allocation{Tokens: math.MaxInt64, Overage: "none", At: 3}},
		{"sms", "initech", admission.Allocation{Tokens: 1, Overage: "none", At: maxAllocationAt}},
	}
	dirA := t.TempDir()
	a, b := open(dirA), open(t.TempDir())
	empty := a.AllocationsDigest() // summed before any allocation: kept as they come
	for _, x := range allocs {
		require.NoError(t, a.Apply(x.svc, x.acct, x.a))
	}
	for i := len(allocs) - 1; i >= 0; i-- { // b sums only when asked, after
		require.NoError(t, b.Apply(allocs[i].svc, allocs[i].acct, allocs[i].a))
	}
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())
	require.NotEqual(t, empty, a.AllocationsDigest())
	none := open(t.TempDir())
	require.Equal(t, empty, none.AllocationsDigest(), "none allocated")
	require.NoError(t, none.Close())
	before := a.AllocationsDigest()

	// One allocation changed (later), on a only: the digests part.
	require.NoError(t, a.Apply("voice", "acme", admission.Allocation{Tokens: 301, Overage: "none", At: 10}))
	require.NotEqual(t, before, a.AllocationsDigest())
	require.NotEqual(t, b.AllocationsDigest(), a.AllocationsDigest())
	// b takes it too: equal again. An older one changes nothing.
	require.NoError(t, b.Apply("voice", "acme", admission.Allocation{Tokens: 301, Overage: "none", At: 10}))
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())
	require.NoError(t, b.Apply("voice", "acme", admission.Allocation{Tokens: 999, Overage: "none", At: 9}))
	require.Equal(t, a.AllocationsDigest(), b.AllocationsDigest())
	// Only the overage differs.
	require.NoError(t, b.Apply("voice", "acme", admission.Allocation{Tokens: 301, Overage: "unlimited", At: 11}))
	require.NotEqual(t, a.AllocationsDigest(), b.AllocationsDigest())

	// After a restart, what a held gives what it gave.
	want := a.AllocationsDigest()
	require.NoError(t, a.Close())
	a2 := open(dirA)
	require.Equal(t, want, a2.AllocationsDigest())
	require.NoError(t, a2.Close())
	require.NoError(t, b.Close())
}
