// Package cluster makes a farm of capsgate nodes hold their licences as one:
// membership and failure detection (hashicorp/memberlist), each node's share
// of every service's licensed CAPS, and the spread of licences, revocations
// and the licence clock's high-water mark.
//
// # Shares
//
// Every ExchangeInterval (100 ms) each node measures, per service, the
// attempts per second offered to the licence on it (its demand: admitted or
// refused by a licence limit; the larger of the last 100 ms's rate and the
// last 500 ms's, so it rises at once and one short sample does not cut it),
// sends the vector to every member (UDP, last value wins) and
// splits each service's licensed CAPS L among the live members with
// Allocate:
//
//	floor_i = L × FloorFraction / n                   (5 % of L, split evenly)
//	want_i  = max(demand_i − floor_i, 0)
//	share_i = floor_i + want_i + (L(1−F) − Σwant) / n  when Σwant ≤ L(1−F)
//	share_i = floor_i + L(1−F) × want_i / Σwant        otherwise
//
// Members are taken in name order and a report older than one second counts
// as no demand, so every node computes the same vector from the same
// reports; Σ share_i = L exactly. A node applies a fall of its share at
// once. Each report also carries the parts the node applies, and a rise
// goes no further than what the other live members' reports leave free:
// L less the parts they apply, a member that has not reported since it
// (re)joined counting as holding everything. So a rise waits until the
// falls that make room for it have been reported, and views that differ
// for a moment — a member that just joined, a partition healed on one side
// first, failures seen one after the other, a stale report — never let two
// nodes hold the same part. A licence new on a node starts from an even
// part. A node's engine then runs a
// GCRA bucket at its share with a depth of admission.burst (100 ms) of that
// share, but at least 20 attempts (or one second of a share under 20 CAPS):
// a node with a small share would otherwise refuse random arrivals well
// below its rate. The farm's burst is the sum of its nodes' depths.
//
// # Bounds
//
// Over-admission. The applied shares sum to at most L whenever each
// node's last report tells what it applies: a rise is bounded by the
// others' reported parts, a fall is reported at the next exchange. A report
// lost after a fall only delays a rise elsewhere; a node that rose and
// whose report was lost is still held at its previous part by the others
// until its next report, so the sum can exceed L only by a rise made on a
// report older than the part it bounds (a late UDP packet), for one
// interval. Over any window T the cluster admits at
// most L×T + burst plus, per late report, that rise × 100 ms; and shares only
// move when demand moves. Under a steady skewed load (the
// SPEC's case) the reports settle within a few intervals and the bound is
// L×T + burst: measured on 3 nodes at 2 × L split 70/20/10, 10,088 admitted
// in 10 s at L = 1000 (+0.9 %, burst 100 included).
//
// Under-admission. At offered load ≤ 0.9 × L every node's share exceeds its
// demand by (L − Σdemand − floors)/n plus its floor, so nothing is refused
// once reports settle; a node whose load jumps from zero has its floor at
// once and its full demand after one exchange (≤ 200 ms).
//
// Failure. memberlist declares a killed node dead in about 1.5 s (probe 200
// ms, timeout 100 ms, suspicion multiplier 2; about 0.9 s measured on
// loopback). A node that leaves gracefully (SIGTERM) says so first and its
// part is free at once. A node that fails keeps its part of every licence
// for cluster.reclaim_after (default 3 s): the live members split only
// live/known of each licence, and the sessions and registrations the dead
// node held stay counted in its part, so a dead node never makes the
// others over-admit anything. After reclaim_after the side holding a
// majority of the known members takes the dead node's part over (its
// capacity goes to the live nodes); the sessions it held are then no
// longer counted: calls it admitted that are still up in the SIP platform
// may be joined by that many new ones until they end. A node that comes
// back rejoins, gets every licence by state sync and reports what it holds
// again at its first exchange.
//
// # Partitions
//
// A dead member and one cut off by a partition look the same. Policy
// cluster.partition_policy (decideSide):
//
//   - split (default): each side enforces live/known of every licence, so
//     the two sides never admit more than the licence together. The
//     majority side (more than half of the known members; of two equal
//     halves, the one holding the first name) takes the rest after
//     reclaim_after; a minority side admits nothing but emergency calls
//     from reclaim_after/2 on, before the majority can have taken its
//     part. This holds while each side notices the split within
//     reclaim_after/2 of the other (memberlist: within about a second).
//     A two-node farm that loses a node therefore keeps running only on
//     the node named first; use fail_open or three nodes.
//   - fail_open: each side enforces the whole of every licence for
//     cluster.fail_open_for after it lost members (the farm may admit up
//     to sides × licence meanwhile), then splits as above.
//
// # Sessions, subscribers and tokens
//
// Sessions and subscribers are shared with the same allocator, by what each
// node holds (its open sessions, its registered subscribers, reported with
// the demand): while the licence covers what all hold, every node's limit is
// at least what it holds plus an even part of the spare, so the farm never
// holds more than licensed beyond one exchange interval of new sessions on
// a node whose report others have not yet seen. A RELEASE that finds nothing on
// the node it reaches, and every DEREGISTER (the subscriber may have just
// registered again elsewhere), is forwarded to every member, in
// batches over memberlist's reliable (TCP) channel.
//
// A subscriber counts once: a node that registers a subscriber it did not
// hold claims it to every member (same channel), and a member holding it
// from an earlier registration through it lets it go; of two claims the
// later wins, of two at the same nanosecond the first node name's. The
// count can be one too high per re-registration for the time a claim takes
// to arrive (milliseconds).
//
// A node restores its open sessions and registrations from disk after a
// restart (admission/journal). Every member keeps the operations it sent
// in the last hour (at most 200,000): releases, deregistrations, claims.
// When a member that was seen dead comes back, they are sent again, so it
// lets go of calls released and subscribers re-registered elsewhere while
// it was down. A CONSUME charged with an ID is remembered by every member
// for admission.idempotency_window, so a repeat through another node gets
// the first decision, uncharged (a repeat that arrives before the notice,
// milliseconds, is charged there too and counted as a conflict).
//
// Token pools are escrow. Each node reports, per pool, what it has charged
// and its budget: what it may have charged in all. Every exchange a node
// plans budget = charged + part × (pool − everything charged), its part
// being Allocate(1, token rates) of the members' charging rates; a fall
// applies at once, a rise by at most its part of what no member holds in
// budget (pool − Σ max(budget, charged) over live and unreclaimed members,
// charged only for gone ones), and is reported before it applies (one
// exchange later). So the budgets in force never sum to more than the
// pool while reports arrive within an exchange interval: no token is
// overspent. A report lost while a budget rose can overspend the pool by
// at most that rise. A single node draws on the whole pool exactly. An
// account's allocation is a pool of its own, shared the same way under the
// key service/account; allocations made through any node's admin API reach
// every member (the latest wins) and travel in the state sync.
package cluster
