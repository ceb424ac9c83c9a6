package meter

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/bounded"
)

// MinBlock is the smallest durable reservation step, in tokens.
const MinBlock = 1000

// BlockSeconds sizes a pool's reservation step: this long at the rate it
// is charged. The reserver wakes when half a step is left, so a step must
// outlast a write (an fsync: milliseconds); it is also the most a crash
// can over-count.
const BlockSeconds = 0.5

// StateFile is the name of the token state file in the data dir.
const StateFile = "tokens.json"

// Reserver keeps every token pool's charges covered by a reservation on
// disk, so that a kill -9 never loses an acknowledged charge: before the
// engine may charge a pool past a mark, the mark is written and fsync'd
// (Step), and after a restart each pool counts as charged up to its last
// mark (Restore). The over-count after a crash is at most one block per
// pool: max(MinBlock, half a second of that pool's charges, the largest
// charge that found its reservation short), and never more
// than what was left in the pool (reservations stop at its ceiling). A
// clean stop (Close) writes the exact charges: no over-count. Account
// allocations (PUT /v1/services/{s}/accounts/{a}) live in the same file.
//
// Step runs off the event loops, every StepEvery.
type Reserver struct {
	eng  *admission.Engine
	path string
	log  *slog.Logger

	mu       sync.Mutex // guards the fields below
	state    fileState
	rate     map[poolKey]rateSample
	restored map[string]bool // services given their saved state
}

// StepEvery is how often Step runs at the latest; the engine also wakes
// the reserver when a pool has half a step left (Config.ReserveWake).
const StepEvery = 50 * time.Millisecond

type poolKey struct{ service, account string }

type rateSample struct {
	at    time.Time
	used  int64
	rate  float64 // tokens per second
	block int64   // the last step
}

// fileState is the JSON of the state file.
type fileState struct {
	Services map[string]*serviceState `json:"services"`
}

type serviceState struct {
	// PeriodID is the usage period Base belongs to.
	PeriodID int64 `json:"period_id,omitempty"`
	// Pools by account ("" the service's own).
	Pools map[string]*poolState `json:"pools"`
	// Accounts are the allocations made through the admin API.
	Accounts map[string]Allocation `json:"accounts,omitempty"`
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

// Allocation is an account's part of a service's token pool.
type Allocation struct {
	Tokens  int64  `json:"tokens"`
	Overage string `json:"overage"`
	// At is when it was made (ns): of two allocations of one account made
	// on different nodes, the later holds everywhere.
	At int64 `json:"at,omitempty"`
}

// OpenReserver reads dir/tokens.json if there is one.
func OpenReserver(eng *admission.Engine, dir string, log *slog.Logger) (*Reserver, error) {
	r := &Reserver{eng: eng, path: filepath.Join(dir, StateFile), log: log, rate: map[poolKey]rateSample{}, restored: map[string]bool{},
		state: fileState{Services: map[string]*serviceState{}}}
	b, err := bounded.ReadFile(r.path, bounded.NodeState)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return r, nil
	case err != nil:
		return nil, fmt.Errorf("cannot read the token state: %w", err)
	}
	if err := json.Unmarshal(b, &r.state); err != nil {
		return nil, fmt.Errorf("cannot read the token state %s: %w (restore it from a backup; removing it would under-count)", r.path, err)
	}
	if r.state.Services == nil {
		r.state.Services = map[string]*serviceState{}
	}
	return r, nil
}

func (r *Reserver) service(name string) *serviceState {
	s := r.state.Services[name]
	if s == nil {
		s = &serviceState{Pools: map[string]*poolState{}}
		r.state.Services[name] = s
	}
	if s.Pools == nil {
		s.Pools = map[string]*poolState{}
	}
	return s
}

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
	for acct, a := range st.Accounts {
		ov, err := admission.ParseOverage(a.Overage)
		if err == nil {
			err = r.eng.SetAccount(s.Name(), acct, a.Tokens, ov)
		}
		if err != nil {
			r.log.Error("cannot restore an account allocation", "service", s.Name(), "account", acct, "err", err)
		}
	}
	for acct, p := range st.Pools {
		s.Restore(acct, p.Reserved, p.Base, st.PeriodID)
		s.Reserve(acct, p.Reserved, 0)
	}
}

// SetAccount allocates tokens to an account and persists the allocation.
func (r *Reserver) SetAccount(service, account string, a Allocation) error {
	ov, err := admission.ParseOverage(a.Overage)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.eng.SetAccount(service, account, a.Tokens, ov); err != nil {
		return err
	}
	return r.keepLocked(service, account, a, ov)
}

func (r *Reserver) keepLocked(service, account string, a Allocation, ov admission.Overage) error {
	st := r.service(service)
	if st.Accounts == nil {
		st.Accounts = map[string]Allocation{}
	}
	a.Overage = ov.String()
	st.Accounts[account] = a
	// Written with the new account's first reservation.
	return r.stepLocked(time.Now(), true)
}

// Apply takes an allocation made on another member: kept unless this node
// has a later one, and given to the engine now or, for a service not
// licensed here yet, when its licence arrives.
func (r *Reserver) Apply(service, account string, a Allocation) error {
	ov, err := admission.ParseOverage(a.Overage)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.service(service).Accounts[account]; ok && cur.At >= a.At {
		return nil
	}
	if r.eng.Service(service) != nil {
		if err := r.eng.SetAccount(service, account, a.Tokens, ov); err != nil {
			return err
		}
	} else {
		r.restored[service] = false
	}
	return r.keepLocked(service, account, a, ov)
}

// Allocations returns every allocation, by service and account.
func (r *Reserver) Allocations() map[string]map[string]Allocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]map[string]Allocation{}
	for name, st := range r.state.Services {
		for acct, a := range st.Accounts {
			if out[name] == nil {
				out[name] = map[string]Allocation{}
			}
			out[name][acct] = a
		}
	}
	return out
}

// Accounts returns a service's allocations.
func (r *Reserver) Accounts(service string) map[string]Allocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]Allocation{}
	if st, ok := r.state.Services[service]; ok {
		for k, v := range st.Accounts {
			out[k] = v
		}
	}
	return out
}

// Step moves every pool's reservation ahead of its charges where they
// came within half a block of it, writing the file (fsync'd) before the
// engine may use the new marks.
func (r *Reserver) Step(now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stepLocked(now, false)
}

// stepLocked is Step; write forces the file to be written.
func (r *Reserver) stepLocked(now time.Time, write bool) error {
	type grant struct {
		s             *admission.Service
		account       string
		reserved, low int64
	}
	var grants []grant
	for _, s := range r.eng.Services() {
		if !r.restored[s.Name()] {
			r.restoreLocked(s)
		}
		st := r.service(s.Name())
		for _, p := range s.Pools() {
			k := poolKey{s.Name(), p.Account}
			block := r.block(k, p.Total, p.Durable > 0 && p.Durable <= p.Total, now)
			ps := st.Pools[p.Account]
			if ps == nil {
				ps = &poolState{Ledgered: p.Total}
				st.Pools[p.Account] = ps
			}
			if ps.Base != p.Base || st.PeriodID != p.PeriodID {
				ps.Base, st.PeriodID, write = p.Base, p.PeriodID, true
			}
			// A step covers at least the largest charge refused for want
			// of a reservation (a CONSUME of more units than a step).
			block = max(block, p.Wanted)
			next := admission.SatAdd(p.Total, block)
			if c := p.Ceiling(); c >= 0 {
				// No charge can go past the pool's ceiling this period:
				// reserving beyond it would only over-count after a crash.
				next = min(next, max(admission.SatAdd(p.Base, c), p.Total))
			}
			if p.Durable >= 0 && ((p.Durable-p.Total >= block/2 && p.Wanted == 0) || p.Durable >= next) {
				continue
			}
			ps.Reserved = max(ps.Reserved, next)
			grants = append(grants, grant{s, p.Account, ps.Reserved, block / 2})
		}
	}
	if len(grants) == 0 && !write {
		return nil
	}
	if err := r.writeLocked(); err != nil {
		return err
	}
	for _, g := range grants {
		g.s.Reserve(g.account, g.reserved, g.low)
	}
	return nil
}

// block is a pool's reservation step: two seconds of its charges, at
// least MinBlock.
func (r *Reserver) block(k poolKey, used int64, exhausted bool, now time.Time) int64 {
	prev, ok := r.rate[k]
	if !ok {
		prev = rateSample{at: now, used: used, block: MinBlock}
	}
	if el := now.Sub(prev.at).Seconds(); el >= 0.1 {
		rate := float64(used-prev.used) / el
		prev = rateSample{at: now, used: used, rate: max(rate, prev.rate*0.5), block: prev.block}
	}
	block := max(MinBlock, admission.SatFloor(BlockSeconds*prev.rate))
	if exhausted {
		// Charges outran the reservation (a sudden rise): double the step
		// until they do not.
		block = max(block, admission.SatMul(2, prev.block))
	}
	prev.block = block
	r.rate[k] = prev
	return block
}

// Close writes every pool's reservation as exactly what it charged: after
// a clean stop (the front end closed first) nothing is in flight, so the
// next start counts no token twice.
func (r *Reserver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.eng.Services() {
		st := r.service(s.Name())
		for _, p := range s.Pools() {
			if ps := st.Pools[p.Account]; ps != nil {
				ps.Reserved = p.Total
				ps.Ledgered = min(ps.Ledgered, p.Total)
			}
		}
	}
	return r.writeLocked()
}

// Ledgered returns how far a pool's charges are in the ledger, or -1 when
// the state file does not know the pool.
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
// (written with the next reservation, or at once when flush is set).
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
		p.Ledgered = max(p.Ledgered, used)
	}
	if flush {
		return r.writeLocked()
	}
	return nil
}

// writeLocked replaces the state file atomically and durably: a temporary
// file, fsync, rename, fsync of the directory.
func (r *Reserver) writeLocked() error {
	b, err := json.Marshal(r.state)
	if err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("cannot write the token state: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(r.path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("cannot write the token state %s: %w", r.path, err)
	}
	return nil
}
