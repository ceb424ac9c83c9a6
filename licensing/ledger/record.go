package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Format constants.
const (
	// Version is the record format version, the "v" field of every record.
	Version = 1
	// MaxLineBytes bounds one stored record line, newline included. Decode
	// and Verify refuse longer lines; Append refuses records that would be.
	MaxLineBytes = 64 << 10
	// signDomain prefixes the bytes a record's signature covers, so that a
	// ledger signature can never be taken for any other capsgate signature.
	signDomain = "capsgate-ledger-v1\n"
)

// GenesisPrev is the prev of a ledger's first record (seq 1).
var GenesisPrev = strings.Repeat("0", 64)

// Record kinds, the "kind" field.
const (
	KindUsage   = "usage"
	KindWitness = "witness"
	KindGenesis = "genesis"
)

// Errors Decode and Record.Check return; callers branch with errors.Is.
var (
	ErrMalformed    = errors.New("malformed")
	ErrHashMismatch = errors.New("hash mismatch")
	ErrBadSignature = errors.New("bad signature")
)

// Usage is what one service, or one account of it, used on a node during a
// record's interval. Emergency attempts are counted in Emergency alone, not
// in Attempts, Admitted or Rejected.
type Usage struct {
	Service string `json:"service"`
	// Account is "" for the service-level totals; an account record is a
	// part of those totals, never an addition to them.
	Account string `json:"account,omitempty"`
	// Trunk is "" but for a trunk key's record (ADMIT ... TRUNK key): the
	// attempts with that key, by the decision they got, and the peak of
	// its sessions; like an account's, a part of the service's totals.
	Trunk string `json:"trunk,omitempty"`
	// Attempts are the normal and high-priority attempts decided; Admitted
	// those admitted and Rejected the others by reason (CAPS SESSIONS
	// SUBSCRIBERS TOKENS UNLICENSED OVERLOAD).
	Attempts uint64            `json:"attempts"`
	Admitted uint64            `json:"admitted"`
	Rejected map[string]uint64 `json:"rejected,omitempty"`
	// Emergency counts the emergency attempts admitted.
	Emergency uint64 `json:"emergency"`
	// Peaks seen on this node during the interval.
	PeakCAPS        uint64 `json:"peak_caps"`
	PeakSessions    uint64 `json:"peak_sessions"`
	PeakSubscribers uint64 `json:"peak_subscribers"`
	// Tokens consumed within the pool, and Overage the tokens consumed
	// beyond it (together: all tokens consumed).
	Tokens  uint64 `json:"tokens"`
	Overage uint64 `json:"overage"`
}

// Witness is a peer's ledger head as seen over gossip: the peer Node had
// written up to Seq, whose record hash was Hash. Key (the peer's public
// key, base64) and Genesis (the hash of the peer's genesis record) are
// set by nodes that gossip them; records written before they existed
// lack them.
type Witness struct {
	Node    string `json:"node"`
	Seq     uint64 `json:"seq"`
	Hash    string `json:"hash"`
	Key     string `json:"key,omitempty"`
	Genesis string `json:"genesis,omitempty"`
}

// Check reports whether w is a witness Append accepts.
func (w *Witness) Check() error { return validWitness(w) }

// Genesis opens a node's ledger (seq 1): the node's public key (base64,
// the same as the record's "key"), its cluster and the instant the ledger
// was created (RFC 3339, UTC). Peers witness its hash. Ledgers written
// before genesis records existed start with a usage or witness record.
type Genesis struct {
	Key     string `json:"key"`
	Cluster string `json:"cluster"`
	First   string `json:"first"`
}

// Record is one ledger line: exactly one of Usage, Witness and Genesis is
// set.
type Record struct {
	Seq     uint64
	Node    string
	Cluster string
	// At is when the node wrote the record; From and To bound the interval
	// it covers, [From, To).
	At, From, To time.Time
	Usage        *Usage
	Witness      *Witness
	Genesis      *Genesis
	// Prev is the Hash of the record before (GenesisPrev for seq 1); Hash
	// is the hex SHA-256 of this record's canonical body; Sig the base64
	// Ed25519 signature by the node key Key (base64).
	Prev, Hash, Sig, Key string
}

// Kind returns KindUsage, KindWitness or KindGenesis.
func (r *Record) Kind() string {
	switch {
	case r.Witness != nil:
		return KindWitness
	case r.Genesis != nil:
		return KindGenesis
	}
	return KindUsage
}

// wire is the JSON form of a Record, in canonical field order. Usage
// fields are inline (a usage record has a top-level "admitted" number);
// a witness record has a "witness" object instead. Hash and sig come last
// so that the body (without them) is a prefix of the line.
type wire struct {
	V       int      `json:"v"`
	Seq     uint64   `json:"seq"`
	Node    string   `json:"node"`
	Cluster string   `json:"cluster"`
	Kind    string   `json:"kind"`
	At      string   `json:"at"`
	From    string   `json:"from"`
	To      string   `json:"to"`
	*Usage           // inline; nil for a witness record
	Witness *Witness `json:"witness,omitempty"`
	Genesis *Genesis `json:"genesis,omitempty"`
	Prev    string   `json:"prev"`
	Key     string   `json:"key"`
	Hash    string   `json:"hash,omitempty"`
	Sig     string   `json:"sig,omitempty"`
}

func (r *Record) wire() wire {
	return wire{V: Version, Seq: r.Seq, Node: r.Node, Cluster: r.Cluster, Kind: r.Kind(),
		At: formatTime(r.At), From: formatTime(r.From), To: formatTime(r.To),
		Usage: r.Usage, Witness: r.Witness, Genesis: r.Genesis, Prev: r.Prev, Key: r.Key}
}

// body returns the canonical encoding of everything but hash and sig: the
// bytes Hash is the SHA-256 of.
func (r *Record) body() ([]byte, error) {
	b, err := json.Marshal(r.wire())
	if err != nil {
		return nil, fmt.Errorf("cannot encode record: %w", err)
	}
	return b, nil
}

// withField returns obj (a JSON object) with "name":"value" added last.
func withField(obj []byte, name, value string) []byte {
	out := make([]byte, 0, len(obj)+len(name)+len(value)+6)
	out = append(out, obj[:len(obj)-1]...)
	out = append(out, `,"`...)
	out = append(out, name...)
	out = append(out, `":"`...)
	out = append(out, value...)
	return append(out, `"}`...)
}

// signed returns the message the signature covers: the domain, then the
// canonical encoding of everything but sig.
func signed(body []byte, hash string) []byte {
	return append([]byte(signDomain), withField(body, "hash", hash)...)
}

func hashOf(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// seal sets r.Key, r.Hash and r.Sig, signing with key, and returns the
// record's line (newline included).
func (r *Record) seal(key ed25519.PrivateKey) ([]byte, error) {
	r.Key = base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	body, err := r.body()
	if err != nil {
		return nil, err
	}
	r.Hash = hashOf(body)
	r.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(key, signed(body, r.Hash)))
	line := append(withField(withField(body, "hash", r.Hash), "sig", r.Sig), '\n')
	if len(line) > MaxLineBytes {
		return nil, fmt.Errorf("cannot append record: %d bytes, more than %d", len(line), MaxLineBytes)
	}
	return line, nil
}

// Line returns the record's canonical line, newline included: the bytes a
// ledger stores for it.
func (r *Record) Line() ([]byte, error) {
	body, err := r.body()
	if err != nil {
		return nil, err
	}
	return append(withField(withField(body, "hash", r.Hash), "sig", r.Sig), '\n'), nil
}

// Check reports whether the record is intact: Hash is the hash of its
// body (else ErrHashMismatch) and Sig a good signature by Key (else
// ErrBadSignature). It does not say whose key Key is.
func (r *Record) Check() error {
	body, err := r.body()
	if err != nil {
		return err
	}
	if hashOf(body) != r.Hash {
		return ErrHashMismatch
	}
	pub, err := base64.StdEncoding.DecodeString(r.Key)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: key is not a base64 Ed25519 public key", ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(r.Sig)
	if err != nil || !ed25519.Verify(pub, signed(body, r.Hash), sig) {
		return ErrBadSignature
	}
	return nil
}

// PublicKey returns the decoded Key, or nil if it is not a public key.
func (r *Record) PublicKey() ed25519.PublicKey {
	pub, err := base64.StdEncoding.DecodeString(r.Key)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil
	}
	return pub
}

// Decode parses one record line (with or without its newline). It is
// strict: the line must be at most MaxLineBytes and exactly the record's
// canonical encoding — no unknown or missing fields, no other field order,
// spacing, escaping or time zone, nothing after it — so that a record has
// one byte form and any changed byte is either refused here or changes
// what Check verifies. Decode does not check the hash or signature.
func Decode(line []byte) (*Record, error) {
	if len(line) > MaxLineBytes {
		return nil, fmt.Errorf("%w: line of %d bytes, more than %d", ErrMalformed, len(line), MaxLineBytes)
	}
	text := bytes.TrimSuffix(line, []byte("\n"))
	var w wire
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: bad JSON: %v", ErrMalformed, err)
	}
	r := &Record{Seq: w.Seq, Node: w.Node, Cluster: w.Cluster, Usage: w.Usage, Witness: w.Witness, Genesis: w.Genesis,
		Prev: w.Prev, Hash: w.Hash, Sig: w.Sig, Key: w.Key}
	var err error
	if r.At, err = parseTime("at", w.At); err != nil {
		return nil, err
	}
	if r.From, err = parseTime("from", w.From); err != nil {
		return nil, err
	}
	if r.To, err = parseTime("to", w.To); err != nil {
		return nil, err
	}
	if err := r.validate(w.V, w.Kind); err != nil {
		return nil, err
	}
	again, err := r.Line()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again[:len(again)-1], text) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrMalformed)
	}
	return r, nil
}

// validate checks the values of a decoded record.
func (r *Record) validate(v int, kind string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	switch {
	case v != Version:
		return bad("unknown version v=%d", v)
	case r.Seq == 0:
		return bad("seq must be at least 1")
	case r.Node == "" || len(r.Node) > 256:
		return bad("node must be 1 to 256 bytes")
	case len(r.Cluster) > 256:
		return bad("cluster must be at most 256 bytes")
	case r.To.Before(r.From):
		return bad("to is before from")
	case !isHex64(r.Prev):
		return bad("prev is not 64 lowercase hex digits")
	case !isHex64(r.Hash):
		return bad("hash is not 64 lowercase hex digits")
	case !isBase64(r.Key, ed25519.PublicKeySize):
		return bad("key is not a base64 Ed25519 public key")
	case !isBase64(r.Sig, ed25519.SignatureSize):
		return bad("sig is not a base64 Ed25519 signature")
	case btoi(r.Usage != nil)+btoi(r.Witness != nil)+btoi(r.Genesis != nil) != 1:
		return bad("want exactly one of usage fields, witness and genesis")
	case kind != r.Kind():
		return bad("kind %q does not match the fields", kind)
	}
	switch {
	case r.Usage != nil:
		return validUsage(r.Usage)
	case r.Genesis != nil:
		return r.validGenesis()
	}
	return validWitness(r.Witness)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// validGenesis checks a genesis record: it is seq 1 and says what the
// record itself carries (key, cluster, instant).
func (r *Record) validGenesis() error {
	g := r.Genesis
	switch {
	case r.Seq != 1 || r.Prev != GenesisPrev:
		return fmt.Errorf("%w: a genesis record must be seq 1", ErrMalformed)
	case g.Key != r.Key:
		return fmt.Errorf("%w: genesis key is not the record's key", ErrMalformed)
	case g.Cluster != r.Cluster:
		return fmt.Errorf("%w: genesis cluster is not the record's cluster", ErrMalformed)
	case g.First != formatTime(r.At):
		return fmt.Errorf("%w: genesis first instant is not the record's instant", ErrMalformed)
	}
	return nil
}

func validUsage(u *Usage) error {
	if u.Service == "" || len(u.Service) > 256 {
		return fmt.Errorf("%w: service must be 1 to 256 bytes", ErrMalformed)
	}
	if len(u.Account) > 256 {
		return fmt.Errorf("%w: account must be at most 256 bytes", ErrMalformed)
	}
	if len(u.Trunk) > 256 {
		return fmt.Errorf("%w: trunk must be at most 256 bytes", ErrMalformed)
	}
	if u.Trunk != "" && u.Account != "" {
		return fmt.Errorf("%w: a record is an account's or a trunk key's, not both", ErrMalformed)
	}
	if len(u.Rejected) > 32 {
		return fmt.Errorf("%w: more than 32 reject reasons", ErrMalformed)
	}
	for reason := range u.Rejected {
		if !validReason(reason) {
			return fmt.Errorf("%w: reject reason %q is not [A-Z_]{1,32}", ErrMalformed, reason)
		}
	}
	return nil
}

func validWitness(w *Witness) error {
	switch {
	case w.Node == "" || len(w.Node) > 256:
		return fmt.Errorf("%w: witness node must be 1 to 256 bytes", ErrMalformed)
	case w.Seq == 0:
		return fmt.Errorf("%w: witness seq must be at least 1", ErrMalformed)
	case !isHex64(w.Hash):
		return fmt.Errorf("%w: witness hash is not 64 lowercase hex digits", ErrMalformed)
	case w.Key != "" && !isBase64(w.Key, ed25519.PublicKeySize):
		return fmt.Errorf("%w: witness key is not a base64 Ed25519 public key", ErrMalformed)
	case w.Genesis != "" && !isHex64(w.Genesis):
		return fmt.Errorf("%w: witness genesis is not 64 lowercase hex digits", ErrMalformed)
	}
	return nil
}

func validReason(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('A' <= c && c <= 'Z' || c == '_') {
			return false
		}
	}
	return true
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// isBase64 reports whether s is the canonical standard base64 of n bytes.
func isBase64(s string, n int) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == n && base64.StdEncoding.EncodeToString(b) == s
}

// formatTime writes t in UTC, RFC 3339 with only the fraction it needs.
func formatTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTime(name, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: cannot parse %s %q", ErrMalformed, name, s)
	}
	return t.UTC(), nil
}
