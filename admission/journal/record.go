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
//
// A snapshot (snapshotMagic) holds blocks: a chunk of one service's
// entries of one kind under one length and CRC, whose payload is
//
//	u8 kindBlock | u8 kind | u8 len(service) | u32 count | service | count entries
//
// and an entry
//
//	u64 key hi | u64 key lo | i64 expires (Unix ns)
//	[unless kind is SubscriberSet: i64 remaining | u8 priority | u8 flags | u8 len(account) | account
//	 [| u8 len(trunk) | trunk, with flag 2]]
//
// A registration is 24 bytes in a block against 50 as a record: a snapshot
// of millions of entries is half the bytes to write and a CRC a block, not
// an entry. The snapshot ends with a kindEnd record. A snapshot written
// before blocks (snapshotMagicRecords, a record an entry) reads as written.
const (
	journalMagic         = "CGJRNL01"
	snapshotMagic        = "CGSNAP02"
	snapshotMagicRecords = "CGSNAP01"
	frameHeader          = 8
	fixedPayload         = 5 + 4*8
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
	// kindEnd closes a snapshot; Remaining holds its entry count.
	kindEnd = 0x81
	// kindBlock is a snapshot's block of entries.
	kindBlock = 0x82
)

// A block's bounds: its header, its entries (a table chunk's at most), an
// entry's fixed part and its largest, and so its largest payload.
const (
	blockHeader     = 7
	maxBlockEntries = 1 << 13
	entryFixed      = 3 * 8
	maxEntry        = entryFixed + 8 + 3 + 255 + 1 + 255
	maxBlockPayload = blockHeader + 255 + maxBlockEntries*maxEntry
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
	var acct, trunk string
	var flags uint8
	var hi, lo uint64
	var prio uint8
	var rem int64
	if c != nil {
		acct, trunk, flags = sessionFields(c)
		hi, lo = c.Key.Parts()
		prio = uint8(c.Priority)
		rem = c.Remaining
	}
	service = service[:min(len(service), 255)] // names are validated far shorter
	start := len(b)
	b = append(b, make([]byte, frameHeader)...)
	b = append(b, kind, prio, flags, uint8(len(service)), uint8(len(acct)))
	b = binary.LittleEndian.AppendUint64(b, hi)
	b = binary.LittleEndian.AppendUint64(b, lo)
	b = binary.LittleEndian.AppendUint64(b, uint64(expiresUnix))
	b = binary.LittleEndian.AppendUint64(b, uint64(rem))
	b = append(b, service...)
	b = append(b, acct...)
	b = appendTrunk(b, trunk, flags)
	return closeFrame(b, start)
}

// sessionFields are c's account and trunk, each cut at 255 bytes, and its
// flags.
func sessionFields(c *admission.Change) (acct, trunk string, flags uint8) {
	acct, trunk = c.Account[:min(len(c.Account), 255)], c.Trunk[:min(len(c.Trunk), 255)]
	if c.Licensed {
		flags |= flagLicensed
	}
	if trunk != "" {
		flags |= flagTrunk
	}
	return acct, trunk, flags
}

// appendTrunk appends trunk with its length if flags say it is there.
func appendTrunk(b []byte, trunk string, flags uint8) []byte {
	if flags&flagTrunk != 0 {
		b = append(b, uint8(len(trunk)))
		b = append(b, trunk...)
	}
	return b
}

// closeFrame fills in the length and CRC of the frame begun at start.
func closeFrame(b []byte, start int) []byte {
	payload := b[start+frameHeader:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, castagnoli))
	return b
}

// snapshotFrame is what a snapshot of records holds beside them: its magic
// and its end.
const snapshotFrame = len(snapshotMagic) + frameHeader + fixedPayload

// recordSize is the size of c of service as a journal record
// (appendRecord).
func recordSize(service string, c *admission.Change) int {
	n := frameHeader + fixedPayload + min(len(service), 255) + min(len(c.Account), 255)
	if c.Trunk != "" {
		n += 1 + min(len(c.Trunk), 255)
	}
	return n
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

// readFrame checks the frame at the start of b (a length from least to
// most, all of it there, its CRC) and returns its payload.
func readFrame(b []byte, least, most int) ([]byte, error) {
	if len(b) < frameHeader {
		return nil, fmt.Errorf("%w: %d bytes left, less than a record header", errTorn, len(b))
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < least || n > most {
		return nil, fmt.Errorf("%w: length %d", errTorn, n)
	}
	if len(b) < frameHeader+n {
		return nil, fmt.Errorf("%w: %d bytes left of a %d-byte record", errTorn, len(b)-frameHeader, n)
	}
	p := b[frameHeader : frameHeader+n]
	if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(b[4:]) {
		return nil, fmt.Errorf("%w: CRC mismatch", errTorn)
	}
	return p, nil
}

// isBlock tells whether the frame at the start of b says it holds a block
// (unchecked: readBlock checks it).
func isBlock(b []byte) bool { return len(b) > frameHeader && b[frameHeader] == kindBlock }

// appendBlock encodes changes, all of kind k, as one block of service onto
// b, with their expiries turned to Unix ns by wall.
func appendBlock(b []byte, service string, k admission.ChangeKind, changes []admission.Change, wall func(int64) int64) []byte {
	service = service[:min(len(service), 255)]
	start := len(b)
	b = append(b, make([]byte, frameHeader)...)
	b = append(b, kindBlock, uint8(k), uint8(len(service)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(changes)))
	b = append(b, service...)
	for i := range changes {
		c := &changes[i]
		hi, lo := c.Key.Parts()
		b = binary.LittleEndian.AppendUint64(b, hi)
		b = binary.LittleEndian.AppendUint64(b, lo)
		b = binary.LittleEndian.AppendUint64(b, uint64(wall(c.Expires)))
		if k == admission.SubscriberSet {
			continue
		}
		acct, trunk, flags := sessionFields(c)
		b = binary.LittleEndian.AppendUint64(b, uint64(c.Remaining))
		b = append(b, uint8(c.Priority), flags, uint8(len(acct)))
		b = append(b, acct...)
		b = appendTrunk(b, trunk, flags)
	}
	return closeFrame(b, start)
}

// blockHead reads a block payload's header: the kind of its entries, its
// service's name and how many entries follow it (from body on).
func blockHead(p []byte) (k admission.ChangeKind, service []byte, count, body int, err error) {
	if len(p) < blockHeader || p[0] != kindBlock {
		return 0, nil, 0, 0, fmt.Errorf("%w: not a block", errTorn)
	}
	sl := int(p[2])
	count = int(binary.LittleEndian.Uint32(p[3:]))
	body = blockHeader + sl
	if body > len(p) || count > maxBlockEntries || count*entryFixed > len(p)-body {
		return 0, nil, 0, 0, fmt.Errorf("%w: a block of %d entries and a %d-byte name in %d bytes", errTorn, count, sl, len(p))
	}
	return admission.ChangeKind(p[1]), p[blockHeader:body], count, body, nil
}

// readBlock decodes the block at the start of b, passing each entry to
// add (Expires in Unix ns), and returns its encoded size. It checks the
// whole block before it passes any entry.
func readBlock(b []byte, in names, add func(service string, c admission.Change)) (int, error) {
	p, err := readFrame(b, blockHeader, maxBlockPayload)
	if err != nil {
		return 0, err
	}
	k, name, count, body, err := blockHead(p)
	if err != nil {
		return 0, err
	}
	if k != admission.SubscriberSet && k != admission.SessionOpened && k != admission.ConsumedSet {
		return 0, fmt.Errorf("%w: a block of entries of kind %d", errTorn, k)
	}
	// The names' lengths first, so that nothing is passed of a block whose
	// end does not add up.
	off := body
	for range count {
		if off += entryFixed; k == admission.SubscriberSet {
			continue
		}
		if off+8+3 > len(p) {
			return 0, fmt.Errorf("%w: a block's entries run past its %d bytes", errTorn, len(p))
		}
		flags, al := p[off+9], int(p[off+10])
		if off += 8 + 3 + al; flags&flagTrunk != 0 {
			if off >= len(p) {
				return 0, fmt.Errorf("%w: a block's entries run past its %d bytes", errTorn, len(p))
			}
			off += 1 + int(p[off])
		}
	}
	if off != len(p) {
		return 0, fmt.Errorf("%w: a block's %d entries take %d of its %d bytes", errTorn, count, off, len(p))
	}
	service := in.of(name)
	off = body
	for range count {
		c := admission.Change{Kind: k,
			Key:     admission.KeyFromParts(binary.LittleEndian.Uint64(p[off:]), binary.LittleEndian.Uint64(p[off+8:])),
			Expires: int64(binary.LittleEndian.Uint64(p[off+16:]))}
		if off += entryFixed; k != admission.SubscriberSet {
			c.Remaining = int64(binary.LittleEndian.Uint64(p[off:]))
			c.Priority = admission.Priority(p[off+8])
			flags, al := p[off+9], int(p[off+10])
			c.Licensed = flags&flagLicensed != 0
			off += 8 + 3
			if al > 0 {
				c.Account = in.of(p[off : off+al])
			}
			if off += al; flags&flagTrunk != 0 {
				tl := int(p[off])
				if tl > 0 {
					c.Trunk = in.of(p[off+1 : off+1+tl])
				}
				off += 1 + tl
			}
		}
		add(service, c)
	}
	return frameHeader + len(p), nil
}

// readRecordIn is readRecord taking its names from in.
func readRecordIn(b []byte, in names) (record, int, error) {
	p, err := readFrame(b, fixedPayload, maxPayload)
	if err != nil {
		return record{}, 0, err
	}
	n := len(p)
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
