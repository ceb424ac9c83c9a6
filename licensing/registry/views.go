package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/licensing"
)

// View is a loaded licence as the admin API shows it (GET /v1/licenses,
// read back by capsctl).
type View struct {
	ID               string     `json:"id"`
	Service          string     `json:"service"`
	State            string     `json:"state"`
	Customer         string     `json:"customer,omitempty"`
	Cluster          string     `json:"cluster,omitempty"`
	CAPS             int64      `json:"caps"`
	Unlimited        bool       `json:"unlimited,omitempty"`
	Sessions         int64      `json:"sessions"`
	Subscribers      int64      `json:"subscribers"`
	Tokens           int64      `json:"tokens"`
	TokensPerAttempt int64      `json:"tokens_per_attempt"`
	TokensPerMinute  int64      `json:"tokens_per_minute"`
	Overage          string     `json:"overage"`
	Period           string     `json:"period"`
	IssuedAt         time.Time  `json:"issued_at"`
	NotBefore        *time.Time `json:"not_before,omitempty"`
	NotAfter         *time.Time `json:"not_after,omitempty"`
	Grace            string     `json:"grace"`
	KeyID            string     `json:"key_id"`
	RevokedBy        string     `json:"revoked_by,omitempty"`
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func (r *Registry) view(e *entry) View {
	l := e.lic
	return View{
		ID: l.ID, Service: l.Service, State: string(e.state), Customer: l.Customer, Cluster: l.Cluster,
		CAPS: l.CAPS, Unlimited: l.Unlimited, Sessions: l.Sessions, Subscribers: l.Subscribers, Tokens: l.Tokens,
		TokensPerAttempt: l.TokensPerAttempt, TokensPerMinute: l.TokensPerMinute,
		Overage: orDefault(l.Overage, licensing.OverageNone), Period: orDefault(l.Period, licensing.PeriodNone),
		IssuedAt: l.IssuedAt.UTC(), NotBefore: timePtr(l.NotBefore), NotAfter: timePtr(l.NotAfter),
		Grace: l.Grace.String(), KeyID: l.KeyID, RevokedBy: r.revoked[l.ID],
	}
}

// List returns every loaded licence with its state, by service then id.
func (r *Registry) List() []View {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]View, 0, len(r.lics))
	for _, e := range r.lics {
		out = append(out, r.view(e))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Get returns one licence.
func (r *Registry) Get(id string) (View, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.lics[id]
	if !ok {
		return View{}, false
	}
	return r.view(e), true
}

// ForService returns the ids of the licences that count for a service now.
func (r *Registry) ForService(service string) []string {
	ids := []string{}
	for _, v := range r.List() {
		if v.Service == service && (v.State == string(licensing.StateActive) || v.State == string(licensing.StateGrace)) {
			ids = append(ids, v.ID)
		}
	}
	return ids
}

// ClockRollback reports the rollback alarm and how far the wall clock is
// behind the high-water mark.
func (r *Registry) ClockRollback() (bool, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.guard.rolledBack()
}

var allStates = []licensing.State{licensing.StatePending, licensing.StateActive, licensing.StateGrace,
	licensing.StateExpired, licensing.StateRevoked}

// WriteMetrics writes the licence metrics in the Prometheus text format:
// capsgate_license_state{license,service,state} (1 for the current state),
// capsgate_license_expiry_seconds{license,service} (until not_after;
// negative in grace; absent for a licence that never expires) and the
// clock-rollback alarm.
func (r *Registry) WriteMetrics(w io.Writer) {
	views := r.List()
	r.mu.Lock()
	now := r.now
	back, behind := r.guard.rolledBack()
	r.mu.Unlock()
	metrics.WriteMetadataIfNeeded(w, "capsgate_license_state", "gauge")
	for _, v := range views {
		for _, st := range allStates {
			n := 0
			if v.State == string(st) {
				n = 1
			}
			fmt.Fprintf(w, "capsgate_license_state{license=%q,service=%q,state=%q} %d\n", v.ID, v.Service, st, n)
		}
	}
	metrics.WriteMetadataIfNeeded(w, "capsgate_license_expiry_seconds", "gauge")
	for _, v := range views {
		if v.NotAfter != nil {
			fmt.Fprintf(w, "capsgate_license_expiry_seconds{license=%q,service=%q} %s\n", v.ID, v.Service,
				strconv.FormatFloat(v.NotAfter.Sub(now).Seconds(), 'f', 0, 64))
		}
	}
	alarm := 0
	if back {
		alarm = 1
	}
	metrics.WriteGaugeUint64(w, "capsgate_clock_rollback", uint64(alarm))
	metrics.WriteGaugeFloat64(w, "capsgate_clock_behind_seconds", behind.Seconds())
}

// Documents returns every revocation and every licence that is neither
// expired nor revoked, as received, for the cluster's state exchange (each
// node verifies them itself). An expired or revoked licence is kept here,
// listed, but not sent: a member that never loaded it would refuse it.
func (r *Registry) Documents() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([][]byte, 0, len(r.lics)+len(r.revDocs))
	r.eachSpread(func(d []byte) { out = append(out, d) })
	return out
}

// eachSpread calls f with each document Documents returns. Called with mu
// held.
func (r *Registry) eachSpread(f func([]byte)) {
	for _, d := range r.revDocs {
		f(d)
	}
	for _, e := range r.lics {
		if spread(e.state) {
			f(e.armored)
		}
	}
}

// spread reports whether a licence in state st goes to the other members.
func spread(st licensing.State) bool {
	return st != licensing.StateExpired && st != licensing.StateRevoked
}

// Digest names the set of documents Documents returns, whatever their
// order: two registries holding the same licences and revocations give
// the same digest, and a member's state sync sends its digest where it
// would send its documents, which go only to a member whose digest
// differs. It is computed once after each change.
func (r *Registry) Digest() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.digest == "" {
		var sums [][sha256.Size]byte
		r.eachSpread(func(d []byte) { sums = append(sums, sha256.Sum256(d)) })
		slices.SortFunc(sums, func(a, b [sha256.Size]byte) int { return bytes.Compare(a[:], b[:]) })
		h := sha256.New()
		for _, s := range sums {
			h.Write(s[:])
		}
		r.digest = hex.EncodeToString(h.Sum(nil)[:16])
	}
	return r.digest
}

// ClockMark returns the clock high-water mark, for peers.
func (r *Registry) ClockMark() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.guard.mark
}

// ObserveMark merges a peer's clock high-water mark: the cluster judges
// licences at the highest time any node has seen, so rolling back one
// node's clock (or restoring its data dir) revives nothing. A peer's mark
// more than the clock tolerance ahead of this node's own wall clock is not
// taken: one node booting with its clock years ahead must not expire every
// licence in the farm. It is logged, and this node keeps its own mark.
func (r *Registry) ObserveMark(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	wall := r.cfg.Wall()
	if t.After(wall.Add(r.cfg.ClockTolerance)) {
		if !r.warnedAhead {
			r.cfg.Log.Error("a member's clock is ahead of this node's by more than licensing.clock_tolerance; not taking its clock mark (check NTP on both)",
				"member_mark", t.UTC().Format(time.RFC3339), "wall", wall.UTC().Format(time.RFC3339))
			r.warnedAhead = true
		}
		return
	}
	r.warnedAhead = false
	if t.After(r.guard.mark) {
		r.guard.mark = t
	}
}
