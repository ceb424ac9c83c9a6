package licensing

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	k := testKey(t, 1)
	l := sampleLicense()
	armored := mustSign(t, k, l)
	require.True(t, strings.HasPrefix(string(armored), "-----BEGIN CAPSGATE LICENSE-----\nId: lic-0001\n"))
	require.True(t, strings.HasSuffix(string(armored), "\n-----END CAPSGATE LICENSE-----\n"))
	for _, line := range strings.Split(string(armored), "\n") {
		require.LessOrEqual(t, len(line), 64)
	}

	got, err := testRing(t, k).Verify(armored)
	require.NoError(t, err)
	require.Equal(t, l, got)

	s, err := Decode(armored)
	require.NoError(t, err)
	require.Equal(t, l, s.License)
	canonical, err := l.Canonical()
	require.NoError(t, err)
	require.Equal(t, canonical, s.Canonical)
	require.True(t, ed25519.Verify(k.Public(), append([]byte("capsgate-license-v1\n"), canonical...), s.Signature))
}

// forge replaces the licence inside a signed armored licence with w,
// keeping the signature.
func forge(t *testing.T, armored []byte, w licenseWire) []byte {
	t.Helper()
	var env struct {
		License json.RawMessage `json:"license"`
		Sig     []byte          `json:"sig"`
	}
	require.NoError(t, json.Unmarshal(payloadOf(t, licenseKind.label, armored), &env))
	body, err := json.Marshal(w)
	require.NoError(t, err)
	return rearmor(envelope(licenseKind, body, env.Sig))
}

func TestForgedFieldFails(t *testing.T) {
	k, k2 := testKey(t, 1), testKey(t, 2)
	ring := testRing(t, k, k2)
	armored := mustSign(t, k, sampleLicense())
	var orig licenseWire
	require.NoError(t, json.Unmarshal(mustCanonical(t, sampleLicenseSignedBy(k)), &orig))

	alter := map[string]func(w *licenseWire){
		"id":                 func(w *licenseWire) { w.ID = "lic-0002" },
		"issued_at":          func(w *licenseWire) { w.IssuedAt = "2025-01-02T03:04:06Z" },
		"key_id":             func(w *licenseWire) { w.KeyID = k2.ID() }, // another trusted key
		"customer":           func(w *licenseWire) { w.Customer = "ACME Telecon" },
		"cluster":            func(w *licenseWire) { w.Cluster = "" },
		"service":            func(w *licenseWire) { w.Service = "vpm" },
		"caps":               func(w *licenseWire) { w.CAPS = 5000 },
		"unlimited":          func(w *licenseWire) { w.Unlimited = true },
		"sessions":           func(w *licenseWire) { w.Sessions++ },
		"subscribers":        func(w *licenseWire) { w.Subscribers++ },
		"tokens":             func(w *licenseWire) { w.Tokens++ },
		"tokens_per_attempt": func(w *licenseWire) { w.TokensPerAttempt = 0 },
		"tokens_per_minute":  func(w *licenseWire) { w.TokensPerMinute = 0 },
		"overage":            func(w *licenseWire) { w.Overage = "unlimited" },
		"period":             func(w *licenseWire) { w.Period = "none" },
		"not_before":         func(w *licenseWire) { w.NotBefore = "" },
		"not_after":          func(w *licenseWire) { w.NotAfter = "2099-01-01T00:00:00Z" },
		"grace":              func(w *licenseWire) { w.Grace = "8760h0m0s" },
	}
	typ := reflect.TypeOf(licenseWire{})
	require.Equal(t, typ.NumField(), len(alter), "every field of the licence is tried")
	for i := range typ.NumField() {
		name := typ.Field(i).Tag.Get("json")
		t.Run(name, func(t *testing.T) {
			w := orig
			alter[name](&w)
			require.NotEqual(t, orig, w)
			_, err := ring.Verify(forge(t, armored, w))
			require.ErrorIs(t, err, ErrBadSignature)
		})
	}
	// The untouched licence re-armored the same way still verifies.
	_, err := ring.Verify(forge(t, armored, orig))
	require.NoError(t, err)
}

func sampleLicenseSignedBy(k *VendorKey) *License {
	l := sampleLicense()
	l.KeyID = k.ID()
	return l
}

func mustCanonical(t *testing.T, l *License) []byte {
	t.Helper()
	b, err := l.Canonical()
	require.NoError(t, err)
	return b
}

// No single flipped bit anywhere in the payload gets through.
func TestBitFlipsFail(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	payload := payloadOf(t, licenseKind.label, mustSign(t, k, sampleLicense()))
	for i := range payload {
		for bit := range 8 {
			flipped := append([]byte(nil), payload...)
			flipped[i] ^= 1 << bit
			_, err := ring.Verify(rearmor(flipped))
			require.Error(t, err, "byte %d bit %d", i, bit)
			// A flip inside key_id may name a key that is not trusted.
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("byte %d bit %d: unexpected error %v", i, bit, err)
			}
		}
	}
}

// A licence signed by another vendor's key, claiming a trusted key's id,
// fails; so does one that names its real, untrusted key.
func TestForeignKey(t *testing.T) {
	ours, theirs := testKey(t, 1), testKey(t, 9)
	ring := testRing(t, ours)

	spoofed := &License{Service: "vpn", CAPS: 1_000_000, KeyID: ours.ID()}
	spoofed.complete(ours.ID(), t0) // claims our key id ...
	body := mustCanonical(t, spoofed)
	sig := ed25519.Sign(theirs.priv, append([]byte(licenseKind.domain), body...)) // ... signed by theirs
	_, err := ring.Verify(rearmor(envelope(licenseKind, body, sig)))
	require.ErrorIs(t, err, ErrBadSignature)
	require.EqualError(t, err, "bad signature: licence does not verify with key "+ours.ID()+" (altered, or signed by another key)")

	_, err = ring.Verify(mustSign(t, theirs, sampleLicense()))
	require.ErrorIs(t, err, ErrUnknownKey)
	require.EqualError(t, err, `unknown vendor key: licence is signed by key "`+theirs.ID()+`", which is not among the trusted keys [`+ours.ID()+`]`)

	var empty *Keyring
	_, err = empty.Verify(mustSign(t, ours, sampleLicense()))
	require.ErrorIs(t, err, ErrUnknownKey)
}

// Key rotation: a keyring with the old and the new key verifies licences
// signed by either.
func TestKeyRotation(t *testing.T) {
	old, cur := testKey(t, 1), testKey(t, 2)
	ring := testRing(t, old, cur)
	require.ElementsMatch(t, []string{old.ID(), cur.ID()}, ring.IDs())
	for _, k := range []*VendorKey{old, cur} {
		l := &License{Service: "vpn", CAPS: 10}
		got, err := ring.Verify(mustSign(t, k, l))
		require.NoError(t, err)
		require.Equal(t, k.ID(), got.KeyID)
		require.Equal(t, l, got)
	}
	_, err := testRing(t, cur).Verify(mustSign(t, old, &License{Service: "vpn"}))
	require.ErrorIs(t, err, ErrUnknownKey)
}

// Encodings other than the canonical one are refused even where JSON
// would read the same values (key case, spaces, escapes, padding bits).
func TestNonCanonicalRefused(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	payload := string(payloadOf(t, licenseKind.label, mustSign(t, k, sampleLicense())))
	f := func(from, to, wantErr string) {
		t.Helper()
		require.Contains(t, payload, from)
		_, err := ring.Verify(rearmor([]byte(strings.Replace(payload, from, to, 1))))
		require.ErrorIs(t, err, ErrMalformed)
		require.EqualError(t, err, wantErr)
	}
	f(`{"license":`, `{"License":`, `malformed: unknown field "License" in the licence envelope`)
	f(`{"license":`, `{ "license":`, "malformed: the envelope is not in canonical form")
	f(`"sig":`, `"sig" :`, "malformed: the envelope is not in canonical form")
	f(`,"sig":`, `,"sig":"AAAA","sig":`, "malformed: the envelope is not in canonical form")
	f(`"id":`, `"ID":`, `malformed: bad JSON: unknown key "ID"`)
	f(`"caps":500`, `"caps":5e2`, `malformed: bad JSON: json: cannot unmarshal number 5e2 into Go struct field licenseWire.caps of type int64`)
	f(`"caps":500`, `"caps":0500`, `malformed: bad JSON: invalid character '5' after object key:value pair`)
	f(`"service":"vpn"`, `"service":"\u0076pn"`, "malformed: the licence is not in canonical form")
	f(`"service":"vpn",`, `"service":"vpn","service":"vpn",`, `malformed: bad JSON: duplicate key "service"`)
	f(`"grace":"72h0m0s"`, `"grace":"72h"`, "malformed: the licence is not in canonical form")
	f(`"grace":"72h0m0s"`, `"grace":"3 days"`, `malformed: cannot parse grace "3 days"`)
	f(`"not_after":"2026-01-01T00:00:00Z"`, `"not_after":"2026-01-01T01:00:00+01:00"`, "malformed: the licence is not in canonical form")
	f(`"not_after":"2026-01-01T00:00:00Z"`, `"not_after":"2026-01-01"`, `malformed: cannot parse not_after "2026-01-01"`)
	f(`"sig":"`, `"sig":"A`, `malformed: "sig" is not a base64 Ed25519 signature`)

	// The signature's last base64 digit carries 2 padding bits; setting
	// them decodes to the same signature but is refused.
	i := strings.Index(payload, `=="}`) - 1
	last := payload[i]
	alt := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", last) + 1
	mutated := payload[:i] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[alt]) + payload[i+1:]
	_, err := ring.Verify(rearmor([]byte(mutated)))
	require.ErrorIs(t, err, ErrMalformed)
}

// A signature is bound to its kind: a licence's envelope relabelled as a
// revocation does not verify.
func TestDomainSeparation(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	rev := &Revocation{Revokes: []string{"lic-0001"}}
	armored, err := k.Revoke(rev, t0)
	require.NoError(t, err)
	env := payloadOf(t, revocationKind.label, armored)
	var parts map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(env, &parts))
	var sig []byte
	require.NoError(t, json.Unmarshal(parts["sig"], &sig))
	// The signature covers the revocation domain, not the licence one.
	require.True(t, ed25519.Verify(k.Public(), append([]byte(revocationKind.domain), parts["revocation"]...), sig))
	require.False(t, ed25519.Verify(k.Public(), append([]byte(licenseKind.domain), parts["revocation"]...), sig))

	_, err = ring.Verify(armored)
	require.EqualError(t, err, "malformed: no -----BEGIN CAPSGATE LICENSE----- line")
	relabelled := strings.ReplaceAll(string(armored), "CAPSGATE LICENSE REVOCATION", "CAPSGATE LICENSE")
	_, err = ring.Verify([]byte(relabelled))
	require.EqualError(t, err, `malformed: unknown field "revocation" in the licence envelope`)
}

func TestVerifyValidatesAfterSignature(t *testing.T) {
	// A vendor bug that signed an invalid licence: the signature is good,
	// the licence is still refused.
	k := testKey(t, 1)
	l := sampleLicense()
	l.complete(k.ID(), t0)
	l.CAPS = -5
	body := mustCanonical(t, l)
	sig := ed25519.Sign(k.priv, append([]byte(licenseKind.domain), body...))
	armored := rearmor(envelope(licenseKind, body, sig))
	_, err := testRing(t, k).Verify(armored)
	require.EqualError(t, err, "malformed: invalid field caps: must be >= 0, got -5")
	_, err = Decode(armored)
	require.EqualError(t, err, "malformed: invalid field caps: must be >= 0, got -5")
}
