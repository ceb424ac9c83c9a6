package main

import (
	"github.com/capsgate/capsgate/licensing"
)

const issueSynopsis = `--key vendor.key --service S [--caps N] [--sessions N] [--subscribers N]
    [--tokens N] [--tokens-per-attempt N] [--tokens-per-minute N]
    [--overage none|percent:N|unlimited] [--unlimited] [--not-before T] [--not-after T]
    [--grace DURATION] [--customer C] [--cluster ID] [--id ID] [--period monthly|none]`

// issue prints a licence signed with the vendor key.
func issue(e *env, args []string) error {
	var l licensing.License
	f := newFlags("issue", issueSynopsis)
	keyFile := f.String("key", "", "the vendor's private key `file` (vendor.key)")
	f.StringVar(&l.Service, "service", "", "the `service` licensed, [A-Za-z0-9._:-]{1,64}")
	f.Var(count{&l.CAPS}, "caps", "add `N` call attempts per second")
	f.Var(count{&l.Sessions}, "sessions", "add `N` concurrent sessions")
	f.Var(count{&l.Subscribers}, "subscribers", "add `N` registered subscribers")
	f.Var(count{&l.Tokens}, "tokens", "add `N` prepaid tokens to the service's pool")
	f.Var(count{&l.TokensPerAttempt}, "tokens-per-attempt", "charge `N` tokens per admitted attempt")
	f.Var(count{&l.TokensPerMinute}, "tokens-per-minute", "charge `N` tokens per started minute of a call")
	f.StringVar(&l.Overage, "overage", licensing.OverageNone, "`policy` when the pool is empty: none, percent:N (0..1000) or unlimited")
	f.BoolVar(&l.Unlimited, "unlimited", false, "no software CAPS limit (the node's max_caps still holds)")
	f.Var(instant{&l.NotBefore}, "not-before", "valid from this RFC 3339 `time` (default: at once)")
	f.Var(instant{&l.NotAfter}, "not-after", "valid until this RFC 3339 `time` (default: never expires)")
	f.Var(duration{&l.Grace}, "grace", "how long limits still hold after --not-after, a `duration` such as 72h")
	f.StringVar(&l.Customer, "customer", "", "the `customer` the licence is for (informational)")
	f.StringVar(&l.Cluster, "cluster", "", "the `cluster_id` the licence is bound to (default: any cluster)")
	f.StringVar(&l.ID, "id", "", "licence `id` (default: random 128-bit hex)")
	f.StringVar(&l.Period, "period", licensing.PeriodNone, "`period`: monthly (usage limits reset each calendar month, UTC) or none")
	if err := noArgs(f, e, args); err != nil {
		return err
	}
	if err := f.require("key", "service"); err != nil {
		return err
	}
	return sign(e, *keyFile, func(key *licensing.VendorKey) ([]byte, error) { return key.Sign(&l, e.now()) })
}

// revoke prints a revocation signed with the vendor key.
func revoke(e *env, args []string) error {
	var r licensing.Revocation
	f := newFlags("revoke", "--key vendor.key --id ID [--id ID ...] [--reason TEXT]")
	keyFile := f.String("key", "", "the vendor's private key `file` (vendor.key)")
	f.Var(list{&r.Revokes}, "id", "a licence `id` to revoke (repeat for several)")
	f.StringVar(&r.Reason, "reason", "", "`text` saying why (informational)")
	if err := noArgs(f, e, args); err != nil {
		return err
	}
	if err := f.require("key", "id"); err != nil {
		return err
	}
	return sign(e, *keyFile, func(key *licensing.VendorKey) ([]byte, error) { return key.Revoke(&r, e.now()) })
}

// sign loads the vendor key, signs with it and prints the armored result.
// A document the library refuses to sign has a bad flag value: usage.
func sign(e *env, keyFile string, with func(*licensing.VendorKey) ([]byte, error)) error {
	key, err := licensing.LoadVendorKey(keyFile)
	if err != nil {
		return err
	}
	armored, err := with(key)
	if err != nil {
		return usageError{err}
	}
	_, err = e.stdout.Write(armored)
	return err
}
