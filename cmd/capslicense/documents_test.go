package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing"
)

// capslicense verify and inspect show every document of a licence file
// (they showed the first, or with a revocation anywhere only that), or,
// when one fails, none and say which.
func TestVerifyEveryDocumentOfAFile(t *testing.T) {
	dir := keys(t)
	issue := func(cmd string, args ...string) string {
		t.Helper()
		code, out, stderr := cli(t, "", append([]string{cmd, "--key", dir + "/vendor.key"}, args...)...)
		require.Equal(t, 0, code, stderr)
		return out
	}
	a := issue("issue", "--service", "vpn", "--caps", "500", "--id", "a")
	b := issue("issue", "--service", "vpn", "--caps", "500", "--id", "b")
	rev := issue("revoke", "--id", "old")
	key, err := licensing.LoadVendorKey(dir + "/vendor.key")
	require.NoError(t, err)

	code, out, stderr := cli(t, a+"\n"+b+rev, "verify", "--pub", dir+"/vendor.pub", "-")
	require.Equal(t, 0, code, stderr)
	require.Equal(t, 3, strings.Count(out, "Signature: good"), out)
	require.Contains(t, out, "Document 1 of 3 (line 1):\nSignature: good, licence signed by key "+key.ID()+"\nId:                 a\n")
	require.Contains(t, out, "\n\nDocument 2 of 3 (line 30):\nSignature: good, licence signed by key "+key.ID()+"\nId:                 b\n")
	require.Contains(t, out, "\n\nDocument 3 of 3 (line 58):\nSignature: good, revocation signed by key "+key.ID()+"\nId:                 ")
	require.Contains(t, out, "Revokes:            old\n")

	code, out, _ = cli(t, a+rev, "inspect", "-")
	require.Equal(t, 0, code)
	require.Equal(t, 2, strings.Count(out, "NOT VERIFIED"), out)

	tampered := strings.Replace(b, "Caps: 500", "Caps: 900", 1)
	code, out, stderr = cli(t, a+tampered, "verify", "--pub", dir+"/vendor.pub", "-")
	require.Equal(t, 1, code)
	require.Empty(t, out, "nothing is shown when a document fails")
	require.Equal(t, `capslicense verify: -: document 2 of 2 (licence at line 29): bad signature: licence: header line "Caps: 900" does not match the signed document (altered?)`+"\n", stderr)

	code, _, stderr = cli(t, a+b[:len(b)/2], "inspect", "-")
	require.Equal(t, 1, code)
	require.Equal(t, "capslicense inspect: -: malformed: the licence at line 29 has no -----END CAPSGATE LICENSE----- line (truncated?); the file holds 2 documents: licence (line 1), licence (line 29)\n", stderr)
}
