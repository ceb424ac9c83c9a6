// Command capslicense is the vendor's tool: key generation, licence issuing,
// verification and revocation (see package licensing/issuer). Usage-ledger
// verification and bills are not part of this build.
package main

import (
	"os"

	"github.com/capsgate/capsgate/licensing/issuer"
)

func main() {
	os.Exit(issuer.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
