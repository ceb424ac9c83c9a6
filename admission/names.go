package admission

// MaxNameLen bounds service and account names ([A-Za-z0-9._:-]{1,64}).
const MaxNameLen = 64

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

// ValidName reports whether b is a valid service or account name:
// [A-Za-z0-9._:-]{1,64}, but not "." or "..". Those two are dot-segments
// of a URL path (RFC 3986 §5.2.4): clients and servers remove them, so the
// admin API (/v1/services/{service}/accounts/{account}) could never name
// such a service or account; a name must be usable on every interface.
// The licensing package checks licence service names with it too.
func ValidName(b []byte) bool {
	if len(b) == 0 || len(b) > MaxNameLen || string(b) == "." || string(b) == ".." {
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
