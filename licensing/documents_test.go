package licensing

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSplit(t *testing.T) {
	k := testKey(t, 1)
	lic := mustSign(t, k, sampleLicense())
	l2 := sampleLicense()
	l2.ID = "lic-0002"
	lic2 := mustSign(t, k, l2)
	rev, err := k.Revoke(&Revocation{ID: "rev-1", Revokes: []string{"lic-0001"}}, t0)
	require.NoError(t, err)
	pub := MarshalVendorPublicKey(k.Public())
	n := bytes.Count(lic, []byte("\n"))

	f := func(text []byte, want []Document) {
		t.Helper()
		got, err := Split(text)
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	f(lic, []Document{{Armored: lic, Line: 1}})
	crlf := bytes.ReplaceAll(lic, []byte("\n"), []byte("\r\n"))
	f(crlf, []Document{{Armored: crlf, Line: 1}})
	f(slices.Concat([]byte("Hello,\n\n"), lic, []byte("\nand\n  "), rev, []byte("-- \nVendor\n")),
		[]Document{{Armored: lic, Line: 3}, {Revocation: true, Armored: append([]byte("  "), rev...), Line: n + 5}})
	f(slices.Concat(lic, lic2), []Document{{Armored: lic, Line: 1}, {Armored: lic2, Line: n + 1}})
	pgp := []byte("-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n")
	f(slices.Concat(lic, pgp), []Document{{Armored: lic, Line: 1}})
	noNL := bytes.TrimSuffix(lic, []byte("\n"))
	f(noNL, []Document{{Armored: noNL, Line: 1}})

	e := func(text []byte, want string) {
		t.Helper()
		_, err := Split(text)
		require.ErrorIs(t, err, ErrMalformed)
		require.EqualError(t, err, want)
		require.NotContains(t, err.Error(), "\n")
	}
	e(nil, "malformed: no -----BEGIN CAPSGATE LICENSE----- or -----BEGIN CAPSGATE LICENSE REVOCATION----- line")
	e(pub, "malformed: line 1 begins a vendor public key, which is not a licence or revocation; the file holds 0 documents")
	e(lic[:len(lic)/2], "malformed: the licence at line 1 has no -----END CAPSGATE LICENSE----- line (truncated?); the file holds 1 document: licence (line 1)")
	e(slices.Concat(rev, lic[:100]), "malformed: the licence at line 13 has no -----END CAPSGATE LICENSE----- line (truncated?); the file holds 2 documents: revocation (line 1), licence (line 13)")
	e(bytes.Repeat(lic, MaxDocuments+1), "malformed: more than 64 documents in one file")
	e(bytes.Repeat([]byte("x"), maxArmorSize+1), "malformed: input is 1048577 bytes, more than 1048576")
	_, err = Split(bytes.Repeat(lic, MaxDocuments))
	require.NoError(t, err)

	// The one-document readers refuse a text of several rather than read
	// the first and drop the rest.
	_, err = Decode(slices.Concat(lic, lic2))
	require.EqualError(t, err, "malformed: the text holds 2 armored blocks (licence, licence), not one")
	_, err = testRing(t, k).VerifyRevocation(slices.Concat(lic, rev))
	require.EqualError(t, err, "malformed: the text holds 2 armored blocks (licence, revocation), not one")
	_, err = ParseVendorPublicKey(slices.Concat(pub, pub))
	require.EqualError(t, err, "malformed: the text holds 2 armored blocks (vendor public key, vendor public key), not one")
	require.Equal(t, "2 documents: licence (line 1), revocation (line 29)", Describe([]Document{{Line: 1}, {Revocation: true, Line: 29}}))
}

// FuzzSplit feeds the licence file reader any bytes, and extremes of size
// and of nesting (BEGIN lines inside blocks): it never panics, fails only
// with one-line ErrMalformed errors, and every document it returns is a
// block of the text, from a BEGIN line to its END line, that decodes as
// one document or fails as the decoders fail — never as several.
func FuzzSplit(f *testing.F) {
	k := testKey(f, 1)
	lic := mustSign(f, k, sampleLicense())
	rev, err := k.Revoke(&Revocation{ID: "rev-1", Revokes: []string{"lic-0001"}}, t0)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(slices.Concat(lic, rev))
	f.Add(slices.Concat(rev, lic[:200]))
	f.Add(bytes.Repeat([]byte("-----BEGIN CAPSGATE LICENSE-----\n"), 1000))
	f.Add([]byte(strings.Repeat("-----BEGIN CAPSGATE LICENSE-----\n", 3) + strings.Repeat("-----END CAPSGATE LICENSE-----\n", 3)))
	f.Add(bytes.Repeat(lic, MaxDocuments))                                    // the most documents a file may hold
	f.Add(bytes.Repeat([]byte("\n"), maxArmorSize))                           // the largest text, all lines
	f.Add(append(bytes.Repeat([]byte(" "), maxArmorSize-len(lic)+1), lic...)) // a byte too large
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := Split(data)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			require.NotContains(t, err.Error(), "\n")
			return
		}
		require.NotEmpty(t, docs)
		require.LessOrEqual(t, len(docs), MaxDocuments)
		for _, d := range docs {
			require.True(t, bytes.Contains(data, d.Armored))
			require.Contains(t, string(d.Armored), "-----BEGIN CAPSGATE LICENSE")
			if d.Revocation {
				_, err = DecodeRevocation(d.Armored)
			} else {
				_, err = Decode(d.Armored)
			}
			if err != nil {
				require.ErrorIs(t, err, ErrMalformed)
				require.NotContains(t, err.Error(), "armored blocks")
			}
		}
	})
}
