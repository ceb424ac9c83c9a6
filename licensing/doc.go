// Package licensing is capsgate's licence core: the signed capacity
// licences the vendor issues, their revocations, the vendor keys that sign
// them, and what a set of licences entitles a service to at an instant.
//
// It is a pure library: no goroutines, no clock (time is passed in), and no
// I/O but reading and writing key files. Storing licences, spreading them
// over the cluster, refusing a foreign cluster's licence and detecting a
// clock set back are the node's work.
//
// The vendor side (capslicense, cmd/capslicense):
//
//	key, _ := licensing.GenerateVendorKey()
//	_ = licensing.WriteKeyFiles(dir, key) // vendor.key (0600), vendor.pub
//	armored, _ := key.Sign(&licensing.License{Service: "vpn", CAPS: 500}, time.Now())
//
// The node side:
//
//	ring, _ := licensing.LoadKeyring(cfg.VendorKeys...) // every trusted vendor.pub
//	l, err := ring.Verify(armored)
//	switch {
//	case errors.Is(err, licensing.ErrMalformed):    // 400
//	case errors.Is(err, licensing.ErrUnknownKey):   // 422: not one of our vendor keys
//	case errors.Is(err, licensing.ErrBadSignature): // 422: forged or altered
//	case !l.AppliesTo(cfg.ClusterID):               // 422: another cluster's
//	}
//	loaded = append(loaded, l)
//	limits := licensing.Effective(loaded, revoked, now) // per service
//	timer.Reset(licensing.NextChange(loaded, now).Sub(now))
//
// # Formats
//
// Documents travel as armored text (see armor.go): a BEGIN line, header
// lines for people, a blank line, base64 of the envelope
// {"license":<canonical licence>,"sig":"<Ed25519 signature>"} and an END
// line. The canonical encoding is JSON of a fixed-order struct; the
// signature covers "capsgate-license-v1\n" + those bytes (revocations:
// "capsgate-revocation-v1\n"). A key id is the first 8 bytes of the SHA-256
// of the public key, in hex.
//
// A licence file may hold several documents (licences and revocations,
// up to MaxDocuments): Split finds them all, in order, for a reader that
// loads the whole file or none of it. The one-document readers (Verify,
// Decode, the key parsers) refuse a text of several blocks rather than
// read the first and drop the rest.
//
// # Guarantees
//
//   - Verify accepts a document only if a trusted key signed exactly its
//     bytes: any altered field, any flipped bit of the payload, a signature
//     by another key (whatever key id the document claims) fails. Header
//     lines are never trusted; editing them changes nothing.
//   - A verified document has exactly one encoding: the decoder rebuilds the
//     envelope and the canonical document from what it parsed and refuses
//     anything that differs, so Canonical of a verified licence returns the
//     signed bytes.
//   - No input makes the decoder or Split panic (see FuzzDecode, FuzzSplit).
//   - Limits stack without wrapping: Effective's sums stop at
//     math.MaxInt64.
//   - State changes exactly at NotBefore, NotAfter and NotAfter+Grace, and
//     NextChange returns that instant, so a node's timer on an injected
//     clock recomputes Effective when, and only when, something changes.
package licensing
