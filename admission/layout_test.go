package admission

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// TestDecisionLine: what a decision on the CAPS bucket alone reads of its
// service (the spent flag, the bucket and its flags, its TAT, the OK
// count) is in one cache line of a service the engine made; and services
// are small enough to sit a kilobyte or so apart (their tables' large
// parts are made with their first entry).
func TestDecisionLine(t *testing.T) {
	var s Service
	require.Greater(t, unsafe.Sizeof(s), uintptr(1024), "a size class of whole cache lines")
	require.Less(t, unsafe.Sizeof(s), uintptr(2048))

	e := NewEngine(DefaultConfig())
	for _, name := range []string{"a", "b", "c"} {
		require.NoError(t, e.SetLimits(name, Limits{Licensed: true, CAPS: 10, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}))
		sv := e.Service(name)
		line := uintptr(unsafe.Pointer(&sv.spent.marked)) / 64
		for _, f := range []struct {
			name string
			p    unsafe.Pointer
			size uintptr
		}{
			{"spent.marked", unsafe.Pointer(&sv.spent.marked), unsafe.Sizeof(sv.spent.marked)},
			{"hot", unsafe.Pointer(&sv.hot), unsafe.Sizeof(sv.hot)},
			{"capsTAT", unsafe.Pointer(&sv.capsTAT), unsafe.Sizeof(sv.capsTAT)},
			{"counts[OK]", unsafe.Pointer(&sv.counts[OK]), unsafe.Sizeof(sv.counts[OK])},
		} {
			require.Equal(t, line, uintptr(f.p)/64, "%s starts on the first field's line", f.name)
			require.Equal(t, line, (uintptr(f.p)+f.size-1)/64, "%s ends on the first field's line", f.name)
		}
	}
	// The map's keys are the names in a row, in one string.
	set := e.services.Load()
	at := map[string]uintptr{}
	for k := range set.byName {
		at[k] = uintptr(unsafe.Pointer(unsafe.StringData(k)))
	}
	require.Equal(t, at["a"]+1, at["b"])
	require.Equal(t, at["b"]+1, at["c"])
	sv := e.Service("a")
	for _, tb := range []*table[session]{&sv.sessions} {
		require.Nil(t, tb.heads, "made with the first entry")
	}
	require.Nil(t, sv.trunks.shards.Load(), "made with the first key")
	now := e.Now()
	require.True(t, e.Admit(now, []byte("a"), []byte("c1"), nil, Normal).Admitted())
	require.NotNil(t, sv.sessions.heads)
	require.Nil(t, sv.subscribers.heads)
	sv.mu.Lock()
	sv.subscribers.expire(now + 3600e9) // an empty table expires nothing, and makes nothing
	sv.mu.Unlock()
	require.Nil(t, sv.subscribers.heads)
	require.Nil(t, sv.trunks.get([]byte("k")))
	n := 0
	sv.trunks.each(func(*Trunk) { n++ })
	require.Zero(t, n)
}

// TestHotCAPSFollowsLimits: the first line's copy of the CAPS bucket and
// flags is lim's after every change of limits, at the ends of each
// field's range, and after its keys' limits change; and a read that meets a
// write under way reads lim's.
func TestHotCAPSFollowsLimits(t *testing.T) {
	e := NewEngine(DefaultConfig())
	base := Limits{Licensed: true, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	cases := []Limits{base, base, base, base, base, base, base, {Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}}
	cases[0].CAPS = Unlimited
	cases[1].CAPS = 0
	cases[2].CAPS = 1
	cases[3].CAPS = 1e12
	cases[4].CAPS = 1e-11 // the interval saturates
	cases[5].CAPS, cases[5].TokensPerAttempt, cases[5].Tokens = 5, 1, 100
	cases[6].CAPS, cases[6].TokensPerAttempt, cases[6].Tokens = 5, 1, Unlimited
	check := func(r *Service) {
		t.Helper()
		d := r.lim.Load()
		g, f := r.hot.load(&r.lim)
		require.Equal(t, d.caps.mode, g.mode)
		require.Equal(t, d.caps.interval, g.interval)
		require.Equal(t, d.caps.tolerance, g.tolerance)
		require.Equal(t, d.Licensed, f&hotLicensed != 0)
		require.Equal(t, d.TokensPerAttempt == 0 || !d.Licensed, f&hotRateOnly != 0)
	}
	for i, l := range cases {
		require.NoError(t, e.SetLimits("svc", l), "case %d", i)
		check(e.Service("svc"))
		require.NoError(t, e.SetLimits(TrunkName("svc", "k"), l), "case %d", i)
		check(e.Service("svc")) // a key's limits leave the service's copy as it was
	}
	// A read meeting a write under way (an odd count) reads lim's.
	s := e.Service("svc")
	s.hot.seq.Add(1)
	s.hot.interval.Store(12345) // torn: half written
	g, _ := s.hot.load(&s.lim)
	require.Equal(t, s.lim.Load().caps.interval, g.interval)
	s.hot.seq.Add(1)
	g, _ = s.hot.load(&s.lim)
	require.Equal(t, int64(12345), g.interval, "once written, the copy is read")
}

// TestHotCAPSNeverTorn: readers of the first line's copy, while its
// limits move between two rates, only ever see one rate's bucket whole
// (run with -race too).
func TestHotCAPSNeverTorn(t *testing.T) {
	e := NewEngine(DefaultConfig())
	a := Limits{Licensed: true, CAPS: 100, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}
	b := a
	b.CAPS, b.TokensPerAttempt, b.Tokens = 7, 1, 1000
	require.NoError(t, e.SetLimits("svc", a))
	s := e.Service("svc")
	da, db := derive(a, &e.cfg), derive(b, &e.cfg)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var torn, reads atomic.Int64
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				g, f := s.hot.load(&s.lim)
				reads.Add(1)
				okA := g.interval == da.caps.interval && g.tolerance == da.caps.tolerance && f == hotFlags(da)
				okB := g.interval == db.caps.interval && g.tolerance == db.caps.tolerance && f == hotFlags(db)
				if !okA && !okB {
					torn.Add(1)
				}
			}
		})
	}
	for i := range 20000 {
		l := a
		if i%2 == 1 {
			l = b
		}
		require.NoError(t, e.SetLimits("svc", l))
	}
	stop.Store(true)
	wg.Wait()
	require.Positive(t, reads.Load())
	require.Zero(t, torn.Load())
}

// TestNewServiceNeverSeenUnlicensed: a service a licence adds is made
// with the licence's limits: whoever finds it decides under them, never
// under the unlicensed limits it was once made with before they were set.
func TestNewServiceNeverSeenUnlicensed(t *testing.T) {
	e := NewEngine(DefaultConfig())
	const n = 3000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("svc-%d", i)
	}
	var added atomic.Int64
	var refused, seen atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i, name := range names {
			added.Store(int64(i))
			if err := e.SetLimits(name, Limits{Licensed: true, CAPS: Unlimited, Sessions: Unlimited, Subscribers: Unlimited, Tokens: Unlimited}); err != nil {
				panic(err)
			}
		}
		added.Store(n)
	})
	wg.Go(func() {
		for added.Load() < n {
			name := []byte(names[added.Load()%n])
			if e.Service(string(name)) == nil {
				continue
			}
			seen.Add(1)
			if !e.Admit(e.Now(), name, nil, nil, Normal).Admitted() {
				refused.Add(1)
			}
		}
	})
	wg.Wait()
	require.Positive(t, seen.Load())
	require.Zero(t, refused.Load(), "of %d decisions on services found", seen.Load())
}

// TestNewServicePoolWatched: services licences add while a pool watch
// drains them concurrently are each reported with their pool at its
// size; a new service's pool is listed with the watch under its lock
// (go test -race reported the unlocked listing).
func TestNewServicePoolWatched(t *testing.T) {
	e := NewEngine(DefaultConfig())
	w, err := e.WatchPools()
	require.NoError(t, err)
	const n = 500
	seen := map[string]int64{}
	var done atomic.Bool
	var wg sync.WaitGroup
	drain := func() {
		var states []PoolState
		for _, s := range e.ChangedServices(w, nil) {
			states = s.ChangedPools(w, states[:0])
			for _, p := range states {
				if p.Account == "" {
					seen[s.Name()] = p.Size
				}
			}
		}
	}
	wg.Go(func() {
		for !done.Load() {
			drain()
		}
	})
	for i := range n {
		require.NoError(t, e.SetLimits(fmt.Sprintf("svc-%d", i), Limits{Licensed: true, CAPS: 10, Sessions: Unlimited, Subscribers: Unlimited, Tokens: 100 + int64(i)}))
	}
	done.Store(true)
	wg.Wait()
	drain()
	require.Len(t, seen, n)
	for i := range n {
		require.Equal(t, 100+int64(i), seen[fmt.Sprintf("svc-%d", i)])
	}
}
