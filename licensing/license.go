package licensing

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/capsgate/capsgate/admission/names"
)

// Overage policies and periods, as written in a licence.
const (
	OverageNone      = "none"
	OverageUnlimited = "unlimited"
	overagePercent   = "percent:" // followed by N, 0 ≤ N ≤ MaxOveragePercent

	PeriodNone    = "none"
	PeriodMonthly = "monthly"
)

// MaxOveragePercent bounds N in "percent:N".
const MaxOveragePercent = 1000

// Length bounds of a licence's free-text fields, in bytes.
const (
	MaxNameLen     = 64   // id, service, cluster: [A-Za-z0-9._:-]{1,64}
	MaxCustomerLen = 256  // a company name with its legal form fits
	MaxReasonLen   = 1024 // a revocation's reason: a sentence or two
)

// License is one capacity licence: what the vendor sold a customer for one
// service, and when it counts. Licences for the same service stack (see
// Effective). The zero value of each optional field means its default.
type License struct {
	// ID names the licence for good: loading is idempotent by ID and a
	// Revocation retires IDs. Sign sets a random 128-bit hex ID when empty.
	// It matches [A-Za-z0-9._:-]{1,64} and does not start with a dot, so a
	// node can use it as a file name.
	ID string
	// IssuedAt is when the vendor signed the licence: UTC, whole seconds.
	// It orders licences (see Effective). Sign sets it when zero.
	IssuedAt time.Time
	// Customer is who bought the licence; informational.
	Customer string
	// Cluster binds the licence to the node's cluster_id; "" means any
	// cluster (see AppliesTo).
	Cluster string
	// Service is what the licence covers: [A-Za-z0-9._:-]{1,64}.
	Service string

	// CAPS, Sessions, Subscribers and Tokens are what this licence adds to
	// the service: call attempts per second, concurrent sessions,
	// registered subscribers and prepaid tokens. 0 adds nothing.
	CAPS        int64
	Sessions    int64
	Subscribers int64
	Tokens      int64
	// TokensPerAttempt is charged for each admitted attempt,
	// TokensPerMinute for each started minute of a released call.
	TokensPerAttempt int64
	TokensPerMinute  int64
	// Overage says what happens when the token pool is empty: "none"
	// (the default, also ""), "percent:N" or "unlimited".
	Overage string
	// Period is "monthly" (usage limits reset each calendar month, UTC) or
	// "none" (the default, also "").
	Period string
	// Unlimited lifts the software CAPS limit; the node's max_caps holds.
	Unlimited bool

	// NotBefore is when the licence starts to count; zero means at once.
	NotBefore time.Time
	// NotAfter is when it stops counting, after which Grace more keeps its
	// limits in state grace; zero means never.
	NotAfter time.Time
	Grace    time.Duration

	// KeyID is the id of the vendor key that signed the licence (see
	// KeyID); Sign sets it.
	KeyID string
}

// Validate reports the first problem of a complete licence, as Sign leaves
// it (ID, IssuedAt and KeyID set), naming the field.
func (l *License) Validate() error {
	if err := checkHeader(l.ID, l.IssuedAt, l.KeyID); err != nil {
		return err
	}
	if err := checkText("customer", l.Customer, MaxCustomerLen); err != nil {
		return err
	}
	if l.Cluster != "" && !validName(l.Cluster) {
		return fieldError("cluster", "must match [A-Za-z0-9._:-]{1,64} or be empty, got %q", l.Cluster)
	}
	if !validName(l.Service) {
		return fieldError("service", "must match [A-Za-z0-9._:-]{1,64}, got %q", l.Service)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"caps", l.CAPS}, {"sessions", l.Sessions}, {"subscribers", l.Subscribers}, {"tokens", l.Tokens},
		{"tokens_per_attempt", l.TokensPerAttempt}, {"tokens_per_minute", l.TokensPerMinute},
	} {
		if f.v < 0 {
			return fieldError(f.name, "must be >= 0, got %d", f.v)
		}
	}
	if err := checkOverage(l.Overage); err != nil {
		return err
	}
	if l.Period != "" && l.Period != PeriodNone && l.Period != PeriodMonthly {
		return fieldError("period", "must be none or monthly, got %q", l.Period)
	}
	if err := checkTime("not_before", l.NotBefore); err != nil {
		return err
	}
	if err := checkTime("not_after", l.NotAfter); err != nil {
		return err
	}
	if !l.NotBefore.IsZero() && !l.NotAfter.IsZero() && !l.NotAfter.After(l.NotBefore) {
		return fieldError("not_after", "must be after not_before (%s), got %s", formatTime(l.NotBefore), formatTime(l.NotAfter))
	}
	if l.Grace < 0 {
		return fieldError("grace", "must be >= 0, got %s", l.Grace)
	}
	return nil
}

// AppliesTo reports whether the licence may be loaded on the cluster with
// the given cluster_id: it names that cluster or none.
func (l *License) AppliesTo(clusterID string) bool {
	return l.Cluster == "" || l.Cluster == clusterID
}

// Field is one named value of a document, for people: armor headers and
// the output of capslicense verify and inspect.
type Field struct {
	Name, Value string
}

// Fields returns the licence's fields in display form, in a fixed order.
func (l *License) Fields() []Field {
	caps := strconv.FormatInt(l.CAPS, 10)
	if l.Unlimited {
		caps = "unlimited"
	}
	return []Field{
		{"Id", l.ID},
		{"Issued-At", formatTime(l.IssuedAt)},
		{"Customer", l.Customer},
		{"Cluster", orDefault(l.Cluster, "any")},
		{"Service", l.Service},
		{"Caps", caps},
		{"Sessions", strconv.FormatInt(l.Sessions, 10)},
		{"Subscribers", strconv.FormatInt(l.Subscribers, 10)},
		{"Tokens", strconv.FormatInt(l.Tokens, 10)},
		{"Tokens-Per-Attempt", strconv.FormatInt(l.TokensPerAttempt, 10)},
		{"Tokens-Per-Minute", strconv.FormatInt(l.TokensPerMinute, 10)},
		{"Overage", orDefault(l.Overage, OverageNone)},
		{"Period", orDefault(l.Period, PeriodNone)},
		{"Not-Before", orDefault(formatTime(l.NotBefore), "immediately")},
		{"Not-After", orDefault(formatTime(l.NotAfter), "never")},
		{"Grace", l.Grace.String()},
		{"Key-Id", l.KeyID},
	}
}

// complete fills what Sign fills: the defaults and the signing key's id.
func (l *License) complete(keyID string, now time.Time) {
	stamp(&l.ID, &l.IssuedAt, &l.KeyID, keyID, now)
	l.Overage = orDefault(l.Overage, OverageNone)
	l.Period = orDefault(l.Period, PeriodNone)
}

// checkOverage accepts "", "none", "unlimited" and "percent:N" with N a
// plain decimal 0..MaxOveragePercent (no sign, no leading zeros), so that
// one policy has one spelling.
func checkOverage(s string) error {
	switch s {
	case "", OverageNone, OverageUnlimited:
		return nil
	}
	n, ok := strings.CutPrefix(s, overagePercent)
	if ok && n != "" && len(n) <= 4 && strings.Trim(n, "0123456789") == "" && (n == "0" || n[0] != '0') {
		if v, _ := strconv.Atoi(n); v <= MaxOveragePercent {
			return nil
		}
	}
	return fieldError("overage", "must be none, percent:N (0 <= N <= %d) or unlimited, got %q", MaxOveragePercent, s)
}

// checkHeader checks what every signed document carries: its id, when it
// was issued and the key that signed it.
func checkHeader(id string, issuedAt time.Time, keyID string) error {
	if !validID(id) {
		return fieldError("id", "must match [A-Za-z0-9._:-]{1,64} and not start with a dot, got %q", id)
	}
	if issuedAt.IsZero() {
		return fieldError("issued_at", "must be set")
	}
	if err := checkTime("issued_at", issuedAt); err != nil {
		return err
	}
	if issuedAt.Nanosecond() != 0 {
		return fieldError("issued_at", "must be whole seconds, got %s", formatTime(issuedAt))
	}
	if !validKeyID(keyID) {
		return fieldError("key_id", "must be 16 lowercase hex digits, got %q", keyID)
	}
	return nil
}

// checkTime accepts the zero time and times RFC 3339 can write (years
// 0001..9999).
func checkTime(name string, t time.Time) error {
	if !t.IsZero() && (t.UTC().Year() < 1 || t.UTC().Year() > 9999) {
		return fieldError(name, "must be within years 0001..9999, got year %d", t.UTC().Year())
	}
	return nil
}

// checkText accepts valid UTF-8 of at most max bytes without control
// characters (a newline would break the armor's header lines).
func checkText(name, s string, max int) error {
	switch {
	case len(s) > max:
		return fieldError(name, "must be at most %d bytes, got %d", max, len(s))
	case !utf8.ValidString(s):
		return fieldError(name, "must be valid UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		return fieldError(name, "must not contain control characters, got %q", s)
	}
	return nil
}

// validName reports whether s is a name: [A-Za-z0-9._:-]{1,64}, not "."
// or ".." (the one rule the admission engine applies to every name).
func validName(s string) bool { return names.Valid([]byte(s)) }

// validID is validName without a leading dot ("." and ".." are no file
// names).
func validID(s string) bool {
	return validName(s) && s[0] != '.'
}

func fieldError(name, format string, args ...any) error {
	return fmt.Errorf("invalid field %s: "+format, append([]any{name}, args...)...)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
