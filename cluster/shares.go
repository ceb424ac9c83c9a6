package cluster

import (
	"math"
	"slices"
	"sync"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/sat"
	"github.com/capsgate/capsgate/licensing"
)

// Shares sits between licensing and the engine: licensing gives it what
// each service is entitled to (it is the registry's Sink; LimitsOf),
// the allocator gives it this node's share of each service's CAPS, and it
// gives the engine the limits this node enforces.
//
// Sessions and subscribers are shared by what each node holds, token pools
// by the rate each node draws on them (see the package doc).
type Shares struct {
	sink admission.LimitSetter

	mu     sync.Mutex // guards the fields below
	limits map[string]admission.Limits
	// names are the licensed services, sorted, rebuilt when a licence
	// comes or goes (LicensedNames hands it out: never written after).
	names []string
	// changed names the limits set since the last SyncLicensed (nil with
	// resync: too many, or never synced: the next copies them all).
	changed []string
	resync  bool
	synced  bool
	share   map[string]Share // this node's part; absent: an even part
	// members is how many live members the cluster last saw: a licence
	// new here applies an even part of it until the next exchange plans
	// this node's part (a node alone, or before the cluster runs: all).
	members int
	// awaiting: this node joins a farm (AwaitPlan) and has not planned
	// yet, so it enforces no part of any licence: the farm may already
	// hold all of it (a node restarted with its licences on disk, or
	// joining late, starts from nothing and rises as the others make room).
	awaiting bool
}

// Share is this node's part of a service's licence, as fractions of each
// limit (0..1); a negative field means the whole of that limit. Fractions,
// not amounts, so a new licence raises every node's part at once, before
// the next exchange: the fractions of all nodes still sum to one.
type Share struct {
	CAPS        float64 `json:"c"`
	Sessions    float64 `json:"s"`
	Subscribers float64 `json:"u"`
	// Depth is this node's part of the farm's CAPS bucket depth (the
	// depth the licence's whole rate would have); 0: the node's bucket
	// depth follows its CAPS.
	Depth float64 `json:"b,omitempty"`
	// TokensShared: the service's token pool is shared with other
	// members, and this node may charge it up to TokensBudget in all.
	TokensShared bool  `json:"-"`
	TokensBudget int64 `json:"-"`
	// AccountBudgets are this node's budgets of the accounts' allocations.
	AccountBudgets map[string]int64 `json:"-"`
}

// NewShares returns shares feeding sink (the engine).
func NewShares(sink admission.LimitSetter) *Shares {
	return &Shares{sink: sink, limits: map[string]admission.Limits{}, share: map[string]Share{}}
}

// SetEntitlement records what the licences entitle a service to
// (registry.Sink) as its cluster-wide limits (LimitsOf) and applies this
// node's part of them at once.
func (s *Shares) SetEntitlement(service string, e licensing.Entitlement) error {
	return s.SetLimits(service, LimitsOf(e))
}

// LimitsOf turns what the licences entitle a service to into the limits
// the engine enforces for the farm: a dimension that no counted licence
// sets is not limited, an unlimited licence lifts CAPS, and a service with
// no counted licence is unlicensed (refused but for emergency calls).
func LimitsOf(e licensing.Entitlement) admission.Limits {
	if !e.Licensed() {
		return admission.Limits{Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited,
			State: "unlicensed"}
	}
	l := admission.Limits{
		Licensed:         true,
		CAPS:             float64(e.CAPS),
		Sessions:         orUnlimited(e.SetsSessions, e.Sessions),
		Subscribers:      orUnlimited(e.SetsSubscribers, e.Subscribers),
		Tokens:           orUnlimited(e.SetsTokens, e.Tokens),
		TokensPerAttempt: e.TokensPerAttempt,
		TokensPerMinute:  e.TokensPerMinute,
		State:            string(e.State),
		PeriodID:         e.PeriodID,
	}
	if e.Unlimited {
		l.CAPS = admission.Unlimited
	}
	if ov, err := admission.ParseOverage(e.Overage); err == nil {
		l.Overage = ov
	}
	return l
}

func orUnlimited(set bool, v int64) int64 {
	if !set {
		return admission.Unlimited
	}
	return v
}

// SetLimits records a service's cluster-wide limits and applies this
// node's part of them at once.
func (s *Shares) SetLimits(service string, l admission.Limits) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.limits[service]; !ok || old.Licensed != l.Licensed {
		if _, _, trunk := admission.SplitTrunk(service); !trunk {
			s.names = nil // a key is not named there: setting 100,000 keeps it
		}
	}
	s.limits[service] = l
	if !s.resync {
		if s.changed = append(s.changed, service); len(s.changed) > maxSyncChanges {
			s.changed, s.resync = nil, true
		}
	}
	return s.applyLocked(service)
}

// maxSyncChanges bounds the changes SyncLicensed hands over one by one;
// past it the next sync copies every licence (a farm's keys set in bulk
// between two exchanges).
const maxSyncChanges = 1 << 14

// SyncLicensed brings dst, the licensed services' limits as the caller
// keeps them (the exchange's own map, which only its goroutine reads),
// up to date: it writes what changed since the last call and returns
// the names it wrote or removed, or all true when it rewrote dst whole
// (the first call, or more changes than maxSyncChanges). Setting 10,000
// trunk keys so costs the planner the keys set, not the keys held.
func (s *Shares) SyncLicensed(dst map[string]admission.Limits) (changed []string, all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced || s.resync {
		clear(dst)
		for name, l := range s.limits {
			if l.Licensed {
				dst[name] = l
			}
		}
		s.synced, s.resync, s.changed = true, false, s.changed[:0]
		return nil, true
	}
	for _, name := range s.changed {
		if l, ok := s.limits[name]; ok && l.Licensed {
			dst[name] = l
		} else {
			delete(dst, name)
		}
	}
	changed = slices.Clone(s.changed)
	s.changed = s.changed[:0]
	return changed, false
}

// LicensedNames returns the licensed services, sorted, not the trunk keys
// with limits (a farm may hold 100,000; Planner.ActiveTrunks names those
// with traffic); the caller must not change the slice. Cheap: the
// cluster asks it every StarvedCheck.
func (s *Shares) LicensedNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.names == nil {
		s.names = make([]string, 0, len(s.limits))
		for name, l := range s.limits {
			if _, _, trunk := admission.SplitTrunk(name); l.Licensed && !trunk {
				s.names = append(s.names, name)
			}
		}
		slices.Sort(s.names)
	}
	return s.names
}

// Limit returns a service's cluster-wide limits and whether it is licensed.
func (s *Shares) Limit(service string) (admission.Limits, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.limits[service]
	return l, ok && l.Licensed
}

// SetMembers tells how many live members the cluster has.
func (s *Shares) SetMembers(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members = n
}

// AwaitPlan says this node joins a farm: until Planned, every licence
// applies here with no part of its limits (no CAPS, sessions, subscribers
// or tokens), where a node that runs alone would apply all of it.
func (s *Shares) AwaitPlan() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.awaiting = true
}

// Planned says the cluster has planned this node's parts once: a licence
// new here from now on applies an even part until its next plan.
func (s *Shares) Planned() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.awaiting = false
}

// Awaiting reports whether this node joins a farm and has not planned
// yet (AwaitPlan, until Planned): it then admits nothing that a licence
// limits.
func (s *Shares) Awaiting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.awaiting
}

// SetShare sets this node's part of a service's licence.
func (s *Shares) SetShare(service string, sh Share) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.share[service]; ok && old.same(sh) {
		return nil
	}
	s.share[service] = sh
	return s.applyLocked(service)
}

func (s *Shares) applyLocked(service string) error {
	l, ok := s.limits[service]
	if !ok {
		return nil
	}
	local := l
	local.LicensedCAPS = l.CAPS
	sh, ok := s.share[service]
	switch {
	case !ok && s.awaiting:
		sh, ok = Share{TokensShared: true}, true
	case !ok && s.members > 1:
		even := 1 / float64(s.members)
		sh, ok = Share{CAPS: even, Sessions: even, Subscribers: even, Depth: even}, true
	}
	if ok && l.Licensed {
		// A part that is not a number (no plan should make one) is no
		// part, not the whole licence: "not >= 0" would skip it.
		sh.CAPS, sh.Depth, sh.Sessions, sh.Subscribers = nanToZero(sh.CAPS), nanToZero(sh.Depth), nanToZero(sh.Sessions), nanToZero(sh.Subscribers)
		if sh.CAPS >= 0 && l.CAPS > 0 {
			local.CAPS = sh.CAPS * l.CAPS
			local.DepthShare, local.DepthShared = max(sh.Depth, 0), true
		}
		if sh.Sessions >= 0 && l.Sessions != admission.Unlimited {
			local.Sessions = sat.PartOf(sh.Sessions, l.Sessions)
		}
		if sh.Subscribers >= 0 && l.Subscribers != admission.Unlimited {
			local.Subscribers = sat.PartOf(sh.Subscribers, l.Subscribers)
		}
		if sh.TokensShared {
			// An unlimited pool stays unlimited (the engine ignores its
			// budget); its accounts' budgets hold.
			local.TokensShared, local.TokensBudget, local.AccountBudgets = true, sh.TokensBudget, sh.AccountBudgets
		}
	}
	return s.sink.SetLimits(service, local)
}

func nanToZero(x float64) float64 {
	if math.IsNaN(x) {
		return 0
	}
	return x
}

// same reports whether two shares are equal.
func (a Share) same(b Share) bool {
	if a.CAPS != b.CAPS || a.Depth != b.Depth || a.Sessions != b.Sessions || a.Subscribers != b.Subscribers ||
		a.TokensShared != b.TokensShared || a.TokensBudget != b.TokensBudget || len(a.AccountBudgets) != len(b.AccountBudgets) {
		return false
	}
	for k, v := range a.AccountBudgets {
		if w, ok := b.AccountBudgets[k]; !ok || w != v {
			return false
		}
	}
	return true
}
