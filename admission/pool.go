package admission

import "math"

// pool is a count of prepaid tokens: a service's unallocated pool or an
// account's allocation. Guarded by the owning service's mutex.
type pool struct {
	limit   int64 // tokens in the pool, or Unlimited (metered, never refused)
	used    int64 // every token charged, in the pool and beyond it
	overage int64 // the part of used that went beyond limit
	policy  Overage
}

// left returns the tokens still in the pool (0 when in overage), or -1.
func (p *pool) left() int64 {
	if p.limit == Unlimited {
		return -1
	}
	if l := p.limit - p.used; l > 0 {
		return l
	}
	return 0
}

// fits reports whether n more tokens may be charged under the policy.
func (p *pool) fits(n int64) bool {
	if p.limit == Unlimited || n <= 0 {
		return true
	}
	ceiling := p.policy.ceiling(p.limit)
	return p.used <= ceiling && n <= ceiling-p.used
}

// charge takes n tokens without asking (callers check fits first, or charge
// what was already used, like the minutes of a call that has ended).
// Whatever goes beyond the pool is counted as overage.
func (p *pool) charge(n int64) {
	if n <= 0 {
		return
	}
	if p.limit == Unlimited {
		p.used = satAdd(p.used, n)
		return
	}
	before := max(p.used-p.limit, 0)
	p.used = satAdd(p.used, n)
	p.overage += max(p.used-p.limit, 0) - before
}

// satAdd adds non-negative counts, stopping at math.MaxInt64 instead of
// wrapping.
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// account is an end user or licence code with tokens allocated out of its
// service's pool.
type account struct {
	name string
	pool
}
