package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/capsgate/capsgate/admission"
)

// Both files are a magic header followed by records. A record is
//
//	u32 length of the payload | u32 CRC-32C of the payload | payload
//
// and a payload (little-endian)
//
//	u8 kind | u8 priority | u8 flags (1: licensed, 2: trunk) | u8 len(service) | u8 len(account)
//	u64 key hi | u64 key lo | i64 expires (Unix ns) | i64 remaining
//	service | account [| u8 len(trunk) | trunk]
//
// (the trunk only with flag 2: a journal written before keys had limits
// reads as it was written).
//
// A torn write leaves a record whose length runs past the end of the file
// or whose CRC does not match; reading stops there.
const (
	journalMagic  = "CGJRNL01"
	snapshotMagic = "CGSNAP01"
	frameHeader   = 8
	fixedPayload  = 5 + 4*8
	// maxPayload bounds a payload: names are at most 255 bytes each.
	maxPayload = fixedPayload + 3*255 + 1
	// flagLicensed and flagTrunk are the flags' bits.
	flagLicensed = 1
	flagTrunk    = 2
)

// Record kinds beyond admission's ChangeKinds.
const (
	// kindReset: forget everything about the service; a snapshot of it
	// follows (written when its in-memory log overflowed).
	kindReset = 0x80
	// kindEnd closes a snapshot; Remaining holds its record count.
	kindEnd = 0x81
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// record is one decoded record; Expires is Unix nanoseconds.
type record struct {
	service string
	admission.Change
	kind uint8
}

// appendRecord encodes one record onto b.
func appendRecord(b []byte, kind uint8, service string, c *admission.Change, expiresUnix int64) []byte {
	acct, trunk := "", ""
	var flags uint8
	var hi, lo uint64
	var prio uint8
	var rem int64
	if c != nil {
		acct, trunk = c.Account, c.Trunk
		if c.Licensed {
			flags |= flagLicensed
		}
		if trunk != "" {
			flags |= flagTrunk
		}
		hi, lo = c.Key.Parts()
		prio = uint8(c.Priority)
		rem = c.Remaining
	}
	if len(service) > 255 {
		service = service[:255] // names are validated far shorter
	}
	if len(acct) > 255 {
		acct = acct[:255]
	}
	if len(trunk) > 255 {
		trunk = trunk[:255]
	}
	start := len(b)
	b = append(b, make([]byte, frameHeader)...)
	b = append(b, kind, prio, flags, uint8(len(service)), uint8(len(acct)))
	b = binary.LittleEndian.AppendUint64(b, hi)
	b = binary.LittleEndian.AppendUint64(b, lo)
	b = binary.LittleEndian.AppendUint64(b, uint64(expiresUnix))
	b = binary.LittleEndian.AppendUint64(b, uint64(rem))
	b = append(b, service...)
	b = append(b, acct...)
	if flags&flagTrunk != 0 {
		b = append(b, uint8(len(trunk)))
		b = append(b, trunk...)
	}
	payload := b[start+frameHeader:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// errTorn is a record that is cut short or fails its CRC.
var errTorn = errors.New("torn or corrupt record")

// names interns the service and account names of the records read: a
// restore of millions of records holds a few names, not a string each.
type names map[string]string

// maxNames bounds a names: past it a name is a new string.
const maxNames = 1 << 16

func (in names) of(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	if in != nil && len(in) < maxNames {
		in[s] = s
	}
	return s
}

// readRecord decodes the record at the start of b and returns it with its
// encoded size.
func readRecord(b []byte) (record, int, error) { return readRecordIn(b, nil) }

// readRecordIn is readRecord taking its names from in.
func readRecordIn(b []byte, in names) (record, int, error) {
	if len(b) < frameHeader {
		return record{}, 0, fmt.Errorf("%w: %d bytes left, less than a record header", errTorn, len(b))
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < fixedPayload || n > maxPayload {
		return record{}, 0, fmt.Errorf("%w: length %d", errTorn, n)
	}
	if len(b) < frameHeader+n {
		return record{}, 0, fmt.Errorf("%w: %d bytes left of a %d-byte record", errTorn, len(b)-frameHeader, n)
	}
	p := b[frameHeader : frameHeader+n]
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return record{}, 0, fmt.Errorf("%w: CRC mismatch", errTorn)
	}
	sl, al := int(p[3]), int(p[4])
	tl := -1 // no trunk
	if p[2]&flagTrunk != 0 && fixedPayload+sl+al < n {
		tl = int(p[fixedPayload+sl+al])
	}
	if want := fixedPayload + sl + al + max(tl+1, 0); want != n || (p[2]&flagTrunk != 0 && tl < 0) {
		return record{}, 0, fmt.Errorf("%w: names of %d+%d bytes in a %d-byte record", errTorn, sl, al, n)
	}
	r := record{kind: p[0]}
	r.Kind = admission.ChangeKind(p[0])
	r.Priority = admission.Priority(p[1])
	r.Licensed = p[2]&flagLicensed != 0
	r.Key = admission.KeyFromParts(binary.LittleEndian.Uint64(p[5:]), binary.LittleEndian.Uint64(p[13:]))
	r.Expires = int64(binary.LittleEndian.Uint64(p[21:]))
	r.Remaining = int64(binary.LittleEndian.Uint64(p[29:]))
	r.service = in.of(p[fixedPayload : fixedPayload+sl])
	if al > 0 {
		r.Account = in.of(p[fixedPayload+sl : fixedPayload+sl+al])
	}
	if tl > 0 {
		r.Trunk = in.of(p[fixedPayload+sl+al+1 : n])
	}
	return r, frameHeader + n, nil
}
