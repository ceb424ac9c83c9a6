package licensing

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	f := func(change func(l *License), wantErr string) {
		t.Helper()
		l := sampleLicense()
		l.KeyID = "0123456789abcdef"
		change(l)
		err := l.Validate()
		if wantErr == "" {
			require.NoError(t, err)
			return
		}
		require.EqualError(t, err, wantErr)
	}
	f(func(l *License) {}, "")
	f(func(l *License) { l.Overage, l.Period, l.Customer, l.Cluster = "", "", "", "" }, "")
	f(func(l *License) { l.ID = "" }, `invalid field id: must match [A-Za-z0-9._:-]{1,64} and not start with a dot, got ""`)
	f(func(l *License) { l.ID = ".." }, `invalid field id: must match [A-Za-z0-9._:-]{1,64} and not start with a dot, got ".."`)
	f(func(l *License) { l.ID = "a/b" }, `invalid field id: must match [A-Za-z0-9._:-]{1,64} and not start with a dot, got "a/b"`)
	f(func(l *License) { l.ID = strings.Repeat("a", 65) }, `invalid field id: must match [A-Za-z0-9._:-]{1,64} and not start with a dot, got "`+strings.Repeat("a", 65)+`"`)
	f(func(l *License) { l.IssuedAt = time.Time{} }, "invalid field issued_at: must be set")
	f(func(l *License) { l.IssuedAt = l.IssuedAt.Add(time.Millisecond) }, "invalid field issued_at: must be whole seconds, got 2025-01-02T03:04:05.001Z")
	f(func(l *License) { l.KeyID = "" }, `invalid field key_id: must be 16 lowercase hex digits, got ""`)
	f(func(l *License) { l.KeyID = "0123456789ABCDEF" }, `invalid field key_id: must be 16 lowercase hex digits, got "0123456789ABCDEF"`)
	f(func(l *License) { l.Customer = "a\nb" }, `invalid field customer: must not contain control characters, got "a\nb"`)
	f(func(l *License) { l.Customer = "\xff" }, "invalid field customer: must be valid UTF-8")
	f(func(l *License) { l.Customer = strings.Repeat("x", 257) }, "invalid field customer: must be at most 256 bytes, got 257")
	f(func(l *License) { l.Cluster = "prod eu" }, `invalid field cluster: must match [A-Za-z0-9._:-]{1,64} or be empty, got "prod eu"`)
	f(func(l *License) { l.Service = "" }, `invalid field service: must match [A-Za-z0-9._:-]{1,64}, got ""`)
	f(func(l *License) { l.Service = "a@b" }, `invalid field service: must match [A-Za-z0-9._:-]{1,64}, got "a@b"`)
	f(func(l *License) { l.Service = "A.z_0:9-" }, "")
	f(func(l *License) { l.CAPS = -1 }, "invalid field caps: must be >= 0, got -1")
	f(func(l *License) { l.Sessions = -1 }, "invalid field sessions: must be >= 0, got -1")
	f(func(l *License) { l.Subscribers = -1 }, "invalid field subscribers: must be >= 0, got -1")
	f(func(l *License) { l.Tokens = -1 }, "invalid field tokens: must be >= 0, got -1")
	f(func(l *License) { l.TokensPerAttempt = -1 }, "invalid field tokens_per_attempt: must be >= 0, got -1")
	f(func(l *License) { l.TokensPerMinute = -1 }, "invalid field tokens_per_minute: must be >= 0, got -1")
	f(func(l *License) { l.Period = "weekly" }, `invalid field period: must be none or monthly, got "weekly"`)
	f(func(l *License) { l.NotAfter = l.NotBefore }, "invalid field not_after: must be after not_before (2025-01-01T00:00:00Z), got 2025-01-01T00:00:00Z")
	f(func(l *License) { l.NotBefore = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC); l.NotAfter = time.Time{} }, "invalid field not_before: must be within years 0001..9999, got year 10000")
	f(func(l *License) { l.NotBefore = time.Time{} }, "")
	f(func(l *License) { l.NotAfter = time.Time{} }, "")
	f(func(l *License) { l.Grace = -time.Nanosecond }, "invalid field grace: must be >= 0, got -1ns")
}

func TestValidateOverage(t *testing.T) {
	f := func(overage string, ok bool) {
		t.Helper()
		err := checkOverage(overage)
		if ok {
			require.NoError(t, err)
			return
		}
		require.EqualError(t, err, `invalid field overage: must be none, percent:N (0 <= N <= 1000) or unlimited, got "`+overage+`"`)
	}
	f("", true)
	f("none", true)
	f("unlimited", true)
	f("percent:0", true)
	f("percent:10", true)
	f("percent:1000", true)
	f("percent:1001", false)
	f("percent:-1", false)
	f("percent:+5", false)
	f("percent:05", false)
	f("percent:", false)
	f("percent:1e3", false)
	f("percent:99999", false)
	f("Percent:5", false)
	f("None", false)
	f("always", false)
}

func TestAppliesTo(t *testing.T) {
	l := &License{}
	require.True(t, l.AppliesTo("prod"))
	require.True(t, l.AppliesTo(""))
	l.Cluster = "prod"
	require.True(t, l.AppliesTo("prod"))
	require.False(t, l.AppliesTo("lab"))
}

func TestSignCompletes(t *testing.T) {
	k := testKey(t, 1)
	l := &License{Service: "vpn", CAPS: 5}
	now := time.Date(2025, 3, 4, 5, 6, 7, 890, time.FixedZone("X", 7200))
	_, err := k.Sign(l, now)
	require.NoError(t, err)
	require.Regexp(t, `^[0-9a-f]{32}$`, l.ID)
	require.Equal(t, time.Date(2025, 3, 4, 3, 6, 7, 0, time.UTC), l.IssuedAt)
	require.Equal(t, time.UTC, l.IssuedAt.Location())
	require.Equal(t, k.ID(), l.KeyID)
	require.Equal(t, "none", l.Overage)
	require.Equal(t, "none", l.Period)

	other := &License{Service: "vpn"}
	_, err = k.Sign(other, now)
	require.NoError(t, err)
	require.NotEqual(t, l.ID, other.ID)

	// Given values are kept; a KeyID is always the signer's.
	l = &License{ID: "mine", IssuedAt: t0, Service: "vpn", Overage: "unlimited", Period: "monthly", KeyID: "ffffffffffffffff"}
	_, err = k.Sign(l, now)
	require.NoError(t, err)
	require.Equal(t, &License{ID: "mine", IssuedAt: t0, Service: "vpn", Overage: "unlimited", Period: "monthly", KeyID: k.ID()}, l)

	_, err = k.Sign(&License{Service: "bad service"}, now)
	require.EqualError(t, err, `cannot sign licence: invalid field service: must match [A-Za-z0-9._:-]{1,64}, got "bad service"`)
}

func TestFields(t *testing.T) {
	l := sampleLicense()
	l.KeyID = "0123456789abcdef"
	require.Equal(t, []Field{
		{"Id", "lic-0001"}, {"Issued-At", "2025-01-02T03:04:05Z"}, {"Customer", "ACME Telecom"},
		{"Cluster", "prod-eu"}, {"Service", "vpn"}, {"Caps", "500"}, {"Sessions", "200"},
		{"Subscribers", "10000"}, {"Tokens", "1000000"}, {"Tokens-Per-Attempt", "1"},
		{"Tokens-Per-Minute", "2"}, {"Overage", "percent:10"}, {"Period", "monthly"},
		{"Not-Before", "2025-01-01T00:00:00Z"}, {"Not-After", "2026-01-01T00:00:00Z"},
		{"Grace", "72h0m0s"}, {"Key-Id", "0123456789abcdef"},
	}, l.Fields())
	l = &License{Service: "s", Unlimited: true, CAPS: 7}
	fields := l.Fields()
	require.Equal(t, Field{"Cluster", "any"}, fields[3])
	require.Equal(t, Field{"Caps", "unlimited"}, fields[5])
	require.Equal(t, Field{"Not-Before", "immediately"}, fields[13])
	require.Equal(t, Field{"Not-After", "never"}, fields[14])
}
