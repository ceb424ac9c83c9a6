package licensing

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestCanonicalGolden(t *testing.T) {
	l := sampleLicense()
	l.KeyID = "0123456789abcdef"
	got, err := l.Canonical()
	require.NoError(t, err)
	require.Equal(t, `{"id":"lic-0001","issued_at":"2025-01-02T03:04:05Z","key_id":"0123456789abcdef",`+
		`"customer":"ACME Telecom","cluster":"prod-eu","service":"vpn","caps":500,"unlimited":false,`+
		`"sessions":200,"subscribers":10000,"tokens":1000000,"tokens_per_attempt":1,"tokens_per_minute":2,`+
		`"overage":"percent:10","period":"monthly","not_before":"2025-01-01T00:00:00Z",`+
		`"not_after":"2026-01-01T00:00:00Z","grace":"72h0m0s"}`, string(got))

	// The same values give the same bytes, whatever location or monotonic
	// reading the times carry.
	cet := time.FixedZone("CET", 3600)
	l2 := *l
	l2.IssuedAt, l2.NotBefore = l.IssuedAt.In(cet), time.Now().Add(time.Hour)
	l2.NotBefore = l.NotBefore.In(cet)
	again, err := l2.Canonical()
	require.NoError(t, err)
	require.Equal(t, got, again)
}

func TestCanonicalZeroValues(t *testing.T) {
	l := &License{ID: "x", IssuedAt: t0, Service: "s", KeyID: "0123456789abcdef"}
	got, err := l.Canonical()
	require.NoError(t, err)
	require.Equal(t, `{"id":"x","issued_at":"2025-01-01T00:00:00Z","key_id":"0123456789abcdef",`+
		`"customer":"","cluster":"","service":"s","caps":0,"unlimited":false,"sessions":0,"subscribers":0,`+
		`"tokens":0,"tokens_per_attempt":0,"tokens_per_minute":0,"overage":"","period":"",`+
		`"not_before":"","not_after":"","grace":"0s"}`, string(got))
}

func TestCanonicalRoundTrip(t *testing.T) {
	f := func(l *License) {
		t.Helper()
		data, err := l.Canonical()
		require.NoError(t, err)
		var back License
		require.NoError(t, back.parse(data))
		require.Equal(t, *l, back)
	}
	f(sampleLicense())
	l := sampleLicense()
	l.NotAfter = time.Date(2030, 6, 1, 12, 0, 0, 500_000_000, time.UTC) // sub-second survives
	l.Grace = 90 * time.Second
	f(l)
	l = sampleLicense()
	l.NotBefore, l.NotAfter, l.Grace, l.Unlimited = time.Time{}, time.Time{}, 0, true
	l.Customer = `Ünïcødé "quoted" <&>`
	f(l)
}

// The armored form of a fixed licence signed by a fixed key is part of the
// contract: a change here breaks every licence in the field.
func TestArmorGolden(t *testing.T) {
	l := sampleLicense()
	got := mustSign(t, testKey(t, 1), l)
	path := filepath.Join("testdata", "golden.license")
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got))

	back, err := testRing(t, testKey(t, 1)).Verify(want)
	require.NoError(t, err)
	require.Equal(t, l, back)
}
