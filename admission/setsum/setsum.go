// Package setsum is a digest of a set kept as the set changes: the sum, in
// two 64-bit lanes modulo 2^64, of the first 16 bytes of each member's
// SHA-256. Two members of a farm holding the same set get the same digest
// whatever order its members came in, and adding or taking out a member
// costs one hash, not a walk of the set (100,000 account allocations).
//
// It tells two copies apart that drifted by accident (a lost message); it
// is not a commitment: a set built to collide with another is not hard to
// find, so it only ever decides whether to send the set, never whether to
// trust it.
package setsum

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
)

// Sum is the digest of a set; its zero value is the empty set's.
type Sum struct{ a, b uint64 }

// Of is the digest of the set holding member alone.
func Of(member []byte) Sum {
	h := sha256.Sum256(member)
	return Sum{binary.BigEndian.Uint64(h[0:8]), binary.BigEndian.Uint64(h[8:16])}
}

// Add adds the members m sums to s.
func (s *Sum) Add(m Sum) { s.a, s.b = s.a+m.a, s.b+m.b }

// Sub takes the members m sums out of s.
func (s *Sum) Sub(m Sum) { s.a, s.b = s.a-m.a, s.b-m.b }

// String is the digest in 32 hex digits.
func (s Sum) String() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[0:8], s.a)
	binary.BigEndian.PutUint64(b[8:16], s.b)
	return hex.EncodeToString(b[:])
}
