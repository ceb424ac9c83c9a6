package licensing

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"
)

// Revocation is a vendor-signed notice that retires licence ids for good: a
// node that has loaded it treats those licences as revoked, whatever their
// dates, and refuses to load them again. It is armored as "CAPSGATE LICENSE
// REVOCATION" and signed under its own domain, so that no licence
// signature verifies as a revocation or the other way round.
type Revocation struct {
	// ID names the revocation; Sign sets a random one when empty. Same
	// alphabet as License.ID.
	ID string
	// IssuedAt is when the vendor signed it: UTC, whole seconds.
	IssuedAt time.Time
	// Revokes lists the licence ids retired: at least one, no duplicates.
	Revokes []string
	// Reason is for people ("refund", "replaced by 7f3a...").
	Reason string
	// KeyID is the id of the vendor key that signed it.
	KeyID string
}

// revocationWire is the canonical form of a Revocation (see licenseWire).
type revocationWire struct {
	ID       string   `json:"id"`
	IssuedAt string   `json:"issued_at"`
	KeyID    string   `json:"key_id"`
	Revokes  []string `json:"revokes"`
	Reason   string   `json:"reason"`
}

// SignedRevocation is a revocation as decoded, not verified (see
// DecodeRevocation).
type SignedRevocation struct {
	Revocation *Revocation
	// Canonical is the signed encoding of Revocation; Signature the
	// Ed25519 signature over "capsgate-revocation-v1\n" + Canonical.
	Canonical []byte
	Signature []byte
}

// Validate reports the first problem of a complete revocation, naming the
// field.
func (r *Revocation) Validate() error {
	if err := checkHeader(r.ID, r.IssuedAt, r.KeyID); err != nil {
		return err
	}
	if len(r.Revokes) == 0 {
		return fieldError("revokes", "must name at least one licence id")
	}
	seen := make(map[string]bool, len(r.Revokes))
	for _, id := range r.Revokes {
		if !validID(id) {
			return fieldError("revokes", "%q is not a licence id", id)
		}
		if seen[id] {
			return fieldError("revokes", "%q is listed twice", id)
		}
		seen[id] = true
	}
	return checkText("reason", r.Reason, MaxReasonLen)
}

// Canonical returns the revocation's canonical encoding.
func (r *Revocation) Canonical() ([]byte, error) {
	return json.Marshal(revocationWire{
		ID: r.ID, IssuedAt: formatTime(r.IssuedAt), KeyID: r.KeyID, Revokes: r.Revokes, Reason: r.Reason,
	})
}

// Fields returns the revocation's fields in display form.
func (r *Revocation) Fields() []Field {
	return []Field{
		{"Id", r.ID},
		{"Issued-At", formatTime(r.IssuedAt)},
		{"Revokes", strings.Join(r.Revokes, ", ")},
		{"Reason", r.Reason},
		{"Key-Id", r.KeyID},
	}
}

func (r *Revocation) parse(data []byte) error {
	var w revocationWire
	if err := unmarshalStrict(data, &w); err != nil {
		return err
	}
	var p parser
	*r = Revocation{ID: w.ID, IssuedAt: p.time("issued_at", w.IssuedAt), KeyID: w.KeyID, Revokes: w.Revokes, Reason: w.Reason}
	return p.err
}

func (r *Revocation) signer() string { return r.KeyID }

// Revoke completes r in place (ID, IssuedAt, KeyID, as Sign does for a
// licence), validates it and returns the armored revocation signed with k.
func (k *VendorKey) Revoke(r *Revocation, now time.Time) ([]byte, error) {
	stamp(&r.ID, &r.IssuedAt, &r.KeyID, k.id, now)
	return seal(revocationKind, k, r)
}

// DecodeRevocation reads an armored revocation without verifying it. Its
// errors wrap ErrMalformed.
func DecodeRevocation(armored []byte) (*SignedRevocation, error) {
	r, body, sig, err := decode[Revocation](revocationKind, armored)
	if err != nil {
		return nil, err
	}
	return &SignedRevocation{Revocation: r, Canonical: body, Signature: sig}, nil
}

// VerifyRevocation is Verify for an armored revocation.
func (r *Keyring) VerifyRevocation(armored []byte) (*Revocation, error) {
	return verify[Revocation](r, revocationKind, armored)
}

// IsRevocation reports whether text holds an armored revocation rather than
// a licence, so that one upload path can take both.
func IsRevocation(text []byte) bool {
	return bytes.Contains(text, []byte("-----BEGIN "+revocationKind.label+"-----"))
}
