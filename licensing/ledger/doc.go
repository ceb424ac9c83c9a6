// Package ledger is a node's signed, hash-chained usage ledger, and the
// verification the vendor runs on it before billing.
//
// The node side:
//
//	key, _ := ledger.LoadOrCreateNodeKey(cfg.DataDir) // node.key (0600), node.pub
//	l, err := ledger.Open(ledger.Options{Dir: filepath.Join(cfg.DataDir, "ledger"),
//		Node: cfg.NodeName, Cluster: cfg.ClusterID, Key: key})
//	if err != nil { ... } // a broken chain: refuse to start, naming file and seq
//	if r := l.Recovered(); r != nil { ... } // a torn record was cut off (logged too)
//	for each interval [from, to) {
//		_, err := l.Append(from, to, usage, peerHeads) // durable on return
//	}
//	seq, hash := l.Head() // gossiped; peers append it as a Witness
//	l.Read(from, to, func(line []byte, _ *ledger.Record) error { w.Write(line) }) // GET /v1/ledger
//
// The vendor side (capslicense usage verify, capslicense bill):
//
//	rep := ledger.Verify([]ledger.Input{{Name: "n1.jsonl", R: f}}, ledger.VerifyOptions{})
//	if !rep.OK() { for _, p := range rep.First() { fmt.Println(p) } }
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
// of the usage fields, "witness":{"node":"n2","seq":41,"hash":"…"}: the
// head of a peer's ledger seen over gossip. Fields come in this order,
// all present except "account" (absent for service-level totals) and
// "rejected" (absent when nothing was rejected); times are RFC 3339 in UTC.
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
//   - A crash during Append leaves at most a torn tail of that batch: Open
//     cuts off everything after the last intact record of the last
//     segment provided no intact record follows (the batch was never
//     acknowledged), logs it and reports it in Recovered. Anything else
//     that breaks the chain — an altered, removed or reordered record, a
//     record signed by another key or written by another node — refuses
//     to open with an error naming the segment file, line and seq.
//   - Verify detects any altered byte, removed, duplicated or reordered
//     record, a record re-signed with another key, a torn last line, and
//     with peers' witness records a ledger cut short or restored from an
//     older backup. It cannot see records removed from the end of a
//     ledger that no peer has witnessed yet, nor a ledger re-signed whole
//     with another key unless the node's key is pinned (--node-pub).
//   - No input makes Decode or Verify panic (see FuzzDecode, FuzzVerify).
package ledger
