// Command capslicense is the vendor's tool: key generation, licence issuing,
// verification and revocation, usage-ledger verification and bills (see
// package licensing/issuer).
package main

import (
	"os"

	"github.com/capsgate/capsgate/licensing/issuer"
)

func main() {
	os.Exit(issuer.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
