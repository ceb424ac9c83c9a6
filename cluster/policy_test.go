package cluster

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestDecideSide(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	split := PolicyConfig{Policy: Split, FailOpenFor: time.Minute, ReclaimAfter: 4 * time.Second}
	open := PolicyConfig{Policy: FailOpen, FailOpenFor: 10 * time.Second, ReclaimAfter: 4 * time.Second}
	failed := func(names ...string) []failure {
		var out []failure
		for _, n := range names {
			out = append(out, failure{name: n, at: t0})
		}
		return out
	}
	f := func(cfg PolicyConfig, after time.Duration, live []string, lost []failure, state string, fraction float64, reclaim ...string) {
		t.Helper()
		side, got := decideSide(t0.Add(after), cfg, live, lost)
		require.Equal(t, state, side.State, "%v after %v", live, after)
		require.InDelta(t, fraction, side.Fraction, 1e-9, "%v after %v", live, after)
		require.Equal(t, reclaim, got)
	}
	// Nothing lost: the whole licence.
	f(split, 0, []string{"a", "b", "c"}, nil, SideWhole, 1)
	// 2 of 3 (a majority): their part until ReclaimAfter, then all of it.
	f(split, time.Second, []string{"a", "b"}, failed("c"), SidePart, 2.0/3)
	f(split, 3999*time.Millisecond, []string{"a", "b"}, failed("c"), SidePart, 2.0/3)
	f(split, 4*time.Second, []string{"a", "b"}, failed("c"), SideWhole, 1, "c")
	// The other side, 1 of 3: its part, then nothing from ReclaimAfter/2 on,
	// before the majority takes it.
	f(split, time.Second, []string{"c"}, failed("a", "b"), SidePart, 1.0/3)
	f(split, 2*time.Second, []string{"c"}, failed("a", "b"), SideFenced, 0)
	f(split, time.Hour, []string{"c"}, failed("a", "b"), SideFenced, 0)
	// Two equal halves: the one holding the first name is the majority.
	f(split, 5*time.Second, []string{"a", "d"}, failed("b", "c"), SideWhole, 1, "b", "c")
	f(split, 5*time.Second, []string{"b", "c"}, failed("a", "d"), SideFenced, 0)
	// A 2-node farm: the survivor named first takes over, the other stops.
	f(split, 5*time.Second, []string{"a"}, failed("b"), SideWhole, 1, "b")
	f(split, 5*time.Second, []string{"b"}, failed("a"), SideFenced, 0)
	// Of five, one failed long ago and reclaimed no more; two just now.
	f(split, time.Second, []string{"a", "b", "c"}, []failure{{"d", t0}, {"e", t0.Add(-time.Minute)}}, SidePart, 3.0/4, "e")
	// fail_open: the whole licence on both sides for FailOpenFor, then split.
	f(open, 9*time.Second, []string{"c"}, failed("a", "b"), SideFailOpen, 1)
	f(open, 10*time.Second, []string{"c"}, failed("a", "b"), SideFenced, 0)
	f(open, time.Second, []string{"a", "b"}, failed("c"), SideFailOpen, 1)
	f(open, 5*time.Second, []string{"a", "b"}, failed("c"), SideWhole, 1, "c")
}

// Over a partition of any shape and at any instant, the two sides of a
// split cluster never enforce more than the whole licence together, as
// long as each side saw the other fail within ReclaimAfter/2 of the other.
func TestSplitNeverOverAdmits(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := PolicyConfig{Policy: Split, ReclaimAfter: 4 * time.Second}
	names := []string{"a", "b", "c", "d", "e"}
	for mask := 1; mask < 1<<len(names)-1; mask++ {
		var left, right []string
		for i, n := range names {
			if mask&(1<<i) != 0 {
				left = append(left, n)
			} else {
				right = append(right, n)
			}
		}
		lost := func(names []string, at time.Time) []failure {
			var out []failure
			for _, n := range names {
				out = append(out, failure{name: n, at: at})
			}
			return out
		}
		skew := 1999 * time.Millisecond // the right side noticed this much later
		for at := time.Duration(0); at < 10*time.Second; at += 100 * time.Millisecond {
			l, _ := decideSide(t0.Add(at), cfg, left, lost(right, t0))
			r, _ := decideSide(t0.Add(at), cfg, right, lost(left, t0.Add(skew)))
			require.LessOrEqual(t, l.Fraction+r.Fraction, 1+1e-9, "%v | %v at %v: %v + %v", left, right, at, l, r)
		}
	}
}

// The replay log's ring keeps the last max values in order and finds the
// first at or after an instant.
func TestReplayRing(t *testing.T) {
	r := ring[int64]{max: 4}
	at := func(x *int64) int64 { return *x }
	for v := range int64(3) {
		r.push(v * 10)
	}
	require.Equal(t, 3, r.len())
	require.Equal(t, 1, r.from(5, at))
	for v := int64(3); v < 7; v++ {
		r.push(v * 10)
	}
	require.Equal(t, 4, r.len(), "bounded")
	var got []int64
	for i := range r.len() {
		got = append(got, *r.at(i))
	}
	require.Equal(t, []int64{30, 40, 50, 60}, got, "the last four, oldest first")
	require.Equal(t, 0, r.from(0, at))
	require.Equal(t, 2, r.from(45, at))
	require.Equal(t, 4, r.from(61, at))
}
