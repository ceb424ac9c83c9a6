package admission

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A million entries due in the same second leave in steps of at most
// ExpireBatch: each step removes exactly that many until the last, entries
// due later stay, and the counts kept through gone follow.
func TestMassExpiryInBoundedSteps(t *testing.T) {
	var tb table[struct{}]
	var gone int
	tb.init(func(struct{}) { gone++ })
	const due, later = 1_000_000, 1000
	at := int64(5e9) // every due entry expires at 5 s
	for i := range due {
		tb.put(KeyOf([]byte{byte(i), byte(i >> 8), byte(i >> 16), 'd'}), struct{}{}, at)
	}
	for i := range later {
		tb.put(KeyOf([]byte{byte(i), byte(i >> 8), 'l'}), struct{}{}, at+int64(2e9))
	}
	require.Equal(t, due+later, tb.len())
	now := at + int64(5e8)
	steps := 0
	for !tb.expireSome(now, ExpireBatch) {
		steps++
		require.Equal(t, steps*ExpireBatch, gone, "step %d removes exactly ExpireBatch", steps)
	}
	require.Equal(t, due/ExpireBatch, steps, "a full step for every whole batch")
	require.Equal(t, due, gone)
	require.Equal(t, later, tb.len(), "entries due later stay")
	require.True(t, tb.expireSome(now, ExpireBatch), "nothing left due")
	require.True(t, tb.expireSome(at+int64(2e9), -1))
	require.Zero(t, tb.len())
}
