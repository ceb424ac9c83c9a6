package cluster

import "github.com/capsgate/capsgate/admission"

// demandMeter turns the engine's counters into each service's demand:
// attempts per second offered to the licence (admitted or refused by it;
// not UNLICENSED, not OVERLOAD). It rises at once with the load and falls by
// half each interval, so a node keeps its share through short lulls.
type demandMeter struct {
	last   map[string]uint64
	demand map[string]float64
}

func newDemandMeter() *demandMeter {
	return &demandMeter{last: map[string]uint64{}, demand: map[string]float64{}}
}

// offered counts a service's attempts that reached the licence checks.
func offered(st admission.Stats) uint64 {
	a := st.Admissions
	return a[admission.OK] + a[admission.CAPS] + a[admission.SESSIONS] + a[admission.TOKENS]
}

// measure updates every service's demand from the engine after dt seconds,
// and returns it with the sessions and subscribers each service holds here.
func (m *demandMeter) measure(eng *admission.Engine, dt float64) (map[string]float64, map[string]Held) {
	held := map[string]Held{}
	for _, s := range eng.Services() {
		st := s.Stats()
		if st.Sessions > 0 || st.Subscribers > 0 {
			held[s.Name()] = Held{Sessions: st.Sessions, Subscribers: st.Subscribers}
		}
		n := offered(st)
		prev, seen := m.last[s.Name()]
		m.last[s.Name()] = n
		if !seen || dt <= 0 {
			continue
		}
		rate := float64(n-prev) / dt
		m.demand[s.Name()] = max(rate, m.demand[s.Name()]/2)
	}
	out := make(map[string]float64, len(m.demand))
	for k, v := range m.demand {
		if v >= 0.01 {
			out[k] = v
		}
	}
	return out, held
}

// Held is what a node holds of a service's counted limits.
type Held struct {
	Sessions    int64 `json:"s,omitempty"`
	Subscribers int64 `json:"u,omitempty"`
}
