package cluster

import (
	"math"
)

// clusteredLocked reports whether this node has ever seen another member:
// from then on its token pools are shared. Called with mu held.
func (c *Cluster) clusteredLocked() bool {
	for name := range c.peers {
		if name != c.cfg.NodeName {
			return true
		}
	}
	return false
}

// tokenBudgetLocked plans this node's budget for a service's token pool:
// how much it may have charged the pool in all. Budgets are escrow: each
// member reports its budget and the others hold it reserved, so that while
// reports arrive within an exchange interval the budgets never add up to
// more than the pool (see the package doc). part is this node's fraction
// of what is left, by the rate each member charges the pool. Called with
// mu held.
func (c *Cluster) tokenBudgetLocked(service string, licensed int64, part float64) int64 {
	allocated := int64(0)
	if s := c.cfg.Engine.Service(service); s != nil {
		allocated = s.Stats().Allocated
	}
	pool := max(licensed-allocated, 0)
	used := c.held[service].Tokens
	cur, planned := c.budget[service]
	if !planned {
		cur = used
	}
	spent, reserved := used, max(cur, used)
	for name, p := range c.peers {
		if name == c.cfg.NodeName {
			continue
		}
		h := p.held[service]
		spent += h.Tokens
		switch {
		case p.left || p.reclaimed:
			// Gone: what it charged stays charged, its budget is free.
			reserved += h.Tokens
		default:
			// Alive, or failed but maybe only cut off: it may still be
			// charging up to its budget.
			reserved += max(h.Budget, h.Tokens)
		}
	}
	target := used + int64(math.Floor(part*float64(max(pool-spent, 0))))
	free := pool - reserved
	next := target
	if target > cur {
		// A rise takes no more than this node's part of what no member
		// has reserved.
		next = min(target, cur+int64(math.Floor(part*float64(max(free, 0)))))
	}
	next = max(next, used)
	c.budget[service] = next
	return next
}
