// Package registry is a node's set of loaded licences: it verifies what the
// operator loads, keeps it in data_dir, re-verifies it at start, judges
// every licence's state at the guarded wall-clock time and feeds the sum of
// each service's valid licences to the admission engine.
//
// The loop a node runs:
//
//	r, err := registry.Open(cfg)          // loads and applies what data_dir holds
//	res, err := r.Add(armored)            // POST /v1/licenses: verify, persist, apply at once
//	next := r.Tick()                      // at next (or within a second): states move, limits follow
//
// Limits change in the engine synchronously inside Add and Tick, so a
// licence limits the node as soon as Add returns.
package registry

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/internal/bounded"
	"github.com/capsgate/capsgate/licensing"
)

// Reason codes of a refused licence, as the admin API reports them.
const (
	ReasonMalformed    = "malformed"
	ReasonBadSignature = "bad_signature"
	ReasonUnknownKey   = "unknown_key"
	ReasonExpired      = "expired"
	ReasonWrongCluster = "wrong_cluster"
	ReasonRevoked      = "revoked"
	ReasonClockSkew    = "clock_skew" // issued in this node's future: its clock is wrong
	ReasonReplayed     = "replayed"   // an id already loaded with other content
)

// LoadError is a refused licence or revocation.
type LoadError struct {
	Reason string
	Err    error
}

func (e *LoadError) Error() string { return e.Err.Error() }
func (e *LoadError) Unwrap() error { return e.Err }

func refuse(reason, format string, args ...any) error {
	return &LoadError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Config configures a Registry.
type Config struct {
	// Dir holds the loaded licences (data_dir/licenses).
	Dir string
	// ClusterID is the node's cluster_id: licences bound to another are refused.
	ClusterID string
	// Keys are the trusted vendor public keys.
	Keys *licensing.Keyring
	// ClockTolerance is how far the wall clock may go back before the
	// rollback alarm (licences never revive either way).
	ClockTolerance time.Duration
	// Wall is the wall clock; tests inject a fake one.
	Wall func() time.Time
	// Sink receives each service's limits.
	Sink admission.LimitSetter
	Log  *slog.Logger
}

type entry struct {
	lic     *licensing.License
	armored []byte
	state   licensing.State
}

// Registry is the set of licences a node has loaded. It is safe for
// concurrent use.
type Registry struct {
	cfg Config

	mu       sync.Mutex // guards the fields below
	lics     map[string]*entry
	revoked  map[string]string // licence id → revocation id
	revs     map[string]bool   // revocation ids loaded
	revDocs  map[string][]byte // revocation id → armored document
	guard    *clockGuard
	now      time.Time       // effective time of the last evaluation
	period   int64           // the usage period of now (PeriodOf), as last applied
	services map[string]bool // services ever given limits
	// warnedAhead: a peer's mark too far ahead was logged (once per episode).
	warnedAhead bool
}

const revocationDir = "revocations"

// Open loads the licences and revocations stored in cfg.Dir, re-verifying
// each: a file that no longer verifies is refused with a log line while the
// others load. Then it applies the limits.
func Open(cfg Config) (*Registry, error) {
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ClockTolerance <= 0 {
		cfg.ClockTolerance = 5 * time.Minute
	}
	if cfg.Keys == nil {
		cfg.Keys, _ = licensing.NewKeyring()
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, revocationDir), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the licence directory (data_dir): %w", err)
	}
	g, err := openClockGuard(cfg.Dir, cfg.ClockTolerance, cfg.Wall())
	if err != nil {
		return nil, err
	}
	r := &Registry{cfg: cfg, guard: g, lics: map[string]*entry{}, revoked: map[string]string{},
		revs: map[string]bool{}, revDocs: map[string][]byte{}, services: map[string]bool{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = g.mark
	if back, by := g.rolledBack(); back {
		cfg.Log.Error("wall clock is behind the clock high-water mark: licences are judged at the mark", "behind", by.String())
	}
	for _, f := range storedFiles(filepath.Join(cfg.Dir, revocationDir), ".rev", cfg.Log) {
		if _, err := r.addRevocation(f.data, false); err != nil {
			cfg.Log.Error("refusing a stored revocation", "file", f.path, "reason", reasonOf(err), "err", err)
		}
	}
	for _, f := range storedFiles(cfg.Dir, ".lic", cfg.Log) {
		if _, err := r.addLicense(f.data, false); err != nil {
			cfg.Log.Error("refusing a stored licence", "file", f.path, "reason", reasonOf(err), "err", err)
		}
	}
	r.applyLocked()
	return r, nil
}

type storedFile struct {
	path string
	data []byte
}

// storedFiles reads the files named *ext in dir, logging (and skipping)
// each it cannot read: what is not a regular file of at most
// bounded.LicenceFile bytes.
func storedFiles(dir, ext string, log *slog.Logger) []storedFile {
	names, _ := filepath.Glob(filepath.Join(dir, "*"+ext))
	sort.Strings(names)
	var out []storedFile
	for _, n := range names {
		b, err := bounded.ReadFile(n, bounded.LicenceFile)
		if err != nil {
			log.Error("cannot read a stored licence file", "file", n, "err", err)
			continue
		}
		out = append(out, storedFile{n, b})
	}
	return out
}

func reasonOf(err error) string {
	var le *LoadError
	if errors.As(err, &le) {
		return le.Reason
	}
	return ReasonMalformed
}

// Result says what Add did.
type Result struct {
	Kind    string `json:"kind"` // "license" or "revocation"
	ID      string `json:"id"`
	Service string `json:"service,omitempty"`
	State   string `json:"state,omitempty"`
	// New is false when the same document was already loaded (idempotent).
	New bool `json:"new"`
}

// Add verifies an armored licence or revocation, stores it and applies the
// new limits before it returns. Loading the same document again is a no-op
// (Result.New false). A refusal is a *LoadError and changes nothing.
func (r *Registry) Add(armored []byte) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = r.guard.observe(r.cfg.Wall())
	var res Result
	var err error
	if licensing.IsRevocation(armored) {
		res, err = r.addRevocation(armored, true)
	} else {
		res, err = r.addLicense(armored, true)
	}
	if err == nil && res.New {
		r.applyLocked()
		if e, ok := r.lics[res.ID]; ok {
			res.State = string(e.state)
		}
	}
	return res, err
}

// classify maps a verification error to its reason.
func classify(err error) error {
	switch {
	case errors.Is(err, licensing.ErrUnknownKey):
		return refuse(ReasonUnknownKey, "%v", err)
	case errors.Is(err, licensing.ErrBadSignature):
		return refuse(ReasonBadSignature, "%v", err)
	}
	return refuse(ReasonMalformed, "%v", err)
}

func (r *Registry) addLicense(armored []byte, persist bool) (Result, error) {
	l, err := r.cfg.Keys.Verify(armored)
	if err != nil {
		return Result{}, classify(err)
	}
	res := Result{Kind: "license", ID: l.ID, Service: l.Service}
	if !l.AppliesTo(r.cfg.ClusterID) {
		return res, refuse(ReasonWrongCluster, "licence %s is bound to cluster %q; this node's cluster_id is %q", l.ID, l.Cluster, r.cfg.ClusterID)
	}
	if rev, ok := r.revoked[l.ID]; ok && persist {
		return res, refuse(ReasonRevoked, "licence %s was revoked by %s", l.ID, rev)
	}
	if old, ok := r.lics[l.ID]; ok {
		a, _ := old.lic.Canonical()
		b, _ := l.Canonical()
		if !bytes.Equal(a, b) {
			return res, refuse(ReasonReplayed, "licence id %s is already loaded with other content", l.ID)
		}
		res.State = string(old.state)
		return res, nil // idempotent
	}
	if persist {
		if skew := l.IssuedAt.Sub(r.now); skew > r.cfg.ClockTolerance {
			return res, refuse(ReasonClockSkew, "licence %s was issued at %s, %s after this node's clock (%s): the node's clock is wrong; fix it (NTP) and load the licence again",
				l.ID, l.IssuedAt.UTC().Format(time.RFC3339), skew.Round(time.Second), r.now.UTC().Format(time.RFC3339))
		}
		if st := l.State(r.now, false); st == licensing.StateExpired {
			return res, refuse(ReasonExpired, "licence %s expired at %s (not_after %s plus grace %s)", l.ID,
				l.NotAfter.Add(l.Grace).UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339), l.Grace)
		}
		if err := writeFileAtomic(filepath.Join(r.cfg.Dir, l.ID+".lic"), armored); err != nil {
			return res, fmt.Errorf("cannot store licence %s in data_dir: %w", l.ID, err)
		}
		r.cfg.Log.Info("licence loaded", "id", l.ID, "service", l.Service, "customer", l.Customer)
	}
	r.lics[l.ID] = &entry{lic: l, armored: armored, state: l.State(r.now, false)}
	res.New = true
	return res, nil
}

func (r *Registry) addRevocation(armored []byte, persist bool) (Result, error) {
	rv, err := r.cfg.Keys.VerifyRevocation(armored)
	if err != nil {
		return Result{}, classify(err)
	}
	res := Result{Kind: "revocation", ID: rv.ID}
	if r.revs[rv.ID] {
		return res, nil
	}
	if persist {
		if err := writeFileAtomic(filepath.Join(r.cfg.Dir, revocationDir, rv.ID+".rev"), armored); err != nil {
			return res, fmt.Errorf("cannot store revocation %s in data_dir: %w", rv.ID, err)
		}
		r.cfg.Log.Info("revocation loaded", "id", rv.ID, "revokes", strings.Join(rv.Revokes, ","), "reason", rv.Reason)
	}
	r.revs[rv.ID] = true
	r.revDocs[rv.ID] = armored
	for _, id := range rv.Revokes {
		if _, ok := r.revoked[id]; !ok {
			r.revoked[id] = rv.ID
		}
	}
	res.New = true
	return res, nil
}

// Tick judges every licence at the wall clock now (guarded against
// rollback), applies the limits when a state changed, and returns the next
// instant a state will change (zero: none).
func (r *Registry) Tick() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = r.guard.observe(r.cfg.Wall())
	if r.guard.mark.Sub(r.guard.saved) >= markSaveEvery {
		if err := r.guard.save(); err != nil {
			r.cfg.Log.Error("clock high-water mark not saved", "err", err)
		}
	}
	changed := false
	for _, e := range r.lics {
		if st := r.stateOf(e); st != e.state {
			r.cfg.Log.Warn("licence state changed", "id", e.lic.ID, "service", e.lic.Service, "from", e.state, "to", st)
			e.state, changed = st, true
		}
	}
	if p := PeriodOf(r.now); p != r.period {
		// A new calendar month: monthly licences' pools start empty.
		changed = true
	}
	if changed {
		r.applyLocked()
	}
	return r.nextChangeLocked()
}

// PeriodOf names the calendar month (UTC) of t for monthly usage limits:
// months since the start of year 0.
func PeriodOf(t time.Time) int64 {
	t = t.UTC()
	return int64(t.Year())*12 + int64(t.Month()) - 1
}

// nextMonth is when the month after t's begins (UTC).
func nextMonth(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
}

// markSaveEvery bounds how much of the mark a crash can lose.
const markSaveEvery = 10 * time.Second

func (r *Registry) stateOf(e *entry) licensing.State {
	_, revoked := r.revoked[e.lic.ID]
	return e.lic.State(r.now, revoked)
}

func (r *Registry) nextChangeLocked() time.Time {
	var next time.Time
	for _, e := range r.lics {
		if _, revoked := r.revoked[e.lic.ID]; revoked {
			continue
		}
		if t := e.lic.NextChange(r.now); !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
		if e.lic.Period == licensing.PeriodMonthly {
			if t := nextMonth(r.now); next.IsZero() || t.Before(next) {
				next = t
			}
		}
	}
	return next
}

// Close saves the clock high-water mark.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.guard.save()
}

// applyLocked recomputes every service's entitlement and gives the engine
// the limits. A service whose last licence stopped counting becomes
// unlicensed (its counters and sessions stay).
func (r *Registry) applyLocked() {
	var all []*licensing.License
	revoked := map[string]bool{}
	for _, e := range r.lics {
		e.state = r.stateOf(e)
		all = append(all, e.lic)
	}
	for id := range r.revoked {
		revoked[id] = true
	}
	ents := licensing.Effective(all, revoked, r.now)
	r.period = PeriodOf(r.now)
	for s := range ents {
		r.services[s] = true
	}
	for s := range r.services {
		ent, ok := ents[s]
		l := admission.Limits{Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited, State: "unlicensed"}
		if ok {
			l = r.limits(ent)
		}
		if err := r.cfg.Sink.SetLimits(s, l); err != nil {
			r.cfg.Log.Error("cannot apply licence limits", "service", s, "err", err)
		}
	}
}

// limits turns an entitlement into engine limits. A dimension that no
// counted licence sets is not limited: a CAPS-only licence does not forbid
// sessions, and a service without prepaid tokens meters use without a cap
// (pay-per-use).
func (r *Registry) limits(ent licensing.Entitlement) admission.Limits {
	var setSessions, setSubs, setTokens bool
	for _, id := range ent.Licenses {
		if e, ok := r.lics[id]; ok {
			setSessions = setSessions || e.lic.Sessions > 0
			setSubs = setSubs || e.lic.Subscribers > 0
			setTokens = setTokens || e.lic.Tokens > 0
		}
	}
	l := admission.Limits{
		Licensed:         true,
		CAPS:             float64(ent.CAPS),
		Sessions:         orUnlimited(setSessions, ent.Sessions),
		Subscribers:      orUnlimited(setSubs, ent.Subscribers),
		Tokens:           orUnlimited(setTokens, ent.Tokens),
		TokensPerAttempt: ent.TokensPerAttempt,
		TokensPerMinute:  ent.TokensPerMinute,
		State:            string(ent.State),
	}
	if ent.Unlimited {
		l.CAPS = admission.Unlimited
	}
	if ov, err := admission.ParseOverage(ent.Overage); err == nil {
		l.Overage = ov
	}
	if ent.Period == licensing.PeriodMonthly {
		l.PeriodID = PeriodOf(r.now)
	}
	return l
}

func orUnlimited(set bool, v int64) int64 {
	if !set {
		return admission.Unlimited
	}
	return v
}
