package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
)

// Node key files in the data dir.
const (
	NodeKeyFile = "node.key" // base64 of the 32-byte Ed25519 seed and a newline; mode 0600
	NodePubFile = "node.pub" // base64 of the 32-byte Ed25519 public key and a newline
)

// LoadOrCreateNodeKey returns the node's ledger signing key from
// dataDir/node.key, creating dataDir (mode 0700), the key (mode 0600) and
// dataDir/node.pub on first start. node.pub is rewritten if it is missing
// or does not match node.key. It is the file to give the vendor
// (capslicense usage verify --node-pub NODE=FILE).
func LoadOrCreateNodeKey(dataDir string) (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create data_dir: %w", err)
	}
	path := filepath.Join(dataDir, NodeKeyFile)
	key, err := readNodeKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createNodeKey(path)
		if errors.Is(err, fs.ErrExist) { // another process won the race
			key, err = readNodeKey(path)
		}
	}
	if err != nil {
		return nil, err
	}
	pubPath := filepath.Join(dataDir, NodePubFile)
	pub := MarshalNodePublicKey(key.Public().(ed25519.PublicKey))
	if old, err := bounded.ReadFile(pubPath, bounded.KeyFile); err != nil || !bytes.Equal(old, pub) {
		if err := durable.WriteFile(pubPath, pub, 0o644); err != nil {
			return nil, fmt.Errorf("cannot write node public key: %w", err)
		}
	}
	return key, nil
}

func readNodeKey(path string) (ed25519.PrivateKey, error) {
	data, err := bounded.ReadFile(path, bounded.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read node key: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("cannot read node key %s: not the base64 of a 32-byte Ed25519 seed (move it aside to make a new key; the ledger then needs a new directory too)", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func createNodeKey(path string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("cannot generate node key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cannot create node key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(key.Seed()) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = durable.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return nil, fmt.Errorf("cannot create node key: %w", err)
	}
	return key, nil
}

// MarshalNodePublicKey returns the contents of a node.pub file.
func MarshalNodePublicKey(pub ed25519.PublicKey) []byte {
	return []byte(base64.StdEncoding.EncodeToString(pub) + "\n")
}

// ParseNodePublicKey reads the contents of a node.pub file.
func ParseNodePublicKey(data []byte) (ed25519.PublicKey, error) {
	pub, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data)))
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: not the base64 of a 32-byte Ed25519 public key", ErrMalformed)
	}
	return pub, nil
}

// LoadNodePublicKey reads a node.pub file.
func LoadNodePublicKey(path string) (ed25519.PublicKey, error) {
	data, err := bounded.ReadFile(path, bounded.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot read node public key: %w", err)
	}
	pub, err := ParseNodePublicKey(data)
	if err != nil {
		return nil, fmt.Errorf("cannot read node public key %s: %w", path, err)
	}
	return pub, nil
}
