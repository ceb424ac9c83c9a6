package cluster

import (
	"math"
	"time"

	"github.com/capsgate/capsgate/admission"
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
func (c *Cluster) tokenBudgetLocked(key string, pool int64, part float64) int64 {
	used := c.held[key].Tokens
	cur, planned := c.budget[key]
	if !planned {
		cur = used
	}
	spent, reserved := used, max(cur, used)
	for name, p := range c.peers {
		if name == c.cfg.NodeName {
			continue
		}
		h := p.held[key]
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
	c.budget[key] = next
	return next
}

// budgetsLocked plans this node's budgets of a service's pool and of its
// accounts' allocations. Called with mu held.
func (c *Cluster) budgetsLocked(service string, licensed int64, names []string, fraction float64) (int64, map[string]int64) {
	self := -1
	for i, n := range names {
		if n == c.cfg.NodeName {
			self = i
		}
	}
	part := func(key string) float64 {
		rates := make([]float64, len(names))
		for i, n := range names {
			if n == c.cfg.NodeName {
				rates[i] = c.rate[key]
			} else if p := c.peers[n]; p != nil && time.Since(p.heard) < staleAfter {
				rates[i] = p.tokenRate[key]
			}
		}
		return Allocate(fraction, rates)[self]
	}
	var pools []admission.PoolState
	if s := c.cfg.Engine.Service(service); s != nil {
		pools = s.Pools()
	}
	allocated := int64(0)
	accounts := map[string]int64{}
	for _, p := range pools {
		if p.Account != "" {
			allocated += p.Size
			accounts[p.Account] = c.tokenBudgetLocked(poolKey(service, p.Account), p.Size, part(poolKey(service, p.Account)))
		}
	}
	return c.tokenBudgetLocked(service, max(licensed-allocated, 0), part(service)), accounts
}
