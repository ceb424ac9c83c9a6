package main

import (
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// TestStopAllMembersAtOnce stops every member of a farm with SIGTERM at
// the same instant, a few times over: each drains and exits 0 (the SPEC's
// SIGTERM), although its leave notice may find no member left to carry it.
// A leave that times out is a warning in the log, never an error exit.
func TestStopAllMembersAtOnce(t *testing.T) {
	const members, rounds = 4, 3
	c := farm.New(t, members)
	timedOut := regexp.MustCompile(`(?m)^.*timeout waiting for leave broadcast.*$`)
	for round := 1; round <= rounds; round++ {
		c.WaitMembers(members, 15*time.Second)
		errs := make([]error, members)
		var wg sync.WaitGroup
		for i, n := range c.Nodes() {
			wg.Go(func() { errs[i] = n.Stop() })
		}
		wg.Wait()
		for i, n := range c.Nodes() {
			log := n.Log()
			require.NoError(t, errs[i], "round %d: %s exited with an error:\n%s", round, n.Name, lastLines(log, 8))
			require.NotContains(t, log, "capsgate: cannot leave the cluster", n.Name)
			for _, line := range timedOut.FindAllString(log, -1) {
				require.Contains(t, line, "level=WARN", "%s: a leave that timed out is a warning", n.Name)
			}
		}
		if round == rounds {
			break
		}
		for _, n := range c.Nodes() {
			require.NoError(t, n.Restart())
		}
	}
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
