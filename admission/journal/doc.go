// Package journal makes a node's open sessions (ADMIT ... CALL) and
// registered subscribers (REGISTER) survive a restart or a kill -9.
//
// The engine does no I/O while deciding. With admission.Config.JournalState
// set, each service appends a small fixed-size admission.Change to an
// in-memory log under the mutex it already holds (see admission/state.go);
// the log is a preallocated slice, so the decision path allocates nothing.
// A Journal drains every service's log each FlushEvery, appends the
// changes to data_dir/state/journal-N.log and fsyncs once for all of them
// (group commit):
//
//	j, err := journal.Open(journal.Config{Dir: filepath.Join(dataDir, journal.Dir),
//		Engine: eng, Clock: clk})      // restores, before the front end serves
//	...
//	for range time.Tick(journal.FlushEvery) {
//		j.Flush()
//	}
//	...
//	j.Close()                         // the last changes, at a clean stop
//
// # Files
//
// data_dir/state holds snapshot-N.state, every live session and subscriber
// when it was written (atomically: a temporary file, fsync, rename, fsync
// of the directory), and journal-N.log, the changes since. Both are a magic
// header and frames of a length, a CRC-32C and a payload: in a journal a
// record a change, in a snapshot a block of a table chunk's entries (24
// bytes a registration, half what a record takes, and a CRC a block);
// expiries are stored as wall-clock time, so they hold across runs of the
// engine's monotonic clock. When the journals since the snapshot pass both
// Config.MaxJournalBytes and the snapshot's size counted as journal
// records (so that writing a snapshot costs at most a record's bytes per
// change, however big the state), Flush starts the next journal, goes on committing into it every
// FlushEvery, and writes the next snapshot behind it in a goroutine of its
// own (as it is taken, 4,096 entries at a time, never whole in memory, no
// service's lock held for more than a chunk); once the snapshot is in
// place, what came before it is removed. A crash before that leaves the
// older snapshot and every journal since, which is what a restart reads.
// Open reads the newest snapshot and the
// journals after it, each up to its first torn or corrupt record (a crash
// mid-write; what follows is cut off, logged, and truncated before the
// node goes on), restores what has not expired into the engine (applied as
// read, in chunks, by a goroutine of its own while the next records are
// read and checked, each table sized once from the records' headers) and
// continues with a new journal after them: a restart does not rewrite the
// whole state before it serves. A start that finds 8 journals after the
// snapshot writes a snapshot first.
//
// If a service's log fills up between two flushes (it starts empty and
// doubles up to 65536 changes per interval), it drops changes and the next
// flush writes that service whole instead (a reset record and its live
// entries, written a MiB at a time), so nothing is lost to an overflow; a
// restart skips what the snapshot and earlier journals held of a service
// before its last reset.
//
// # Guarantees
//
//   - A session or registration acknowledged before the last Flush that
//     returned survives kill -9: after the restart it is open again with
//     the same expiry, licensed flag, priority, account and first decision
//     (a repeated ADMIT ... CALL gets the same answer and is not counted;
//     RELEASE answers :1), and an ended one stays ended.
//   - The window of loss is one flush interval: sessions opened,
//     released, registered or deregistered within the last FlushEvery
//     (20 ms, plus the fsync) before a kill -9 may be missing from, or
//     still present in, the restored state. A clean stop (SIGTERM) loses
//     nothing.
//   - Entries that expired while the node was down are not restored.
package journal
