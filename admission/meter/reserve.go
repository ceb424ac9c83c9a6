package meter

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/admission/sat"
	"github.com/capsgate/capsgate/admission/setsum"
)

// MinBlock is the smallest lookahead of a reservation, in tokens, for a
// pool of 16 blocks or more (or unlimited).
const MinBlock = 1000

// MinSmallBlock is the smallest lookahead of a smaller pool's reservation:
// a sixteenth of its size, at least this. A block ahead of an account of
// 900 tokens covered all of them: every kill -9 emptied it.
const MinSmallBlock = 16

// floorOf is a pool's smallest lookahead (see MinBlock, MinSmallBlock),
// from what its policy lets it charge in a period (its size and overage).
func floorOf(p admission.PoolState) int64 {
	c := p.Ceiling()
	if c < 0 || c >= 16*MinBlock {
		return MinBlock
	}
	return max(c/16, MinSmallBlock)
}

// BlockSeconds sizes a pool's lookahead: this long at the rate it is
// charged. The reserver wakes when half of it is left, so it must outlast
// a write (an fsync: milliseconds) for charges not to wait.
const BlockSeconds = 0.5

// IdleRelease is how long a pool may go without a charge before its
// reservation beyond its charges is taken back (Service.Withdraw, written
// at the next step). After a kill -9 each pool counts as charged what its
// reservation held: a pool idle for longer than this then counts nothing
// more, where every dormant account of a prepaid farm would count a block
// at every crash. The price is the next charge: it waits for a
// reservation (a step, one fsync) and holds its event loop meanwhile. A
// day, so that an account charged every day never waits: an hour would
// make most accounts' first call after a quiet night wait, all in the
// morning's busy hour. A start reserves ahead for every pool (it cannot
// tell which were dormant before it), so a node restarted within a day of
// its start counts a block for each pool again.
const IdleRelease = 24 * time.Hour

// maxReleases bounds the pools one step takes reservations back from (the
// rest wait for the next step): a day after a start that reserved for
// 100,000 accounts, one step does not write them all.
const maxReleases = 4096

// MaxWait bounds how long a charge waits for a reservation (Await): many
// fsyncs, so a charge waits only for a disk that has stopped answering,
// and is then refused OVERLOAD. The wait holds an event loop, so it is
// not longer.
const MaxWait = 200 * time.Millisecond

// Reserver keeps every token pool's charges covered by a reservation on
// disk, so that a kill -9 never loses an acknowledged charge: before the
// engine may charge a pool past a mark, the mark is written and fsync'd
// (Step), and after a restart each pool counts as charged up to its last
// mark (Restore). A clean stop (Close) writes the exact charges: no
// over-count. Account allocations (PUT /v1/services/{s}/accounts/{a})
// live in the same state: a snapshot and a log of what changed since
// (tokenlog.go), so that a step writes only the pools it moved and an
// allocation only itself.
//
// Each reservation covers a pool's charges so far, every charge waiting
// for it (whatever its size: the charge is made on its first try, see
// Await) and a lookahead for the charges to come, so that they do not
// wait (lookahead). The package doc gives the rule and the bound it
// keeps after a kill -9.
//
// Step runs off the event loops, every StepEvery and when the engine
// wakes it (Config.ReserveWake); Await is Config.AwaitReserve. It costs
// the pools that changed since the last (the engine's pool watch), and
// those whose lookahead or wake mark is still above its floor (floorOf):
// not the idle accounts.
type Reserver struct {
	eng   *admission.Engine
	dir   string
	log   *slog.Logger
	watch admission.PoolWatch

	mu    sync.Mutex // guards the fields below
	state fileState
	store *tokenStore
	rate  map[poolKey]rateSample
	// active holds the pools each step looks at even when they did not
	// change: their lookahead or wake mark has yet to come down to its
	// floor as their rate falls.
	active     map[poolKey]struct{}
	activePeak int // the most active has held since it was made
	// ahead lists the pools reserved beyond their charges (from aheadHead
	// on), by when their reservation is due to be taken back unless they
	// were charged: each step takes back those that are due.
	ahead     []aheadPool
	aheadHead int
	idleAfter time.Duration   // IdleRelease
	restored  map[string]bool // services given their saved state
	// takenBack: services whose allocations the pool did not hold all of
	// at the last enforceLocked, and pool their pool's size then.
	takenBack map[string]bool
	pool      map[string]int64
	writes    int64 // commits to the token log (for the benchmark)
	// step counts Steps; lastStep is when the last began.
	step     uint64
	lastStep time.Time
	// allocSum is the digest of every allocation (AllocationsDigest),
	// once summed: kept as allocations change from then on.
	allocSum setsum.Sum
	summed   bool
	services []*admission.Service  // ChangedServices' buffer, reused
	changed  []admission.PoolState // ChangedPools' buffer, reused
	grants   []grant               // stepLocked's, reused
	lows     []grant

	wmu sync.Mutex // guards the fields below
	// next is closed when the next Step to begin has ended (nil: nobody
	// waits for it); failing says the last Step could not write.
	next    chan struct{}
	failing bool
}

// StepEvery is how often Step runs at the latest; the engine also wakes
// the reserver when a pool has half a step left (Config.ReserveWake).
const StepEvery = 50 * time.Millisecond

type poolKey struct{ service, account string }

// aheadPool is a pool in Reserver.ahead: its charges when it was put
// there, and when its reservation is taken back if they have not moved.
type aheadPool struct {
	k     poolKey
	due   time.Time
	total int64
}

type rateSample struct {
	at    time.Time
	used  int64
	rate  float64 // tokens per second
	block int64   // the last lookahead
	// granted is the pool's charges when its last reservation was made.
	granted int64
	// waited is PoolState.Waited at the last rate measure.
	waited int64
	// step is the last Step that looked at the pool.
	step uint64
	// queued: the pool is in Reserver.ahead. released: its reservation was
	// taken back and it has not been charged since: it is given none
	// until a charge waits.
	queued, released bool
}

// grant is a reservation (or a wake mark) to give the engine.
type grant struct {
	s             *admission.Service
	account       string
	reserved, low int64
}

// fileState is the token state, and the JSON of the legacy tokens.json.
type fileState struct {
	Services map[string]*serviceState `json:"services"`
}

type serviceState struct {
	// PeriodID is the usage period Base belongs to.
	PeriodID int64 `json:"period_id,omitempty"`
	// Pools by account ("" the service's own).
	Pools map[string]*poolState `json:"pools"`
	// Accounts are the allocations made through the admin API.
	Accounts map[string]admission.Allocation `json:"accounts,omitempty"`
}

type poolState struct {
	// Reserved: charges (over every period) up to this may have been
	// acknowledged.
	Reserved int64 `json:"reserved"`
	// Ledgered: charges up to this are in the usage ledger.
	Ledgered int64 `json:"ledgered"`
	// Base: charges when the period began.
	Base int64 `json:"base"`
}

// OpenReserver reads the token state in dir (tokenlog.go), turning the
// tokens.json of an older version into it, and takes one of the engine's
// pool watches.
func OpenReserver(eng *admission.Engine, dir string, log *slog.Logger) (*Reserver, error) {
	store, state, err := openStore(dir, log)
	if err != nil {
		return nil, err
	}
	watch, err := eng.WatchPools()
	if err != nil {
		store.close()
		return nil, fmt.Errorf("cannot keep the token reservations: %w", err)
	}
	return &Reserver{eng: eng, dir: dir, log: log, watch: watch, state: state, store: store,
		rate: map[poolKey]rateSample{}, active: map[poolKey]struct{}{}, restored: map[string]bool{}, takenBack: map[string]bool{}, pool: map[string]int64{},
		idleAfter: IdleRelease}, nil
}

func (r *Reserver) service(name string) *serviceState { return r.state.serviceOf(name) }

// Restore gives the engine what a previous run left: account allocations,
// then every pool's charges up to its reservation. Call it once the
// licences are loaded (a service without one is restored when Step first
// sees it).
func (r *Reserver) Restore() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.eng.Services() {
		r.restoreLocked(s)
	}
}

func (r *Reserver) restoreLocked(s *admission.Service) {
	r.restored[s.Name()] = true
	st, ok := r.state.Services[s.Name()]
	if !ok {
		return
	}
	r.enforceLocked(s.Name())
	for acct, p := range st.Pools {
		s.Restore(acct, p.Reserved, p.Base, st.PeriodID)
		s.Reserve(acct, p.Reserved, 0)
	}
}

// SetAccount allocates tokens to an account and persists the allocation.
func (r *Reserver) SetAccount(service, account string, a admission.Allocation) error {
	ov, err := admission.ParseOverage(a.Overage)
	if err != nil {
		return err
	}
	if err := checkAllocation(service, account, a); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.eng.Service(service); s != nil && r.takenBack[service] {
		// Some allocations are taken back: this one, the latest, is
		// given what the pool holds after all those made before it
		// (which this one's old allocation may have kept out).
		accounts := maps.Clone(r.service(service).Accounts)
		accounts[account] = a
		if _, taken := enforced(s.PoolSize(), accounts); slices.Contains(taken, account) {
			return fmt.Errorf("cannot allocate %d tokens to account %q: the service's pool does not hold them after the allocations made before: %w",
				a.Tokens, account, admission.ErrOverAllocated)
		}
		if err := r.keepLocked(service, account, a, ov); err != nil {
			return err
		}
		r.enforceLocked(service)
		return nil
	}
	if err := r.eng.SetAccount(service, account, a.Tokens, ov); err != nil {
		return err
	}
	return r.keepLocked(service, account, a, ov)
}

// maxAllocationAt bounds when an allocation was made (Unix nanoseconds,
// the year 2116).
const maxAllocationAt = 1 << 62

// clip cuts a name for an error message: one from a member may be long.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// checkAllocation refuses an allocation to an invalid service or account
// name or of fewer than 0 tokens, wherever it comes from (the admin API, a
// member, the token log), before anything is kept: one bad allocation kept
// would stop the engine from taking the service's others (SetAccounts), at
// every restart too, and a member's for a service named by a megabyte
// would be kept and sent on.
func checkAllocation(service, account string, a admission.Allocation) error {
	if !names.Valid([]byte(service)) {
		return fmt.Errorf("cannot take an allocation to service %q: not a valid service name ([A-Za-z0-9._:-]{1,64}, not . or ..)", clip(service))
	}
	if !names.Valid([]byte(account)) || a.Tokens < 0 {
		return fmt.Errorf("cannot take an allocation of %d tokens to account %q: not a valid account name ([A-Za-z0-9._:-]{1,64}, not . or ..) or a count below 0", a.Tokens, clip(account))
	}
	if a.At < 0 || a.At > maxAllocationAt {
		// One made at MaxInt64 would be later than any other for ever.
		return fmt.Errorf("cannot take an allocation to account %q made at %d: not between 0 and %d", clip(account), a.At, int64(maxAllocationAt))
	}
	return nil
}

func (r *Reserver) keepLocked(service, account string, a admission.Allocation, ov admission.Overage) error {
	st := r.service(service)
	if st.Accounts == nil {
		st.Accounts = map[string]admission.Allocation{}
	}
	a.Overage = ov.String()
	if r.summed {
		if old, ok := st.Accounts[account]; ok {
			r.allocSum.Sub(allocationSum(service, account, old))
		}
		r.allocSum.Add(allocationSum(service, account, a))
	}
	st.Accounts[account] = a
	r.store.alloc(service, account, a)
	// Written with the new account's first reservation: one fsync. At the
	// time of the last step: Step's caller keeps the reserver's clock.
	now := r.lastStep
	if now.IsZero() {
		now = time.Now()
	}
	return r.stepLocked(now)
}

// Apply takes an allocation made on another member: kept unless this node
// has a later one, and given to the engine now or, for a service not
// licensed here yet, when its licence arrives.
func (r *Reserver) Apply(service, account string, a admission.Allocation) error {
	ov, err := admission.ParseOverage(a.Overage)
	if err != nil {
		return err
	}
	if err := checkAllocation(service, account, a); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.service(service).Accounts[account]; ok && cur.At >= a.At {
		return nil
	}
	if r.eng.Service(service) == nil {
		r.restored[service] = false
		return r.keepLocked(service, account, a, ov)
	}
	// Kept as made (the latest of an account wins on every member); what
	// the engine enforces of them is every member's alike (enforceLocked),
	// recomputed only when they may not all fit.
	fits := !r.takenBack[service] && r.eng.SetAccount(service, account, a.Tokens, ov) == nil
	if err := r.keepLocked(service, account, a, ov); err != nil {
		return err
	}
	if !fits {
		r.enforceLocked(service)
	}
	return nil
}

// enforceLocked gives the engine a service's allocations as every member
// does, whichever order it heard of them in: in the order they were made
// (madeOrder), each whole while the pool holds it, and a first one that
// does not fit (two allocations made at once on two members, each checked
// against its own, or a licence that shrank) as nothing: no tokens, no
// overage. The allocations themselves stay as made; one taken back comes
// back whole once the pool holds it.
func (r *Reserver) enforceLocked(service string) {
	s := r.eng.Service(service)
	if s == nil {
		return
	}
	pool := s.PoolSize()
	set, taken := enforced(pool, r.service(service).Accounts)
	for _, name := range taken {
		a := r.service(service).Accounts[name]
		r.log.Warn("an account allocation the service's pool cannot hold beside those made before it is taken back to nothing",
			"service", service, "account", name, "tokens", a.Tokens, "pool", pool)
	}
	r.takenBack[service], r.pool[service] = len(taken) > 0, pool
	if err := r.eng.SetAccounts(service, set); err != nil {
		r.log.Error("cannot give the engine a service's account allocations", "service", service, "err", err)
	}
}

// enforced returns what a pool of pool tokens gives each of accounts
// (enforceLocked), and the accounts it takes back.
func enforced(pool int64, accounts map[string]admission.Allocation) (set []admission.AccountSetting, taken []string) {
	left := pool
	set = make([]admission.AccountSetting, 0, len(accounts))
	for _, name := range slices.SortedFunc(maps.Keys(accounts), func(x, y string) int {
		return madeOrder(accounts[x].At, x, accounts[y].At, y)
	}) {
		a := accounts[name]
		ov, err := admission.ParseOverage(a.Overage)
		if err != nil || left != admission.Unlimited && a.Tokens > left {
			taken = append(taken, name)
			set = append(set, admission.AccountSetting{Account: name})
			continue
		}
		if left != admission.Unlimited {
			left -= a.Tokens
		}
		set = append(set, admission.AccountSetting{Account: name, Tokens: a.Tokens, Overage: ov})
	}
	return set, taken
}

// madeOrder orders allocations as they were made: by instant, then by
// account name (the same order on every member).
func madeOrder(atX int64, x string, atY int64, y string) int {
	if c := cmp.Compare(atX, atY); c != 0 {
		return c
	}
	return strings.Compare(x, y)
}

// Allocations returns every allocation, by service and account.
func (r *Reserver) Allocations() map[string]map[string]admission.Allocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]map[string]admission.Allocation{}
	for name, st := range r.state.Services {
		for acct, a := range st.Accounts {
			if out[name] == nil {
				out[name] = map[string]admission.Allocation{}
			}
			out[name][acct] = a
		}
	}
	return out
}

// AllocationsDigest names every allocation this node holds: two members
// holding the same allocations give the same digest (the cluster's state
// sync sends the allocations only where digests differ). It walks the
// allocations once; later changes move it at their own cost.
func (r *Reserver) AllocationsDigest() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.summed {
		r.allocSum = setsum.Sum{}
		for name, st := range r.state.Services {
			for acct, a := range st.Accounts {
				r.allocSum.Add(allocationSum(name, acct, a))
			}
		}
		r.summed = true
	}
	return r.allocSum.String()
}

// allocationSum is one allocation's part of AllocationsDigest.
func allocationSum(service, account string, a admission.Allocation) setsum.Sum {
	b := make([]byte, 0, len(service)+len(account)+len(a.Overage)+48)
	b = append(append(b, service...), 0)
	b = append(append(b, account...), 0)
	b = append(strconv.AppendInt(b, a.Tokens, 10), 0)
	b = append(append(b, a.Overage...), 0)
	b = strconv.AppendInt(b, a.At, 10)
	return setsum.Of(b)
}

// Accounts returns a service's allocations.
func (r *Reserver) Accounts(service string) map[string]admission.Allocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]admission.Allocation{}
	if st, ok := r.state.Services[service]; ok {
		for k, v := range st.Accounts {
			out[k] = v
		}
	}
	return out
}

// Step moves every pool's reservation ahead of its charges where they
// came within half a lookahead of it or a charge waits for it, writing the
// file (fsync'd) before the engine may use the new marks.
func (r *Reserver) Step(now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stepLocked(now)
}

// Await waits until a Step begun after the call has ended, and reports
// whether it wrote its reservations: a charge the engine found short,
// having recorded what it needs (PoolState.Wanted) and woken the
// reserver, is covered when Await returns true. It returns false after
// MaxWait, and at once while the last Step could not write (a full disk:
// charges are refused OVERLOAD rather than held). Any goroutine; it
// allocates, but only charges that outran their reservation call it.
func (r *Reserver) Await() bool {
	r.wmu.Lock()
	if r.failing {
		r.wmu.Unlock()
		return false
	}
	if r.next == nil {
		r.next = make(chan struct{})
	}
	ch := r.next
	r.wmu.Unlock()
	t := time.NewTimer(MaxWait)
	defer t.Stop()
	select {
	case <-ch:
		r.wmu.Lock()
		defer r.wmu.Unlock()
		return !r.failing
	case <-t.C:
		return false
	}
}

// stepLocked is Step. It also writes the entries other calls made
// (allocations, ledger marks).
func (r *Reserver) stepLocked(now time.Time) (err error) {
	r.wmu.Lock()
	waiting := r.next
	r.next = nil
	r.wmu.Unlock()
	defer func() {
		r.wmu.Lock()
		r.failing = err != nil
		r.wmu.Unlock()
		if waiting != nil {
			close(waiting)
		}
	}()
	r.step++
	r.grants, r.lows = r.grants[:0], r.lows[:0]
	// Reservations are taken back before the pools are looked at: a grant
	// or a wake mark made below for a pool, applied to the engine after
	// the commit, must not undo a release the commit writes (the engine
	// would then allow charges past what the disk holds). consider reads
	// each pool after, and leaves a released one released.
	r.releaseIdle(now)
	// Every service comes here at least once: its pools are pending for a
	// new watch, and a new service's pool is pending from the start.
	r.services = r.eng.ChangedServices(r.watch, r.services[:0])
	for _, s := range r.services {
		if !r.restored[s.Name()] {
			r.restoreLocked(s)
		} else if r.pool[s.Name()] != s.PoolSize() && len(r.service(s.Name()).Accounts) > 0 {
			r.enforceLocked(s.Name()) // a licence changed the pool's size
		}
		r.changed = s.ChangedPools(r.watch, r.changed[:0])
		for _, p := range r.changed {
			r.consider(s, p, now)
		}
	}
	for k := range r.active {
		if r.rate[k].step == r.step {
			continue // changed: done above
		}
		s := r.eng.Service(k.service)
		p, ok := admission.PoolState{}, false
		if s != nil {
			p, ok = s.Pool(k.account)
		}
		if !ok {
			delete(r.active, k)
			continue
		}
		r.consider(s, p, now)
	}
	r.lastStep = now
	clear(r.changed) // no names held until the next step
	clear(r.services)
	r.shrinkActive()
	for _, g := range r.lows {
		g.s.Reserve(g.account, g.reserved, g.low)
	}
	if len(r.grants) == 0 && !r.store.pending() {
		return nil
	}
	if err := r.commitLocked(); err != nil {
		return err
	}
	for _, g := range r.grants {
		g.s.Reserve(g.account, g.reserved, g.low)
	}
	return nil
}

// consider moves one pool's reservation ahead of its charges where they
// came within half a lookahead of it or a charge waits for it (a grant,
// its entry made for the next commit), and keeps the pool among the active
// while its lookahead or wake mark is above its floor.
func (r *Reserver) consider(s *admission.Service, p admission.PoolState, now time.Time) {
	k := poolKey{s.Name(), p.Account}
	block := r.lookahead(k, p, now)
	st := r.service(k.service)
	if st.PeriodID != p.PeriodID {
		st.PeriodID = p.PeriodID
		r.store.period(k.service, p.PeriodID)
	}
	ps, changed := st.Pools[p.Account], false
	if ps == nil {
		ps, changed = &poolState{Ledgered: p.Total}, true
		st.Pools[p.Account] = ps
	}
	if ps.Base != p.Base {
		ps.Base, changed = p.Base, true
	}
	// The charges waiting, whatever their size, then the lookahead.
	need := sat.Add(p.Total, p.Wanted)
	next := sat.Add(need, block)
	if c := p.Ceiling(); c >= 0 {
		// No charge the policy checks can go past the pool's ceiling this
		// period: reserving beyond it would only over-count after a crash.
		next = min(next, max(sat.Add(p.Base, c), need))
	}
	granted := false
	rs := r.rate[k]
	if rs.released && (p.Wanted > 0 || p.Durable != p.Total) {
		rs.released = false
		r.rate[k] = rs
	}
	if rs.released {
		// Nothing ahead until a charge waits for it.
	} else if p.Durable >= 0 && ((p.Durable-p.Total >= block/2 && p.Wanted == 0) || p.Durable >= next) {
		if p.Low > block/2 {
			// The lookahead shrank (the rate fell): the engine must not
			// wake the reserver for the old one.
			r.lows = append(r.lows, grant{s, p.Account, p.Durable, block / 2})
		}
	} else {
		if next > ps.Reserved {
			ps.Reserved, changed = next, true
		}
		r.grants = append(r.grants, grant{s, p.Account, ps.Reserved, block / 2})
		rs.granted = p.Total
		if !rs.queued && ps.Reserved > p.Total {
			rs.queued = true
			r.ahead = append(r.ahead, aheadPool{k, now.Add(r.idleAfter), p.Total})
		}
		r.rate[k] = rs
		granted = true
	}
	if changed {
		r.store.pool(k.service, p.Account, ps)
	}
	if floor := floorOf(p); granted || p.Wanted > 0 || block > floor || p.Low > floor/2 || sat.Floor(BlockSeconds*r.rate[k].rate) > floor {
		r.active[k] = struct{}{}
	} else {
		delete(r.active, k)
	}
}

// releaseIdle takes back the reservations beyond their charges of the
// pools that are due and were not charged since they were queued (at most
// maxReleases a step), to be written with the step's commit. A pool
// charged since goes to the back of the queue, due idleAfter from now.
// The queue is in the order of due times: a pool joins its back, due
// idleAfter from the step's time, which only moves forward.
func (r *Reserver) releaseIdle(now time.Time) {
	for n := 0; n < maxReleases && r.aheadHead < len(r.ahead); n++ {
		a := r.ahead[r.aheadHead]
		if now.Before(a.due) {
			break
		}
		r.ahead[r.aheadHead] = aheadPool{}
		r.aheadHead++
		rs, ok := r.rate[a.k]
		if !ok {
			continue
		}
		s := r.eng.Service(a.k.service)
		p, ok := admission.PoolState{}, false
		if s != nil {
			p, ok = s.Pool(a.k.account)
		}
		switch {
		case !ok:
			rs.queued = false
		case p.Total != a.total || p.Wanted > 0:
			r.ahead = append(r.ahead, aheadPool{a.k, now.Add(r.idleAfter), p.Total})
		default:
			rs.queued = false
			if total, ok := s.Withdraw(a.k.account); ok {
				ps := r.service(a.k.service).Pools[a.k.account]
				if ps != nil && total < ps.Reserved {
					ps.Reserved = total
					r.store.pool(a.k.service, a.k.account, ps)
				}
				rs.released, rs.granted = true, total
			}
		}
		r.rate[a.k] = rs
	}
	if r.aheadHead > 1024 && r.aheadHead >= len(r.ahead)/2 {
		r.ahead = append(r.ahead[:0], r.ahead[r.aheadHead:]...)
		r.aheadHead = 0
	}
}

// shrinkActive moves the active pools to a map of their size when they
// are far fewer than the map has held: a map does not shrink, and ranging
// over it costs what it once held (a start reserves for every pool; the
// profile of a step over 100,000 idle accounts showed the range at 22%).
func (r *Reserver) shrinkActive() {
	r.activePeak = max(r.activePeak, len(r.active))
	if r.activePeak < 1024 || len(r.active) > r.activePeak/8 {
		return
	}
	m := make(map[poolKey]struct{}, len(r.active))
	for k := range r.active {
		m[k] = struct{}{}
	}
	r.active, r.activePeak = m, len(m)
}

// commitLocked writes the entries made since the last commit (fsync'd).
func (r *Reserver) commitLocked() error {
	r.writes++
	return r.store.commit(&r.state)
}

// lookahead is how far a pool's next reservation goes beyond its charges
// and those waiting (see Reserver): BlockSeconds of its charge rate
// (measured over at least 100 ms, halving per measure when it falls; the
// charges that waited are not counted), at least its floor (floorOf); after charges used up the last one, twice it, but no
// more than twice what was charged since the last reservation and is
// waiting (a sudden rise: it doubles while charges keep waiting, and a
// single large charge on an idle pool does not inflate it). A doubled
// lookahead holds until the rate is next measured.
func (r *Reserver) lookahead(k poolKey, p admission.PoolState, now time.Time) int64 {
	prev, ok := r.rate[k]
	switch {
	case !ok:
		prev = rateSample{at: now, used: p.Total, block: floorOf(p), granted: p.Total, waited: p.Waited}
	case prev.step < r.step-1 && prev.at.Before(r.lastStep):
		// Idle since a step that left it alone: every charge since came
		// after that step began (the pool would have been reported
		// changed to it), so the rate is measured from there, not over
		// the idle time.
		prev.at = r.lastStep
	}
	prev.step = r.step
	block := floorOf(p)
	if el := now.Sub(prev.at).Seconds(); el >= 0.1 {
		// The charges that waited were reserved as they came: a large
		// one must not pass for a rate to reserve ahead for.
		rate := float64(max(p.Total-prev.used-(p.Waited-prev.waited), 0)) / el
		prev.at, prev.used, prev.waited, prev.rate = now, p.Total, p.Waited, max(rate, prev.rate*0.5)
	} else {
		block = prev.block // a doubled lookahead holds until the rate is measured again
	}
	block = max(block, sat.Floor(BlockSeconds*prev.rate))
	if p.Wanted > 0 || (p.Durable > 0 && p.Durable <= p.Total) {
		demand := sat.Add(max(p.Total-prev.granted, 0), p.Wanted)
		block = max(block, min(sat.Mul(2, prev.block), sat.Mul(2, demand)))
	}
	prev.block = block
	r.rate[k] = prev
	return block
}

// Close writes every pool's reservation as exactly what it charged: after
// a clean stop (the front end closed first) nothing is in flight, so the
// next start counts no token twice. It walks every pool, once.
func (r *Reserver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.eng.Services() {
		st := r.service(s.Name())
		for _, p := range s.Pools() {
			if ps := st.Pools[p.Account]; ps != nil && (ps.Reserved != p.Total || ps.Ledgered > p.Total) {
				ps.Reserved = p.Total
				ps.Ledgered = min(ps.Ledgered, p.Total)
				r.store.pool(s.Name(), p.Account, ps)
			}
		}
	}
	err := r.commitLocked()
	if cerr := r.store.close(); err == nil {
		err = cerr
	}
	return err
}

// Ledgered returns how far a pool's charges are in the ledger, or -1 when
// the token state does not know the pool.
func (r *Reserver) Ledgered(service, account string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st, ok := r.state.Services[service]; ok {
		if p, ok := st.Pools[account]; ok {
			return p.Ledgered
		}
	}
	return -1
}

// MarkLedgered records that a pool's charges up to used are in the ledger
// (written with the next reservation, or at once when flush is set). Only
// the marks that moved are written.
func (r *Reserver) MarkLedgered(marks map[[2]string]int64, flush bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, used := range marks {
		st := r.service(k[0])
		p := st.Pools[k[1]]
		if p == nil {
			p = &poolState{}
			st.Pools[k[1]] = p
		}
		if used > p.Ledgered {
			p.Ledgered = used
			r.store.pool(k[0], k[1], p)
		}
	}
	if flush && r.store.pending() {
		return r.commitLocked()
	}
	return nil
}
