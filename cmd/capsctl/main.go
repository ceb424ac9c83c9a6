// Capsctl is a command-line client of a capsgate node's admin HTTP API
// (see package cmd/internal/capsctl).
package main

import (
	"os"

	"github.com/capsgate/capsgate/cmd/internal/capsctl"
)

func main() { os.Exit(capsctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
