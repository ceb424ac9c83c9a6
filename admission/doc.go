// Package admission is capsgate's decision core: it decides, for each call
// attempt, registration or consumption, whether the licensed capacity allows it.
//
// The core is pure. It does no I/O, starts no goroutines and never blocks on
// anything slow; time is passed in as a monotonic instant (nanoseconds on the
// engine's Clock) so tests step through instants with a fake clock:
//
//	clk := admission.NewFakeClock()
//	e := admission.NewEngine(admission.DefaultConfig())
//	e.SetLimits("voice", admission.Limits{Licensed: true, CAPS: 1000, Sessions: 500,
//		Subscribers: admission.Unlimited, Tokens: admission.Unlimited})
//	d := e.Admit(clk.Now(), []byte("voice"), nil, nil, admission.Normal)
//	if d.Admitted() { ... }
//
// What the engine enforces comes through one narrow door, SetLimits: the
// licensing layer (the sum of a service's valid licences) and the cluster layer
// (this node's share of them) feed it; the engine never asks either while
// deciding.
//
// # Concurrency
//
// Every method is safe for concurrent use by the RESP event loops. There is no
// engine-wide lock on the decision path:
//
//   - the set of services is an immutable map behind an atomic pointer,
//     replaced (copy on write) only when a service appears;
//   - a service's limits are an immutable snapshot behind an atomic pointer;
//   - the CAPS token bucket is a GCRA: one atomic word (the theoretical arrival
//     time) advanced by compare-and-swap, exact under any interleaving;
//   - sessions, subscribers, token pools and idempotency keys of one service are
//     guarded by that service's own mutex, taken only by commands that need
//     them (ADMIT with CALL or a token charge, RELEASE, REGISTER, CONSUME);
//   - what keeps state per token pool (the reserver, the meter) takes a pool
//     watch (Engine.WatchPools) and asks each service for the pools that
//     changed since (Service.ChangedPools) instead of walking every account
//     under its mutex: a charge marks its pool once per watch (a bit test
//     after that) and allocates nothing.
//
// # Guarantees
//
//   - CAPS: over any interval of length d, at most burst + rate×d attempts are
//     admitted (normal priority), burst = rate × Config.Burst (at least 1).
//   - PRIORITY high may additionally use Config.HighHeadroomPercent of the
//     licensed CAPS and sessions.
//   - PRIORITY emergency is never rejected by a licence limit, only by the
//     node's own max_caps (OVERLOAD); it is counted apart.
//   - A repeated ADMIT with the CALL of an open session returns the first
//     decision again and is not counted twice.
//   - The decision path allocates nothing (see the benchmarks).
//
// # Memory
//
// Keys are 128-bit hashes, so every entry of a table is the same size, and
// a table is a slab of entries in chunks of 4,096 plus an index from key to
// slot (keyIndex; TestEntrySizes checks the sizes below):
//
//	subscriber entry   key 16 + expiry 8 + wheel links 12 + when it was
//	                   registered 4 (ms before its expiry)                    = 40 B
//	session entry      the same 40 + session 24 (account 8, trunk 8,
//	                   remaining 4, priority 1, licensed 1, 2 padding)        = 64 B
//	index slot         32 hash bits + slot 4                                  =  8 B
//	                   at a load of 3/8 to 3/4 (a segment splits at 3/4):
//	                   11-21 B an entry, plus a segment header and directory
//	                   pointer (48 B) per 400-770 entries
//
// So a subscriber takes 51-62 bytes of Go heap and a session 75-86 (their
// chunk's unused tail aside). Measured (`go test ./admission -run '^$'
// -bench MemoryPerEntry -benchtime 1x`, MEMORY_BENCH_ENTRIES for more):
// 57 bytes a subscriber and 81 a call at 1 M each, 54 and 78 at 10 M
// each; so 10 M subscribers with 1 M calls hold about 0.62 GB of live heap.
// The collector's headroom (GOGC 100: up to twice the live heap between
// collections) comes on top in RSS, which is what 128 bytes an entry is
// measured against.
package admission
