package ledger

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVerifyGood(t *testing.T) {
	n1, n2 := sample(t)
	require.Equal(t, 6, bytes.Count(n1, []byte("\n")))
	rep := Verify(inputs("n1.jsonl", n1, "n2.jsonl", n2), VerifyOptions{})
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.Len(t, rep.Nodes, 2)
	s := rep.Nodes["n1"]
	require.Equal(t, uint64(1), s.First)
	require.Equal(t, uint64(6), s.Last)
	require.Equal(t, 6, s.Records)
	require.False(t, s.Tail)
	require.Equal(t, string(bytes.TrimSpace(MarshalNodePublicKey(testKey(1).Public().(ed25519.PublicKey)))), s.Key)

	// Both nodes in one file, interleaved; pinned keys.
	l1, l2 := lines(n1), lines(n2)
	mixed := join(l1[0], l2[0], l1[1], l1[2], l2[1], l1[3], l1[4], l1[5])
	pins := map[string]ed25519.PublicKey{"n1": testKey(1).Public().(ed25519.PublicKey), "n2": testKey(2).Public().(ed25519.PublicKey)}
	rep = Verify(inputs("all.jsonl", mixed), VerifyOptions{PinnedKeys: pins})
	require.True(t, rep.OK(), "%v", rep.Problems)
	pinned := s
	pinned.KeyTrust = TrustPinned
	require.Equal(t, pinned, rep.Nodes["n1"])

	// A contiguous tail is good, and says so.
	rep = Verify(inputs("tail.jsonl", join(l1[3:]...)), VerifyOptions{})
	require.True(t, rep.OK(), "%v", rep.Problems)
	require.Equal(t, NodeSummary{First: 4, Last: 6, Records: 3, Head: s.Head, Key: s.Key, Tail: true, KeyTrust: TrustUnverified}, rep.Nodes["n1"])

	// No input, empty input: nothing to complain about.
	require.True(t, Verify(nil, VerifyOptions{}).OK())
	require.True(t, Verify(inputs("empty", []byte{}), VerifyOptions{}).OK())
}

// TestVerifyEveryByte changes every byte of a ledger file to other
// values: each change must be found. (Under -race, every 8th byte.)
func TestVerifyEveryByte(t *testing.T) {
	n1, _ := sample(t)
	step := 1
	if raceEnabled {
		step = 8
	}
	for i := 0; i < len(n1); i += step {
		deltas := []byte{1}
		if i%10 == 0 {
			deltas = append(deltas, 0x20, 0x80, 0x0f)
		}
		for _, delta := range deltas {
			changed := bytes.Clone(n1)
			changed[i] ^= delta
			if changed[i] == n1[i] {
				continue
			}
			rep := Verify(inputs("n1.jsonl", changed), VerifyOptions{})
			if rep.OK() {
				t.Fatalf("byte %d changed from %q to %q not detected", i, n1[i], changed[i])
			}
		}
	}
	for i, c := range []byte(" \t\r\n0\\\"") {
		changed := join(n1[:100+i], []byte{c}, n1[100+i:])
		require.False(t, Verify(inputs("n1.jsonl", changed), VerifyOptions{}).OK(), "inserted %q", c)
		changed = join(n1[:100+i], n1[101+i:])
		require.False(t, Verify(inputs("n1.jsonl", changed), VerifyOptions{}).OK(), "removed byte %d", 100+i)
	}
}

func TestVerifyProblems(t *testing.T) {
	n1, n2 := sample(t)
	l1, l2 := lines(n1), lines(n2)
	other := resign(t, l1[2], testKey(9))
	f := func(name string, in []Input, opts VerifyOptions, want ...string) {
		t.Helper()
		rep := Verify(in, opts)
		var got []string
		for _, p := range rep.Problems {
			got = append(got, p.String())
		}
		require.Equal(t, want, got, name)
	}
	f("altered", inputs("a", join(l1[0], l1[1], bytes.Replace(l1[2], []byte(`"admitted":90`), []byte(`"admitted":91`), 1), l1[3])), VerifyOptions{},
		"node n1 seq 3 (a:3): altered (hash mismatch)")
	f("bad signature", inputs("a", join(l1[0], l1[1], badSig(l1[2]), l1[3])), VerifyOptions{},
		"node n1 seq 3 (a:3): bad signature")
	f("gap", inputs("a", join(l1[0], l1[1], l1[3], l1[4])), VerifyOptions{},
		"node n1 seq 4 (a:3): gap: seq 4 follows 2 (records removed)")
	f("reordered", inputs("a", join(l1[0], l1[2], l1[1], l1[3])), VerifyOptions{},
		"node n1 seq 3 (a:2): reordered: seq 3 comes before seq 2",
		"node n1 seq 2 (a:3): reordered: seq 2 follows seq 3")
	f("duplicate", inputs("a", join(l1[0], l1[1], l1[1], l1[2])), VerifyOptions{},
		"node n1 seq 2 (a:3): duplicate seq 2")
	f("re-signed", inputs("a", join(l1[0], l1[1], other, l1[3])), VerifyOptions{},
		"node n1 seq 3 (a:3): re-signed with another key than the node's other records")
	f("pinned", inputs("a", join(l1[0], l1[1])), VerifyOptions{PinnedKeys: map[string]ed25519.PublicKey{"n1": testKey(9).Public().(ed25519.PublicKey)}},
		"node n1 seq 1 (a:1): re-signed with another key (not the pinned key of node n1)",
		"node n1 seq 2 (a:2): re-signed with another key (not the pinned key of node n1)")
	f("bad genesis", inputs("a", resignWith(t, l1[0], testKey(1), `"prev":"0`, `"prev":"1`)), VerifyOptions{},
		"node n1 seq 1 (a:1): chain broken: seq 1 does not start from the genesis prev")
	f("torn", inputs("a", join(l1[0], l1[1][:len(l1[1])-1])), VerifyOptions{},
		"node n1 seq 2 (a:2): torn last line (no newline at the end: cut off mid-write?)")
	f("garbage", inputs("a", join(l1[0], []byte("hello\n"), []byte("\n"), l1[1])), VerifyOptions{},
		"node ? seq 0 (a:2): altered (malformed: bad JSON: invalid character 'h' looking for beginning of value)",
		"node ? seq 0 (a:3): altered (blank line)")
	f("not canonical", inputs("a", bytes.Replace(l1[0], []byte(`,"seq"`), []byte(`, "seq"`), 1)), VerifyOptions{},
		"node ? seq 0 (a:1): altered (malformed: not in canonical form)")
	f("too long", inputs("a", append(bytes.Repeat([]byte("x"), MaxLineBytes+10), '\n')), VerifyOptions{},
		"node ? seq 0 (a:1): altered (line longer than 65536 bytes)")
	// Across nodes: n1 witnessed n2 at seq 2.
	f("truncated", inputs("n1", n1, "n2", l2[0]), VerifyOptions{},
		"node n2 seq 1 (n2:1): truncated: ends at seq 1 but peer n1 witnessed seq 2")
	restored := resignWith(t, l2[1], testKey(2), `"admitted":60`, `"admitted":6`)
	f("restored from backup", inputs("n1", n1, "n2", join(l2[0], restored)), VerifyOptions{},
		"node n2 seq 2 (n2:2): differs from what peer n1 witnessed at seq 2 (restored from an earlier backup?); no record of it matches a witness before")
	f("peer absent", inputs("n1", n1), VerifyOptions{})
	// First returns one problem per node.
	rep := Verify(inputs("a", join(l1[0], l1[2], l1[1]), "b", join(l2[0], l2[0])), VerifyOptions{})
	require.Equal(t, []string{"n1", "n2"}, []string{rep.First()[0].Node, rep.First()[1].Node})
	require.Len(t, rep.First(), 2)
}

// resign returns line signed by key instead.
func resign(t *testing.T, line []byte, key ed25519.PrivateKey) []byte {
	return resignWith(t, line, key, "", "")
}

// resignWith changes from to to in line and signs it again with key.
func resignWith(t *testing.T, line []byte, key ed25519.PrivateKey, from, to string) []byte {
	t.Helper()
	r, err := Decode(line)
	require.NoError(t, err)
	body, err := r.body()
	require.NoError(t, err)
	body = bytes.Replace(body, []byte(from), []byte(to), 1)
	var w wire
	require.NoError(t, json.Unmarshal(body, &w))
	r.Prev, r.Usage = w.Prev, w.Usage
	out, err := r.seal(key)
	require.NoError(t, err)
	_, err = Decode(out)
	require.NoError(t, err)
	return out
}

// badSig changes the first character of line's signature.
func badSig(line []byte) []byte {
	out := bytes.Clone(line)
	i := bytes.Index(out, []byte(`"sig":"`)) + len(`"sig":"`)
	if out[i] == 'A' {
		out[i] = 'B'
	} else {
		out[i] = 'A'
	}
	return out
}

func TestDecodeStrict(t *testing.T) {
	n1, _ := sample(t)
	good := lines(n1)[0]
	r, err := Decode(good)
	require.NoError(t, err)
	require.NoError(t, r.Check())
	_, err = Decode(bytes.TrimSuffix(good, []byte("\n")))
	require.NoError(t, err)
	line, err := r.Line()
	require.NoError(t, err)
	require.Equal(t, good, line)

	f := func(change func(s string) string, want string) {
		t.Helper()
		_, err := Decode([]byte(change(string(good))))
		require.ErrorIs(t, err, ErrMalformed)
		require.EqualError(t, err, want)
	}
	f(func(s string) string { return strings.Replace(s, `"v":1`, `"v":1,"extra":1`, 1) }, `malformed: bad JSON: json: unknown field "extra"`)
	f(func(s string) string { return strings.Replace(s, `"v":1`, `"v":2`, 1) }, `malformed: unknown version v=2`)
	f(func(s string) string { return strings.Replace(s, `"seq":1`, `"seq":"1"`, 1) }, `malformed: bad JSON: json: cannot unmarshal string into Go struct field wire.seq of type uint64`)
	f(func(s string) string { return strings.Replace(s, `"seq":1`, `"seq":-1`, 1) }, `malformed: bad JSON: json: cannot unmarshal number -1 into Go struct field wire.seq of type uint64`)
	f(func(s string) string { return s[:len(s)-1] + "x\n" }, `malformed: not in canonical form`)
	f(func(s string) string { return s + "\n" }, `malformed: not in canonical form`)
	f(func(s string) string { return strings.Replace(s, `"n1"`, `"\u006e1"`, 1) }, `malformed: not in canonical form`)
	f(func(s string) string { return strings.Replace(s, `00Z"`, `00+00:00"`, 1) }, `malformed: not in canonical form`)
	f(func(s string) string { return strings.Replace(s, `"from":"2025`, `"from":"x2025`, 1) }, `malformed: cannot parse from "x2025-06-01T00:00:00Z"`)
	f(func(s string) string { return strings.Replace(s, `"kind":"usage"`, `"kind":"witness"`, 1) }, `malformed: kind "witness" does not match the fields`)
	f(func(s string) string { return strings.Replace(s, `"prev":"0`, `"prev":"A`, 1) }, `malformed: prev is not 64 lowercase hex digits`)
	f(func(s string) string { return strings.Replace(s, `"CAPS"`, `"caps"`, 1) }, `malformed: reject reason "caps" is not [A-Z_]{1,32}`)
	f(func(s string) string { return strings.Replace(s, `"rejected":{"CAPS":2}`, `"rejected":{}`, 1) }, `malformed: not in canonical form`)
	f(func(s string) string { return strings.Replace(s, `"seq":1`, `"seq":1,"seq":1`, 1) }, `malformed: not in canonical form`)
	f(func(s string) string {
		return strings.Replace(s, `"service":"voice"`, `"service":"voice","witness":{"node":"a","seq":1,"hash":"`+GenesisPrev+`"}`, 1)
	},
		`malformed: want exactly one of usage fields, witness and genesis`)
	f(func(s string) string { return strings.Repeat(" ", MaxLineBytes) + s }, fmt.Sprintf("malformed: line of %d bytes, more than %d", MaxLineBytes+len(good), MaxLineBytes))

	// Every record of the sample re-encodes to its line.
	for _, l := range lines(n1) {
		r, err := Decode(l)
		require.NoError(t, err)
		again, err := r.Line()
		require.NoError(t, err)
		require.Equal(t, l, again)
	}
}
