// Package cell is CL.THROTTLE's core: redis-cell's generic cell rate
// algorithm (GCRA), computed as redis-cell computes it, and a bounded
// table of the keys' theoretical arrival times.
//
// The core is pure: no I/O, no goroutines, time passed in as an instant in
// nanoseconds (the engine's clock), so tests step through instants:
//
//	a, err := cell.ParseArgs(args, cell.DefaultBounds()) // key max_burst count period [quantity]
//	r, err := cell.NewRate(a.MaxBurst, a.Count, a.Period)
//	t := cell.NewTable(1_000_000)
//	reply, err := t.Throttle(now, admission.KeyOf(a.Key), r, a.Quantity)
//	// reply.Ints(): limited, limit, remaining, retry_after, reset_after
//
// # The algorithm (redis-cell's src/cell/mod.rs)
//
// Emission interval T = period / count; tolerance τ = T × (max_burst+1);
// a key holds its theoretical arrival time TAT (now when it holds none).
// A request of quantity q at now: new TAT = max(TAT, now) + T×q; it is
// limited when new TAT − τ > now, and then changes nothing (retry_after =
// new TAT − τ − now, or -1 s if T×q > τ: no wait would let it through);
// else TAT becomes new TAT. reset_after = TAT − now (of the TAT kept);
// remaining = (τ − reset_after) / T in whole microseconds, truncated, or 0
// once τ − reset_after ≤ −T. The durations are replied in whole seconds,
// plus one when a part of at least a millisecond remains. So over any
// window of length d a key lets through at most max_burst + 1 + d/T of
// quantity (TestGCRAAgainstReference checks the decisions against a
// plain reference over random sequences).
//
// Where redis-cell differs only by its store (a Redis key with a TTL in
// milliseconds, so a key may expire up to a millisecond before its TAT),
// a key here is kept until its TAT exactly. Arguments whose sums pass
// int64 are refused or saturate instead of wrapping (NewRate, Decide).
//
// # The table
//
// Table keeps at most max keys (throttle.max_keys), in Shards parts with a
// mutex each: a key's state can be dropped once its TAT is past, so keys
// are freed by expiry (Sweep, run by the node every 100 ms); a new key
// finding the table full is refused with ErrFull while the keys held go
// on deciding. A key is its 128-bit hash in admission.Expiring (the
// engine's slab, index and expiry wheel): deciding allocates nothing
// (BenchmarkThrottle, TestThrottleAllocatesNothing).
package cell
