package admission

import "sync/atomic"

// gate is what the services of an engine share: the node's own capacity
// (Config.MaxCAPS, with its emergency reserve), the open emergency
// sessions of every service (Config.MaxEmergencySessions) and the engine's
// configuration. Each Service holds it, so that a decision runs in the
// service's own methods (decide.go) from the engine's one lookup.
type gate struct {
	cfg *Config
	// node is the node.max_caps bucket; nodeShared the part of it outside
	// the emergency reserve.
	node          gcra
	nodeTAT       atomic.Int64
	nodeShared    gcra
	nodeSharedTAT atomic.Int64
	// emergencyOpen counts the open emergency sessions of every service.
	emergencyOpen atomic.Int64
	// claims: the services remember the subscribers they newly register
	// (Engine.TrackClaims).
	claims atomic.Bool
}

// overload takes a token of the node's capacity (node.max_caps) for an
// attempt of priority prio: an emergency call from the whole of it, any
// other also from the part outside the emergency reserve.
func (g *gate) overload(now int64, prio Priority) (Decision, bool) {
	if prio != Emergency {
		if ok, wait := g.nodeShared.take(&g.nodeSharedTAT, now); !ok {
			return Decision{Reason: OVERLOAD, RetryAfterMS: retryMS(wait), Remaining: 0}, false
		}
	}
	ok, wait := g.node.take(&g.nodeTAT, now)
	if ok {
		return Decision{}, true
	}
	if prio != Emergency {
		g.nodeShared.refund(&g.nodeSharedTAT, now)
	}
	return Decision{Reason: OVERLOAD, RetryAfterMS: retryMS(wait), Remaining: 0}, false
}
