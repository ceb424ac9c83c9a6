// Package trunks keeps the limits an operator gives keys inside its
// licensed services (trunks, customers, source prefixes: what ADMIT ...
// TRUNK key names), durably and the same on every member.
//
// A Limit is set through any member's admin API (or the config file) and
// carries the instant it was set: of two settings of one key, the later
// holds, wherever and in whatever order they arrive, so the members agree
// once each has heard of both (the cluster spreads every change as it is
// made, and again in its state sync). A removal is a setting too (a
// tombstone), so that it spreads and is not undone by a member that
// missed it; tombstones older than TombstoneTTL are dropped when the file
// is compacted.
//
// The book is an append-only file of JSON lines, one setting each, fsynced
// before a setting is acknowledged, and rewritten whole (atomically) when
// it holds more than twice the settings in force. Its size is bounded
// before it is read; a torn last line (a crash in mid-append) is dropped,
// any other damage stops the start with the line's number.
package trunks

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/durable"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/admission/setsum"
)

// Limit is one key's limits. A limit left out is not enforced.
type Limit struct {
	// CAPS is the key's call attempts per second across the farm, or -1
	// for none.
	CAPS float64 `json:"caps"`
	// Burst is the depth of the key's bucket in attempts (0: the node's
	// admission burst of CAPS, as for a licence).
	Burst int64 `json:"burst,omitempty"`
	// Sessions is the key's concurrent sessions across the farm, or -1
	// for none.
	Sessions int64 `json:"sessions"`
	// At is when it was set (Unix ns): the later setting holds.
	At int64 `json:"at"`
	// Removed marks a removal.
	Removed bool `json:"removed,omitempty"`
}

// Bounds of a Limit's fields.
const (
	// MaxCAPS bounds a key's CAPS: a billion attempts a second, beyond
	// any farm.
	MaxCAPS = 1e9
	// MaxBurst bounds a key's burst.
	MaxBurst = 1e9
	// MaxAt bounds a setting's instant (Unix nanoseconds, the year 2116):
	// one at MaxInt64 from a member would make lastSeen+1 wrap, and the
	// key's limits unchangeable.
	MaxAt = 1 << 62
)

// Validate reports the first field out of range.
func (l Limit) Validate() error {
	switch {
	case math.IsNaN(l.CAPS) || (l.CAPS < 0 && l.CAPS != -1) || l.CAPS > MaxCAPS:
		return fmt.Errorf("caps must be between 0 and %g (or left out for none), got %v", float64(MaxCAPS), l.CAPS)
	case l.Burst < 0 || l.Burst > MaxBurst:
		return fmt.Errorf("burst must be between 0 and %d attempts, got %d", int64(MaxBurst), l.Burst)
	case l.Sessions < -1:
		return fmt.Errorf("sessions must be 0 or more (or left out for none), got %d", l.Sessions)
	case l.At < 0 || l.At > MaxAt:
		return fmt.Errorf("at must be between 0 and %d, got %d", int64(MaxAt), l.At)
	}
	return nil
}

// Limits returns what the engine enforces for the farm: a removed key has
// none (it is decided by its licence alone).
func (l Limit) Limits() admission.Limits {
	if l.Removed {
		return admission.Limits{Sessions: admission.Unlimited, Subscribers: admission.Unlimited, Tokens: admission.Unlimited, State: "none"}
	}
	caps := l.CAPS
	if caps < 0 {
		caps = admission.Unlimited
	}
	sessions := l.Sessions
	if sessions < 0 {
		sessions = admission.Unlimited
	}
	return admission.Limits{Licensed: true, CAPS: caps, Burst: l.Burst, Sessions: sessions, Subscribers: admission.Unlimited,
		Tokens: admission.Unlimited, State: "active"}
}

// Setting is one key's limit as the book's file and the cluster carry it.
type Setting struct {
	Service string `json:"service"`
	Key     string `json:"key"`
	Limit   Limit  `json:"limit"`
}

// Check reports what is wrong with a setting: its names, its limit.
func (s Setting) Check() error {
	if !names.Valid([]byte(s.Service)) {
		return fmt.Errorf("invalid service name %q: want [A-Za-z0-9._:-]{1,64}", s.Service)
	}
	if !names.Valid([]byte(s.Key)) {
		return fmt.Errorf("invalid key %q: want [A-Za-z0-9._:-]{1,64}", s.Key)
	}
	return s.Limit.Validate()
}

// Sink takes a key's limits for the farm (cluster.Shares, under
// admission.TrunkName).
type Sink interface {
	SetLimits(name string, l admission.Limits) error
}

// Settings.
const (
	// DefaultMaxKeys bounds the keys with limits (tombstones included).
	DefaultMaxKeys = 200_000
	// MaxFileBytes bounds the book's file before it is read: 200,000 keys
	// are about 25 MB of lines.
	MaxFileBytes = 256 << 20
	// TombstoneTTL is how long a removal is kept for members that missed it.
	TombstoneTTL = 7 * 24 * time.Hour
	// FileName is the book's file in the data directory.
	FileName = "trunks.log"
)

// Errors of Set.
var (
	ErrTooMany = errors.New("too many keys with limits")
	ErrStale   = errors.New("a later setting holds")
)

// Book is the limits of every key, durable.
type Book struct {
	mu       sync.Mutex
	path     string
	maxKeys  int
	sink     Sink
	byName   map[string]map[string]Limit // service → key → limit
	n        int                         // entries, tombstones included
	f        *os.File
	lines    int // lines in the file
	lastSeen int64
	// sum is the digest of the limits in force (Digest), once summed:
	// kept as put changes them from then on.
	sum    setsum.Sum
	summed bool
}

// Open reads the book in dir (created if absent), compacting it when it
// has grown, and applies every key's limits to sink (nil: none yet; see
// SetSink). maxKeys 0 means DefaultMaxKeys.
func Open(dir string, maxKeys int, sink Sink) (*Book, error) {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	b := &Book{path: filepath.Join(dir, FileName), maxKeys: maxKeys, sink: sink, byName: map[string]map[string]Limit{}}
	if err := b.read(); err != nil {
		return nil, err
	}
	if err := b.compact(time.Now()); err != nil {
		return nil, err
	}
	for svc, keys := range b.byName {
		for key, l := range keys {
			b.apply(svc, key, l)
		}
	}
	return b, nil
}

// read replays the file.
func (b *Book) read() error {
	f, err := os.Open(b.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() > MaxFileBytes {
		return fmt.Errorf("%s: %d bytes, more than a limits book may hold (%d)", b.path, st.Size(), MaxFileBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes))
	if err != nil {
		return err
	}
	line := 0
	for len(data) > 0 {
		line++
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // torn in mid-append: never acknowledged
		}
		var s Setting
		if err := json.Unmarshal(data[:i], &s); err != nil {
			return fmt.Errorf("%s: line %d: %v", b.path, line, err)
		}
		// An earlier release took any instant from a member: one past
		// MaxAt is read as now, rather than stop the node starting or
		// leave the key's limits unchangeable.
		if s.Limit.At > MaxAt {
			s.Limit.At = time.Now().UnixNano()
		}
		if err := s.Check(); err != nil {
			return fmt.Errorf("%s: line %d: %v", b.path, line, err)
		}
		b.put(s)
		b.lines++
		data = data[i+1:]
	}
	return nil
}

// put records s if it is later than what the book holds of its key; it
// reports whether it did. Called with mu held (or before the book is shared).
func (b *Book) put(s Setting) bool {
	keys := b.byName[s.Service]
	cur, ok := keys[s.Key]
	if ok && !supersedes(s.Limit, cur) {
		return false
	}
	if keys == nil {
		keys = map[string]Limit{}
		b.byName[s.Service] = keys
	}
	if !ok {
		b.n++
	}
	if b.summed {
		if ok && !cur.Removed {
			b.sum.Sub(settingSum(s.Service, s.Key, cur))
		}
		if !s.Limit.Removed {
			b.sum.Add(settingSum(s.Service, s.Key, s.Limit))
		}
	}
	keys[s.Key] = s.Limit
	b.lastSeen = max(b.lastSeen, s.Limit.At)
	return true
}

// supersedes reports whether setting a holds over b: it is later, or as
// late and later by the tie-break.
func supersedes(a, b Limit) bool { return a.At > b.At || a.At == b.At && later(a, b) }

// later orders two settings made in the same nanosecond, so that every
// member keeps the same one: a removal, else the larger JSON.
func later(a, b Limit) bool {
	if a.Removed != b.Removed {
		return a.Removed
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Compare(ja, jb) > 0
}

// compact rewrites the file with the settings in force (and removals
// younger than TombstoneTTL) when it holds more than twice as many lines.
func (b *Book) compact(now time.Time) error {
	if b.lines <= 2*b.n+64 && b.f != nil {
		return nil
	}
	var buf bytes.Buffer
	all := b.settingsLocked()
	cutoff := now.Add(-TombstoneTTL).UnixNano()
	kept := 0
	for _, s := range all {
		if s.Limit.Removed && s.Limit.At < cutoff {
			delete(b.byName[s.Service], s.Key)
			b.n--
			continue
		}
		line, _ := json.Marshal(s)
		buf.Write(line)
		buf.WriteByte('\n')
		kept++
	}
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
	if err := durable.WriteFile(b.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("cannot write the limits book: %w", err)
	}
	f, err := os.OpenFile(b.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("cannot open the limits book: %w", err)
	}
	b.f, b.lines = f, kept
	return nil
}

// Digest names the limits in force (removals left out: a key removed and
// one never set are alike to whoever enforces them): two members holding
// the same give the same digest, and the cluster's state sync sends the
// settings only where digests differ.
func (b *Book) Digest() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.summed {
		b.sum = setsum.Sum{}
		for svc, keys := range b.byName {
			for key, l := range keys {
				if !l.Removed {
					b.sum.Add(settingSum(svc, key, l))
				}
			}
		}
		b.summed = true
	}
	return b.sum.String()
}

// settingSum is one key's part of Digest.
func settingSum(service, key string, l Limit) setsum.Sum {
	line, _ := json.Marshal(Setting{Service: service, Key: key, Limit: l})
	return setsum.Of(line)
}

// SetSink makes sink take every key's limits, now and as they change.
func (b *Book) SetSink(sink Sink) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sink = sink
	for svc, keys := range b.byName {
		for key, l := range keys {
			b.apply(svc, key, l)
		}
	}
}

func (b *Book) apply(service, key string, l Limit) {
	if b.sink != nil {
		_ = b.sink.SetLimits(admission.TrunkName(service, key), l.Limits()) // only ErrTooManyTrunks, past a bound the book holds under
	}
}

// Set records s, durably, if it is later than what the book holds of its
// key (ErrStale otherwise), and applies it. It reports whether the key is
// new. s.Limit.At 0 means now (later than every setting the book has seen).
func (b *Book) Set(s Setting) (added bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.Limit.At == 0 {
		s.Limit.At = max(time.Now().UnixNano(), b.lastSeen+1)
	}
	if err := s.Check(); err != nil {
		return false, err
	}
	cur, ok := b.byName[s.Service][s.Key]
	if !ok && b.n >= b.maxKeys {
		return false, fmt.Errorf("%w: %d, the most a farm's book holds (trunks.max_keys)", ErrTooMany, b.maxKeys)
	}
	if ok && !supersedes(s.Limit, cur) {
		return false, ErrStale
	}
	line, _ := json.Marshal(s)
	line = append(line, '\n')
	if _, err := b.f.Write(line); err != nil {
		return false, fmt.Errorf("cannot write the limits book: %w", err)
	}
	if err := b.f.Sync(); err != nil {
		return false, fmt.Errorf("cannot sync the limits book: %w", err)
	}
	b.lines++
	b.put(s)
	b.apply(s.Service, s.Key, s.Limit)
	if err := b.compact(time.Now()); err != nil {
		return false, err
	}
	return !ok || cur.Removed, nil
}

// Merge records every setting of all that is later than what the book
// holds of its key, durably with one write and one fsync for them all
// (a member's state sync may carry 100,000), and applies them. Settings
// that are malformed are skipped and reported in the error; the others
// are kept. It returns how many it recorded.
func (b *Book) Merge(all []Setting) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var buf bytes.Buffer
	var errs []error
	// The latest of each key's settings in all, in the order keys first
	// appear, then those later than the book's.
	latest := map[[2]string]int{}
	var batch []Setting
	for _, s := range all {
		if err := s.Check(); err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", s.Service, s.Key, err))
			continue
		}
		k := [2]string{s.Service, s.Key}
		if i, ok := latest[k]; !ok {
			latest[k] = len(batch)
			batch = append(batch, s)
		} else if supersedes(s.Limit, batch[i].Limit) {
			batch[i] = s
		}
	}
	var won []Setting
	added := 0
	for _, s := range batch {
		cur, ok := b.byName[s.Service][s.Key]
		if ok && !supersedes(s.Limit, cur) {
			continue
		}
		if !ok {
			if b.n+added >= b.maxKeys {
				errs = append(errs, fmt.Errorf("%s/%s: %w", s.Service, s.Key, ErrTooMany))
				continue
			}
			added++
		}
		line, _ := json.Marshal(s)
		buf.Write(line)
		buf.WriteByte('\n')
		won = append(won, s)
	}
	if len(won) == 0 {
		return 0, errors.Join(errs...)
	}
	if _, err := b.f.Write(buf.Bytes()); err != nil {
		return 0, fmt.Errorf("cannot write the limits book: %w", err)
	}
	if err := b.f.Sync(); err != nil {
		return 0, fmt.Errorf("cannot sync the limits book: %w", err)
	}
	b.lines += len(won)
	for _, s := range won {
		if b.put(s) {
			b.apply(s.Service, s.Key, s.Limit)
		}
	}
	if err := b.compact(time.Now()); err != nil {
		errs = append(errs, err)
	}
	return len(won), errors.Join(errs...)
}

// Get returns a key's limit in force.
func (b *Book) Get(service, key string) (Limit, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.byName[service][key]
	return l, ok && !l.Removed
}

// Lookup returns what the book holds of a key, a removal included.
func (b *Book) Lookup(service, key string) (Setting, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.byName[service][key]
	return Setting{Service: service, Key: key, Limit: l}, ok
}

// List returns the limits in force of a service's keys, sorted by key.
func (b *Book) List(service string) []Setting {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Setting
	for key, l := range b.byName[service] {
		if !l.Removed {
			out = append(out, Setting{Service: service, Key: key, Limit: l})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Settings returns every setting, removals included, sorted by service
// and key: what the cluster's state sync carries.
func (b *Book) Settings() []Setting {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.settingsLocked()
}

func (b *Book) settingsLocked() []Setting {
	out := make([]Setting, 0, b.n)
	for svc, keys := range b.byName {
		for key, l := range keys {
			out = append(out, Setting{Service: svc, Key: key, Limit: l})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// Len returns how many keys have limits in force.
func (b *Book) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, keys := range b.byName {
		for _, l := range keys {
			if !l.Removed {
				n++
			}
		}
	}
	return n
}

// Close closes the file.
func (b *Book) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.f == nil {
		return nil
	}
	err := b.f.Close()
	b.f = nil
	return err
}

// ParseSetting reads a key's limits as the config file and the command
// line write them: "SERVICE/KEY caps=N burst=N sessions=N", each limit
// optional (left out: none) and none twice.
func ParseSetting(s string) (Setting, error) {
	const want = `want "SERVICE/KEY caps=N burst=N sessions=N"`
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return Setting{}, fmt.Errorf("empty key limits: %s", want)
	}
	svc, key, ok := strings.Cut(fields[0], "/")
	if !ok {
		return Setting{}, fmt.Errorf("%q: no SERVICE/KEY: %s", s, want)
	}
	set := Setting{Service: svc, Key: key, Limit: Limit{CAPS: -1, Sessions: -1}}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		name, v, ok := strings.Cut(f, "=")
		if !ok || seen[name] {
			return Setting{}, fmt.Errorf("%q: %q: %s", s, f, want)
		}
		seen[name] = true
		var err error
		switch name {
		case "caps":
			set.Limit.CAPS, err = strconv.ParseFloat(v, 64)
			if err == nil && set.Limit.CAPS < 0 {
				err = errors.New("negative")
			}
		case "burst":
			set.Limit.Burst, err = strconv.ParseInt(v, 10, 64)
		case "sessions":
			set.Limit.Sessions, err = strconv.ParseInt(v, 10, 64)
			if err == nil && set.Limit.Sessions < 0 {
				err = errors.New("negative")
			}
		default:
			return Setting{}, fmt.Errorf("%q: unknown limit %q: %s", s, name, want)
		}
		if err != nil {
			return Setting{}, fmt.Errorf("%q: %s must be a number of 0 or more, got %q", s, name, v)
		}
	}
	if err := set.Check(); err != nil {
		return Setting{}, fmt.Errorf("%q: %v", s, err)
	}
	return set, nil
}
