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
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
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

// Sink receives what the licences entitle each service to, whenever it
// may have changed: at open, at each load, revocation or removal, and at
// each change of a licence's state or of the usage period. A service
// whose last counted licence went gets the zero Entitlement (Licensed is
// false). The cluster turns entitlements into the engine's limits.
type Sink interface {
	SetEntitlement(service string, e licensing.Entitlement) error
}

// DefaultClockTolerance is ClockTolerance's default: an NTP step or a VM
// resumed from a snapshot moves the clock back by seconds, rarely by
// minutes; more than 5 minutes back is a rollback worth an alarm.
const DefaultClockTolerance = 5 * time.Minute

// Config configures a Registry.
type Config struct {
	// Dir holds the loaded licences (data_dir/licenses).
	Dir string
	// ClusterID is the node's cluster_id: licences bound to another are refused.
	ClusterID string
	// Keys are the trusted vendor public keys.
	Keys *licensing.Keyring
	// ClockTolerance is how far the wall clock may go back before the
	// rollback alarm (licences never revive either way); 0 means
	// DefaultClockTolerance.
	ClockTolerance time.Duration
	// Wall is the wall clock; tests inject a fake one.
	Wall func() time.Time
	// Sink receives each service's entitlement.
	Sink Sink
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
	period   int64           // the usage period of now (licensing.PeriodOf), as last applied
	services map[string]bool // services ever given limits
	// verified maps the digest of each loaded licence's document, as
	// loaded, to its id: a joining member's state sync, and a member's
	// whose licences differ, carries every licence, and a farm of 1,000
	// would otherwise verify 1,000 signatures again each time (a hint,
	// checked against lics, never trusted alone). One entry a loaded
	// licence: a document refused, or another armouring of a loaded one,
	// adds none.
	verified map[[sha256.Size]byte]string
	// digest is Digest's answer until the documents change ("": not
	// computed since they last did).
	digest string
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
		cfg.ClockTolerance = DefaultClockTolerance
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
	r := &Registry{cfg: cfg, guard: g, lics: map[string]*entry{}, revoked: map[string]string{}, verified: map[[sha256.Size]byte]string{},
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

// Result says what Load did with one document.
type Result struct {
	Kind    string `json:"kind"` // "license" or "revocation"
	ID      string `json:"id"`
	Service string `json:"service,omitempty"`
	State   string `json:"state,omitempty"`
	// New is false when the same document was already loaded (idempotent).
	New bool `json:"new"`
}

// Load verifies every licence and revocation in text — a file may hold
// several, in any order (see licensing.Split) — and loads them all, in
// order, or none: when one is refused, nothing is stored or applied and
// the *LoadError names the document ("document 2 of 3 (licence at line
// 14): ..."). A document already loaded is a no-op (its Result.New is
// false). The limits are applied before Load returns. Within the file,
// order counts: a licence followed by its revocation loads both (the
// licence revoked); a revocation followed by the licence it revokes is
// refused, as that licence would be on its own.
func (r *Registry) Load(text []byte) ([]Result, error) {
	return r.load(text, false)
}

// LoadShared is Load for documents another member of the farm sent. Of
// two licences with the same id and other content (loaded at once on two
// members, each refusing the other's), every member keeps the one whose
// canonical content hashes lower (sameIDWinner): a licence sent by a
// member replaces the one loaded here when it wins, where Load refuses it
// (ReasonReplayed). So the farm agrees on one of them, whichever member
// hears of which first.
func (r *Registry) LoadShared(text []byte) ([]Result, error) {
	return r.load(text, true)
}

// load is Load; shared: the text came from another member (LoadShared).
func (r *Registry) load(text []byte, shared bool) ([]Result, error) {
	docs, err := licensing.Split(text)
	if err != nil {
		return nil, refuse(ReasonMalformed, "%v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.now = r.guard.observe(r.cfg.Wall())
	b := r.newBatch(true)
	b.shared = shared
	results := make([]Result, len(docs))
	for i, d := range docs {
		if results[i], err = b.add(d); err != nil {
			if len(docs) == 1 {
				return nil, err
			}
			le := &LoadError{Reason: reasonOf(err), Err: fmt.Errorf("document %d of %d (%s at line %d): %w; nothing in the file was loaded (it holds %s)",
				i+1, len(docs), d.Noun(), d.Line, err, licensing.Describe(docs))}
			return nil, le
		}
	}
	if err := b.commit(); err != nil {
		return nil, err
	}
	if b.changed() {
		r.applyLocked()
	}
	for i := range results {
		if e, ok := r.lics[results[i].ID]; ok && results[i].Kind == "license" {
			results[i].State = string(e.state)
		}
	}
	return results, nil
}

// Add is Load for a text holding exactly one document; a text holding
// several is refused (ReasonMalformed) without loading any.
func (r *Registry) Add(armored []byte) (Result, error) {
	if docs, err := licensing.Split(armored); err == nil && len(docs) > 1 {
		return Result{}, refuse(ReasonMalformed, "the file holds %s: load it whole (Load) or one document at a time", licensing.Describe(docs))
	}
	res, err := r.Load(armored)
	if err != nil {
		return Result{}, err
	}
	return res[0], nil
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

// batch is the documents of one Load, each checked against the registry
// and the documents before it, none stored or applied until all pass
// (commit). Called with mu held.
type batch struct {
	r *Registry
	// persist: the documents are new to this node (Load), not read back
	// from data_dir at Open: they are stored, and judged as new ones.
	persist bool
	// shared: the documents came from another member (LoadShared).
	shared  bool
	lics    map[string]*entry // new licences by id
	revDocs map[string][]byte // new revocations by id
	revoked map[string]string // licence id → the new revocation retiring it
	order   []staged          // what commit stores and logs, in order
}

type staged struct {
	path string
	data []byte
	// prev is what path held before (a licence replaced: LoadShared),
	// put back if the batch fails; nil: path is removed.
	prev []byte
	log  func()
}

func (r *Registry) newBatch(persist bool) *batch {
	return &batch{r: r, persist: persist, lics: map[string]*entry{}, revDocs: map[string][]byte{}, revoked: map[string]string{}}
}

// add checks one document and stages it.
func (b *batch) add(d licensing.Document) (Result, error) {
	if d.Revocation {
		return b.addRevocation(d.Armored)
	}
	return b.addLicense(d.Armored)
}

// revokedBy returns the revocation retiring licence id, loaded or staged.
func (b *batch) revokedBy(id string) (string, bool) {
	if rev, ok := b.r.revoked[id]; ok {
		return rev, true
	}
	rev, ok := b.revoked[id]
	return rev, ok
}

func (b *batch) addLicense(armored []byte) (Result, error) {
	r := b.r
	digest := sha256.Sum256(armored)
	if id, ok := r.verified[digest]; ok {
		// The same bytes as a licence loaded here: nothing to verify
		// again, nothing to load (unless it was revoked since).
		if e := r.lics[id]; e != nil && bytes.Equal(e.armored, armored) {
			if _, revoked := b.revokedBy(id); !revoked || !b.persist {
				return Result{Kind: "license", ID: id, Service: e.lic.Service, State: string(e.state)}, nil
			}
		}
	}
	l, err := r.cfg.Keys.Verify(armored)
	if err != nil {
		return Result{}, classify(err)
	}
	res := Result{Kind: "license", ID: l.ID, Service: l.Service}
	if !l.AppliesTo(r.cfg.ClusterID) {
		return res, refuse(ReasonWrongCluster, "licence %s is bound to cluster %q; this node's cluster_id is %q", l.ID, l.Cluster, r.cfg.ClusterID)
	}
	if rev, ok := b.revokedBy(l.ID); ok && b.persist {
		return res, refuse(ReasonRevoked, "licence %s was revoked by %s", l.ID, rev)
	}
	old, ok := r.lics[l.ID]
	stored := ok // old's file is in data_dir
	if !ok {
		old, ok = b.lics[l.ID]
	}
	replaces := false
	if ok {
		a, _ := old.lic.Canonical()
		c, _ := l.Canonical()
		if bytes.Equal(a, c) {
			res.State = string(old.state)
			return res, nil // idempotent
		}
		if !b.shared || !b.persist || !sameIDWinner(c, a) {
			return res, refuse(ReasonReplayed, "licence id %s is already loaded with other content", l.ID)
		}
		replaces = true
	}
	if b.persist {
		if skew := l.IssuedAt.Sub(r.now); skew > r.cfg.ClockTolerance {
			return res, refuse(ReasonClockSkew, "licence %s was issued at %s, %s after this node's clock (%s): the node's clock is wrong; fix it (NTP) and load the licence again",
				l.ID, l.IssuedAt.UTC().Format(time.RFC3339), skew.Round(time.Second), r.now.UTC().Format(time.RFC3339))
		}
		if st := l.State(r.now, false); st == licensing.StateExpired {
			return res, refuse(ReasonExpired, "licence %s expired at %s (not_after %s plus grace %s)", l.ID,
				l.NotAfter.Add(l.Grace).UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339), l.Grace)
		}
		var prev []byte
		if replaces && stored {
			prev = old.armored
		}
		b.order = append(b.order, staged{path: filepath.Join(r.cfg.Dir, l.ID+".lic"), data: armored, prev: prev, log: func() {
			if replaces {
				r.cfg.Log.Warn("licence replaced by a member's with the same id and other content: the farm keeps the one whose content hashes lower",
					"id", l.ID, "service", l.Service, "customer", l.Customer)
				return
			}
			r.cfg.Log.Info("licence loaded", "id", l.ID, "service", l.Service, "customer", l.Customer)
		}})
	}
	b.lics[l.ID] = &entry{lic: l, armored: armored, state: l.State(r.now, false)}
	res.New = true
	return res, nil
}

// sameIDWinner reports whether a licence of canonical content c wins over
// one of the same id and content a: the one whose content's SHA-256 is
// lower, a rule every member applies alike.
func sameIDWinner(c, a []byte) bool {
	hc, ha := sha256.Sum256(c), sha256.Sum256(a)
	return bytes.Compare(hc[:], ha[:]) < 0
}

func (b *batch) addRevocation(armored []byte) (Result, error) {
	r := b.r
	rv, err := r.cfg.Keys.VerifyRevocation(armored)
	if err != nil {
		return Result{}, classify(err)
	}
	res := Result{Kind: "revocation", ID: rv.ID}
	if _, pending := b.revDocs[rv.ID]; r.revs[rv.ID] || pending {
		return res, nil
	}
	if b.persist {
		b.order = append(b.order, staged{path: filepath.Join(r.cfg.Dir, revocationDir, rv.ID+".rev"), data: armored, log: func() {
			r.cfg.Log.Info("revocation loaded", "id", rv.ID, "revokes", strings.Join(rv.Revokes, ","), "reason", rv.Reason)
		}})
	}
	b.revDocs[rv.ID] = armored
	for _, id := range rv.Revokes {
		if _, ok := b.revokedBy(id); !ok {
			b.revoked[id] = rv.ID
		}
	}
	res.New = true
	return res, nil
}

// commit stores the staged documents in data_dir and then adds them to
// the registry. A store that fails removes what this batch stored before
// it: nothing changes.
func (b *batch) commit() error {
	for i, s := range b.order {
		if err := writeFileAtomic(s.path, s.data); err != nil {
			for _, done := range b.order[:i] {
				if done.prev != nil {
					_ = writeFileAtomic(done.path, done.prev)
					continue
				}
				_ = os.Remove(done.path)
			}
			return fmt.Errorf("cannot store %s in data_dir (nothing was loaded): %w", filepath.Base(s.path), err)
		}
	}
	for _, s := range b.order {
		s.log()
	}
	r := b.r
	r.digest = ""
	for id, e := range b.lics {
		if old := r.lics[id]; old != nil {
			delete(r.verified, sha256.Sum256(old.armored))
		}
		r.lics[id] = e
		r.verified[sha256.Sum256(e.armored)] = id
	}
	for id, d := range b.revDocs {
		r.revs[id] = true
		r.revDocs[id] = d
	}
	for id, rev := range b.revoked {
		r.revoked[id] = rev
	}
	return nil
}

// changed reports whether the batch added anything.
func (b *batch) changed() bool { return len(b.lics) > 0 || len(b.revDocs) > 0 }

// addLicense and addRevocation load a licence or revocation file stored in
// data_dir (persist false, at Open). One stored by an older version may
// hold several documents (it stored a file as it was posted): every one
// of them loads.
func (r *Registry) addLicense(data []byte, persist bool) (Result, error) {
	return r.addStored(data, false, persist)
}

func (r *Registry) addRevocation(data []byte, persist bool) (Result, error) {
	return r.addStored(data, true, persist)
}

func (r *Registry) addStored(data []byte, revocation, persist bool) (Result, error) {
	docs, err := licensing.Split(data)
	if err != nil {
		// Verifying it as what its name says says best what is wrong.
		docs = []licensing.Document{{Revocation: revocation, Armored: data}}
	}
	b := r.newBatch(persist)
	var first Result
	for i, d := range docs {
		res, err := b.add(d)
		if err != nil {
			return res, err
		}
		if i == 0 {
			first = res
		}
	}
	return first, b.commit()
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
			r.judge(e, st)
			changed = true
		}
	}
	if p := licensing.PeriodOf(r.now); p != r.period {
		// A new calendar month: monthly licences' pools start empty.
		changed = true
	}
	if changed {
		r.applyLocked()
	}
	return r.nextChangeLocked()
}

// nextMonth is when the month after t's begins (UTC).
func nextMonth(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
}

// markSaveEvery bounds how much of the mark a crash can lose.
const markSaveEvery = 10 * time.Second

// judge sets e's state to st, and forgets the digest when that changes
// whether e goes to the other members (Documents). Called with mu held.
func (r *Registry) judge(e *entry, st licensing.State) {
	if spread(st) != spread(e.state) {
		r.digest = ""
	}
	e.state = st
}

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
		r.judge(e, r.stateOf(e))
		all = append(all, e.lic)
	}
	for id := range r.revoked {
		revoked[id] = true
	}
	ents := licensing.Effective(all, revoked, r.now)
	r.period = licensing.PeriodOf(r.now)
	for s := range ents {
		r.services[s] = true
	}
	for s := range r.services {
		ent, ok := ents[s]
		if !ok {
			ent = licensing.Entitlement{Service: s}
		}
		if err := r.cfg.Sink.SetEntitlement(s, ent); err != nil {
			r.cfg.Log.Error("cannot apply licence limits", "service", s, "err", err)
		}
	}
}
