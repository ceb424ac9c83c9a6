package trunks

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

type sink map[string]admission.Limits

func (s sink) SetLimits(name string, l admission.Limits) error { s[name] = l; return nil }

func set(svc, key string, caps float64, sessions, at int64) Setting {
	return Setting{Service: svc, Key: key, Limit: Limit{CAPS: caps, Sessions: sessions, At: at}}
}

func TestBookSetsAndKeeps(t *testing.T) {
	dir := t.TempDir()
	got := sink{}
	b, err := Open(dir, 0, got)
	require.NoError(t, err)
	added, err := b.Set(set("voice", "a", 100, 50, 10))
	require.NoError(t, err)
	require.True(t, added)
	require.Equal(t, admission.Limits{Licensed: true, CAPS: 100, Sessions: 50, Subscribers: admission.Unlimited, Tokens: admission.Unlimited,
		State: "active"}, got["voice#a"])
	added, err = b.Set(set("voice", "a", 200, -1, 20))
	require.NoError(t, err)
	require.False(t, added)
	require.Equal(t, int64(admission.Unlimited), got["voice#a"].Sessions)
	_, err = b.Set(set("voice", "a", 1, 1, 15))
	require.ErrorIs(t, err, ErrStale, "an earlier setting arriving late changes nothing")
	require.Equal(t, 200.0, got["voice#a"].CAPS)
	_, err = b.Set(Setting{Service: "voice", Key: "b", Limit: Limit{CAPS: -1, Sessions: 3}})
	require.NoError(t, err)
	l, ok := b.Get("voice", "b")
	require.True(t, ok)
	require.Greater(t, l.At, int64(20), "At 0 means now")
	_, err = b.Set(Setting{Service: "voice", Key: "a", Limit: Limit{Removed: true, At: 30}})
	require.NoError(t, err)
	_, ok = b.Get("voice", "a")
	require.False(t, ok)
	require.False(t, got["voice#a"].Licensed, "a removed key has no limits")
	require.Len(t, b.List("voice"), 1)
	require.Len(t, b.Settings(), 2, "the removal is kept, to spread")
	require.NoError(t, b.Close())

	again := sink{}
	b, err = Open(dir, 0, again)
	require.NoError(t, err)
	require.Equal(t, got["voice#b"], again["voice#b"], "a restart applies the same limits")
	require.False(t, again["voice#a"].Licensed)
	require.Len(t, b.Settings(), 1, "a removal older than TombstoneTTL is dropped by the compaction")
	require.NoError(t, b.Close())
}

func TestBookRefusesBadSettings(t *testing.T) {
	b, err := Open(t.TempDir(), 2, nil)
	require.NoError(t, err)
	for _, c := range []struct {
		s    Setting
		want string
	}{
		{set("vo ice", "a", 1, 1, 1), "invalid service name"},
		{set("voice", strings.Repeat("k", 65), 1, 1, 1), "invalid key"},
		{set("voice", "a#b", 1, 1, 1), "invalid key"},
		{set("voice", "a", -2, 1, 1), "caps must be between 0 and 1e+09"},
		{set("voice", "a", math.NaN(), 1, 1), "caps must be"},
		{set("voice", "a", 1e9+1, 1, 1), "caps must be"},
		{set("voice", "a", 1, -2, 1), "sessions must be 0 or more"},
		{Setting{Service: "voice", Key: "a", Limit: Limit{Burst: -1}}, "burst must be between 0"},
		{Setting{Service: "voice", Key: "a", Limit: Limit{Burst: 1e9 + 1}}, "burst must be between 0"},
		// An instant at MaxInt64 from a member would make the key's limits
		// unchangeable (lastSeen+1 wraps).
		{Setting{Service: "voice", Key: "a", Limit: Limit{At: math.MaxInt64}}, "at must be between 0 and 4611686018427387904"},
		{Setting{Service: "voice", Key: "a", Limit: Limit{At: MaxAt + 1}}, "at must be between 0"},
		{Setting{Service: "voice", Key: "a", Limit: Limit{At: -1}}, "at must be between 0"},
	} {
		_, err := b.Set(c.s)
		require.ErrorContains(t, err, c.want)
	}
	require.Empty(t, b.Settings(), "nothing changed")
	// The extremes that are in range.
	for i, l := range []Limit{{CAPS: 0, Sessions: 0}, {CAPS: 1, Sessions: 1, Burst: 1}} {
		_, err := b.Set(Setting{Service: "voice", Key: "k" + strconv.Itoa(i), Limit: l})
		require.NoError(t, err)
	}
	_, err = b.Set(Setting{Service: "voice", Key: "k2", Limit: Limit{CAPS: 1e9, Sessions: math.MaxInt64, Burst: 1e9}})
	require.ErrorIs(t, err, ErrTooMany, "max_keys 2")
	_, err = b.Set(Setting{Service: "voice", Key: "k1", Limit: Limit{CAPS: 1e9, Sessions: math.MaxInt64, Burst: 1e9}})
	require.NoError(t, err, "a key it holds may change")
}

func TestBookFile(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 0, nil)
	require.NoError(t, err)
	for i := range 200 {
		_, err := b.Set(set("voice", "a", float64(i), 1, int64(i+1)))
		require.NoError(t, err)
	}
	require.NoError(t, b.Close())
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	require.NoError(t, err)
	require.LessOrEqual(t, strings.Count(string(data), "\n"), 2+64+1, "compacted as it grows")

	// A torn last line (a crash in mid-append) is dropped.
	path := filepath.Join(dir, FileName)
	require.NoError(t, os.WriteFile(path, append(data, []byte(`{"service":"voice","key":"b","lim`)...), 0o600))
	b, err = Open(dir, 0, nil)
	require.NoError(t, err)
	l, ok := b.Get("voice", "a")
	require.True(t, ok)
	require.Equal(t, 199.0, l.CAPS)
	_, ok = b.Get("voice", "b")
	require.False(t, ok)
	require.NoError(t, b.Close())

	// Damage inside stops the start with the line.
	require.NoError(t, os.WriteFile(path, []byte("{\"service\":\"voice\",\"key\":\"a\",\"limit\":{\"caps\":1,\"sessions\":1,\"at\":1}}\nnot json\n"), 0o600))
	_, err = Open(dir, 0, nil)
	require.ErrorContains(t, err, "line 2")
	require.NoError(t, os.WriteFile(path, []byte("{\"service\":\"voice\",\"key\":\"a\",\"limit\":{\"caps\":-5,\"sessions\":1,\"at\":1}}\n"), 0o600))
	_, err = Open(dir, 0, nil)
	require.ErrorContains(t, err, "line 1: caps must be")
	// A setting an earlier release took at MaxInt64 is read as made now:
	// the node starts, the key keeps it, and a later setting changes it.
	require.NoError(t, os.WriteFile(path, []byte("{\"service\":\"voice\",\"key\":\"a\",\"limit\":{\"caps\":7,\"sessions\":1,\"at\":9223372036854775807}}\n"), 0o600))
	b, err = Open(dir, 0, nil)
	require.NoError(t, err)
	l, ok = b.Get("voice", "a")
	require.True(t, ok)
	require.Equal(t, 7.0, l.CAPS)
	require.LessOrEqual(t, l.At, time.Now().UnixNano())
	_, err = b.Set(set("voice", "a", 8, 1, 0))
	require.NoError(t, err)
	l, _ = b.Get("voice", "a")
	require.Equal(t, 8.0, l.CAPS)
	require.NoError(t, b.Close())
	// A file past the bound is not read.
	require.NoError(t, os.Truncate(path, MaxFileBytes+1))
	_, err = Open(dir, 0, nil)
	require.ErrorContains(t, err, "more than a limits book may hold")
}

// Two members that take the same settings in any order keep the same.
func TestBookOrderDoesNotMatter(t *testing.T) {
	s := []Setting{set("voice", "a", 1, 1, 5), set("voice", "a", 2, 2, 5), set("voice", "a", 3, 3, 4),
		{Service: "voice", Key: "a", Limit: Limit{Removed: true, At: 5}}, set("voice", "b", 7, 7, 9)}
	var first []Setting
	for _, order := range [][]int{{0, 1, 2, 3, 4}, {4, 3, 2, 1, 0}, {2, 0, 4, 3, 1}, {1, 3, 0, 4, 2}} {
		b, err := Open(t.TempDir(), 0, nil)
		require.NoError(t, err)
		for _, i := range order {
			_, _ = b.Set(s[i])
		}
		if first == nil {
			first = b.Settings()
		}
		require.Equal(t, first, b.Settings(), "order %v", order)
		require.NoError(t, b.Close())
	}
	require.True(t, first[0].Limit.Removed, "of two settings in one nanosecond, the removal")
}

func TestParseSetting(t *testing.T) {
	s, err := ParseSetting("voice/carrier-a caps=100 burst=20 sessions=50")
	require.NoError(t, err)
	require.Equal(t, Setting{Service: "voice", Key: "carrier-a", Limit: Limit{CAPS: 100, Burst: 20, Sessions: 50}}, s)
	s, err = ParseSetting("  voice/b   sessions=0 ")
	require.NoError(t, err)
	require.Equal(t, Limit{CAPS: -1, Sessions: 0}, s.Limit)
	for in, want := range map[string]string{
		"":                                     "empty key limits",
		"voice caps=1":                         "no SERVICE/KEY",
		"voice/a caps=1 caps=2":                `"caps=2"`,
		"voice/a speed=1":                      `unknown limit "speed"`,
		"voice/a caps=-1":                      "caps must be a number of 0 or more",
		"voice/a sessions=x":                   "sessions must be a number",
		"voice/a burst=1e3":                    "burst must be a number",
		"voice/a caps=2e9":                     "caps must be between 0 and 1e+09",
		"voice/a/b caps=1":                     "invalid key",
		"vo ice/a caps=1":                      "no SERVICE/KEY",
		"voice/a sessions=9223372036854775808": "sessions must be a number",
	} {
		_, err := ParseSetting(in)
		require.ErrorContains(t, err, want, "%q", in)
	}
}

// Merge takes a member's settings at once: the later of each key's, the
// malformed and those past max_keys reported, the rest kept, the same as
// setting them one by one.
func TestBookMerge(t *testing.T) {
	one, err := Open(t.TempDir(), 5, nil)
	require.NoError(t, err)
	got := sink{}
	all, err := Open(t.TempDir(), 5, got)
	require.NoError(t, err)
	in := []Setting{set("voice", "a", 1, 1, 10), set("voice", "a", 2, 2, 5), set("voice", "b", 3, 3, 7),
		set("voice", "c", -7, 1, 7), set("voice", "b", 4, 4, 9), {Service: "voice", Key: "d", Limit: Limit{Removed: true, At: 3}}}
	for i := range 4 {
		in = append(in, set("sms", "k"+strconv.Itoa(i), 1, 1, 1))
	}
	for _, s := range in {
		_, _ = one.Set(s)
	}
	n, err := all.Merge(in)
	require.ErrorContains(t, err, "voice/c: caps must be")
	require.ErrorContains(t, err, "sms/k2: too many keys")
	require.Equal(t, 5, n, "the later a and b, d, sms/k0 and k1 (max_keys 5)")
	require.Equal(t, one.Settings(), all.Settings())
	require.Equal(t, 4.0, got["voice#b"].CAPS, "the later of b's")
	require.Equal(t, 1.0, got["voice#a"].CAPS, "a's earlier setting does not win")
	n, err = all.Merge(in[:2])
	require.NoError(t, err)
	require.Zero(t, n, "nothing newer")
	require.NoError(t, all.Close())
	require.NoError(t, one.Close())
}

// Digest names the limits in force: the same on two books holding the same
// whatever order the settings came in; a removal counts as a key never set;
// a restart keeps it.
func TestDigest(t *testing.T) {
	set := []Setting{
		{Service: "voice", Key: "carrier-a", Limit: Limit{CAPS: 50, Sessions: -1, At: 1}},
		{Service: "voice", Key: "carrier-b", Limit: Limit{CAPS: -1, Sessions: 30, At: 2}},
		{Service: "sms", Key: "carrier-a", Limit: Limit{CAPS: MaxCAPS, Burst: MaxBurst, Sessions: 0, At: 3}},
	}
	dirA := t.TempDir()
	a, err := Open(dirA, 0, nil)
	require.NoError(t, err)
	b, err := Open(t.TempDir(), 0, nil)
	require.NoError(t, err)
	empty := a.Digest()
	for _, s := range set {
		_, err := a.Set(s)
		require.NoError(t, err)
	}
	_, err = b.Merge([]Setting{set[2], set[1], set[0]})
	require.NoError(t, err)
	require.Equal(t, a.Digest(), b.Digest())
	require.NotEqual(t, empty, a.Digest())

	// carrier-b removed on a: a differs from b, and is as a book that
	// never had it.
	_, err = a.Set(Setting{Service: "voice", Key: "carrier-b", Limit: Limit{Removed: true, At: 5}})
	require.NoError(t, err)
	require.NotEqual(t, a.Digest(), b.Digest())
	c, err := Open(t.TempDir(), 0, nil)
	require.NoError(t, err)
	_, err = c.Merge([]Setting{set[0], set[2]})
	require.NoError(t, err)
	require.Equal(t, c.Digest(), a.Digest())
	// b takes the removal: equal again.
	_, err = b.Merge([]Setting{{Service: "voice", Key: "carrier-b", Limit: Limit{Removed: true, At: 5}}})
	require.NoError(t, err)
	require.Equal(t, a.Digest(), b.Digest())

	want := a.Digest()
	require.NoError(t, a.Close())
	a2, err := Open(dirA, 0, nil)
	require.NoError(t, err)
	require.Equal(t, want, a2.Digest())
	for _, bk := range []*Book{a2, b, c} {
		require.NoError(t, bk.Close())
	}
}
