package licensing

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Errors that Verify, VerifyRevocation, Decode and DecodeRevocation wrap
// (test with errors.Is); the wrapping message says what exactly is wrong.
var (
	// ErrMalformed: the input is not a well-formed document: no armor
	// block, cut short, bad base64 or JSON, unknown fields, a value that
	// does not parse or is not in canonical form, or (from Decode and from
	// Verify once the signature is good) invalid field values.
	ErrMalformed = errors.New("malformed")
	// ErrBadSignature: the signature does not match the document and the
	// key it names: the document was altered, or signed by another key.
	ErrBadSignature = errors.New("bad signature")
	// ErrUnknownKey: the document names a signing key that is not in the
	// keyring.
	ErrUnknownKey = errors.New("unknown vendor key")
)

// kind is one type of signed document: how it is armored, where its body
// sits in the envelope and the domain its signature is bound to, so that a
// signature over one kind never verifies as another.
type kind struct {
	noun   string // for messages
	label  string // -----BEGIN <label>-----
	field  string // the envelope's body field
	domain string // prefix of the signed message
}

var (
	licenseKind    = kind{noun: "licence", label: "CAPSGATE LICENSE", field: "license", domain: "capsgate-license-v1\n"}
	revocationKind = kind{noun: "revocation", label: "CAPSGATE LICENSE REVOCATION", field: "revocation", domain: "capsgate-revocation-v1\n"}
)

// document is what a signed document type (License, Revocation) gives the
// one envelope code both share.
type document[T any] interface {
	*T
	Canonical() ([]byte, error)
	Validate() error
	Fields() []Field
	parse(data []byte) error
	signer() string
}

// The envelope is the armored payload: the canonical document and the
// Ed25519 signature over kind.domain + document, written exactly as
//
//	{"<kind.field>":<canonical document>,"sig":"<base64 of 64 bytes>"}
//
// A decoder rebuilds these bytes from what it parsed and refuses anything
// else, so a verified document has exactly one encoding.
func envelope(k kind, body, sig []byte) []byte {
	return fmt.Appendf(nil, `{"%s":%s,"sig":"%s"}`, k.field, body, base64.StdEncoding.EncodeToString(sig))
}

// seal validates doc, signs it with key and returns it armored.
func seal[T any, P document[T]](k kind, key *VendorKey, doc P) ([]byte, error) {
	if err := doc.Validate(); err != nil {
		return nil, fmt.Errorf("cannot sign %s: %w", k.noun, err)
	}
	body, err := doc.Canonical()
	if err != nil {
		return nil, fmt.Errorf("cannot encode %s: %w", k.noun, err)
	}
	sig := ed25519.Sign(key.priv, append([]byte(k.domain), body...))
	return armor(k.label, doc.Fields(), envelope(k, body, sig)), nil
}

// open decodes an armored document without checking its signature or its
// values. It returns the document, its canonical bytes and the signature.
func open[T any, P document[T]](k kind, armored []byte) (P, []byte, []byte, error) {
	doc, body, sig, _, err := openWithHeaders[T, P](k, armored)
	return doc, body, sig, err
}

// openWithHeaders is open that also returns the armor's header lines.
func openWithHeaders[T any, P document[T]](k kind, armored []byte) (P, []byte, []byte, []string, error) {
	payload, headers, err := unarmor(k.label, armored)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	doc, body, sig, err := parseEnvelope[T, P](k, payload)
	return doc, body, sig, headers, err
}

// parseEnvelope reads the envelope of an armored payload.
func parseEnvelope[T any, P document[T]](k kind, payload []byte) (P, []byte, []byte, error) {
	var parts map[string]json.RawMessage
	if err := json.Unmarshal(payload, &parts); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) && syn.Offset == int64(len(payload)) {
			return nil, nil, nil, fmt.Errorf("%w: payload cut short (truncated?): %v", ErrMalformed, err)
		}
		return nil, nil, nil, fmt.Errorf("%w: bad JSON: %v", ErrMalformed, err)
	}
	for name := range parts {
		if name != k.field && name != "sig" {
			return nil, nil, nil, fmt.Errorf("%w: unknown field %q in the %s envelope", ErrMalformed, name, k.noun)
		}
	}
	body, ok := parts[k.field]
	if !ok {
		return nil, nil, nil, fmt.Errorf("%w: no %q in the envelope", ErrMalformed, k.field)
	}
	var sig []byte // encoding/json reads base64 into []byte
	if err := json.Unmarshal(parts["sig"], &sig); err != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, nil, fmt.Errorf("%w: \"sig\" is not a base64 Ed25519 signature", ErrMalformed)
	}
	if !bytes.Equal(envelope(k, body, sig), payload) {
		return nil, nil, nil, fmt.Errorf("%w: the envelope is not in canonical form", ErrMalformed)
	}
	doc := P(new(T))
	if err := doc.parse(body); err != nil {
		return nil, nil, nil, err
	}
	if again, err := doc.Canonical(); err != nil || !bytes.Equal(again, body) {
		return nil, nil, nil, fmt.Errorf("%w: the %s is not in canonical form", ErrMalformed, k.noun)
	}
	return doc, body, sig, nil
}

// decode is open plus the check of the values, for documents read without
// a keyring.
func decode[T any, P document[T]](k kind, armored []byte) (P, []byte, []byte, error) {
	doc, body, sig, err := open[T, P](k, armored)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := doc.Validate(); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return doc, body, sig, nil
}

// verify opens an armored document and checks its signature with the key it
// names, then its values.
func verify[T any, P document[T]](r *Keyring, k kind, armored []byte) (P, error) {
	doc, body, sig, headers, err := openWithHeaders[T, P](k, armored)
	if err != nil {
		return nil, err
	}
	pub, ok := r.key(doc.signer())
	if !ok {
		return nil, fmt.Errorf("%w: %s is signed by key %q, which is not among the trusted keys %v", ErrUnknownKey, k.noun, doc.signer(), r.IDs())
	}
	if !ed25519.Verify(pub, append([]byte(k.domain), body...), sig) {
		return nil, fmt.Errorf("%w: %s does not verify with key %s (altered, or signed by another key)", ErrBadSignature, k.noun, doc.signer())
	}
	if err := checkHeaders(doc.Fields(), headers); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadSignature, k.noun, err)
	}
	if err := doc.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return doc, nil
}

// Signed is a licence as decoded, not verified (see Decode).
type Signed struct {
	License *License
	// Canonical is the signed encoding of License; Signature the Ed25519
	// signature over "capsgate-license-v1\n" + Canonical.
	Canonical []byte
	Signature []byte
}

// Sign completes l in place — a random ID when empty, IssuedAt (now, whole
// seconds, UTC) when zero, Overage and Period defaults, KeyID = k.ID() —
// validates it and returns the armored licence signed with k.
func (k *VendorKey) Sign(l *License, now time.Time) ([]byte, error) {
	l.complete(k.id, now)
	return seal(licenseKind, k, l)
}

// Decode reads an armored licence without verifying its signature (for
// inspecting one). Its errors wrap ErrMalformed.
func Decode(armored []byte) (*Signed, error) {
	l, body, sig, err := decode[License](licenseKind, armored)
	if err != nil {
		return nil, err
	}
	return &Signed{License: l, Canonical: body, Signature: sig}, nil
}

// Verify reads an armored licence and checks that a key in r signed exactly
// this document. Errors wrap ErrMalformed, ErrUnknownKey or
// ErrBadSignature. It does not look at the time: see License.State.
func (r *Keyring) Verify(armored []byte) (*License, error) {
	return verify[License](r, licenseKind, armored)
}

func (l *License) signer() string { return l.KeyID }

// stamp fills the header every signed document carries: a random 128-bit
// hex id when empty, the issue time (whole seconds, UTC) when zero, and the
// signing key's id.
func stamp(id *string, issuedAt *time.Time, keyID *string, key string, now time.Time) {
	if *id == "" {
		var b [16]byte
		_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
		*id = hex.EncodeToString(b[:])
	}
	if issuedAt.IsZero() {
		*issuedAt = now
	}
	*issuedAt = issuedAt.UTC().Truncate(time.Second)
	*keyID = key
}
