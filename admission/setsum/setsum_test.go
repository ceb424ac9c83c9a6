package setsum

import (
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// The same members give the same digest in any order; taking out what was
// added gives back the digest before; a set differing in one member, or
// holding a member twice, differs.
func TestSumIsOfTheSet(t *testing.T) {
	members := make([][]byte, 1000)
	for i := range members {
		members[i] = []byte("svc-" + strconv.Itoa(i%7) + "\x00acct-" + strconv.Itoa(i))
	}
	var in Sum
	for _, m := range members {
		in.Add(Of(m))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var shuffled Sum
	for _, i := range rng.Perm(len(members)) {
		shuffled.Add(Of(members[i]))
	}
	require.Equal(t, in, shuffled)
	require.Equal(t, in.String(), shuffled.String())
	require.Len(t, in.String(), 32)

	before := in
	in.Add(Of([]byte("new")))
	require.NotEqual(t, before, in)
	in.Sub(Of([]byte("new")))
	require.Equal(t, before, in)

	// One member changed.
	var changed Sum
	for i, m := range members {
		if i == 500 {
			m = []byte("svc-3\x00acct-500x")
		}
		changed.Add(Of(m))
	}
	require.NotEqual(t, in, changed)
	// One member twice.
	twice := in
	twice.Add(Of(members[0]))
	require.NotEqual(t, in, twice)

	// The empty set, and a set emptied again.
	require.Equal(t, "00000000000000000000000000000000", Sum{}.String())
	for _, m := range members {
		in.Sub(Of(m))
	}
	require.Equal(t, Sum{}, in)
}
