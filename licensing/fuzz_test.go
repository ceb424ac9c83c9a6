package licensing

import (
	"bytes"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecode feeds arbitrary text to the decoders: they must never panic,
// fail only with the package's errors, and whatever decodes or verifies
// must re-encode to exactly the bytes that were signed. The seed corpus in
// testdata/fuzz/FuzzDecode holds licences and revocations signed by
// testKey(1), as issued and as mangled by mail clients.
func FuzzDecode(f *testing.F) {
	k := testKey(f, 1)
	ring := testRing(f, k)
	armored := mustSign(f, k, sampleLicense())
	f.Add(armored)
	f.Add(bytes.ReplaceAll(rewrap(armored, 20), []byte("\n"), []byte("\r\n")))
	f.Add(armored[:len(armored)/2])
	f.Add([]byte("-----BEGIN CAPSGATE LICENSE-----\n\ne30=\n-----END CAPSGATE LICENSE-----\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := Decode(data); err == nil {
			require.NoError(t, s.License.Validate())
			require.Equal(t, s.Canonical, mustCanonical(t, s.License))
		} else {
			require.ErrorIs(t, err, ErrMalformed)
		}
		if l, err := ring.Verify(data); err == nil {
			require.Equal(t, k.ID(), l.KeyID)
			s, err := Decode(data)
			require.NoError(t, err)
			require.Equal(t, s.Canonical, mustCanonical(t, l))
		} else {
			requireVerifyError(t, err)
		}
		if s, err := DecodeRevocation(data); err == nil {
			again, err := s.Revocation.Canonical()
			require.NoError(t, err)
			require.Equal(t, s.Canonical, again)
		} else {
			require.ErrorIs(t, err, ErrMalformed)
		}
		if _, err := ring.VerifyRevocation(data); err != nil {
			requireVerifyError(t, err)
		}
		_, _ = ParseVendorPublicKey(data)
		_, _ = ParseVendorKey(data)
	})
}

func requireVerifyError(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("unexpected error: %v", err)
	}
}
