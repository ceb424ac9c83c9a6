package licensing

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRevocationRoundTrip(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	r := &Revocation{Revokes: []string{"lic-0001", "lic-0002"}, Reason: "refund"}
	armored, err := k.Revoke(r, t0)
	require.NoError(t, err)
	require.True(t, IsRevocation(armored))
	require.False(t, IsRevocation(mustSign(t, k, sampleLicense())))
	require.Regexp(t, `^-----BEGIN CAPSGATE LICENSE REVOCATION-----\nId: [0-9a-f]{32}\nIssued-At: 2025-01-01T00:00:00Z\nRevokes: lic-0001, lic-0002\nReason: refund\nKey-Id: 34750f98bd59fcfc\n\n`, string(armored))

	got, err := ring.VerifyRevocation(armored)
	require.NoError(t, err)
	require.Equal(t, r, got)
	s, err := DecodeRevocation(armored)
	require.NoError(t, err)
	require.Equal(t, r, s.Revocation)
	canonical, err := r.Canonical()
	require.NoError(t, err)
	require.Equal(t, canonical, s.Canonical)
	require.Equal(t, `{"id":"`+r.ID+`","issued_at":"2025-01-01T00:00:00Z","key_id":"34750f98bd59fcfc","revokes":["lic-0001","lic-0002"],"reason":"refund"}`, string(canonical))

	// E-mail survival comes from the same armor code.
	got, err = ring.VerifyRevocation([]byte("fyi\r\n" + strings.ReplaceAll(string(rewrap(armored, 30)), "\n", " \r\n")))
	require.NoError(t, err)
	require.Equal(t, r, got)

	_, err = testRing(t, testKey(t, 2)).VerifyRevocation(armored)
	require.ErrorIs(t, err, ErrUnknownKey)
	_, err = ring.VerifyRevocation(mustSign(t, k, sampleLicense()))
	require.EqualError(t, err, "malformed: no -----BEGIN CAPSGATE LICENSE REVOCATION----- line")
}

func TestRevocationForged(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	armored, err := k.Revoke(&Revocation{ID: "rev-1", Revokes: []string{"lic-0001"}}, t0)
	require.NoError(t, err)
	payload := string(payloadOf(t, revocationKind.label, armored))
	f := func(from, to string) {
		t.Helper()
		forged := strings.Replace(payload, from, to, 1)
		require.NotEqual(t, payload, forged)
		_, err := ring.VerifyRevocation(armor(revocationKind.label, nil, []byte(forged)))
		require.ErrorIs(t, err, ErrBadSignature)
	}
	f(`"lic-0001"`, `"lic-0002"`)
	f(`"lic-0001"`, `"lic-0001","lic-0003"`)
	f(`"reason":""`, `"reason":"x"`)
	f(`"id":"rev-1"`, `"id":"rev-2"`)
	f(`"issued_at":"2025-01-01T00:00:00Z"`, `"issued_at":"2025-01-01T00:00:01Z"`)

	var env map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(payload), &env))
	require.Contains(t, env, "revocation")
}

func TestRevocationValidate(t *testing.T) {
	f := func(r Revocation, wantErr string) {
		t.Helper()
		r.ID, r.IssuedAt, r.KeyID = "rev-1", t0, "0123456789abcdef"
		err := r.Validate()
		if wantErr == "" {
			require.NoError(t, err)
			return
		}
		require.EqualError(t, err, wantErr)
	}
	f(Revocation{Revokes: []string{"a"}}, "")
	f(Revocation{}, "invalid field revokes: must name at least one licence id")
	f(Revocation{Revokes: []string{}}, "invalid field revokes: must name at least one licence id")
	f(Revocation{Revokes: []string{"a", "b", "a"}}, `invalid field revokes: "a" is listed twice`)
	f(Revocation{Revokes: []string{"a b"}}, `invalid field revokes: "a b" is not a licence id`)
	f(Revocation{Revokes: []string{"a"}, Reason: "x\ty"}, `invalid field reason: must not contain control characters, got "x\ty"`)
	f(Revocation{Revokes: []string{"a"}, Reason: strings.Repeat("r", 1025)}, "invalid field reason: must be at most 1024 bytes, got 1025")

	_, err := testKey(t, 1).Revoke(&Revocation{}, t0)
	require.EqualError(t, err, "cannot sign revocation: invalid field revokes: must name at least one licence id")
}
