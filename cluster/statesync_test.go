package cluster

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

type someAllocations struct{}

func (someAllocations) Apply(string, string, admission.Allocation) error { return nil }
func (someAllocations) Allocations() map[string]map[string]admission.Allocation {
	return map[string]map[string]admission.Allocation{"voice": {"acme": {Tokens: 300, Overage: "none"}}}
}

// The state sync carries the account allocations when a member joins and
// at most once every AllocationSync otherwise, not at every push-pull.
func TestStateSyncCarriesAllocationsSparingly(t *testing.T) {
	d := &delegate{cfg: Config{Licences: noLicences{}, Accounts: someAllocations{}}}
	accounts := func(join bool) int {
		var st state
		require.NoError(t, json.Unmarshal(d.LocalState(join), &st))
		return len(st.Accounts)
	}
	require.Equal(t, 1, accounts(false), "the first push-pull")
	require.Equal(t, 0, accounts(false), "the next, within AllocationSync")
	require.Equal(t, 1, accounts(true), "a join, whenever")
	d.allocationsSent = time.Now().Add(-AllocationSync)
	require.Equal(t, 1, accounts(false), "AllocationSync later")
	require.Equal(t, 0, accounts(false))
}
