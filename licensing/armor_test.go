package licensing

import (
	"encoding/base64"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A licence goes through mail clients, editors and copy-and-paste and
// still verifies to the very same licence.
func TestArmorSurvivesEmail(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	want := sampleLicense()
	armored := string(mustSign(t, k, want))

	f := func(name, text string) {
		t.Helper()
		got, err := ring.Verify([]byte(text))
		require.NoError(t, err, name)
		require.Equal(t, want, got, name)
	}
	f("as issued", armored)
	f("CRLF", strings.ReplaceAll(armored, "\n", "\r\n"))
	f("trailing spaces and tabs", strings.ReplaceAll(armored, "\n", " \t \n"))
	f("leading indentation", strings.ReplaceAll(armored, "\n", "\n    "))
	f("no final newline", strings.TrimSuffix(armored, "\n"))
	for _, width := range []int{1, 4, 20, 63, 65, 76, 1000} {
		f("rewrapped", string(rewrap([]byte(armored), width)))
		f("rewrapped CRLF", strings.ReplaceAll(string(rewrap([]byte(armored), width)), "\n", "\r\n"))
	}
	f("inside an e-mail",
		"Hello Jane,\r\n\r\nplease find your licence below.\r\n\r\n"+
			strings.ReplaceAll(armored, "\n", "\r\n")+
			"\r\nRegards,\r\nVendor Sales\r\n\r\n> On Monday you wrote:\r\n> -----BEGIN something else-----\r\n> send me the licence\r\n")
	f("quoted text around", "> > earlier\n> reply\n"+armored+"> more quotes\n-- \nsignature\n")
	f("blank lines in the payload", strings.Replace(armored, "\n\n", "\n\n\n\n", 1))

	// Header lines are for people, checked against the signed payload: an
	// edited, added or dropped one is refused, so it cannot mislead.
	refused := func(name, text string) {
		t.Helper()
		_, err := ring.Verify([]byte(text))
		require.ErrorIs(t, err, ErrBadSignature, name)
	}
	refused("header edited", strings.Replace(armored, "Caps: 500", "Caps: 999999", 1))
	refused("header edited", strings.Replace(armored, "Not-After: 2026-01-01T00:00:00Z", "Not-After: never", 1))
	refused("header added", strings.Replace(armored, "Key-Id: ", "Comment: unlimited!\nKey-Id: ", 1))
	refused("header dropped", regexp.MustCompile(`(?m)^Customer: .*\n`).ReplaceAllString(armored, ""))
	// All of them may go (a copy of the payload alone).
	headers := regexp.MustCompile(`(?m)^[A-Za-z-]+: .*\n`)
	f("headers removed", headers.ReplaceAllString(armored, ""))
	f("headers and blank line removed", strings.Replace(headers.ReplaceAllString(armored, ""), "-----\n\n", "-----\n", 1))
	f("blank line removed", strings.Replace(armored, "\n\neyJ", "\neyJ", 1))
	f("header wrapped by a mailer", strings.Replace(armored, "Customer: ACME Telecom", "Customer: ACME\n   Telecom", 1))
}

func TestArmorErrors(t *testing.T) {
	k := testKey(t, 1)
	ring := testRing(t, k)
	armored := string(mustSign(t, k, sampleLicense()))
	lines := strings.Split(armored, "\n")
	b64 := strings.Join(lines[19:len(lines)-2], "")
	withBody := func(body string) string {
		return "-----BEGIN CAPSGATE LICENSE-----\n\n" + body + "\n-----END CAPSGATE LICENSE-----\n"
	}

	f := func(text, wantErr string) {
		t.Helper()
		_, err := ring.Verify([]byte(text))
		require.ErrorIs(t, err, ErrMalformed)
		require.EqualError(t, err, wantErr)
		_, err = Decode([]byte(text))
		require.EqualError(t, err, wantErr)
	}
	f("", "malformed: no -----BEGIN CAPSGATE LICENSE----- line")
	f("just some e-mail text\n", "malformed: no -----BEGIN CAPSGATE LICENSE----- line")
	f(strings.Replace(armored, "BEGIN CAPSGATE LICENSE-", "BEGIN CAPSGATE LICENCE-", 1), "malformed: no -----BEGIN CAPSGATE LICENSE----- line")
	f(strings.Join(lines[:len(lines)-2], "\n"), "malformed: no -----END CAPSGATE LICENSE----- line (truncated?)")
	f(strings.Join(lines[:22], "\n"), "malformed: no -----END CAPSGATE LICENSE----- line (truncated?)")
	f(withBody(""), "malformed: no base64 payload between the BEGIN and END lines")
	f(withBody(b64[:101]), "malformed: bad base64 (101 characters, not a multiple of 4: truncated?): illegal base64 data at input byte 100")
	f(withBody(b64[:100]), "malformed: payload cut short (truncated?): unexpected end of JSON input")
	f(withBody("eyJs!WNl"), "malformed: bad base64: illegal base64 data at input byte 4")
	f(withBody(base64.StdEncoding.EncodeToString([]byte("not json"))), "malformed: bad JSON: invalid character 'o' in literal null (expecting 'u')")
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`["license"]`))), "malformed: bad JSON: json: cannot unmarshal array into Go value of type map[string]json.RawMessage")
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"sig":"","extra":1}`))), `malformed: unknown field "extra" in the licence envelope`)
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"sig":""}`))), `malformed: no "license" in the envelope`)
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"license":{}}`))), `malformed: "sig" is not a base64 Ed25519 signature`)
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"license":{},"sig":"AAAA"}`))), `malformed: "sig" is not a base64 Ed25519 signature`)
	sig := base64.StdEncoding.EncodeToString(make([]byte, 64))
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"license":{"id":"x","bogus":1},"sig":"`+sig+`"}`))), `malformed: bad JSON: unknown key "bogus"`)
	f(withBody(base64.StdEncoding.EncodeToString([]byte(`{"license":[],"sig":"`+sig+`"}`))), `malformed: bad JSON: json: cannot unmarshal array into Go value of type licensing.licenseWire`)
	f(strings.Repeat("x", maxArmorSize+1), "malformed: input is 1048577 bytes, more than 1048576")
}

func TestArmorFormat(t *testing.T) {
	got := armor("TEST", []Field{{"A", "1"}, {"Empty", ""}, {"B", "x\ny"}}, []byte(strings.Repeat("z", 60)))
	require.Equal(t, "-----BEGIN TEST-----\nA: 1\nB: x?y\n\n"+
		"enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6\n"+
		"enp6enp6enp6enp6\n"+
		"-----END TEST-----\n", string(got))
	payload, _, err := unarmor("TEST", got)
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("z", 60), string(payload))
}
