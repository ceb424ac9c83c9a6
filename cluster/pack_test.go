package cluster

import (
	"bytes"
	"compress/flate"
	"compress/lzw"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/stretchr/testify/require"
)

// busyReport is a member's demand message as a farm of 1,000 licences
// sends it under load: every licence's demand and a slice of its pools
// (35,743 bytes of JSON).
func busyReport(t testing.TB) []byte {
	r := Report{Demand: map[string]float64{}, Held: map[string]Held{}, Applied: map[string]Share{}, Seq: 1234, Delta: true}
	for i := range 1000 {
		r.Demand[fmt.Sprintf("s%012d", i)] = float64(i%7) * 12.5
	}
	for i := range 100 {
		r.Held[fmt.Sprintf("s%012d/acct-%06d", i, i*37)] = Held{Tokens: int64(i * 1000), Budget: 50_000}
		r.Applied[fmt.Sprintf("s%012d", i*3)] = Share{CAPS: 1.0 / 3, Depth: 1.0 / 3, Sessions: 1.0 / 3, Subscribers: 1.0 / 3}
	}
	b, err := json.Marshal(demandMsg{Node: "n2", Report: r})
	require.NoError(t, err)
	return append([]byte{msgDemand}, b...)
}

func unpackedOf(t *testing.T, msg []byte) []byte {
	t.Helper()
	require.Equal(t, byte(msgPacked), msg[0])
	buf, err := unpack(msg[1:])
	require.NoError(t, err)
	defer release(buf)
	return slices.Clone(buf.Bytes())
}

// A message worth it packs smaller and unpacks to itself; a short one,
// or one that deflating does not shorten, is not packed.
func TestPackRoundTrip(t *testing.T) {
	msg := busyReport(t)
	p := pack(msg)
	require.NotNil(t, p)
	require.Less(t, len(p), len(msg)/3, "a report's JSON deflates to under a third")
	require.Equal(t, msg, unpackedOf(t, p))
	// Twice in a row, through the kept compressors.
	require.Equal(t, p, pack(msg))
	require.Equal(t, msg, unpackedOf(t, pack(msg)))

	require.Nil(t, pack(msg[:packAbove-1]))
	require.NotNil(t, pack(bytes.Repeat([]byte{'d'}, packAbove)))
	noise := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	require.Nil(t, pack(noise))
}

func deflated(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w, err := flate.NewWriter(&out, flate.BestSpeed)
	require.NoError(t, err)
	_, err = w.Write(b)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}

// What is not a packed message is refused: not deflate, cut short, past
// the bound, or a packed message inside another.
func TestUnpackRefuses(t *testing.T) {
	msg := busyReport(t)
	p := pack(msg)
	for name, payload := range map[string][]byte{
		"empty":            nil,
		"not deflate":      []byte("{\"node\":\"n2\"}"),
		"cut short":        p[1 : len(p)/2],
		"packed in packed": deflated(t, p),
	} {
		buf, err := unpack(payload)
		require.Error(t, err, name)
		require.Nil(t, buf, name)
	}
	_, err := unpack(deflated(t, p))
	require.ErrorIs(t, err, errPackedInPacked)

	// At the bound it unpacks; a byte past it is refused. One deflate
	// of the bound's bytes, flushed, then a last stored block of none or
	// of one byte.
	var out bytes.Buffer
	w, err := flate.NewWriter(&out, flate.BestSpeed)
	require.NoError(t, err)
	_, err = w.Write([]byte{msgDemand})
	require.NoError(t, err)
	_, err = w.Write(make([]byte, maxUnpacked-1))
	require.NoError(t, err)
	require.NoError(t, w.Flush())
	buf, err := unpack(slices.Concat(out.Bytes(), []byte{1, 0, 0, 0xff, 0xff}))
	require.NoError(t, err)
	require.Equal(t, maxUnpacked, buf.Len())
	release(buf)
	buf, err = unpack(slices.Concat(out.Bytes(), []byte{1, 1, 0, 0xfe, 0xff, 'x'}))
	require.ErrorIs(t, err, errUnpackedTooLarge)
	require.Nil(t, buf)
}

// A member whose metadata says it reads packed messages is sent them
// packed, deflated once for all; one of an earlier release, or one this
// node has no metadata of, is sent them as they are.
func TestPackedForMembers(t *testing.T) {
	c := &Cluster{peers: map[string]*peer{}}
	now, err := json.Marshal(meta{Version: Version, Stretch: true, Packs: true})
	require.NoError(t, err)
	for name, raw := range map[string][]byte{"new": now, "old": []byte(`{"v":"0.1.0","resp":"127.0.0.1:6381","max_caps":0,"stretch":true}`)} {
		p := &peer{}
		p.noteMeta(raw)
		c.peers[name] = p
	}
	msg := busyReport(t)
	pk := &packing{plain: msg}
	first := c.packedFor(&memberlist.Node{Name: "new"}, pk)
	require.Equal(t, msg, unpackedOf(t, first))
	require.Same(t, &first[0], &c.packedFor(&memberlist.Node{Name: "new"}, pk)[0], "deflated once")
	require.Equal(t, msg, c.packedFor(&memberlist.Node{Name: "old"}, pk))
	require.Equal(t, msg, c.packedFor(&memberlist.Node{Name: "unknown"}, pk))
	short := &packing{plain: msg[:100]}
	require.Equal(t, msg[:100], c.packedFor(&memberlist.Node{Name: "new"}, short))
}

// A packed licence message loads as the plain one does; a packed message
// that does not unpack changes nothing and is counted.
func TestPackedMessageIsRead(t *testing.T) {
	c, eng, reg, msg := licenceMessage(t, "a")
	p := pack(msg)
	require.NotNil(t, p)

	refused, received := packedRefused.Get(), packedReceived.Get()
	bad := slices.Clone(p)
	bad[len(bad)/2] ^= 0xff
	(*delegate)(c).NotifyMsg(bad[:len(bad)-4])
	require.Empty(t, reg.List())
	require.Equal(t, refused+1, packedRefused.Get())

	(*delegate)(c).NotifyMsg(p)
	require.Len(t, reg.List(), 1)
	require.Equal(t, 500.0, eng.Service("voice").Stats().Limits.CAPS)
	require.Equal(t, received+1, packedReceived.Get())
}

// FuzzUnpack: whatever a packed message's payload, unpack returns a
// message within its bound that is not itself packed, or an error; and
// what pack makes of a message unpacks to it. (Under a bound of 1 MiB:
// a few bytes of deflate say 40 MiB of output, which would make every
// such input a third of a second.)
func FuzzUnpack(f *testing.F) {
	msg := busyReport(f)
	f.Add(pack(msg)[1:])
	f.Add([]byte{})
	f.Add([]byte("not deflate"))
	f.Add(pack(bytes.Repeat([]byte("dz"), 600))[1:])
	f.Fuzz(func(t *testing.T, payload []byte) {
		const limit = 1 << 20
		if buf, err := unpackAtMost(payload, limit); err == nil {
			require.LessOrEqual(t, buf.Len(), limit)
			if buf.Len() > 0 {
				require.NotEqual(t, byte(msgPacked), buf.Bytes()[0])
			}
			release(buf)
		}
		if p := pack(payload); p != nil {
			require.Less(t, len(p), len(payload))
			if len(payload) > 0 && payload[0] != msgPacked {
				require.Equal(t, payload, unpackedOf(t, p))
			}
		}
	})
}

// BenchmarkReportWire: one report of a farm of 1,000 licences under load,
// compressed and read back as memberlist does it (LZW, a new compressor,
// decompressor and buffer each) and packed and unpacked here.
//
//	go test ./cluster -run '^$' -bench ReportWire -benchmem
func BenchmarkReportWire(b *testing.B) {
	msg := busyReport(b)
	b.Run("memberlist-lzw", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for range b.N {
			var c bytes.Buffer
			w := lzw.NewWriter(&c, lzw.LSB, 8)
			if _, err := w.Write(msg); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
			size = c.Len()
			r := lzw.NewReader(bytes.NewReader(c.Bytes()), lzw.LSB, 8)
			var out bytes.Buffer
			if _, err := io.CopyN(&out, r, maxUnpacked+1); err != nil && err != io.EOF {
				b.Fatal(err)
			}
			if out.Len() != len(msg) {
				b.Fatal(out.Len())
			}
		}
		b.ReportMetric(float64(size), "wire-B")
	})
	b.Run("packed", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for range b.N {
			p := pack(msg)
			size = len(p)
			buf, err := unpack(p[1:])
			if err != nil || buf.Len() != len(msg) {
				b.Fatal(err)
			}
			release(buf)
		}
		b.ReportMetric(float64(size), "wire-B")
	})
}

// Members are sent one message from goroutines of their own (sendAll,
// SpreadLicence): it is deflated once, and each gets the same bytes.
func TestPackingFromManyGoroutines(t *testing.T) {
	msg := busyReport(t)
	pk := &packing{plain: msg}
	got := make([][]byte, 8)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() { got[i] = pk.to(i%2 == 0) })
	}
	wg.Wait()
	for i, b := range got {
		if i%2 == 1 {
			require.Equal(t, msg, b)
			continue
		}
		require.Same(t, &got[0][0], &b[0])
	}
	require.Equal(t, msg, unpackedOf(t, got[0]))
}
