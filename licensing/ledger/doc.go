// Package ledger is a node's signed, hash-chained usage ledger, and the
// verification the vendor runs on it before billing.
//
// The node side:
//
//	key, _ := ledger.LoadOrCreateNodeKey(cfg.DataDir) // node.key (0600), node.pub
//	l, err := ledger.Open(ledger.Options{Dir: filepath.Join(cfg.DataDir, "ledger"),
//		Node: cfg.NodeName, Cluster: cfg.ClusterID, Key: key, Genesis: true})
//	if err != nil { ... } // a broken chain: refuse to start, naming file and seq
//	if r := l.Recovered(); r != nil { ... } // a torn record was cut off (logged too)
//	go l.VerifyHistory(ctx, 0.25, progress) // the earlier segments, record by record
//	for each interval [from, to) {
//		_, err := l.Append(from, to, usage, peerHeads) // durable on return
//	}
//	seq, hash := l.Head()        // gossiped with l.Identity() (key, genesis hash);
//	key, genesis := l.Identity() // peers append them as a Witness
//	l.Read(from, to, func(line []byte, _ *ledger.Record) error { w.Write(line) }) // GET /v1/ledger
//
// The vendor side (capslicense usage verify, capslicense bill):
//
//	rep := ledger.Verify([]ledger.Input{{Name: "n1.jsonl", R: f}}, ledger.VerifyOptions{
//		Since: billedHeads, PinnedKeys: pins})
//	if !rep.OK() { for _, p := range rep.First() { fmt.Println(p) } } // bad records
//	if !rep.Proven() { for _, p := range rep.Unproven { fmt.Println(p.Reason) } }
//
// # Format
//
// Records are JSON lines, in segment files seg-<first seq, 20 digits>.jsonl
// (mode 0600, in a directory of mode 0700), started when the current one
// reaches Options.SegmentBytes. One usage record:
//
//	{"v":1,"seq":1,"node":"n1","cluster":"prod-eu","kind":"usage","at":"2025-06-01T12:00:10Z",
//	 "from":"2025-06-01T12:00:00Z","to":"2025-06-01T12:00:10Z","service":"voice","account":"acme",
//	 "attempts":120,"admitted":118,"rejected":{"CAPS":2},"emergency":1,"peak_caps":15,
//	 "peak_sessions":40,"peak_subscribers":0,"tokens":118,"overage":0,
//	 "prev":"0000…0000","key":"O2onvM62…","hash":"adc6a11e…","sig":"EsTF06Ml…"}
//
// (one line on disk). A witness record has "kind":"witness" and, instead
// of the usage fields, "witness":{"node":"n2","seq":41,"hash":"…",
// "key":"…","genesis":"…"}: the head of a peer's ledger seen over gossip,
// with the peer's public key and the hash of its genesis record ("key"
// and "genesis" are absent in records written before they were gossiped,
// and "genesis" for a peer whose ledger has none). A node's ledger opens
// with a genesis record at seq 1, "kind":"genesis" and
// "genesis":{"key":"…","cluster":"prod-eu","first":"2025-06-01T12:00:00Z"}
// (the node key, cluster and the instant the ledger was created, which
// must equal the record's own key, cluster and at); ledgers created before
// genesis records existed start with a usage or witness record. Fields
// come in this order, all present except "account" (absent for
// service-level totals), "trunk" (after "account", only in a trunk key's
// record: the attempts with ADMIT ... TRUNK key, a part of the service's
// totals) and "rejected" (absent when nothing was rejected); times are
// RFC 3339 in UTC.
//
// The body of a record is its line without "hash" and "sig". hash is the
// hex SHA-256 of the body; prev is the hash of the record before (64 zeros
// for seq 1); sig is the base64 Ed25519 signature, by the node key whose
// public half is "key", of "capsgate-ledger-v1\n" followed by the body
// with "hash" (everything but sig). A record has exactly one byte form:
// Decode re-encodes what it parsed and refuses any other bytes (spacing,
// field order, escapes, time zones), so every changed byte of a ledger is
// detected.
//
// # Guarantees
//
//   - Durability: every Append batch is written and fsync'd once before
//     Append returns; a new segment's directory entry is fsync'd when the
//     segment is created. A record Append acknowledged survives a crash.
//   - A crash during Append leaves at most a torn tail of that batch: a
//     last line without its newline, or lines holding NUL bytes (the file
//     grew but the data never reached the disk). Open cuts off everything
//     after the last intact record of the last segment provided it is
//     such a tail, with no whole line (ending in a newline, without NUL
//     bytes) in it (the batch was never acknowledged), logs it and
//     reports it in Recovered. A whole line that is not an intact record
//     is damage, even the very last one. That, and anything else that
//     breaks the chain — an altered, removed or reordered record, a
//     record signed by another key or written by another node — refuses
//     to open with an error naming the segment file, line and seq, if it
//     is in the last segment or at either end of an earlier one (a missing
//     or cut segment, a record removed at a boundary). Open reads only
//     those ends of the earlier segments, so that a start costs the last
//     segment and not a history of millions of records (65 µs a record,
//     most of it the signature); VerifyHistory then verifies every record
//     of them at a bounded share of a core, returning the first break,
//     named the same way (the node logs it and raises
//     capsgate_ledger_history_broken). A segment it verified is noted in
//     the file verified (its size and SHA-256) and later only hashed
//     again: whoever can rewrite that note can rewrite the node key's
//     records too, and capslicense usage verify checks every record
//     whatever it says.
//   - Verify detects any altered byte, removed, duplicated or reordered
//     record, a record signed with another key than the node's (pinned,
//     else its genesis record's, else most records'), a record of another
//     cluster, a torn last line; with peers' witness records a ledger cut
//     short, restored from an older backup, rewritten (a record that
//     differs from a witness names the range since the last witnessed
//     match), replaced from its genesis or re-signed with another key
//     (the witnessed key differs); with the head the vendor billed last
//     (VerifyOptions.Since) a ledger cut at the head, rewritten before
//     that head or ending before it.
//   - Nothing is silent. Report.Problems are records that do not verify;
//     Report.Unproven is what the inputs cannot prove, and capslicense
//     exits non-zero for it: completeness at the head (no genesis record
//     and no billed head, or records before the first given and no billed
//     head), the node's key (neither pinned nor witnessed by a peer), the
//     tail (no peer witnessed the node), a whole ledger left out (a node
//     a given ledger witnessed, or VerifyOptions.Expect names, with no
//     records given). Records after a node's newest witness are always
//     unproven at the tail; Verify reports the newest witness
//     (NodeSummary.Witnessed, WitnessBy, WitnessAt) so the vendor sees
//     how many and how recent.
//   - No input makes Decode or Verify panic (see FuzzDecode, FuzzVerify).
//
// # What a single-node farm can and cannot prove
//
// With no peer, nothing outside the node witnesses its ledger, and the
// operator holds node.key. The vendor can still detect, given the node's
// pinned key (--node-pub, or --trust-on-first-use on the first bill) and
// the head printed on the last invoice (--since):
//
//   - any altered, removed, duplicated or reordered record inside the
//     ledger, and a torn record (hash chain and signatures);
//   - a ledger re-signed with another key (pinned key);
//   - records removed at the head, before the billed head (the ledger
//     must hold the billed head or start right after it), and a ledger
//     whose first records were cut without --since (the genesis record
//     is missing: unproven);
//   - a ledger rewritten or restored from an older backup up to the
//     billed head (the record at the billed seq differs, or the ledger
//     ends before it);
//   - records of another cluster or signed by another node's key.
//
// It cannot detect, and verify says so (UNPROVEN, exit 1, unless the
// vendor passes --accept-unwitnessed-tail):
//
//   - records removed from the end of the ledger since the billed head
//     (the usage of the last intervals withheld; they would appear in a
//     later export only if the node's ledger on disk still holds them);
//   - a ledger rewritten after the billed head by the operator, signed
//     with the node's own key: a forger with node.key can write any
//     chain that continues from the billed head;
//   - without --since, a whole ledger rebuilt from a new genesis with the
//     node's own key;
//   - without a pinned key, anything: a ledger re-signed whole with a
//     fresh key verifies as unauthenticated (UNPROVEN).
//
// In a farm of several nodes the same holds for a node whose peers'
// ledgers are not given, and for records after the newest witness; an
// operator who holds every node's key and rewrites every ledger
// consistently is detected only by the billed heads and pinned keys.
//
// verify.go is over 600 lines on purpose: verifying a ledger (chain,
// signatures, segment boundaries, witnesses, every way a record can be
// altered) is one procedure that a vendor reads top to bottom, with each
// refusal named where it is made.
package ledger
