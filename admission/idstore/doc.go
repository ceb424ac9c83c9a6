// Package idstore remembers a node's CONSUME ID keys for a billing-grade
// idempotency window (admission.idempotency_window, up to 35 days; up to
// 100 M keys a node) in an embedded LSM store (cockroachdb/pebble) under
// data_dir/ids, so that memory holds only a bounded hot set and a repeat
// after any restart gets the first decision, uncharged.
//
// The engine (admission.Config.Keys) asks the store on the CONSUME ID path:
//
//	ids, err := idstore.Open(idstore.Config{Dir: filepath.Join(dataDir, idstore.Dir), Clock: clk})
//	eng := admission.NewEngine(admission.Config{..., Keys: ids})
//	for range time.Tick(idstore.FlushEvery) {
//		ids.Flush() // group commit of the keys remembered since, and bounded expiry
//	}
//	ids.Close()
//
// # Decision path
//
// A CONSUME with ID first looks in the service's hot set (the consumed
// table, under the service's mutex, memory only), then in the store with no
// engine lock held: the keys remembered but not yet committed (sharded
// in-memory maps, each under its own mutex held only for a map operation),
// then pebble (its bloom filters and block cache answer a first-time key's
// miss from memory; a repeat older than the cache reads the disk, on that
// request's event loop, holding no lock). A first-time key is charged and
// queued in memory (Remember, no I/O) and its decision returned at once;
// Flush, every FlushEvery off the event loops, writes everything queued in
// one batch and fsyncs it (group commit), as the state journal does for
// sessions (admission/journal); a reply waiting for it asks for it at once.
//
// # Guarantees
//
//   - A key whose Flush returned survives kill -9: after the restart a
//     repeat (on this node, for the rest of the window) gets the first
//     decision and is not charged.
//   - Every key has a ticket (Remember, under its shard's lock); Durable
//     is the highest ticket committed with every one before it. The RESP
//     front end acknowledges a CONSUME with ID only once Durable reaches
//     the Ticket read after it (resp/durable.go), and the node commits at
//     once when a client waits (otherwise every FlushEvery): no
//     acknowledged key is lost to a kill -9. A key charged but not yet
//     acknowledged may be lost; its charge was inside the durable token
//     reservation (admission/meter), so that is an over-count bounded by
//     the reservation, never an under-count, and its client, which got
//     no answer, retries. A clean stop (Close) loses nothing.
//   - A key expires at the end of its window: Lookup compares the stored
//     wall-clock expiry, so an expired key is never answered even before
//     its record is deleted. Deletion is bounded work: once a second
//     (ExpireEvery) a Flush scans at most Config.ExpireScan records from a
//     cursor that wraps around and deletes those past their expiry;
//     pebble's compactions reclaim the space.
//   - At Config.MaxKeys keys (approximate count) the store is full: a new
//     ID is refused OVERLOAD until expiry makes room; repeats still get
//     their first decision. The same holds while a million keys wait in
//     memory for a disk that fails their commits.
//   - Memory: the hot sets (HotKeys, 2 s of charges), the keys queued
//     for the next commit (at most 20 ms of charges, a million while
//     commits fail) and pebble's block cache (Config.CacheBytes) and
//     memtables (two of 64 MiB at most); not the window's keys.
package idstore
