package licensing_test

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/capsgate/capsgate/licensing"
)

// The vendor makes a key and issues two licences for one service; a node
// trusting the vendor's public key verifies them and sums what counts.
func Example() {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

	// Vendor: capslicense keygen, then capslicense issue (twice).
	key, err := licensing.GenerateVendorKey()
	if err != nil {
		panic(err)
	}
	first, _ := key.Sign(&licensing.License{Service: "vpn", CAPS: 500, Sessions: 100,
		NotAfter: now.AddDate(0, 1, 0), Grace: 72 * time.Hour}, now)
	second, _ := key.Sign(&licensing.License{Service: "vpn", CAPS: 500, Tokens: 1_000_000,
		TokensPerAttempt: 1, Overage: "percent:10", NotAfter: now.AddDate(1, 0, 0)}, now.Add(time.Hour))
	fmt.Println(strings.SplitN(string(first), "\n", 2)[0])

	// Node: vendor_keys in the config make the keyring.
	ring, _ := licensing.NewKeyring(key.Public())
	var loaded []*licensing.License
	for _, armored := range [][]byte{first, second} {
		l, err := ring.Verify(armored)
		if err != nil {
			panic(err)
		}
		loaded = append(loaded, l)
	}
	forged := strings.Replace(string(first), "eyJ", "eyK", 1)
	_, err = ring.Verify([]byte(forged))
	fmt.Println("forged:", errors.Is(err, licensing.ErrMalformed) || errors.Is(err, licensing.ErrBadSignature))

	show := func(at time.Time) {
		e := licensing.Effective(loaded, nil, at)["vpn"]
		fmt.Printf("%s: %s caps=%d sessions=%d tokens=%d overage=%s\n",
			at.Format(time.DateOnly), e.State, e.CAPS, e.Sessions, e.Tokens, e.Overage)
	}
	show(now)
	next := licensing.NextChange(loaded, now) // the first licence's end: set a timer
	show(next)                                // in grace, still counted
	show(loaded[0].NextChange(next))          // grace over
	// Output:
	// -----BEGIN CAPSGATE LICENSE-----
	// forged: true
	// 2025-06-01: active caps=1000 sessions=100 tokens=1000000 overage=percent:10
	// 2025-07-01: active caps=1000 sessions=100 tokens=1000000 overage=percent:10
	// 2025-07-04: active caps=500 sessions=0 tokens=1000000 overage=percent:10
}
