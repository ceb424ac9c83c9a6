package admission

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/capsgate/capsgate/admission/sat"
)

// session is an open call.
type session struct {
	account *account // charged for RELEASE ... SECONDS; nil: the service pool
	// remaining is the `remaining` of the session's first answer, which a
	// repeated ADMIT gets again (always OK; clampRemaining keeps it within
	// int32): 16 bytes a session, not 48 with the whole Decision.
	remaining int32
	prio      Priority
	licensed  bool // counts against the licensed sessions (not emergency)
	// trunk is the key whose sessions it counts against (ADMIT ... TRUNK
	// with a session limit); nil: none.
	trunk *Trunk
}

// first is the answer a repeated ADMIT of the session gets.
func (x session) first() Decision { return Decision{Reason: OK, Remaining: int64(x.remaining)} }

// limiter is what a service and a trunk both have: limits, the CAPS
// buckets and the counters of what was decided.
//
// An admitted decision on a service's CAPS bucket alone reads capsTAT
// and counts[OK], first so that they share the service's first cache
// line with its hot copy of the bucket (see Service).
type limiter struct {
	// CAPS bucket (GCRA theoretical arrival time); lock-free.
	capsTAT atomic.Int64
	// Counters, read by metrics and the meter without a lock.
	counts [NumReasons]atomic.Uint64 // decisions of ADMIT (normal and high) by reason

	lim         atomic.Pointer[derived] // a service's: set by Service.setLim only
	headroomTAT atomic.Int64            // the headroom bucket's
	name        string
	high        atomic.Uint64 // PRIORITY high attempts admitted
	spilledIn   atomic.Uint64 // other members' spilled attempts admitted here (AdmitSpilled)
	spilledOut  atomic.Uint64 // attempts refused here and admitted by another member (SpilledOut)
	sessionsN   atomic.Int64  // open licensed sessions
	usedCAPS    atomic.Uint64 // admitted attempts per second over the last second (float64 bits)
	// capsRefusedAt is the instant of the CAPS bucket's last counted
	// refusal (0: none), for the overload feedback (overload.go).
	capsRefusedAt atomic.Int64
	// rate tracking for usedCAPS, by Tick only
	rateMark  int64
	rateCount uint64
}

// Service is the state of one service on this node. A decision on the
// CAPS bucket alone reads one cache line of it: spent, hot and limiter's
// first fields, 56 bytes from its start (the allocator puts an object of this
// size 8 bytes past a line's start, after its header: TestDecisionLine).
// With 1,000 licences spread over a node's traffic, a decision's service
// is seldom in the cache, and each line it reads is a miss. The service's
// tables make their large parts with their first entry, so that services
// stay a kilobyte or so apart rather than 20 (BenchmarkAdmitSpreadCold).
type Service struct {
	// spent: its CAPS bucket was taken from since the engine's stack of
	// spent services (spentStack) was last drained (DrainSpent). First,
	// so that its flag shares a cache line with the bucket: every
	// decision reads it.
	spent moveMark[Service]
	// hot is lim's CAPS bucket and flags, for such a decision (setLim).
	hot hotCAPS
	limiter
	emergency atomic.Uint64 // emergency attempts admitted
	emergN    atomic.Int64  // open emergency sessions
	// gate is the engine's: the node's capacity, the open emergency
	// sessions of every service, the configuration (gate.go). (A
	// decision on the CAPS bucket alone is given the engine's.)
	gate      *gate
	subsN     atomic.Int64 // registered subscribers
	tokensUse atomic.Int64 // tokens charged in all
	overUse   atomic.Int64 // tokens charged beyond a pool

	spentStack *atomic.Pointer[Service]
	// logged: it logged a change since the engine's stack of services
	// with changes to drain (loggedStack) was last drained (DrainLogged).
	logged      moveMark[Service]
	loggedStack *atomic.Pointer[Service]

	// trunks are the keys with limits of their own (ADMIT ... TRUNK).
	trunks trunkTable
	// trunksRateAt is when Tick last measured the keys' rates (Tick only).
	trunksRateAt int64

	mu sync.Mutex // guards the fields below
	// sessions by call-id key.
	sessions table[session]
	// licensedSessions counts the open sessions that count against the licence.
	licensedSessions int64
	// subscribers by subscriber key.
	subscribers table[registered]
	// claims are the subscribers newly registered here lately, once the
	// engine tracks them (a farm); claimsHeld: it may hold some (Tick
	// forgets them).
	claims     claimBook
	claimsHeld atomic.Bool
	// warmed keeps what Warm read, so that its reads are made.
	warmed int64
	// consumed remembers CONSUME ID keys with the decision they got.
	consumed table[Decision]
	// tokens is the service's unallocated pool (licensed tokens less the
	// accounts' allocations).
	tokens    pool
	allocated int64
	// periodID is the usage period the pools count (Limits.PeriodID).
	periodID int64
	// wake is Config.ReserveWake (nil: none).
	wake chan<- struct{}
	// await is Config.AwaitReserve (nil: none).
	await    func() bool
	accounts map[string]*account
	// changes logs what happened to sessions and subscribers since the
	// journal last drained it, when journal is set (see state.go);
	// changesLost records that the log was full and dropped some.
	journal     bool
	maxLog      int // Config.MaxLog
	changes     []Change
	changesLost bool
	// quiet: the log is in place and holds nothing, nor lost anything;
	// Drain then returns at once, without the lock (a farm's 1,000 idle
	// services, drained 50 times a second). Written with mu held.
	quiet atomic.Bool
	// ended holds calls a client RELEASEd here before this node had
	// admitted them (see Engine.Ended), for EndedFor, at most MaxEnded,
	// with the answer to the ADMIT that found the mark (decide.go).
	ended table[endedMark]
	// held: a table above (sessions, subscribers, IDs, ended calls) may
	// hold an entry. Every put raises it; Tick lowers it, with mu held,
	// when it finds them all empty, and skips the service's expiry while
	// it stays low: a farm's 1,000 idle services cost a tick nothing.
	held atomic.Bool
	watchState
}

func newService(name string, durable, journal bool, l *derived, watches *poolWatches) *Service {
	s := &Service{limiter: limiter{name: name}, accounts: make(map[string]*account), journal: journal}
	s.watches = watches
	s.tokens.durableSet = durable
	s.setLim(l)
	s.sessions.init(s.sessionGone)
	s.subscribers.init(func(registered) { s.subsN.Add(-1) })
	s.consumed.init(nil)
	s.ended.init(nil)
	s.sessions.held, s.subscribers.held, s.consumed.held, s.ended.held = &s.held, &s.held, &s.held, &s.held
	s.periodID = l.PeriodID
	// Locked: a pool with limits is listed with the pool watches here,
	// and a watcher may take it (under mu) before touch is done.
	s.mu.Lock()
	s.applyPool(l, true)
	s.touch(&s.tokens) // a new pool
	s.mu.Unlock()
	return s
}

// sessionGone keeps the counts when a session leaves the table. Called with mu held.
func (s *Service) sessionGone(x session) {
	if x.licensed {
		s.licensedSessions--
		s.sessionsN.Add(-1)
		if x.trunk != nil {
			x.trunk.sessionsN.Add(-1)
			x.trunk.touch()
		}
	} else {
		s.emergencyOpened(-1)
	}
}

// emergencyOpened counts n emergency sessions opened (closed: negative).
func (s *Service) emergencyOpened(n int64) {
	s.emergN.Add(n)
	if s.gate != nil {
		s.gate.emergencyOpen.Add(n)
	}
}

// applyPool sizes the unallocated pool from the limits, and the accounts'
// pools from their allocations and, in a cluster, the budgets the limits
// give (l.AccountBudgets: those that changed; an account keeps its budget
// until it is given another). Every account is visited only when all is
// set (the pool became shared or not, limited or not); otherwise only the
// accounts named, so that an exchange of a farm with 100,000 accounts
// holds the service's mutex for the budgets that moved. Called with mu
// held or before the service is shared. In a cluster the pool this node
// may draw on is its budget (see the cluster package doc).
func (s *Service) applyPool(l *derived, all bool) {
	pool := int64(Unlimited)
	if l.Tokens != Unlimited {
		pool = max(l.Tokens-s.allocated, 0)
		if l.TokensShared {
			pool = min(pool, max(l.TokensBudget, 0))
		}
	}
	s.setLimit(&s.tokens, pool, l.Overage)
	for name, b := range l.AccountBudgets {
		if a, ok := s.accounts[name]; ok {
			a.budget = b
			if !all {
				s.applyAccount(l, a)
			}
		}
	}
	if all {
		for _, a := range s.accounts {
			s.applyAccount(l, a)
		}
	}
}

// applyAccount sizes an account's pool: its allocation, or in a cluster
// this node's budget of it. Called with mu held.
func (s *Service) applyAccount(l *derived, a *account) {
	limit := a.alloc // of a limited pool or not: what was allocated to it
	if l.TokensShared {
		limit = min(a.alloc, max(a.budget, 0))
	}
	s.setLimit(&a.pool, limit, a.policy)
}

// setLimit gives p a limit and policy, making it pending for the pool
// watches when they change. Called with mu held.
func (s *Service) setLimit(p *pool, limit int64, policy Overage) {
	if p.limit != limit || p.policy != policy {
		p.limit, p.policy = limit, policy
		s.touch(p)
	}
}

// poolFor returns the pool that acct draws on. Called with mu held.
func (s *Service) poolFor(acct []byte) (*pool, *account) {
	if len(acct) > 0 {
		if a, ok := s.accounts[string(acct)]; ok {
			return &a.pool, a
		}
	}
	return &s.tokens, nil
}

// sweepAtLimit expires what is due before a full table refuses, so the
// count is exact, but at most once a millisecond and at most ExpireBatch
// entries: a flood of refused attempts must not sweep the wheel for each
// one, nor one attempt wait for a million expiries (Tick does the rest).
// Called with mu held.
func (s *Service) sweepAtLimit(last *int64, now int64, expire func(int64, int) bool) {
	if now-*last >= int64(time.Millisecond) || now < *last {
		*last = now
		expire(now, ExpireBatch) // on the decision path: one step at most
	}
}

// charge records n tokens taken from p. Called with mu held.
func (s *Service) charge(p *pool, n int64) {
	total, over := p.total, p.totalOver
	p.charge(n)
	// What the pool really took (it saturates), summed over the pools
	// without wrapping; the atomics are only written here, under mu.
	s.tokensUse.Store(sat.Add(s.tokensUse.Load(), p.total-total))
	s.overUse.Store(sat.Add(s.overUse.Load(), p.totalOver-over))
	s.touch(p)
	if p.durableSet && p.durable-p.total < p.low {
		s.wakeReserver()
	}
}

// newPeriod starts a usage period: every pool of the service empty.
// Called with mu held.
func (s *Service) newPeriod(id int64) {
	s.periodID = id
	s.tokens.newPeriod()
	s.touch(&s.tokens)
	for _, a := range s.accounts {
		a.newPeriod()
		s.touch(&a.pool)
	}
}

// Stats is a snapshot of a service's limits and counters on this node.
type Stats struct {
	Name   string
	Limits Limits
	// Burst is the CAPS bucket depth in attempts (0 when not rate-limited).
	Burst int64
	// Admissions counts ADMIT decisions of normal and high priority by reason.
	Admissions [NumReasons]uint64
	// Emergency counts emergency attempts admitted; High the PRIORITY high
	// attempts admitted (also in Admissions[OK]).
	Emergency, High uint64
	// SpilledIn counts the attempts other members spilled here that were
	// admitted here (AdmitSpilled; also in Admissions[OK]).
	SpilledIn uint64
	// SpilledOut counts the attempts the CAPS bucket here refused that
	// another member admitted (counted there, not in Admissions here).
	SpilledOut uint64
	// Open sessions counting against the licence, emergency sessions apart.
	Sessions, EmergencySessions int64
	Subscribers                 int64
	// Tokens charged in all, the part beyond a pool, and what is left in
	// the service's unallocated pool (-1: unlimited).
	TokensUsed, Overage, TokensLeft int64
	// PoolUsed is what this node has charged to the service's unallocated
	// pool this period (the part the cluster shares between members); Allocated the
	// tokens allocated to accounts out of the service's pool.
	PoolUsed, Allocated int64
	// UsedCAPS is the admitted attempts per second over the last second.
	UsedCAPS float64
	// trunk: these are a key's counters (Trunk.Stats).
	trunk bool
}

// Offered counts the attempts that reached the limits these are the
// counters of: admitted, or refused by one of them (for a service not
// UNLICENSED, OVERLOAD, nor refused by a key's own limits before; for a
// key also refused by the licence after it).
func (st Stats) Offered() uint64 {
	a := &st.Admissions
	n := a[OK] + a[CAPS] + a[SESSIONS] + a[TOKENS] + a[TRUNK_TOKENS]
	if st.trunk {
		n += a[TRUNK_CAPS] + a[TRUNK_SESSIONS]
	}
	return n
}

// Name returns the service name.
func (s *Service) Name() string { return s.name }

// PoolSize returns the size of the service's token pool as licensed
// (Unlimited: none), or Unlimited while it is not licensed.
func (s *Service) PoolSize() int64 {
	if l := s.lim.Load(); l.Licensed {
		return l.Tokens
	}
	return Unlimited
}

// Stats returns a snapshot. It takes the service's mutex briefly.
func (s *Service) Stats() Stats {
	l := s.lim.Load()
	st := Stats{
		Name:              s.name,
		Limits:            l.Limits,
		Burst:             l.caps.burst,
		Emergency:         s.emergency.Load(),
		High:              s.high.Load(),
		SpilledIn:         s.spilledIn.Load(),
		SpilledOut:        s.spilledOut.Load(),
		Sessions:          s.sessionsN.Load(),
		EmergencySessions: s.emergN.Load(),
		Subscribers:       s.subsN.Load(),
		TokensUsed:        s.tokensUse.Load(),
		Overage:           s.overUse.Load(),
		UsedCAPS:          math.Float64frombits(s.usedCAPS.Load()),
	}
	for i := range st.Admissions {
		st.Admissions[i] = s.counts[i].Load()
	}
	s.mu.Lock()
	st.TokensLeft = s.tokens.left()
	st.PoolUsed, st.Allocated = s.tokens.used, s.allocated
	s.mu.Unlock()
	return st
}

// Peaks returns what a meter's peaks follow, as Stats has them: the
// admitted attempts per second over the last second (UsedCAPS), the open
// sessions, emergency ones included, and the registered subscribers.
// Atomic reads only, without the lock.
func (s *Service) Peaks() (usedCAPS float64, sessions, subscribers int64) {
	return math.Float64frombits(s.usedCAPS.Load()), s.sessionsN.Load() + s.emergN.Load(), s.subsN.Load()
}

// Fingerprint changes (but for a 2^-64 chance) whenever what Stats shows
// of the service may have, but for its unallocated pool's tokens left and
// allocated (a pool watch follows those: ChangedPools): its limits, its
// decisions by reason, spills, sessions, subscribers, tokens charged and
// used CAPS. Atomic reads only, without the lock: a reader of 1,000
// services ten times a second (the cluster's exchange) reads again only
// those that moved.
func (s *Service) Fingerprint() uint64 {
	h := uint64(uintptr(unsafe.Pointer(s.lim.Load())))
	mix := func(v uint64) {
		h = (h ^ v) * 0x9E3779B97F4A7C15
		h ^= h >> 29
	}
	for i := range s.counts {
		mix(s.counts[i].Load())
	}
	for _, v := range [...]uint64{uint64(s.sessionsN.Load()), uint64(s.subsN.Load()), uint64(s.tokensUse.Load()), uint64(s.overUse.Load()),
		s.usedCAPS.Load(), uint64(s.emergN.Load()), s.emergency.Load(), s.high.Load(), s.spilledIn.Load(), s.spilledOut.Load()} {
		mix(v)
	}
	return h
}

// Bucket returns the depth of the CAPS bucket and the attempts it would
// admit without waiting (both 0 when the bucket is closed, -1 when it is
// unlimited), at the instant clock tells once the bucket is read: what it
// owes was taken by attempts decided no later than that. An instant read
// before (one for a walk of 1,000 buckets, while the event loops go on
// deciding) would count as owed every attempt taken since: on a loaded
// node whose reader waited a few milliseconds for a processor, a bucket
// refilled at 333,333 a second and taking 474 a second owed 1,000 to 1,400
// attempts, and its debt, reported, moved every member's parts. It reads
// atomics and the clock: safe at any time.
func (s *limiter) Bucket(clock Clock) (depth, avail int64) {
	l := s.lim.Load()
	switch l.caps.mode {
	case gcraUnlimited:
		return -1, -1
	case gcraClosed:
		return 0, 0
	}
	tat := s.capsTAT.Load()
	return l.caps.burst, l.caps.availableAt(tat, clock.Now())
}

func spentMark(s *Service) *moveMark[Service] { return &s.spent }

// DrainSpent calls f for every service whose CAPS bucket was taken from
// since the last drain, each once: a watcher of 1,000 licences' buckets
// (the cluster's starved check, every 10 ms) visits those that are
// spending. A service taken from while f reads it is handed out again at
// the next drain. One caller at a time.
func (e *Engine) DrainSpent(f func(*Service)) { drainMoved(&e.spentServices, spentMark, f) }

// setLim installs d as the service's limits and their hot copy,
// returning the old ones (nil: none yet). Called with mu held, or before
// the service is shared.
func (s *Service) setLim(d *derived) *derived {
	s.hot.store(d)
	return s.lim.Swap(d)
}
