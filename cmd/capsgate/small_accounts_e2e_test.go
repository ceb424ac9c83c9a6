package main

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cmd/capsgate/node"
)

// TestKillCountsSmallAccountsASixteenth: a real node, accounts allocated
// through capsctl, then kill -9 and a restart. An account that may charge
// less than 16,000 tokens a period is counted at most a sixteenth of that
// (at least 16 tokens) beyond its acknowledged charges, where a block of
// 1,000 ahead of an account of 900 counted all of it: every crash emptied
// a small prepaid account. Uncharged accounts count their first
// reservation exactly; one charged a token at a time, arrivals Poisson at
// 10 a second (seeded; a rate far below the lookahead's floor), gets every
// charge back and at most its floor more.
func TestKillCountsSmallAccountsASixteenth(t *testing.T) {
	if testing.Short() {
		t.Skip("real processes; skipped with -short")
	}
	_, n := meterNode(t, "--tokens", "1000000", "--caps", "100000")
	type account struct {
		tokens  int64
		overage string
		floor   int64 // the first reservation's lookahead
	}
	accounts := map[string]account{
		"s100":   {100, "none", 16},
		"s900":   {900, "none", 56},
		"p900":   {900, "percent:100", 112}, // may charge 1,800 a period
		"u900":   {900, "unlimited", 1000},
		"s16000": {16_000, "none", 1000},
		"c900":   {900, "none", 56}, // charged below
	}
	for name, a := range accounts {
		out, code, err := n.Ctl("accounts", "set", meterService, name, "--tokens", strconv.FormatInt(a.tokens, 10), "--overage", a.overage)
		require.NoError(t, err)
		require.Equal(t, 0, code, "capsctl accounts set %s: %s", name, out)
	}
	const charges = 10
	rng := rand.New(rand.NewPCG(5, 11))
	for i := range charges {
		time.Sleep(time.Duration(rng.ExpFloat64() * float64(100*time.Millisecond)))
		ok, reason, _, err := n.Decision("CONSUME", meterService, "c900", "1")
		require.NoError(t, err)
		require.True(t, ok, "CONSUME %d of c900: %s", i, reason)
	}

	n.Kill()
	require.NoError(t, n.Restart())
	var got struct {
		Accounts []node.AccountView `json:"accounts"`
	}
	require.NoError(t, n.GetJSON("/v1/services/"+meterService+"/accounts", &got))
	used := map[string]int64{}
	for _, a := range got.Accounts {
		used[a.Account] = a.Used
	}
	t.Logf("tokens used after kill -9 and a restart: %v (c900 charged %d)", used, charges)
	require.Len(t, used, len(accounts))
	for name, a := range accounts {
		if name == "c900" {
			continue
		}
		require.Equal(t, a.floor, used[name], "%s (%d tokens, overage %s): its first reservation, no more", name, a.tokens, a.overage)
	}
	require.GreaterOrEqual(t, used["c900"], int64(charges), "every acknowledged charge is back")
	require.LessOrEqual(t, used["c900"], int64(charges)+accounts["c900"].floor, "at most a sixteenth of the account more")
}
