package licensing

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/capsgate/capsgate/admission/strictjson"
)

// licenseWire is the canonical, signed form of a License: the JSON of this
// struct, fields in this order, every field present, no insignificant
// whitespace. Times are RFC 3339 in UTC with "Z" and only the fraction of a
// second they need ("" for the zero time); the grace is a Go duration
// string ("72h0m0s"). The bytes depend on the values alone, so verifying
// re-encodes a decoded licence and insists on the very bytes it was sent.
type licenseWire struct {
	ID               string `json:"id"`
	IssuedAt         string `json:"issued_at"`
	KeyID            string `json:"key_id"`
	Customer         string `json:"customer"`
	Cluster          string `json:"cluster"`
	Service          string `json:"service"`
	CAPS             int64  `json:"caps"`
	Unlimited        bool   `json:"unlimited"`
	Sessions         int64  `json:"sessions"`
	Subscribers      int64  `json:"subscribers"`
	Tokens           int64  `json:"tokens"`
	TokensPerAttempt int64  `json:"tokens_per_attempt"`
	TokensPerMinute  int64  `json:"tokens_per_minute"`
	Overage          string `json:"overage"`
	Period           string `json:"period"`
	NotBefore        string `json:"not_before"`
	NotAfter         string `json:"not_after"`
	Grace            string `json:"grace"`
}

// Canonical returns the licence's canonical encoding: the bytes a signature
// covers (after the domain prefix). It does not validate.
func (l *License) Canonical() ([]byte, error) {
	return json.Marshal(licenseWire{
		ID: l.ID, IssuedAt: formatTime(l.IssuedAt), KeyID: l.KeyID,
		Customer: l.Customer, Cluster: l.Cluster, Service: l.Service,
		CAPS: l.CAPS, Unlimited: l.Unlimited, Sessions: l.Sessions, Subscribers: l.Subscribers,
		Tokens: l.Tokens, TokensPerAttempt: l.TokensPerAttempt, TokensPerMinute: l.TokensPerMinute,
		Overage: l.Overage, Period: l.Period,
		NotBefore: formatTime(l.NotBefore), NotAfter: formatTime(l.NotAfter), Grace: l.Grace.String(),
	})
}

// parse sets l from a canonical encoding. It checks the syntax (JSON, no
// unknown fields, times, duration), not the values.
func (l *License) parse(data []byte) error {
	var w licenseWire
	if err := unmarshalStrict(data, &w); err != nil {
		return err
	}
	var p parser
	*l = License{
		ID: w.ID, IssuedAt: p.time("issued_at", w.IssuedAt), KeyID: w.KeyID,
		Customer: w.Customer, Cluster: w.Cluster, Service: w.Service,
		CAPS: w.CAPS, Unlimited: w.Unlimited, Sessions: w.Sessions, Subscribers: w.Subscribers,
		Tokens: w.Tokens, TokensPerAttempt: w.TokensPerAttempt, TokensPerMinute: w.TokensPerMinute,
		Overage: w.Overage, Period: w.Period,
		NotBefore: p.time("not_before", w.NotBefore), NotAfter: p.time("not_after", w.NotAfter),
		Grace: p.duration("grace", w.Grace),
	}
	return p.err
}

// unmarshalStrict decodes one JSON value into v: nothing after it, no
// duplicate keys, no fields v does not have (see strictjson).
func unmarshalStrict(data []byte, v any) error {
	if err := strictjson.Decode(data, v); err != nil {
		return fmt.Errorf("%w: bad JSON: %v", ErrMalformed, err)
	}
	return nil
}

// parser turns the wire form's strings into values, keeping the first
// error so that a struct literal can call it field after field.
type parser struct {
	err error
}

func (p *parser) time(name, s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	p.fail(name, s, err)
	return t.UTC()
}

func (p *parser) duration(name, s string) time.Duration {
	d, err := time.ParseDuration(s)
	p.fail(name, s, err)
	return d
}

func (p *parser) fail(name, s string, err error) {
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%w: cannot parse %s %q", ErrMalformed, name, s)
	}
}

// formatTime writes t in the canonical form; "" for the zero time.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
