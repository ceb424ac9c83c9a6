package node

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/capsgate/capsgate/admission/bounded"
)

// ReadSecretFile reads a token or password file: one line, surrounding
// white space (and the trailing \r\n) trimmed, not empty. key is the config
// key naming the file (e.g. "admin.token_file"), for the error, which also
// names the file.
func ReadSecretFile(key, path string) (string, error) {
	data, err := bounded.ReadFile(path, bounded.KeyFile)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name(key), err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty; it must hold the secret on one line", name(key), path)
	}
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("%s: %s holds more than one line; it must hold the secret on one line", name(key), path)
	}
	return s, nil
}

// ReadGossipKey reads the gossip key file: base64 (standard alphabet, with
// or without padding) of a 16, 24 or 32-byte key, as made by
// `head -c 32 /dev/urandom | base64`.
func ReadGossipKey(path string) ([]byte, error) {
	const key = "gossip.key_file"
	s, err := ReadSecretFile(key, path)
	if err != nil {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %s is not base64 (%v); make a key with: head -c 32 /dev/urandom | base64", name(key), path, err)
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("%s: %s holds a %d-byte key, want 16, 24 or 32 bytes; make one with: head -c 32 /dev/urandom | base64", name(key), path, len(b))
}
