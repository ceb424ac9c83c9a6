package node

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

// loadVendorKeys builds the keyring of trusted vendor public keys
// (vendor_keys), plus the --dev key when there is one.
func loadVendorKeys(files []string, dev *licensing.VendorKey) (*licensing.Keyring, error) {
	var pubs []ed25519.PublicKey
	for _, f := range files {
		pub, err := licensing.LoadVendorPublicKey(f)
		if err != nil {
			return nil, fmt.Errorf("cannot use vendor key %s (vendor_keys, --vendor-key): %w", f, err)
		}
		pubs = append(pubs, pub)
	}
	if dev != nil {
		pubs = append(pubs, dev.Public())
	}
	return licensing.NewKeyring(pubs...)
}

// Dev vendor key files in a --dev node's data dir: the dev licence is
// signed with this key, and the tour issues more licences with it.
const (
	DevVendorKeyFile = "dev-vendor.key"
	DevVendorPubFile = "dev-vendor.pub"
)

// devVendorKey returns the --dev vendor key kept in the data dir, making
// one on first start.
func devVendorKey(dataDir string) (*licensing.VendorKey, error) {
	path := filepath.Join(dataDir, DevVendorKeyFile)
	var key *licensing.VendorKey
	b, err := bounded.ReadFile(path, bounded.KeyFile)
	switch {
	case err == nil:
		if key, err = licensing.ParseVendorKey(b); err != nil {
			return nil, fmt.Errorf("cannot use the --dev vendor key %s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if key, err = licensing.GenerateVendorKey(); err != nil {
			return nil, err
		}
		priv, pub := key.MarshalPrivate(), licensing.MarshalVendorPublicKey(key.Public())
		if err := os.WriteFile(path, priv, 0o600); err != nil {
			return nil, fmt.Errorf("cannot write the --dev vendor key: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dataDir, DevVendorPubFile), pub, 0o644); err != nil {
			return nil, fmt.Errorf("cannot write the --dev vendor key: %w", err)
		}
	default:
		return nil, fmt.Errorf("cannot read the --dev vendor key: %w", err)
	}
	return key, nil
}

const devLicenseID = "dev-demo"

// loadDevLicense loads the SPEC's --dev licence for service demo through
// the same path an operator's licence takes.
func loadDevLicense(reg *registry.Registry, key *licensing.VendorKey) error {
	if _, ok := reg.Get(devLicenseID); ok {
		return nil // kept in the data dir from an earlier start
	}
	armored, err := key.Sign(&licensing.License{
		ID: devLicenseID, Customer: "capsgate --dev", Service: DevService,
		CAPS: 1000, Sessions: 500, Subscribers: 10000, Tokens: 1000000,
	}, time.Now())
	if err != nil {
		return fmt.Errorf("cannot sign the --dev licence: %w", err)
	}
	if _, err := reg.Add(armored); err != nil {
		return fmt.Errorf("cannot load the --dev licence: %w", err)
	}
	return nil
}
