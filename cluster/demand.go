package cluster

import "github.com/capsgate/capsgate/admission"

// demandWindow is how many exchange intervals the slow demand rate spans
// (500 ms): long enough to smooth the jitter of one 100 ms sample, short
// enough that a node whose load went elsewhere gives up its share within
// half a second.
const demandWindow = 5

// demandMeter turns the engine's counters into each service's demand:
// attempts per second offered to the licence (admitted or refused by it;
// not UNLICENSED, not OVERLOAD). The demand is the larger of the last
// interval's rate (so it rises at once) and the rate over the last
// demandWindow intervals (so one short sample does not cut it).
//
// The rate at which a node charges a service's token pool is measured the
// same way.
type demandMeter struct {
	hist   map[string]*[demandWindow + 1]sample
	tokens map[string]*[demandWindow + 1]sample
}

type sample struct {
	t float64 // seconds, on the meter's own scale
	n uint64
}

func newDemandMeter() *demandMeter {
	return &demandMeter{hist: map[string]*[demandWindow + 1]sample{}, tokens: map[string]*[demandWindow + 1]sample{}}
}

// measure updates every service's demand from this node's counters at t
// seconds (any monotonic scale), and returns it with the rate each token
// pool is charged here and what each service holds here.
func (m *demandMeter) measure(u Usage, t float64) (demand, tokenRate map[string]float64, held map[string]Held) {
	demand, tokenRate, held = map[string]float64{}, map[string]float64{}, map[string]Held{}
	for _, s := range u {
		if s.Sessions > 0 || s.Subscribers > 0 || s.PoolUsed > 0 {
			held[s.Name] = Held{Sessions: s.Sessions, Subscribers: s.Subscribers, Tokens: s.PoolUsed}
		}
		if d := push(m.hist, s.Name, sample{t: t, n: s.Offered}); d >= 0.01 {
			demand[s.Name] = d
		}
		if r := push(m.tokens, s.Name, sample{t: t, n: uint64(max(s.PoolUsed, 0))}); r >= 0.01 {
			tokenRate[s.Name] = r
		}
		// Accounts' pools, under their pool keys.
		for _, a := range s.Accounts {
			k := poolKey(s.Name, a.Account)
			if a.Used > 0 {
				held[k] = Held{Tokens: a.Used}
			}
			if r := push(m.tokens, k, sample{t: t, n: uint64(max(a.Used, 0))}); r >= 0.01 {
				tokenRate[k] = r
			}
		}
	}
	return demand, tokenRate, held
}

// ReadUsage reads this node's counters from the engine.
func ReadUsage(eng *admission.Engine) Usage {
	services := eng.Services()
	u := make(Usage, 0, len(services))
	for _, s := range services {
		st := s.Stats()
		a := st.Admissions
		su := ServiceUsage{Name: s.Name(), Offered: a[admission.OK] + a[admission.CAPS] + a[admission.SESSIONS] + a[admission.TOKENS],
			Sessions: st.Sessions, Subscribers: st.Subscribers, PoolUsed: st.PoolUsed}
		for _, p := range s.Pools() {
			if p.Account != "" {
				su.Accounts = append(su.Accounts, AccountUsage{Account: p.Account, Size: p.Size, Used: p.Used})
			}
		}
		u = append(u, su)
	}
	return u
}

// poolKey names an account's token pool in reports and budgets ("/" is not
// in the service and account alphabet); a service's own pool is named by
// the service.
func poolKey(service, account string) string { return service + "/" + account }

// push adds a sample to a series' history and returns the series' rate:
// the larger of the last interval's and the window's.
func push(hist map[string]*[demandWindow + 1]sample, name string, cur sample) float64 {
	h, ok := hist[name]
	if !ok {
		h = new([demandWindow + 1]sample)
		for i := range h {
			h[i] = cur
		}
		hist[name] = h
	}
	copy(h[1:], h[:demandWindow])
	h[0] = cur
	return max(rate(h[1], h[0]), rate(h[demandWindow], h[0]))
}

func rate(from, to sample) float64 {
	if to.t <= from.t || to.n < from.n {
		return 0
	}
	return float64(to.n-from.n) / (to.t - from.t)
}

// Held is what a node holds of a service's counted limits: open sessions,
// registered subscribers, and the tokens it has charged to the service's
// pool.
type Held struct {
	Sessions    int64 `json:"s,omitempty"`
	Subscribers int64 `json:"u,omitempty"`
	Tokens      int64 `json:"t,omitempty"`
	// Budget is what the node may charge the pool in all: the others
	// reserve it (see tokenBudget).
	Budget int64 `json:"b,omitempty"`
}
