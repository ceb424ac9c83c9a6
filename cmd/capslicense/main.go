// Command capslicense is the vendor's tool: key generation, licence issuing
// and verification, usage-ledger verification and bills.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: capslicense COMMAND [ARGS]

commands: keygen, issue, verify, inspect, revoke, usage verify, bill
(licensing is not part of this build yet: every command exits 2)
`

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help") {
		fmt.Print(usage)
		return
	}
	fmt.Fprint(os.Stderr, "capslicense: licensing is not part of this build yet\n"+usage)
	os.Exit(2)
}
