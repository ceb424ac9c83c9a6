package licensing

import (
	"crypto/ed25519"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestKeyID(t *testing.T) {
	k := testKey(t, 1)
	require.Equal(t, "34750f98bd59fcfc", k.ID())
	require.Equal(t, k.ID(), KeyID(k.Public()))
	require.NotEqual(t, k.ID(), testKey(t, 2).ID())
	require.True(t, validKeyID(k.ID()))
}

func TestKeyFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	k, err := GenerateVendorKey()
	require.NoError(t, err)
	require.NoError(t, WriteKeyFiles(dir, k))

	info, err := os.Stat(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o600), info.Mode().Perm())
	priv, err := os.ReadFile(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(priv), "-----BEGIN CAPSGATE VENDOR PRIVATE KEY-----\nKey-Id: "+k.ID()+"\n\n"))
	pub, err := os.ReadFile(filepath.Join(dir, "vendor.pub"))
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(pub), "-----BEGIN CAPSGATE VENDOR PUBLIC KEY-----\nKey-Id: "+k.ID()+"\n\n"))

	loaded, err := LoadVendorKey(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.Equal(t, k, loaded)
	loadedPub, err := LoadVendorPublicKey(filepath.Join(dir, "vendor.pub"))
	require.NoError(t, err)
	require.Equal(t, k.Public(), loadedPub)

	ring, err := LoadKeyring(filepath.Join(dir, "vendor.pub"))
	require.NoError(t, err)
	require.Equal(t, []string{k.ID()}, ring.IDs())

	// Never overwritten, not even by the same key.
	err = WriteKeyFiles(dir, testKey(t, 1))
	require.ErrorIs(t, err, fs.ErrExist)
	require.EqualError(t, err, "cannot write "+filepath.Join(dir, "vendor.key")+": file already exists (refusing to overwrite a vendor key)")
	again, err := os.ReadFile(filepath.Join(dir, "vendor.key"))
	require.NoError(t, err)
	require.Equal(t, priv, again)

	// A stray vendor.pub also stops it, before vendor.key is written.
	dir2 := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir2, "vendor.pub"), nil, 0o644))
	require.ErrorIs(t, WriteKeyFiles(dir2, k), fs.ErrExist)
	_, err = os.Stat(filepath.Join(dir2, "vendor.key"))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

func TestKeyParseErrors(t *testing.T) {
	k := testKey(t, 1)
	_, err := ParseVendorPublicKey(k.MarshalPrivate())
	require.EqualError(t, err, "malformed: no -----BEGIN CAPSGATE VENDOR PUBLIC KEY----- line")
	_, err = ParseVendorKey(MarshalVendorPublicKey(k.Public()))
	require.EqualError(t, err, "malformed: no -----BEGIN CAPSGATE VENDOR PRIVATE KEY----- line")
	_, err = ParseVendorPublicKey(armor(publicKeyLabel, nil, make([]byte, 31)))
	require.EqualError(t, err, "malformed: public key is 31 bytes, want 32")
	_, err = ParseVendorKey(armor(privateKeyLabel, nil, make([]byte, 64)))
	require.EqualError(t, err, "malformed: vendor key seed is 64 bytes, want 32")

	// The Key-Id header is informational: a wrong one changes nothing.
	pub, err := ParseVendorPublicKey([]byte(strings.Replace(string(MarshalVendorPublicKey(k.Public())), k.ID(), "0000000000000000", 1)))
	require.NoError(t, err)
	require.Equal(t, k.Public(), pub)

	_, err = LoadVendorPublicKey(filepath.Join(t.TempDir(), "missing.pub"))
	require.ErrorIs(t, err, fs.ErrNotExist)
	bad := filepath.Join(t.TempDir(), "bad.pub")
	require.NoError(t, os.WriteFile(bad, []byte("hello"), 0o644))
	_, err = LoadKeyring(bad)
	require.EqualError(t, err, "cannot read key "+bad+": malformed: no -----BEGIN CAPSGATE VENDOR PUBLIC KEY----- line")
	_, err = LoadKeyring()
	require.EqualError(t, err, "cannot load keyring: no vendor public key file given")
	_, err = NewKeyring(ed25519.PublicKey{1, 2, 3})
	require.EqualError(t, err, "cannot trust key: malformed: public key is 3 bytes, want 32")
}
