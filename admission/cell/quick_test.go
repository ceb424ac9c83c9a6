package cell

import (
	"math/rand/v2"
	"testing"
	"testing/quick"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

// refBucket is a plain GCRA written from its definition, for comparison:
// a key's theoretical arrival time, integer nanoseconds, no saturation
// (the test keeps its numbers small), remaining by exact division.
type refBucket struct {
	tat int64 // 0: never seen
}

func (b *refBucket) decide(now, ei, burst, q int64) (limited bool, remaining, retry, reset int64) {
	tau := ei * (burst + 1)
	tat := b.tat
	if tat < now {
		tat = now
	}
	next := tat + ei*q
	if next-tau > now {
		retry = -1e9
		if ei*q <= tau {
			retry = next - tau - now
		}
		limited, reset = true, tat-now
	} else {
		b.tat, reset, retry = next, next-now, -1e9
	}
	if left := tau - reset; left > 0 {
		remaining = left / ei
	}
	return limited, remaining, retry, reset
}

// step is one request of a random sequence.
type step struct {
	Key      int   // one of a few keys
	Advance  int64 // microseconds the clock moves before it
	Quantity int64
	Sweep    bool // the table sweeps before it
}

// TestGCRAAgainstReference: over random sequences of requests on a few
// keys with random rates (emission intervals in whole microseconds, the
// clock moving in microseconds: where redis-cell's microsecond division
// is exact), a Table with sweeps at random instants decides as the
// reference, and never lets a key through more than max_burst + 1 +
// window/T in any window that starts at a request.
func TestGCRAAgainstReference(t *testing.T) {
	prop := func(seed uint64) bool {
		rng := rand.New(rand.NewPCG(seed, 7))
		// count 1..50 per period 1..20 s, with period×1e6 divisible by
		// count: a whole number of microseconds.
		var r Rate
		for {
			count, period := 1+rng.Int64N(50), 1+rng.Int64N(20)
			if period*1_000_000%count != 0 {
				continue
			}
			var err error
			r, err = NewRate(rng.Int64N(20), count, period)
			require.NoError(t, err)
			break
		}
		burst := r.Limit - 1
		tab := NewTable(1000)
		refs := make([]refBucket, 4)
		type taken struct{ at, q int64 }
		var admitted [4][]taken
		now := int64(1e12)
		for i := 0; i < 400; i++ {
			s := step{Key: rng.IntN(4), Advance: rng.Int64N(3 * r.Emission / 1000), Quantity: rng.Int64N(4), Sweep: rng.IntN(10) == 0}
			if rng.IntN(20) == 0 {
				s.Quantity = burst + 1 + rng.Int64N(3) // at or past the limit
			}
			now += s.Advance * 1000
			if s.Sweep {
				tab.Sweep(now)
			}
			limited, remaining, retry, reset := refs[s.Key].decide(now, r.Emission, burst, s.Quantity)
			got, err := tab.Throttle(now, admission.KeyOf([]byte{byte(s.Key)}), r, s.Quantity)
			require.NoError(t, err)
			want := Decision{Limited: limited, Remaining: remaining, RetryAfter: retry, ResetAfter: reset}.Reply(r)
			require.Equal(t, want, got, "seed %d step %d %+v rate %+v", seed, i, s, r)
			if !limited && s.Quantity > 0 {
				admitted[s.Key] = append(admitted[s.Key], taken{now, s.Quantity})
			}
		}
		for k := range admitted {
			a := admitted[k]
			for i := range a {
				var sum int64
				for j := i; j < len(a); j++ {
					sum += a[j].q
					window := a[j].at - a[i].at
					require.LessOrEqual(t, sum, burst+1+window/r.Emission, "seed %d key %d: a window of %d ns", seed, k, window)
				}
			}
		}
		return true
	}
	require.NoError(t, quick.Check(prop, &quick.Config{MaxCount: 300}))
}
