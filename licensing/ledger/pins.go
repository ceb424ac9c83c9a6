package ledger

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/durable"
)

// A pins file holds the node keys a vendor pinned on first use
// (capslicense --trust-on-first-use FILE): one "NODE KEY" line per node,
// KEY the base64 public key as in node.pub; lines starting with "#" are
// comments. The vendor keeps it; later runs pin the keys it names.
const pinsHeader = "# capslicense --trust-on-first-use: node keys pinned on first use (NODE BASE64-KEY)\n"

// LoadPins reads a pins file; a missing file has no pins.
func LoadPins(path string) (map[string]ed25519.PublicKey, error) {
	data, err := bounded.ReadFile(path, bounded.LedgerFile)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]ed25519.PublicKey{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read pinned keys: %w", err)
	}
	pins := map[string]ed25519.PublicKey{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("cannot read pinned keys: %s:%d: want NODE KEY", path, n)
		}
		pub, err := ParseNodePublicKey([]byte(f[1]))
		if err != nil {
			return nil, fmt.Errorf("cannot read pinned keys: %s:%d: %v", path, n, err)
		}
		if old, ok := pins[f[0]]; ok && !old.Equal(pub) {
			return nil, fmt.Errorf("cannot read pinned keys: %s:%d: a second key for node %s", path, n, f[0])
		}
		pins[f[0]] = pub
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read pinned keys: %s: %w", path, err)
	}
	return pins, nil
}

// AddPins adds lines for the nodes' keys (base64) to the pins file at
// path, creating it, and replacing it whole and durably so that a crash
// leaves the old file or the new one.
func AddPins(path string, nodes []string, keys map[string]string) error {
	old, err := bounded.ReadFile(path, bounded.LedgerFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot update pinned keys: %w", err)
	}
	if len(old) == 0 {
		old = []byte(pinsHeader)
	} else if old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	for _, node := range nodes {
		if strings.ContainsAny(node, " \t\r\n#") || !isBase64(keys[node], ed25519.PublicKeySize) {
			return fmt.Errorf("cannot pin the key of node %q: not a name and key a pins file can hold", node)
		}
		old = fmt.Appendf(old, "%s %s\n", node, keys[node])
	}
	if err := durable.WriteFile(path, old, 0o600); err != nil {
		return fmt.Errorf("cannot update pinned keys: %w", err)
	}
	return nil
}
