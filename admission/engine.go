package admission

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config tunes the engine. Zero values are replaced by DefaultConfig's.
type Config struct {
	// Burst is the depth of each CAPS bucket as time at the licensed rate:
	// 100 ms lets a SIP proxy's natural jitter through (at 1000 CAPS, 100
	// attempts at once) while keeping any 1 s window within 10 % of the
	// licence.
	Burst time.Duration
	// SessionTTL ends a session that was never released (a lost BYE). Three
	// hours outlasts nearly every real call; RELEASE is the normal end.
	SessionTTL time.Duration
	// SubscriberTTL is the registration lifetime when REGISTER names none:
	// one hour, SIP's customary Expires.
	SubscriberTTL time.Duration
	// IdempotencyWindow is how long a CONSUME ID is remembered: 10 minutes
	// covers every client retry policy seen while keeping memory bounded.
	IdempotencyWindow time.Duration
	// Keys, if set, keeps CONSUME ID keys for the window on disk (see
	// idkeys.go); the consumed table is then a hot set holding each key for
	// HotKeys (0 means DefaultHotKeys). Unset, the table holds them all.
	Keys    KeyStore
	HotKeys time.Duration
	// HighHeadroomPercent is what PRIORITY high may use above the licence,
	// 0 to 100: 10 lets a carrier's priority traffic through a full
	// licence without letting it double the licence.
	HighHeadroomPercent int
	// MaxCAPS is the node's own attempt limit across all services
	// (overload protection, reason OVERLOAD); 0 means none.
	MaxCAPS float64
	// MaxServices bounds how many services a restore may add by naming
	// services no licence covers (a journal written before they were
	// kept under UnlicensedBucket). Services given limits (SetLimits) do
	// not count against it.
	MaxServices int
	// MaxEmergencySessions bounds the emergency sessions open on this
	// node (ADMIT ... CALL ... PRIORITY emergency), licensed services and
	// UnlicensedBucket together: beyond it an emergency call with CALL is
	// refused OVERLOAD, the one reason that ever refuses one. Emergency
	// calls are never refused by a licence, so without it any client could
	// hold memory for the session TTL with made-up call-ids.
	MaxEmergencySessions int
	// Clock tells SetLimits the time when it rescales a bucket to a new
	// rate; nil means a system clock (tests pass their fake one).
	Clock Clock
	// DurableTokens: a token pool charges only what has been reserved on
	// disk (Service.Reserve); a new pool has nothing reserved until the
	// node's reserver runs (every 50 ms). Off, charges are not bounded by
	// any reservation (tests, tools).
	DurableTokens bool
	// ReserveWake, if set, gets a signal (never blocking) when a pool's
	// reservation runs short or a charge was refused for want of one, and
	// when a service is created: the reserver should run at once.
	ReserveWake chan<- struct{}
	// AwaitReserve, if set, is called (no engine lock held, after a signal
	// on ReserveWake) when a charge finds its pool's reservation short: it
	// blocks until a reservation begun after the call is durable (true),
	// or for at most its own bound, or not at all while reservations
	// cannot be written (false). The charge is then tried again, so a
	// charge of any size is made on its first try. Unset, a short charge
	// is refused OVERLOAD and the next reservation covers it.
	AwaitReserve func() bool
	// JournalState: every service logs the changes to its sessions and
	// subscribers in memory (Service.Drain), for package admission/journal
	// to make them durable, so that they are back after a restart. Off,
	// nothing is logged (tests, tools).
	JournalState bool
	// MaxLog bounds each service's change log, in changes (0: MaxLog);
	// past it the journal writes the service whole. Tests make it small.
	MaxLog int
}

// DefaultConfig returns the defaults, each explained on its Config field.
func DefaultConfig() Config {
	return Config{
		Burst:                100 * time.Millisecond,
		SessionTTL:           3 * time.Hour,
		SubscriberTTL:        time.Hour,
		IdempotencyWindow:    10 * time.Minute,
		HighHeadroomPercent:  10,
		MaxServices:          4096,
		MaxEmergencySessions: 100_000,
	}
}

// MaxReleaseSeconds bounds the SECONDS of a RELEASE: 30 days, beyond any
// call, so a per-minute charge can not overflow.
const MaxReleaseSeconds = 30 * 24 * 3600

// MaxTTL bounds a REGISTER TTL: a week, far beyond any SIP Expires in use.
const MaxTTL = 7 * 24 * 3600

// ErrTooManyServices is returned when Config.MaxServices would be exceeded.
var ErrTooManyServices = errors.New("too many services")

// Engine decides. See the package doc for its concurrency rules.
type Engine struct {
	cfg Config
	clk Clock

	services atomic.Pointer[serviceSet]
	mu       sync.Mutex // serialises changes to services (never held while deciding)

	// gate is what the services share: the node's capacity, the open
	// emergency sessions, the configuration (gate.go).
	gate gate

	// unknown counts ADMIT decisions for services the engine has never
	// heard of (no licence ever loaded): UNLICENSED or OVERLOAD.
	unknown [NumReasons]atomic.Uint64
	// unlicensedServices counts the services restores added (guarded by mu).
	unlicensedServices int
	// watches are the pool watches handed out (WatchPools).
	watches poolWatches
	// trunkCount counts the keys with limits (MaxTrunks); movedTrunks is
	// the stack of keys that moved since the last DrainMoved.
	trunkCount  atomic.Int64
	movedTrunks atomic.Pointer[Trunk]
	// spentServices is the stack of services whose CAPS bucket was taken
	// from since the last DrainSpent; loggedServices of those that logged
	// a change for the journal since the last DrainLogged.
	spentServices  atomic.Pointer[Service]
	loggedServices atomic.Pointer[Service]
}

// UnlicensedBucket is the service under which emergency calls naming a
// service that no licence covers (and never did) are admitted, counted,
// held and metered, one bucket for every such name: made-up names cannot
// add services. Its name is outside the service alphabet, so no licence
// can name it.
const UnlicensedBucket = "*"

// emergencyFullRetryMS is the retry hint of the OVERLOAD an emergency call
// with CALL gets while Config.MaxEmergencySessions are open.
const emergencyFullRetryMS = 1000

// Validate reports the first field of c out of its range. A zero duration
// or count where a field says "0 means" is in range: NewEngine takes
// DefaultConfig's.
func (c Config) Validate() error {
	switch {
	case c.HighHeadroomPercent < 0 || c.HighHeadroomPercent > 100:
		return fmt.Errorf("HighHeadroomPercent must be between 0 and 100, got %d", c.HighHeadroomPercent)
	case c.MaxCAPS < 0 || math.IsNaN(c.MaxCAPS) || math.IsInf(c.MaxCAPS, 0):
		return fmt.Errorf("MaxCAPS must be a finite number >= 0, got %v", c.MaxCAPS)
	}
	return nil
}

// NewEngine returns an engine with no services: everything is UNLICENSED
// until SetLimits says otherwise. cfg must pass Validate (the node checks
// its configuration first): a value out of range is a program's mistake,
// and NewEngine panics naming it rather than enforce something else.
func NewEngine(cfg Config) *Engine {
	if err := cfg.Validate(); err != nil {
		panic("admission.NewEngine: " + err.Error())
	}
	def := DefaultConfig()
	if cfg.Burst <= 0 {
		cfg.Burst = def.Burst
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = def.SessionTTL
	}
	if cfg.SubscriberTTL <= 0 {
		cfg.SubscriberTTL = def.SubscriberTTL
	}
	if cfg.IdempotencyWindow <= 0 {
		cfg.IdempotencyWindow = def.IdempotencyWindow
	}
	if cfg.HotKeys <= 0 {
		cfg.HotKeys = DefaultHotKeys
	}
	if cfg.MaxServices <= 0 {
		cfg.MaxServices = def.MaxServices
	}
	if cfg.MaxEmergencySessions <= 0 {
		cfg.MaxEmergencySessions = def.MaxEmergencySessions
	}
	e := &Engine{cfg: cfg, clk: cfg.Clock}
	e.gate.cfg = &e.cfg
	if e.clk == nil {
		e.clk = NewSystemClock()
	}
	e.services.Store(&serviceSet{byName: map[string]*Service{}})
	if cfg.MaxCAPS > 0 {
		e.gate.node = newGCRA(cfg.MaxCAPS, cfg.Burst.Seconds())
		shared := cfg.MaxCAPS * (100 - EmergencyReservePercent) / 100
		e.gate.nodeShared = newGCRA(shared, cfg.Burst.Seconds())
	} else {
		e.gate.node = gcra{mode: gcraUnlimited}
		e.gate.nodeShared = e.gate.node
	}
	return e
}

// Now returns the instant of the engine's clock.
func (e *Engine) Now() int64 { return e.clk.Now() }

// Clock returns the engine's clock.
func (e *Engine) Clock() Clock { return e.clk }

// Config returns the engine's effective configuration.
func (e *Engine) Config() Config { return e.cfg }

// service returns the named service or nil. It does not allocate.
func (e *Engine) service(name []byte) *Service {
	return e.services.Load().byName[string(name)]
}

// Service returns the named service, or nil if the engine has none.
func (e *Engine) Service(name string) *Service { return e.services.Load().byName[name] }

// Fingerprint changes (but for a 2^-64 chance) whenever a service is
// added or any service's limits, decisions, spills, sessions,
// subscribers, tokens used or used CAPS change (Service.Fingerprint):
// what INFO shows. It reads atomics only, so a
// reply built from the services can be reused while it holds.
func (e *Engine) Fingerprint() uint64 {
	m := e.services.Load().byName
	h := uint64(len(m))
	for _, s := range m {
		h += s.Fingerprint() // a sum: the map's order does not matter
	}
	return h
}

// serviceSet is the engine's services, replaced whole when one is added
// (services are never removed): by name for the decisions, and sorted by
// name for everything that walks them (the journal's flush every 20 ms,
// the cluster's exchange, /metrics), so that a walk of 1,000 services
// neither copies nor sorts them.
type serviceSet struct {
	byName map[string]*Service
	sorted []*Service
}

// byName maps the services' names to them. The map's keys share one
// string (the names in a row): a decision compares its name with the
// key's bytes, and with 1,000 licences spread over the traffic, bytes
// scattered one allocation per name would be one more cache miss each.
func byName(sorted []*Service) map[string]*Service {
	var b strings.Builder
	for _, s := range sorted {
		b.WriteString(s.name)
	}
	all := b.String()
	m := make(map[string]*Service, len(sorted))
	for _, s := range sorted {
		m[all[:len(s.name)]] = s
		all = all[len(s.name):]
	}
	return m
}

// Services returns every service, sorted by name. The slice is shared:
// read it, do not change it.
func (e *Engine) Services() []*Service {
	return e.services.Load().sorted
}

// ensure returns the named service, creating it if need be, with the
// limits d (nil: unlicensed), so that a service a licence adds is never
// seen without it. created: it was made here. Only services added for
// emergency calls (bounded) count against MaxServices.
func (e *Engine) ensure(name string, forLicence bool, d *derived) (s *Service, created bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.services.Load()
	if s, ok := old.byName[name]; ok {
		return s, false, nil
	}
	if !forLicence {
		if e.unlicensedServices >= e.cfg.MaxServices {
			return nil, false, fmt.Errorf("cannot add service %q: %w (limit %d)", name, ErrTooManyServices, e.cfg.MaxServices)
		}
		e.unlicensedServices++
	}
	if d == nil {
		d = derive(Limits{Sessions: Unlimited, Subscribers: Unlimited, Tokens: 0, State: "unlicensed"}, &e.cfg)
	}
	s = newService(name, e.cfg.DurableTokens, e.cfg.JournalState, d, &e.watches)
	if s.maxLog = e.cfg.MaxLog; s.maxLog <= 0 {
		s.maxLog = MaxLog
	}
	s.gate = &e.gate
	s.spentStack, s.loggedStack = &e.spentServices, &e.loggedServices
	s.wake = e.cfg.ReserveWake
	s.await = e.cfg.AwaitReserve
	s.wakeReserver()
	at, _ := slices.BinarySearchFunc(old.sorted, name, func(x *Service, n string) int { return strings.Compare(x.name, n) })
	sorted := slices.Clip(slices.Insert(slices.Clip(old.sorted), at, s)) // a new array: readers keep the old one
	e.services.Store(&serviceSet{byName: byName(sorted), sorted: sorted})
	return s, true, nil
}

// SetLimits is SetLimitsAt at the engine clock's instant (LimitSetter).
func (e *Engine) SetLimits(service string, l Limits) error {
	return e.SetLimitsAt(e.clk.Now(), service, l)
}

// SetLimitsAt installs a service's limits on this node at now (the
// instant a CAPS bucket's rate changes: what it holds is rescaled to the
// new rate there, as x/time/rate's SetLimitAt), creating the service if
// it is new. Counters, buckets, sessions and subscribers carry over: a
// licence loaded under load raises the limits without resetting anything.
// Called by the licensing and cluster layers; safe at any time. A
// TrunkName sets the limits of a service's key (ADMIT ... TRUNK).
func (e *Engine) SetLimitsAt(now int64, service string, l Limits) error {
	if svc, key, ok := SplitTrunk(service); ok {
		return e.setTrunkLimits(now, svc, key, l)
	}
	d := derive(l, &e.cfg)
	s, created, err := e.ensure(service, true, d)
	if err != nil || created {
		return err // a new service starts with d
	}
	s.mu.Lock()
	old := s.setLim(d)
	rescale(&s.capsTAT, &old.caps, &d.caps, now)
	rescale(&s.headroomTAT, &old.headroom, &d.headroom, now)
	if l.PeriodID > s.periodID {
		s.newPeriod(l.PeriodID)
	}
	s.applyPool(d, d.TokensShared != old.TokensShared || (d.Tokens == Unlimited) != (old.Tokens == Unlimited))
	s.mu.Unlock()
	return nil
}

// EmergencyReservePercent of node.max_caps is kept for emergency calls:
// other attempts may take the node's capacity up to the rest of it, so a
// flood of licensed attempts leaves emergency calls their share. What no
// licence covers takes none of it (it is refused UNLICENSED first).
const EmergencyReservePercent = 10

// Admit decides one call attempt (ADMIT service [CALL call] [ACCOUNT acct]
// [PRIORITY prio]). call and acct may be nil. The byte slices are only read
// during the call.
func (e *Engine) Admit(now int64, service, call, acct []byte, prio Priority) Decision {
	return e.admit(now, service, call, acct, nil, prio, false)
}

// AdmitSpillable is Admit for an attempt the caller may send to another
// member when the CAPS bucket refuses it (a cluster's spilling): such a
// refusal is not counted yet, and the caller settles it with exactly one
// of Refused (the refusal stands) or SpilledOut (another member admitted
// it), so that every attempt counts once in the farm's figures.
func (e *Engine) AdmitSpillable(now int64, service, call, acct []byte, prio Priority) Decision {
	return e.admit(now, service, call, acct, nil, prio, true)
}

// Refused counts a refusal that AdmitSpillable (or AdmitTrunkSpillable)
// left uncounted: reason is CAPS (the licence's bucket) or TRUNK_CAPS
// (the key's), counted on the service and on the key.
func (e *Engine) Refused(service, trunk []byte, reason Reason) {
	if s := e.service(service); s != nil {
		now := e.clk.Now()
		s.counts[reason].Add(1)
		if reason == CAPS {
			s.refusedCAPS(now)
		}
		if t := s.trunks.get(trunk); t != nil && trunk != nil {
			t.counts[reason].Add(1)
			t.touch()
			if reason == TRUNK_CAPS {
				t.refusedCAPS(now)
			}
		}
	}
}

// SpilledOut counts an attempt AdmitSpillable refused for CAPS that another
// member admitted (Stats.SpilledOut): it counts there as admitted, and here
// in the demand only.
func (e *Engine) SpilledOut(service, trunk []byte) {
	if s := e.service(service); s != nil {
		s.spilledOut.Add(1)
		if t := s.trunks.get(trunk); t != nil && trunk != nil {
			t.spilledOut.Add(1)
			t.touch()
		}
	}
}

func (e *Engine) admit(now int64, service, call, acct, trunk []byte, prio Priority, spillable bool) Decision {
	s := e.service(service)
	if s == nil {
		if prio != Emergency {
			e.unknown[UNLICENSED].Add(1)
			return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}
		}
		// An emergency call is never refused for want of a licence: it is
		// kept under UnlicensedBucket, its call-id scoped by the name it
		// gave.
		return e.unlicensedBucket().admitLocked(now, call, acct, prio, service, false, nil, false)
	}
	var t *Trunk
	keyPool := false
	if trunk != nil && prio != Emergency {
		t = s.trunks.get(trunk) // nil: no limits of its own
		if acct == nil {
			// The key's token pool is the allocation of the account of
			// its name (none: the licence's pool), unless ACCOUNT names
			// another.
			acct, keyPool = trunk, true
		}
	}
	if call == nil && prio != Emergency {
		if caps, f := s.hot.load(&s.lim); f&hotRateOnly != 0 {
			return s.admitRate(now, &e.gate, &caps, f&hotLicensed != 0, prio, spillable, t)
		}
	}
	return s.admitLocked(now, call, acct, prio, nil, spillable, t, keyPool)
}

// AdmitSpilled is Admit for an attempt another member's CAPS bucket refused
// and spilled here: decided as any other, counted apart when admitted
// (Stats.SpilledIn), so that the farm's demand counts it once, where it
// arrived, and not counted when the CAPS bucket here refuses it too (the
// member counts that refusal).
func (e *Engine) AdmitSpilled(now int64, service, call, acct []byte, prio Priority) Decision {
	// Its CAPS refusal is not counted here: the member that spilled it
	// counts it, once it has its answer.
	return e.AdmitTrunkSpilled(now, service, call, acct, nil, prio)
}

// unlicensedBucket returns UnlicensedBucket, created on first use.
func (e *Engine) unlicensedBucket() *Service {
	if s := e.Service(UnlicensedBucket); s != nil {
		return s
	}
	s, _, _ := e.ensure(UnlicensedBucket, true, nil) // not counted: one service at most
	return s
}

// sessionKey is a call's key in its service's session table; under
// UnlicensedBucket scoped by the service name the call gave (scope).
func sessionKey(call, scope []byte) Key {
	k := KeyOf(call)
	if scope != nil {
		k = k.mix(KeyOf(scope))
	}
	return k
}

// minRemaining is min where -1 means "no limit".
func minRemaining(a, b int64) int64 { return MinLimit(a, b) }

// MinLimit is the smaller of two limits where a negative one means "no
// limit".
func MinLimit[T int64 | float64](a, b T) T {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
}

// Release ends a call's session (RELEASE service call [SECONDS n]). With
// seconds > 0, the licence's tokens per minute are charged for each started
// minute, to the account the call was admitted for. It reports whether the
// call was open; releasing twice is harmless.
func (e *Engine) Release(now int64, service, call []byte, seconds int64) bool {
	if s := e.service(service); s != nil && s.release(now, sessionKey(call, nil), seconds) {
		return true
	}
	// An emergency call admitted while no licence covered its service
	// (perhaps one does now) is held under UnlicensedBucket.
	b := e.Service(UnlicensedBucket)
	return b != nil && b.release(now, sessionKey(call, service), seconds)
}

// Ended calls. A proxy that gave up waiting for a node's answer to an ADMIT
// (a node stalled for longer than its timeout) admits the call through
// another node, and when the call ends sends the RELEASE to both. The
// stalled node, running again, may read that RELEASE (on a new connection)
// before the ADMIT it had been sent first: the ADMIT would then open a
// session nobody releases until its TTL. So a RELEASE from a client for a
// call this node does not hold leaves the call marked as ended here for
// EndedFor, and an ADMIT ... CALL of a call marked ended is answered and
// counted as usual but opens no session.
const (
	EndedFor = 10 * time.Second
	// MaxEnded bounds the calls marked ended per service (about 80 bytes
	// each); beyond it no more are marked.
	MaxEnded = 1 << 16
)

// Ended marks call as ended by a client's RELEASE that found no session
// here (see EndedFor).
func (e *Engine) Ended(now int64, service, call []byte) {
	s := e.service(service)
	if s == nil {
		return
	}
	key := sessionKey(call, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended.len() >= MaxEnded {
		s.ended.expireSome(now, ExpireBatch)
		if s.ended.len() >= MaxEnded {
			return
		}
	}
	if _, ok := s.ended.get(key, now); !ok {
		s.ended.put(key, endedMark{}, now+int64(EndedFor))
	}
}

// Register adds or refreshes a subscriber (REGISTER service sub [TTL s]).
// ttl <= 0 means Config.SubscriberTTL. A subscriber already registered is
// refreshed and never counted twice.
func (e *Engine) Register(now int64, service, sub []byte, ttl int64) Decision {
	d, _ := e.RegisterNew(now, service, sub, ttl)
	return d
}

// RegisterNew is Register that also reports whether the subscriber was
// added rather than refreshed: a cluster tells the other members, so that
// one holding the subscriber from an earlier registration lets it go.
func (e *Engine) RegisterNew(now int64, service, sub []byte, ttl int64) (Decision, bool) {
	d, added, _ := e.RegisterClaimed(now, service, sub, ttl)
	return d, added
}

// RegisterClaimed is RegisterNew that also returns the instant of the
// claim an added subscriber makes (TrackClaims; now when not tracked): the
// engine clock read under the lock that settles other members' claims, so
// that a claim settled here before the registration (nothing held then) is
// earlier than this one, as it was made before it. The batch's now may be
// older than that claim: the two members would each find their own claim
// the later one and both keep the subscriber.
func (e *Engine) RegisterClaimed(now int64, service, sub []byte, ttl int64) (d Decision, added bool, claimAt int64) {
	s := e.service(service)
	if s == nil {
		return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}, false, now
	}
	return s.registerNew(now, sub, ttl, e.clk)
}

// Deregister removes a subscriber; it reports whether one was registered.
func (e *Engine) Deregister(now int64, service, sub []byte) bool {
	s := e.service(service)
	return s != nil && s.deregister(now, sub)
}

// Consume charges units tokens to acct's pool (CONSUME service acct units
// [ID key]). With an id, a repeat within Config.IdempotencyWindow gets the
// first decision and is not charged again. Only an admitted charge records
// its id: a refused one leaves the id free, so a retry is charged.
func (e *Engine) Consume(now int64, service, acct []byte, units int64, id []byte) Decision {
	d, _ := e.ConsumeCharged(now, service, acct, units, id)
	return d
}

// ConsumeCharged is Consume, also reporting whether it charged: false for
// a refusal and for a repeat of an ID answered with its first decision.
func (e *Engine) ConsumeCharged(now int64, service, acct []byte, units int64, id []byte) (Decision, bool) {
	s := e.service(service)
	if s == nil || !s.lim.Load().Licensed {
		return Decision{Reason: UNLICENSED, RetryAfterMS: retryUnlicensedMS, Remaining: 0}, false
	}
	return s.consume(now, acct, units, id)
}

// RecordConsumed remembers a CONSUME ID that another member charged, with
// the decision it got there, so that a repeat of it here gets that decision
// and is not charged again. It reports false when this node had charged the
// same ID itself (both kept; see the cluster package doc).
func (e *Engine) RecordConsumed(now int64, service, acct, id []byte, d Decision) bool {
	s := e.service(service)
	if s == nil || id == nil {
		return true
	}
	return e.RecordConsumedKey(now, service, AccountIDKey(acct, id), d)
}

// AccountIDKey is the key a CONSUME ID of an account is remembered under
// within its service (IDKey scopes it by the service too, for the store).
func AccountIDKey(acct, id []byte) Key { return KeyOf(id).mix(KeyOf(acct)) }

// RecordConsumedKey is RecordConsumed for an ID known by its key
// (AccountIDKey):
// the form in which a member that was down gets the IDs charged elsewhere
// meanwhile.
func (e *Engine) RecordConsumedKey(now int64, service []byte, key Key, d Decision) bool {
	s := e.service(service)
	if s == nil {
		// No licence for it here yet (a member that just joined hears of
		// IDs before the licences arrive): the store keeps it all the
		// same, scoped by the service's name.
		if e.cfg.Keys != nil {
			sk := StoreKey(string(service), key)
			if _, ok := e.cfg.Keys.Lookup(sk, now); ok {
				return false
			}
			e.cfg.Keys.Remember(sk, now+int64(e.cfg.IdempotencyWindow), d)
		}
		return true
	}
	if _, ok := s.knownID(now, key); ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.consumed.get(key, now); ok {
		return false
	}
	s.rememberID(now, key, d)
	return true
}

// Tick does the engine's housekeeping: it expires sessions, subscribers and
// idempotency keys that are due, in steps of ExpireBatch under the
// service's lock, and updates each service's used-CAPS figure. Call it
// every 100 ms to 1 s from one goroutine, off the event loops.
func (e *Engine) Tick(now int64) {
	for _, s := range e.services.Load().sorted {
		// Expiry in steps of ExpireBatch, the lock let go between them;
		// none while the tables are empty (Service.held).
		for done := !s.held.Load(); !done; {
			s.mu.Lock()
			done = s.sessions.expireSome(now, ExpireBatch) && s.subscribers.expireSome(now, ExpireBatch) &&
				s.consumed.expireSome(now, ExpireBatch) && s.ended.expireSome(now, ExpireBatch)
			if done && s.sessions.len()+s.subscribers.len()+s.consumed.len()+s.ended.len() == 0 {
				s.held.Store(false)
			}
			s.mu.Unlock()
		}
		if s.claimsHeld.Load() {
			s.mu.Lock()
			s.claimsHeld.Store(s.claims.forget(now))
			s.mu.Unlock()
		}
		s.tickRate(now, s.counts[OK].Load()+s.emergency.Load()) // its fields are Tick's alone: no lock
		// The keys' rates are measured over a second: a walk of 100,000
		// keys at every tick would find nothing to do in nine of ten.
		if now-s.trunksRateAt >= int64(time.Second) || now < s.trunksRateAt {
			s.trunksRateAt = now
			s.trunks.each(func(t *Trunk) { t.tickRate(now, t.counts[OK].Load()) })
		}
	}
}

// tickRate updates usedCAPS from n, the attempts admitted so far, once a
// second. Called by Tick only.
func (r *limiter) tickRate(now int64, n uint64) {
	if el := now - r.rateMark; el >= int64(time.Second) || r.rateMark == 0 {
		if r.rateMark != 0 {
			r.usedCAPS.Store(math.Float64bits(float64(n-r.rateCount) * 1e9 / float64(el)))
		}
		r.rateMark, r.rateCount = now, n
	}
}

// UnknownServiceAdmissions counts ADMIT decisions for service names the
// engine has never had limits for, by reason (UNLICENSED or OVERLOAD).
func (e *Engine) UnknownServiceAdmissions() (out [NumReasons]uint64) {
	for i := range out {
		out[i] = e.unknown[i].Load()
	}
	return out
}
