// Capslicense is the vendor's tool: vendor key generation, licence and
// revocation issuing, checking a licence file, verifying usage ledgers and
// billing them.
//
// Exit status: 0 done (for verify: the signature is good; for usage
// verify: every record verifies), 1 the command failed (a bad signature, a
// ledger that does not verify, an unreadable file, a key that exists), 2 bad
// usage (an unknown flag, a missing or invalid value). Every failure is one
// line on stderr naming the reason.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
