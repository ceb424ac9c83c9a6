// Command capsctl talks to the admin API of any capsgate node.
package main

import (
	"os"

	"github.com/capsgate/capsgate/admission/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
