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
type demandMeter struct {
	hist   map[string]*[demandWindow + 1]sample
	demand map[string]float64
}

type sample struct {
	t float64 // seconds, on the meter's own scale
	n uint64
}

func newDemandMeter() *demandMeter {
	return &demandMeter{hist: map[string]*[demandWindow + 1]sample{}, demand: map[string]float64{}}
}

// offered counts a service's attempts that reached the licence checks.
func offered(st admission.Stats) uint64 {
	a := st.Admissions
	return a[admission.OK] + a[admission.CAPS] + a[admission.SESSIONS] + a[admission.TOKENS]
}

// measure updates every service's demand from the engine at t seconds (any
// monotonic scale), and returns it with the sessions and subscribers each
// service holds here.
func (m *demandMeter) measure(eng *admission.Engine, t float64) (map[string]float64, map[string]Held) {
	held := map[string]Held{}
	out := map[string]float64{}
	for _, s := range eng.Services() {
		st := s.Stats()
		if st.Sessions > 0 || st.Subscribers > 0 {
			held[s.Name()] = Held{Sessions: st.Sessions, Subscribers: st.Subscribers}
		}
		h, ok := m.hist[s.Name()]
		cur := sample{t: t, n: offered(st)}
		if !ok {
			h = new([demandWindow + 1]sample)
			for i := range h {
				h[i] = cur
			}
			m.hist[s.Name()] = h
		}
		copy(h[1:], h[:demandWindow])
		h[0] = cur
		d := max(rate(h[1], h[0]), rate(h[demandWindow], h[0]))
		if d >= 0.01 {
			out[s.Name()] = d
		}
	}
	return out, held
}

func rate(from, to sample) float64 {
	if to.t <= from.t {
		return 0
	}
	return float64(to.n-from.n) / (to.t - from.t)
}

// Held is what a node holds of a service's counted limits.
type Held struct {
	Sessions    int64 `json:"s,omitempty"`
	Subscribers int64 `json:"u,omitempty"`
}
