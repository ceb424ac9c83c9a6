package registry_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

// snapshot is everything a load may change: the licences with their
// states, the documents held, the files in data_dir and the engine's
// limits of the services involved.
func (f *fixture) snapshot(services ...string) []any {
	f.t.Helper()
	var files []string
	_ = filepath.WalkDir(f.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	out := []any{f.reg.List(), len(f.reg.Documents()), files}
	for _, s := range services {
		out = append(out, f.limits(s))
	}
	return out
}

func (f *fixture) revoke(id string, ids ...string) []byte {
	f.t.Helper()
	b, err := f.key.Revoke(&licensing.Revocation{ID: id, Revokes: ids, Reason: "replaced"}, f.wall)
	require.NoError(f.t, err)
	return b
}

func join(docs ...[]byte) []byte { return slices.Concat(docs...) }

// A file holding several documents loads every one, in order, or none.
func TestLoadEveryDocumentOfAFile(t *testing.T) {
	f := newFixture(t)
	a := f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500, Sessions: 100})
	b := f.sign(licensing.License{ID: "b", Service: "voice", CAPS: 500, Sessions: 50})

	// Two licences: both load and stack (the first used to load alone).
	res, err := f.reg.Load(join([]byte("Dear customer, your licences:\n\n"), a, []byte("\nand the add-on:\n"), b))
	require.NoError(t, err)
	require.Equal(t, []registry.Result{{Kind: "license", ID: "a", Service: "voice", State: "active", New: true},
		{Kind: "license", ID: "b", Service: "voice", State: "active", New: true}}, res)
	require.Equal(t, 1000.0, f.limits("voice").CAPS)
	require.Equal(t, int64(150), f.limits("voice").Sessions)
	res, err = f.reg.Load(join(a, b))
	require.NoError(t, err, "loading the file again is a no-op")
	require.False(t, res[0].New || res[1].New)
	_, err = f.reg.Add(join(a, b))
	require.EqualError(t, err, "the file holds 2 documents: licence (line 1), licence (line 29): load it whole (Load) or one document at a time")
	reasonIs(t, err, registry.ReasonMalformed)

	// A licence and the revocation of the licence it replaces: both apply,
	// in order (the revocation alone used to load).
	c := f.sign(licensing.License{ID: "c", Service: "voice", CAPS: 2000})
	res, err = f.reg.Load(join(c, f.revoke("r1", "a", "b")))
	require.NoError(t, err)
	require.Equal(t, []registry.Result{{Kind: "license", ID: "c", Service: "voice", State: "active", New: true},
		{Kind: "revocation", ID: "r1", New: true}}, res)
	require.Equal(t, "revoked", f.state("a"))
	require.Equal(t, "revoked", f.state("b"))
	require.Equal(t, 2000.0, f.limits("voice").CAPS)
	require.Equal(t, int64(-1), f.limits("voice").Sessions)

	// A licence followed by its own revocation: loaded, then revoked.
	res, err = f.reg.Load(join(f.sign(licensing.License{ID: "d", Service: "sms", CAPS: 10}), f.revoke("r2", "d")))
	require.NoError(t, err)
	require.Len(t, res, 2)
	require.Equal(t, "revoked", f.state("d"))
	require.False(t, f.limits("sms").Licensed)

	// After a restart, the same.
	f.open()
	require.Equal(t, "revoked", f.state("a"))
	require.Equal(t, "active", f.state("c"))
	require.Equal(t, 2000.0, f.limits("voice").CAPS)
	require.Equal(t, "revoked", f.state("d"))
}

// A refused document refuses the whole file: nothing is stored or
// applied, and the error says which document and what the file holds.
func TestLoadRefusesTheWholeFile(t *testing.T) {
	f := newFixture(t)
	_, err := f.reg.Add(f.sign(licensing.License{ID: "base", Service: "voice", CAPS: 100}))
	require.NoError(t, err)
	good := f.sign(licensing.License{ID: "good", Service: "voice", CAPS: 500})
	other, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	foreign, err := other.Sign(&licensing.License{ID: "foreign", Service: "voice", CAPS: 5000}, f.wall)
	require.NoError(t, err)
	forged := f.sign(licensing.License{ID: "forged", Service: "voice", CAPS: 500})
	forged = bytes.Replace(forged, []byte("Caps: 500"), []byte("Caps: 900"), 1)
	pub := licensing.MarshalVendorPublicKey(f.key.Public())

	fl := func(text []byte, reason, msg string) {
		t.Helper()
		before := f.snapshot("voice", "sms")
		_, err := f.reg.Load(text)
		require.EqualError(t, err, msg)
		reasonIs(t, err, reason)
		require.Equal(t, before, f.snapshot("voice", "sms"), "a refused file changes nothing")
	}
	fl(join(good, foreign), registry.ReasonUnknownKey, `document 2 of 2 (licence at line 29): unknown vendor key: licence is signed by key "`+
		licensing.KeyID(other.Public())+`", which is not among the trusted keys [`+licensing.KeyID(f.key.Public())+`]; nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))`)
	fl(join(good, forged), registry.ReasonBadSignature, `document 2 of 2 (licence at line 29): bad signature: licence: header line "Caps: 900" does not match the signed document (altered?); nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))`)
	fl(join(f.revoke("r1", "good"), good), registry.ReasonRevoked, `document 2 of 2 (licence at line 14): licence good was revoked by r1; nothing in the file was loaded (it holds 2 documents: revocation (line 1), licence (line 14))`)
	fl(join(good, f.sign(licensing.License{ID: "good", Service: "voice", CAPS: 900})), registry.ReasonReplayed,
		`document 2 of 2 (licence at line 29): licence id good is already loaded with other content; nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))`)
	fl(join(good, f.sign(licensing.License{ID: "sms", Service: "sms", CAPS: 10, Cluster: "farm-2"})), registry.ReasonWrongCluster,
		`document 2 of 2 (licence at line 29): licence sms is bound to cluster "farm-2"; this node's cluster_id is "farm-1"; nothing in the file was loaded (it holds 2 documents: licence (line 1), licence (line 29))`)
	fl(join(good, good[:len(good)/2]), registry.ReasonMalformed,
		`malformed: the licence at line 29 has no -----END CAPSGATE LICENSE----- line (truncated?); the file holds 2 documents: licence (line 1), licence (line 29)`)
	fl(join(bytes.TrimSuffix(good, []byte("-----END CAPSGATE LICENSE-----\n")), good), registry.ReasonMalformed,
		`malformed: the licence at line 1 has no END line before the BEGIN line at line 28 (truncated?); the file holds 1 document: licence (line 1)`)
	fl(join(good, pub), registry.ReasonMalformed,
		`malformed: line 29 begins a vendor public key, which is not a licence or revocation; the file holds 1 document: licence (line 1)`)
	fl([]byte("hello"), registry.ReasonMalformed, "malformed: no -----BEGIN CAPSGATE LICENSE----- or -----BEGIN CAPSGATE LICENSE REVOCATION----- line")
	require.Equal(t, 28, bytes.Count(good, []byte("\n")), "a licence is 28 lines: the second of two begins at line 29")

	// A store that fails part-way removes what the file stored before it.
	revDir := filepath.Join(f.dir, "revocations")
	require.NoError(t, os.RemoveAll(revDir))
	require.NoError(t, os.WriteFile(revDir, nil, 0o600))
	before := f.snapshot("voice")
	_, err = f.reg.Load(join(good, f.revoke("r9", "base")))
	require.ErrorContains(t, err, "cannot store r9.rev in data_dir (nothing was loaded)")
	require.Equal(t, before, f.snapshot("voice"))
}

// A file an older version stored as it was posted, holding several
// documents, loads every one of them at start.
func TestOpenLoadsEveryDocumentOfAStoredFile(t *testing.T) {
	f := newFixture(t)
	a := f.sign(licensing.License{ID: "a", Service: "voice", CAPS: 500})
	b := f.sign(licensing.License{ID: "b", Service: "voice", CAPS: 500})
	require.NoError(t, os.WriteFile(filepath.Join(f.dir, "a.lic"), join(a, b), 0o600))
	f.open()
	require.Equal(t, 1000.0, f.limits("voice").CAPS)
}
