package journal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
)

func unixNS(t int64) int64 { return t }

// blockEntries are a block's worth of each kind, with every field set
// somewhere and names at their longest.
func blockEntries() map[admission.ChangeKind][]admission.Change {
	long := strings.Repeat("x", 255)
	k := func(s string) admission.Key { return admission.KeyOf([]byte(s)) }
	return map[admission.ChangeKind][]admission.Change{
		admission.SubscriberSet: {
			{Kind: admission.SubscriberSet, Key: k("alice@example.com"), Expires: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()},
			{Kind: admission.SubscriberSet, Key: k("bob"), Expires: -5},
		},
		admission.SessionOpened: {
			{Kind: admission.SessionOpened, Priority: admission.High, Licensed: true, Key: k("a84b4c76e66710"), Expires: 1, Remaining: 41, Account: "acme"},
			{Kind: admission.SessionOpened, Licensed: true, Key: k("c2"), Expires: 2, Remaining: 2, Trunk: "carrier-a"},
			{Kind: admission.SessionOpened, Priority: admission.Emergency, Key: k("c3"), Expires: 1 << 62, Remaining: -1, Account: long, Trunk: long},
			{Kind: admission.SessionOpened, Key: k("c4")},
		},
		admission.ConsumedSet: {
			{Kind: admission.ConsumedSet, Key: k("id-1"), Expires: 99, Remaining: 1<<63 - 1},
		},
	}
}

// readAll reads one block, returning its entries.
func readAll(b []byte) (string, []admission.Change, int, error) {
	var service string
	var got []admission.Change
	size, err := readBlock(b, names{}, func(s string, c admission.Change) {
		service = s
		got = append(got, c)
	})
	return service, got, size, err
}

// reCRC sets the CRC of the frame at the start of b to match its payload.
func reCRC(b []byte) {
	n := binary.LittleEndian.Uint32(b)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[frameHeader:frameHeader+int(n)], castagnoli))
}

func TestBlockRoundTrip(t *testing.T) {
	for kind, changes := range blockEntries() {
		b := appendBlock([]byte("prefix"), "voice", kind, changes, unixNS)[len("prefix"):]
		service, got, size, err := readAll(b)
		require.NoError(t, err)
		require.Equal(t, len(b), size)
		require.Equal(t, "voice", service)
		require.Equal(t, changes, got, "kind %d", kind)
		for cut := 0; cut < len(b); cut++ {
			_, got, _, err := readAll(b[:cut])
			require.ErrorIs(t, err, errTorn, "kind %d cut at %d", kind, cut)
			require.Empty(t, got, "nothing of a torn block is passed")
		}
		for i := 4; i < len(b); i++ { // the CRC, and any payload bit
			bad := bytes.Clone(b)
			bad[i] ^= 0x10
			_, got, _, err := readAll(bad)
			require.ErrorIs(t, err, errTorn, "kind %d flipped byte %d", kind, i)
			require.Empty(t, got)
		}
	}
	b := appendBlock(nil, "voice", admission.SubscriberSet, blockEntries()[admission.SubscriberSet], unixNS)
	// A count that does not add up to the bytes (the CRC made to match).
	for _, count := range []uint32{0, 1, 3, maxBlockEntries + 1, 1<<32 - 1} {
		bad := bytes.Clone(b)
		binary.LittleEndian.PutUint32(bad[frameHeader+3:], count)
		reCRC(bad)
		_, got, _, err := readAll(bad)
		require.ErrorIs(t, err, errTorn, "count %d", count)
		require.Empty(t, got)
	}
	// A kind a snapshot does not hold.
	bad := bytes.Clone(b)
	bad[frameHeader+1] = uint8(admission.SessionClosed)
	reCRC(bad)
	_, _, _, err := readAll(bad)
	require.ErrorContains(t, err, "kind")
	// A session whose account runs past the block.
	s := appendBlock(nil, "v", admission.SessionOpened, []admission.Change{{Kind: admission.SessionOpened, Account: "ab"}}, unixNS)
	s[len(s)-3] = 200
	reCRC(s)
	_, _, _, err = readAll(s)
	require.ErrorIs(t, err, errTorn)
	// A block at the most a snapshot writes: a table chunk of the longest
	// sessions.
	most := make([]admission.Change, maxBlockEntries)
	for i := range most {
		most[i] = blockEntries()[admission.SessionOpened][2]
	}
	b = appendBlock(nil, strings.Repeat("s", 300), admission.SessionOpened, most, unixNS)
	require.Equal(t, frameHeader+maxBlockPayload, len(b))
	service, got, _, err := readAll(b)
	require.NoError(t, err)
	require.Equal(t, strings.Repeat("s", 255), service, "a name is cut at 255 bytes, as in a record")
	require.Len(t, got, maxBlockEntries)
}

// A snapshot of blocks is about half the bytes of one of records, and the
// journals after either are compacted after the same changes (the
// snapshot's size counts as records); a snapshot written before blocks
// restores the same state.
func TestSnapshotOfRecordsStillRestores(t *testing.T) {
	dir, clk := t.TempDir(), admission.NewFakeClock()
	n := start(t, dir, clk)
	var consumed []admission.Decision
	for i := range 20 {
		d := n.eng.Consume(n.now(), voice, nil, 1, fmt.Appendf(nil, "id-%d", i))
		require.True(t, d.Admitted(), "%+v", d)
		consumed = append(consumed, d)
	}
	n.load(300, 2000)
	require.NoError(t, n.j.Close())
	n = start(t, dir, clk)
	n.j.mu.Lock()
	require.NoError(t, n.j.compactLocked(clk.Now()))
	n.j.mu.Unlock()
	require.NoError(t, n.j.Close())
	path := filepath.Join(dir, snapshotName(n.j.seq))
	blocks, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, snapshotMagic, string(blocks[:len(snapshotMagic)]))

	// The same entries as records.
	records := []byte(snapshotMagicRecords)
	count := 0
	for off := len(snapshotMagic); isBlock(blocks[off:]); {
		size, err := readBlock(blocks[off:], names{}, func(service string, c admission.Change) {
			records = appendRecord(records, uint8(c.Kind), service, &c, c.Expires)
			count++
		})
		require.NoError(t, err)
		off += size
	}
	require.Equal(t, 300+2000+20, count)
	records = appendRecord(records, kindEnd, "", &admission.Change{Remaining: int64(count)}, 0)
	require.Less(t, len(blocks), len(records)*6/10, "blocks %d bytes, records %d", len(blocks), len(records))

	restart := func(snapshot []byte) *node {
		require.NoError(t, os.WriteFile(path, snapshot, 0o600))
		n := start(t, dir, clk)
		require.Equal(t, path, n.j.Recovered().Snapshot)
		return n
	}
	a := restart(blocks)
	require.NoError(t, a.j.Close())
	b := restart(records)
	require.NoError(t, b.j.Close())
	require.Equal(t, a.j.Recovered(), b.j.Recovered())
	require.Equal(t, 300, a.j.Recovered().Sessions)
	require.Equal(t, 2000, a.j.Recovered().Subscribers)
	require.Equal(t, a.stats(), b.stats())
	require.Equal(t, int64(len(records)), a.j.snapSize, "a snapshot of blocks counts as its records")
	require.Equal(t, int64(len(records)), b.j.snapSize)
	for _, x := range []*node{a, b} {
		used := x.eng.Service("voice").Pools()[0].Used
		require.Equal(t, consumed[7], x.eng.Consume(x.now(), voice, nil, 1, []byte("id-7")), "an ID charged before is remembered")
		require.Equal(t, used, x.eng.Service("voice").Pools()[0].Used, "and not charged again")
	}
}

// FuzzSnapshotFrame: any bytes read as a snapshot's frame are a block, a
// record or an error, never a panic; what a block passes encodes back to
// a block that reads the same.
func FuzzSnapshotFrame(f *testing.F) {
	for kind, changes := range blockEntries() {
		f.Add(appendBlock(nil, "voice", kind, changes, unixNS))
	}
	f.Add(appendRecord(nil, kindEnd, "", &admission.Change{Remaining: 3}, 0))
	f.Add(appendRecord(nil, uint8(admission.SessionOpened), "voice", &blockEntries()[admission.SessionOpened][1], 7))
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, kindBlock})
	f.Fuzz(func(t *testing.T, b []byte) {
		counts := map[string]*[2]int{}
		countRecords(b, counts, nil)
		if !isBlock(b) {
			_, _, _ = readRecord(b)
			return
		}
		service, got, size, err := readAll(b)
		if err != nil {
			require.Empty(t, got)
			return
		}
		require.LessOrEqual(t, size, len(b))
		if len(got) == 0 {
			return
		}
		again := appendBlock(nil, service, got[0].Kind, got, unixNS)
		service2, got2, _, err := readAll(again)
		require.NoError(t, err)
		require.Equal(t, service, service2)
		require.Equal(t, got, got2)
	})
}
