package licensing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/capsgate/capsgate/admission/bounded"
)

// Key files, as capslicense keygen writes them.
const (
	PrivateKeyFile = "vendor.key" // the armored Ed25519 seed; mode 0600
	PublicKeyFile  = "vendor.pub" // the armored Ed25519 public key

	privateKeyLabel = "CAPSGATE VENDOR PRIVATE KEY"
	publicKeyLabel  = "CAPSGATE VENDOR PUBLIC KEY"
)

// KeyID names a vendor public key: the first 8 bytes of its SHA-256, in
// lowercase hex (16 digits). Licences carry it to say which key signed them.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

func validKeyID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// VendorKey is the vendor's signing key. It is immutable and safe for
// concurrent use.
type VendorKey struct {
	priv ed25519.PrivateKey
	id   string
}

// GenerateVendorKey makes a new random vendor key.
func GenerateVendorKey() (*VendorKey, error) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("cannot generate vendor key: %w", err)
	}
	return NewVendorKey(priv.Seed())
}

// NewVendorKey returns the vendor key with the given 32-byte Ed25519 seed.
func NewVendorKey(seed []byte) (*VendorKey, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: vendor key seed is %d bytes, want %d", ErrMalformed, len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return &VendorKey{priv: priv, id: KeyID(priv.Public().(ed25519.PublicKey))}, nil
}

// ID returns the key id, KeyID(k.Public()).
func (k *VendorKey) ID() string { return k.id }

// Public returns the public key that verifies what k signs.
func (k *VendorKey) Public() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// MarshalPrivate returns the contents of a vendor.key file: the armored
// seed. Keep it secret.
func (k *VendorKey) MarshalPrivate() []byte {
	return armor(privateKeyLabel, []Field{{"Key-Id", k.id}}, k.priv.Seed())
}

// MarshalVendorPublicKey returns the contents of a vendor.pub file. Its Key-Id
// header line is informational.
func MarshalVendorPublicKey(pub ed25519.PublicKey) []byte {
	return armor(publicKeyLabel, []Field{{"Key-Id", KeyID(pub)}}, pub)
}

// ParseVendorKey reads the contents of a vendor.key file.
func ParseVendorKey(data []byte) (*VendorKey, error) {
	seed, _, err := unarmor(privateKeyLabel, data)
	if err != nil {
		return nil, err
	}
	return NewVendorKey(seed)
}

// ParseVendorPublicKey reads the contents of a vendor.pub file.
func ParseVendorPublicKey(data []byte) (ed25519.PublicKey, error) {
	pub, _, err := unarmor(publicKeyLabel, data)
	if err != nil {
		return nil, err
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public key is %d bytes, want %d", ErrMalformed, len(pub), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(pub), nil
}

// LoadVendorKey reads a vendor.key file.
func LoadVendorKey(path string) (*VendorKey, error) {
	return load(path, ParseVendorKey)
}

// LoadVendorPublicKey reads a vendor.pub file.
func LoadVendorPublicKey(path string) (ed25519.PublicKey, error) {
	return load(path, ParseVendorPublicKey)
}

func load[T any](path string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	data, err := bounded.ReadFile(path, bounded.KeyFile)
	if err != nil {
		return zero, fmt.Errorf("cannot read key: %w", err)
	}
	v, err := parse(data)
	if err != nil {
		return zero, fmt.Errorf("cannot read key %s: %w", path, err)
	}
	return v, nil
}

// WriteKeyFiles writes k to dir/vendor.key (mode 0600) and its public key
// to dir/vendor.pub, creating dir (mode 0700) if needed. It never
// overwrites: if either file exists it writes nothing and the error wraps
// fs.ErrExist.
func WriteKeyFiles(dir string, k *VendorKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create key directory: %w", err)
	}
	priv, pub := filepath.Join(dir, PrivateKeyFile), filepath.Join(dir, PublicKeyFile)
	for _, p := range []string{priv, pub} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("cannot write %s: %w (refusing to overwrite a vendor key)", p, os.ErrExist)
		}
	}
	if err := writeNew(priv, k.MarshalPrivate(), 0o600); err != nil {
		return err
	}
	return writeNew(pub, MarshalVendorPublicKey(k.Public()), 0o644)
}

// writeNew creates path (failing if it exists) and writes data durably.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("cannot write key: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cannot write key %s: %w", path, err)
	}
	return nil
}

// Keyring is the set of trusted vendor public keys, found by key id.
// Several at once allow key rotation: licences signed by the old and the
// new key both verify. A Keyring is immutable and safe for concurrent use.
type Keyring struct {
	keys map[string]ed25519.PublicKey
}

// NewKeyring returns a keyring trusting the given public keys.
func NewKeyring(pubs ...ed25519.PublicKey) (*Keyring, error) {
	r := &Keyring{keys: make(map[string]ed25519.PublicKey, len(pubs))}
	for _, pub := range pubs {
		if len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("cannot trust key: %w: public key is %d bytes, want %d", ErrMalformed, len(pub), ed25519.PublicKeySize)
		}
		r.keys[KeyID(pub)] = slices.Clone(pub)
	}
	return r, nil
}

// LoadKeyring reads vendor.pub files (config vendor_keys) into a keyring.
func LoadKeyring(paths ...string) (*Keyring, error) {
	if len(paths) == 0 {
		return nil, errors.New("cannot load keyring: no vendor public key file given")
	}
	pubs := make([]ed25519.PublicKey, 0, len(paths))
	for _, p := range paths {
		pub, err := LoadVendorPublicKey(p)
		if err != nil {
			return nil, err
		}
		pubs = append(pubs, pub)
	}
	return NewKeyring(pubs...)
}

// IDs returns the ids of the trusted keys, sorted.
func (r *Keyring) IDs() []string {
	ids := make([]string, 0, r.len())
	if r != nil {
		for id := range r.keys {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (r *Keyring) len() int {
	if r == nil {
		return 0
	}
	return len(r.keys)
}

func (r *Keyring) key(id string) (ed25519.PublicKey, bool) {
	if r == nil {
		return nil, false
	}
	pub, ok := r.keys[id]
	return pub, ok
}
