// Command capsbench is capsgate's load generator and side-by-side benchmark.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "capsbench: not part of this build yet; use redis-benchmark against a --dev node (see README)")
	os.Exit(2)
}
