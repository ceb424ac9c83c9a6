package billing

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FuzzPriceSheet: no input makes ParseSheet or Bill panic; every error is
// one line; what ParseSheet accepts is within MaxPlans and MaxTiers, and
// bills the sample ledger (or refuses in one line). The seed corpus in
// testdata/fuzz/FuzzPriceSheet holds the example sheets and the extremes
// of nesting (20000 brackets, 5000 nested lists), aliases (a 9^13 merge
// bomb, a cycle), counts (2^64-1, 2^64, 1.5, 1e19) and shape (two
// documents, binary); the size extremes are added here: 1000 and 1001
// tiers, 1001 plans. (The largest sheet the bounds let through, 700 KB,
// and one over 1 MiB are in TestSheetBounds: inputs that large stall the
// fuzzer's workers for seconds at a time.)
func FuzzPriceSheet(f *testing.F) {
	recs := sample(f)
	head := "currency: EUR\nplans:\n"
	f.Add([]byte(head + tiers(MaxTiers)))
	f.Add([]byte(head + tiers(MaxTiers+1)))
	f.Add([]byte(head + plans(MaxPlans+1)))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSheet(data)
		if err != nil {
			require.NotContains(t, err.Error(), "\n")
			return
		}
		require.LessOrEqual(t, len(s.Plans), MaxPlans)
		for _, p := range s.Plans {
			require.LessOrEqual(t, len(p.Tiers), MaxTiers)
		}
		inv, err := Bill(recs, s, time.Time{}, time.Time{})
		if err != nil {
			require.NotContains(t, err.Error(), "\n")
			return
		}
		require.NotEmpty(t, inv.Lines)
	})
}
