package cluster

import (
	"fmt"
	"slices"
	"time"
)

// PartitionPolicy says what a node does while members it knew are
// unreachable: dead and partitioned look the same from the inside.
type PartitionPolicy uint8

// Partition policies (config cluster.partition_policy).
const (
	// Split: each side enforces the part of the licence that its
	// reachable members hold (live / known); it never over-admits. The side
	// with a majority of the known members takes over the unreachable
	// members' part after ReclaimAfter (they are presumed dead); a side
	// without a majority enforces nothing after ReclaimAfter/2, before the
	// majority could have taken its part.
	Split PartitionPolicy = iota
	// FailOpen: each side enforces the whole licence for FailOpenFor after
	// it lost members, then falls back to Split.
	FailOpen
)

// ParsePartitionPolicy reads "split" or "fail_open".
func ParsePartitionPolicy(s string) (PartitionPolicy, error) {
	switch s {
	case "split", "":
		return Split, nil
	case "fail_open":
		return FailOpen, nil
	}
	return Split, fmt.Errorf("invalid partition policy %q: want split or fail_open", s)
}

func (p PartitionPolicy) String() string {
	if p == FailOpen {
		return "fail_open"
	}
	return "split"
}

// Side states, as GET /v1/cluster shows them.
const (
	SideWhole    = "whole"     // every known member is reachable
	SidePart     = "part"      // split: enforcing the reachable members' part
	SideFailOpen = "fail_open" // fail_open: enforcing the whole licence for a while
	SideFenced   = "fenced"    // split, in a minority: enforcing nothing
)

// DefaultPolicyConfig is the partition policy a farm gets unless it
// chooses: Split (a licence is never enforced twice over), fail open for
// a minute when chosen (long enough for a flapping link, short enough
// that a real split is not a free licence), and a dead member's part
// reclaimed after 3 s (memberlist declares a member dead in about 1 s on
// a LAN: 3 s leaves a suspicion time and a refuted one room).
func DefaultPolicyConfig() PolicyConfig {
	return PolicyConfig{Policy: Split, FailOpenFor: time.Minute, ReclaimAfter: 3 * time.Second}
}

// PolicyConfig is the partition policy and its timings.
type PolicyConfig struct {
	Policy PartitionPolicy
	// FailOpenFor bounds how long FailOpen enforces the whole licence.
	FailOpenFor time.Duration
	// ReclaimAfter is how long a failed member keeps its part (and the
	// sessions and registrations it held stay counted) before a majority
	// side takes it over.
	ReclaimAfter time.Duration
}

// Side is what this node's side of the cluster may enforce.
type Side struct {
	State string `json:"state"`
	// Fraction of each licence this side enforces (0..1).
	Fraction float64 `json:"fraction"`
	// Live and Known count the reachable members and the members this side
	// still reserves a part for (live plus failed, not yet reclaimed).
	Live  int `json:"live"`
	Known int `json:"known"`
	// Since is when the oldest unreclaimed failure was seen.
	Since *time.Time `json:"since,omitempty"`
}

// failure is a member declared dead (not one that left gracefully).
type failure struct {
	name string
	at   time.Time
}

// decideSide applies the policy: live are the reachable members (this node
// among them), failed the members declared dead and not yet reclaimed. It
// returns the side and the failed members to reclaim now. Pure: every
// input is passed in.
func decideSide(now time.Time, cfg PolicyConfig, live []string, failed []failure) (Side, []string) {
	if len(failed) == 0 {
		return Side{State: SideWhole, Fraction: 1, Live: len(live), Known: len(live)}, nil
	}
	known := len(live) + len(failed)
	first := failed[0].at
	for _, f := range failed[1:] {
		if f.at.Before(first) {
			first = f.at
		}
	}
	side := Side{Live: len(live), Known: known, Since: &first}
	var reclaim []string
	if majority(live, failed) {
		for _, f := range failed {
			if now.Sub(f.at) >= cfg.ReclaimAfter {
				reclaim = append(reclaim, f.name)
			}
		}
		if len(reclaim) == len(failed) {
			return Side{State: SideWhole, Fraction: 1, Live: len(live), Known: len(live)}, reclaim
		}
		known -= len(reclaim)
		side.Known = known
	}
	lost := now.Sub(first)
	switch {
	case cfg.Policy == FailOpen && lost < cfg.FailOpenFor:
		side.State, side.Fraction = SideFailOpen, 1
	case !majority(live, failed) && lost >= cfg.ReclaimAfter/2:
		side.State, side.Fraction = SideFenced, 0
	default:
		side.State, side.Fraction = SidePart, float64(len(live))/float64(side.Known)
	}
	return side, reclaim
}

// majority reports whether the live members are more than half of the
// known ones; exactly half counts when the live side holds the first name
// in order, so that of two equal halves exactly one is the majority.
func majority(live []string, failed []failure) bool {
	known := len(live) + len(failed)
	if 2*len(live) != known {
		return 2*len(live) > known
	}
	first := slices.Min(live)
	for _, f := range failed {
		if f.name < first {
			return false
		}
	}
	return true
}
