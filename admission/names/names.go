// Package names is the grammar of the names capsgate keeps: service and
// account names (in RESP commands, the admin API's paths, licences and the
// ledger) and the keys of calls, subscribers and idempotent charges. One
// grammar, so that a name usable on one interface is usable on every one.
package names

// MaxLen bounds service and account names ([A-Za-z0-9._:-]{1,64}).
const MaxLen = 64

// MaxKeyLen bounds call-ids, subscriber ids and CONSUME idempotency keys.
// SIP does not bound Call-ID; 256 bytes covers every real one seen
// (UUID@host forms are under 100).
const MaxKeyLen = 256

var nameChars = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "._:-" {
		t[c] = true
	}
	return t
}()

// Valid reports whether b is a valid service or account name:
// [A-Za-z0-9._:-]{1,64}, but not "." or "..". Those two are dot-segments
// of a URL path (RFC 3986 §5.2.4): clients and servers remove them, so the
// admin API (/v1/services/{service}/accounts/{account}) could never name
// such a service or account; a name must be usable on every interface.
// The licensing package checks licence service names with it too.
func Valid(b []byte) bool {
	if len(b) == 0 || len(b) > MaxLen || string(b) == "." || string(b) == ".." {
		return false
	}
	for _, c := range b {
		if !nameChars[c] {
			return false
		}
	}
	return true
}

// ValidKey reports whether b is a usable call-id, subscriber id or
// idempotency key: 1 to MaxKeyLen bytes, no control characters or spaces.
func ValidKey(b []byte) bool {
	if len(b) == 0 || len(b) > MaxKeyLen {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}
