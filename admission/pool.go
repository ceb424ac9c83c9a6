package admission

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/admission/sat"
)

// pool is a count of prepaid tokens: a service's unallocated pool or an
// account's allocation. Guarded by the owning service's mutex.
type pool struct {
	limit   int64 // tokens in the pool, or Unlimited (metered, never refused)
	used    int64 // every token charged this period, in the pool and beyond it
	overage int64 // the part of used that went beyond limit
	policy  Overage
	// total and totalOver are used and overage over every period (they
	// only grow); base is total when the period began.
	total, totalOver, base int64
	// durable is how far total may go: what is reserved on disk, so that a
	// crash never loses an acknowledged charge (see Service.Reserve);
	// unset, nothing is persisted and total may go anywhere.
	durable    int64
	durableSet bool
	// low: when less than this is left of the reservation, the reserver
	// is woken to move it ahead.
	low int64
	// wanted sums the charges that found the reservation short since the
	// last one (each counted once per try): the next reservation covers
	// them all on top of its lookahead, whatever their size.
	wanted int64
	// waited sums, over the pool's life, the charges that found the
	// reservation short (each try): the reserver measures the rate of the
	// others, which the lookahead is for.
	waited int64
	// owner is the account whose pool this is (nil: the service's).
	owner *account
	// dirty has a bit per pool watch that has this pool pending (see
	// poolwatch.go).
	dirty uint8
}

// reserved reports whether n more tokens are covered by the durable
// reservation, and adds n to what the next one must cover when they are
// not. A reservation of math.MaxInt64 covers everything: the counters
// stop there.
func (p *pool) reserved(n int64) bool {
	if !p.durableSet || n <= 0 || p.durable == math.MaxInt64 || (p.total <= p.durable && n <= p.durable-p.total) {
		return true
	}
	p.wanted = sat.Add(p.wanted, n)
	p.waited = sat.Add(p.waited, n)
	return false
}

// maxReserveWaits bounds how many reservations one charge waits for: the
// first covers it unless charges that did not wait took the room first
// (a rise from an idle pool: each reservation then doubles the lookahead,
// so a few writes end it; 3 were seen to run out after a restart under
// load).
const maxReserveWaits = 16

// awaitCharge is awaitReservation for a charge to acct's pool.
func (s *Service) awaitCharge(acct []byte, n int64) {
	p, _ := s.poolFor(acct)
	s.awaitReservation(p, n, false)
}

// awaitReservation makes a charge of n tokens to p wait, with mu released,
// until a reservation covers it (Config.AwaitReserve), so that a charge of
// any size is made on its first try instead of being refused OVERLOAD.
// A charge that p's policy refuses does not wait (unless always, for the
// minutes of a call that has ended, which are charged whatever the pool).
// Nothing is taken here: the caller checks and charges as before, once mu
// is held again, and whatever it checked before the call must be checked
// again. A charge the reservation covers returns at once: no lock beyond
// mu, no allocation. Called with mu held; returns with it held.
func (s *Service) awaitReservation(p *pool, n int64, always bool) {
	if s.await == nil {
		return // a short charge is refused (OVERLOAD); the next reservation covers it
	}
	for try := 0; try < maxReserveWaits && (always || p.fits(n)) && !s.reserved(p, n); try++ {
		s.wakeReserver()
		s.mu.Unlock()
		ok := s.await()
		s.mu.Lock()
		if !ok {
			return
		}
	}
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
	return ceiling < 0 || (p.used <= ceiling && n <= ceiling-p.used)
}

// charge takes n tokens without asking (callers check fits first, or charge
// what was already used, like the minutes of a call that has ended).
// Whatever goes beyond the pool is counted as overage.
func (p *pool) charge(n int64) {
	if n <= 0 {
		return
	}
	if p.limit == Unlimited {
		p.used = sat.Add(p.used, n)
		p.total = sat.Add(p.total, n)
		return
	}
	before, over := max(p.used-p.limit, 0), p.overage
	p.used = sat.Add(p.used, n)
	p.overage += max(p.used-p.limit, 0) - before
	p.total = sat.Add(p.total, n)
	p.totalOver = sat.Add(p.totalOver, p.overage-over)
}

// newPeriod empties the pool for a new usage period.
func (p *pool) newPeriod() {
	p.used, p.overage, p.base = 0, 0, p.total
}

// account is an end user or licence code with tokens allocated out of its
// service's pool.
type account struct {
	name  string
	alloc int64 // the tokens allocated to it; pool.limit is that or, in a cluster, this node's budget of it
	// budget is this node's budget of it in a cluster (Limits.AccountBudgets).
	budget int64
	pool
}

// PoolState is one token pool's counters: the service's unallocated pool
// (Account "") or an account's allocation.
type PoolState struct {
	Account string
	// Limit is what the pool may hand out this period (Unlimited: metered
	// only): for an account, its allocation; for the service's pool, its
	// size or, in a cluster, this node's budget of it. Size is the pool's
	// size whatever the cluster.
	Limit   int64
	Size    int64
	Policy  Overage
	Used    int64 // charged this period, overage included
	Overage int64 // the part of Used beyond Limit
	// Total and TotalOverage are Used and Overage over every period (they
	// only grow: the meter counts from them); Base is Total when the period
	// began.
	Total, TotalOverage, Base int64
	// Durable is the reservation on disk for Total (Reserve); -1 when none.
	// Low: the engine wakes the reserver when less than this is left of it.
	Durable, Low int64
	// Wanted sums the charges that found the reservation short since the
	// last one (waiting for the next, or refused); the next covers them.
	Wanted int64
	// Waited sums the charges (each try) that ever found the reservation
	// short.
	Waited int64
	// PeriodID is the service's current usage period (Limits.PeriodID).
	PeriodID int64
}

// Pools returns the service's token pools, the service's own first, then
// its accounts by name. It walks every account under the service's mutex:
// for listings; what runs periodically uses a pool watch (ChangedPools).
func (s *Service) Pools() []PoolState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PoolState, 0, 1+len(s.accounts))
	out = append(out, s.tokensState())
	names := make([]string, 0, len(s.accounts))
	for name := range s.accounts {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		out = append(out, s.accountState(s.accounts[name]))
	}
	return out
}

// Pool returns one pool's state (account "" the service's), without
// walking the others.
func (s *Service) Pool(account string) (PoolState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if account == "" {
		return s.tokensState(), true
	}
	a, ok := s.accounts[account]
	if !ok {
		return PoolState{}, false
	}
	return s.accountState(a), true
}

// tokensState is the state of the service's pool. Called with mu held.
func (s *Service) tokensState() PoolState {
	st := s.tokens.state("")
	st.PeriodID = s.periodID
	if l := s.lim.Load(); l.Tokens != Unlimited {
		st.Size = max(l.Tokens-s.allocated, 0)
	} else {
		st.Size = Unlimited
	}
	return st
}

// accountState is the state of a's pool. Called with mu held.
func (s *Service) accountState(a *account) PoolState {
	st := a.state(a.name)
	st.PeriodID, st.Size = s.periodID, a.alloc
	return st
}

func (p *pool) state(account string) PoolState {
	d := int64(-1)
	if p.durableSet {
		d = p.durable
	}
	return PoolState{Account: account, Limit: p.limit, Size: p.limit, Policy: p.policy, Used: p.used, Overage: p.overage,
		Total: p.total, TotalOverage: p.totalOver, Base: p.base, Durable: d, Low: p.low, Wanted: p.wanted, Waited: p.waited}
}

// Reserve sets how far a pool's charges may go before the next
// reservation: the caller has made durable that up to durable tokens may
// have been charged. account "" is the service's pool; an unknown account
// is ignored. The charges waiting are forgotten when it covers them all;
// when not (some came after the caller read Wanted), the next one covers
// them.
func (s *Service) Reserve(account string, durable, low int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.pool(account); p != nil {
		p.durable, p.durableSet, p.low = durable, true, low
		if durable == math.MaxInt64 || durable >= sat.Add(p.total, p.wanted) {
			p.wanted = 0
		}
		s.touch(p)
	}
}

// Withdraw takes back a pool's reservation beyond its charges: from now
// on, a charge to it waits for a new one (Config.AwaitReserve), and the
// caller, having made durable that the pool's charges go up to the
// returned total, no longer counts the tokens reserved ahead as charged
// after a crash. It reports false, changing nothing, for a pool that has
// nothing reserved ahead, a charge waiting, or a reservation that covers
// everything. account "" is the service's pool.
func (s *Service) Withdraw(account string) (total int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pool(account)
	if p == nil || !p.durableSet || p.durable == math.MaxInt64 || p.durable <= p.total || p.wanted > 0 {
		return 0, false
	}
	p.durable, p.low = p.total, 0
	return p.total, true
}

// wakeReserver asks the reserver to run now (Config.ReserveWake): a pool's
// reservation ran short. Never blocks.
func (s *Service) wakeReserver() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Restore gives a pool back what a previous run reserved, after a
// restart: total charges up to the reservation (tokens reserved but perhaps
// not charged count as charged, so a crash never under-counts; it may
// over-count by what was reserved ahead), and, when the saved period is the
// current one, this period's charges since base.
func (s *Service) Restore(account string, total, base, periodID int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pool(account)
	if p == nil || total <= p.total {
		return
	}
	if periodID == s.periodID && base <= total {
		p.total, p.used, p.overage = base, 0, 0
		s.charge(p, total-base) // this period's part, measured against the pool
		p.base = base
		return
	}
	// The saved charges belong to a period that has ended.
	p.total, p.base = total, total
	s.touch(p)
}

// pool returns the pool of account ("" the service's), or nil. Called with
// mu held.
func (s *Service) pool(account string) *pool {
	if account == "" {
		return &s.tokens
	}
	if a, ok := s.accounts[account]; ok {
		return &a.pool
	}
	return nil
}

// Ceiling is how many tokens the pool may hand out in all (its size plus
// what its overage policy allows), or -1 when there is no end.
func (p PoolState) Ceiling() int64 {
	if p.Size == Unlimited {
		return -1
	}
	return p.Policy.ceiling(p.Size)
}

// Allocation is an account's part of a service's token pool.
type Allocation struct {
	Tokens  int64  `json:"tokens"`
	Overage string `json:"overage"`
	// At is when it was made (ns): of two allocations of one account made
	// on different nodes, the later holds everywhere.
	At int64 `json:"at,omitempty"`
}

// ErrOverAllocated is SetAccount's error for an allocation the service's
// pool cannot hold beside the others.
var ErrOverAllocated = errors.New("allocations over the service's pool")

// overAllocated is an ErrOverAllocated that says which allocation.
type overAllocated string

func (e overAllocated) Error() string        { return string(e) }
func (e overAllocated) Is(target error) bool { return target == ErrOverAllocated }

// SetAccount allocates tokens of the service's pool to an account, with its
// own overage policy. Allocations may not exceed the service's pool
// (ErrOverAllocated).
func (e *Engine) SetAccount(service, acct string, tokens int64, ov Overage) error {
	if !names.Valid([]byte(acct)) {
		// Allocations also arrive from members and from the state file:
		// one rule for names wherever they enter.
		return fmt.Errorf("cannot allocate to account %q: not a valid account name ([A-Za-z0-9._:-]{1,64}, not . or ..)", acct)
	}
	s := e.Service(service)
	if s == nil {
		return fmt.Errorf("cannot allocate to account %q: service %q has no licence", acct, service)
	}
	if tokens < 0 {
		return fmt.Errorf("cannot allocate %d tokens to account %q: must be >= 0", tokens, acct)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lim.Load()
	a := s.accounts[acct]
	old := int64(0)
	if a != nil {
		old = a.alloc
	}
	others := s.allocated - old
	// A service without its licence yet (one known from its keys' limits,
	// or whose licence lapsed) keeps the allocation for when it comes:
	// its pool is not known here.
	if l.Licensed && l.Tokens != Unlimited && tokens > l.Tokens-others {
		return overAllocated(fmt.Sprintf("cannot allocate %d tokens to account %q: the service's pool has %d, %d already allocated to other accounts",
			tokens, acct, l.Tokens, s.allocated-old))
	}
	e.setAccountLocked(s, l, acct, tokens, ov)
	return nil
}

// AccountSetting is one account's allocation (SetAccounts).
type AccountSetting struct {
	Account string
	Tokens  int64
	Overage Overage
}

// SetAccounts gives accounts of a service their allocations at once:
// valid only together, they may not exceed the service's pool together
// with the others' (ErrOverAllocated: nothing changes), where SetAccount,
// one at a time, could refuse a step between two settings that fit.
func (e *Engine) SetAccounts(service string, set []AccountSetting) error {
	s := e.Service(service)
	if s == nil {
		return fmt.Errorf("cannot allocate to accounts: service %q has no licence", service)
	}
	for _, x := range set {
		if !names.Valid([]byte(x.Account)) || x.Tokens < 0 {
			return fmt.Errorf("cannot allocate %d tokens to account %q: not a valid account name or a count below 0", x.Tokens, x.Account)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lim.Load()
	sum := s.allocated
	for _, x := range set {
		if a := s.accounts[x.Account]; a != nil {
			sum -= a.alloc
		}
		sum = sat.Add(sum, x.Tokens)
	}
	if l.Licensed && l.Tokens != Unlimited && sum > l.Tokens {
		return overAllocated(fmt.Sprintf("cannot allocate %d tokens to accounts of service %q: its pool has %d", sum, service, l.Tokens))
	}
	for _, x := range set {
		e.setAccountLocked(s, l, x.Account, x.Tokens, x.Overage)
	}
	return nil
}

// setAccountLocked allocates tokens to acct, unchecked. Called with s.mu
// held.
func (e *Engine) setAccountLocked(s *Service, l *derived, acct string, tokens int64, ov Overage) {
	a := s.accounts[acct]
	old := int64(0)
	if a == nil {
		a = &account{name: acct}
		a.durableSet = e.cfg.DurableTokens
		a.owner = a
		s.accounts[acct] = a
	} else {
		old = a.alloc
	}
	a.alloc, a.policy = tokens, ov
	s.touch(&a.pool) // its size, which its limit may not show (a cluster's budget)
	s.touch(&s.tokens)
	s.allocated = sat.Add(s.allocated-old, tokens)
	s.applyPool(l, false) // the service's pool (what is left unallocated)
	s.applyAccount(l, a)
}
