package licensing

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// t0 is the tests' reference instant.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// testKey returns a deterministic vendor key; different n, different key.
func testKey(t testing.TB, n byte) *VendorKey {
	t.Helper()
	k, err := NewVendorKey(bytes.Repeat([]byte{n}, 32))
	require.NoError(t, err)
	return k
}

func testRing(t testing.TB, keys ...*VendorKey) *Keyring {
	t.Helper()
	pubs := make([]ed25519.PublicKey, 0, len(keys))
	for _, k := range keys {
		pubs = append(pubs, k.Public())
	}
	r, err := NewKeyring(pubs...)
	require.NoError(t, err)
	return r
}

// sampleLicense sets every field to something other than its zero value.
func sampleLicense() *License {
	return &License{
		ID: "lic-0001", IssuedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Customer: "ACME Telecom", Cluster: "prod-eu", Service: "vpn",
		CAPS: 500, Sessions: 200, Subscribers: 10000, Tokens: 1000000,
		TokensPerAttempt: 1, TokensPerMinute: 2, Overage: "percent:10", Period: "monthly",
		NotBefore: t0, NotAfter: t0.AddDate(1, 0, 0), Grace: 72 * time.Hour,
	}
}

func mustSign(t testing.TB, k *VendorKey, l *License) []byte {
	t.Helper()
	armored, err := k.Sign(l, t0)
	require.NoError(t, err)
	return armored
}

// payloadOf returns the decoded base64 payload of an armored document.
func payloadOf(t testing.TB, label string, armored []byte) []byte {
	t.Helper()
	p, _, err := unarmor(label, armored)
	require.NoError(t, err)
	return p
}

// rewrap re-wraps the base64 lines of an armored document at width
// columns, leaving the BEGIN, header and END lines alone.
func rewrap(armored []byte, width int) []byte {
	lines := strings.Split(strings.TrimSuffix(string(armored), "\n"), "\n")
	blank := indexOf(lines, "", 0)
	b64 := strings.Join(lines[blank+1:len(lines)-1], "")
	out := append([]string{}, lines[:blank+1]...)
	for len(b64) > 0 {
		n := min(width, len(b64))
		out = append(out, b64[:n])
		b64 = b64[n:]
	}
	out = append(out, lines[len(lines)-1])
	return []byte(strings.Join(out, "\n") + "\n")
}

// rearmor armors payload as a licence with the given headers text.
func rearmor(payload []byte) []byte {
	return armor(licenseKind.label, nil, payload)
}
