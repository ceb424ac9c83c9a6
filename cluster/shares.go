package cluster

import (
	"math"
	"sync"

	"github.com/capsgate/capsgate/admission"
)

// Shares sits between licensing and the engine: licensing gives it each
// service's cluster-wide limits (it is licensing's admission.LimitSetter),
// the allocator gives it this node's share of each service's CAPS, and it
// gives the engine the limits this node enforces.
//
// Sessions and subscribers are cut by the same fraction as the CAPS share
// (share / licensed CAPS): the fractions of all nodes sum to one, so the
// cluster never holds more than licensed. The token pool is passed on whole
// (see the package doc).
type Shares struct {
	sink admission.LimitSetter

	mu     sync.Mutex // guards the maps
	limits map[string]admission.Limits
	share  map[string]float64 // this node's CAPS share; absent: the whole licence
}

// NewShares returns shares feeding sink (the engine).
func NewShares(sink admission.LimitSetter) *Shares {
	return &Shares{sink: sink, limits: map[string]admission.Limits{}, share: map[string]float64{}}
}

// SetLimits records a service's cluster-wide limits and applies this
// node's part of them at once.
func (s *Shares) SetLimits(service string, l admission.Limits) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits[service] = l
	return s.applyLocked(service)
}

// Limited returns the services whose CAPS the cluster must share, with
// their licensed CAPS.
func (s *Shares) Limited() map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]float64{}
	for name, l := range s.limits {
		if l.Licensed && l.CAPS > 0 {
			out[name] = l.CAPS
		}
	}
	return out
}

// SetShare sets this node's CAPS share of a service.
func (s *Shares) SetShare(service string, share float64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.share[service]; ok && math.Abs(old-share) < 0.01 {
		return nil
	}
	s.share[service] = share
	return s.applyLocked(service)
}

// Share returns this node's CAPS share of a service and the licensed CAPS.
func (s *Shares) Share(service string) (share, licensed float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.limits[service]
	share, ok := s.share[service]
	if !ok {
		share = l.CAPS
	}
	return share, l.CAPS
}

func (s *Shares) applyLocked(service string) error {
	l, ok := s.limits[service]
	if !ok {
		return nil
	}
	local := l
	local.LicensedCAPS = l.CAPS
	if share, ok := s.share[service]; ok && l.Licensed && l.CAPS > 0 {
		f := min(share/l.CAPS, 1)
		local.CAPS = share
		local.Sessions = cut(l.Sessions, f)
		local.Subscribers = cut(l.Subscribers, f)
	}
	return s.sink.SetLimits(service, local)
}

// cut takes fraction f of a count, rounding down, leaving Unlimited alone.
func cut(v int64, f float64) int64 {
	if v == admission.Unlimited {
		return v
	}
	return int64(math.Floor(float64(v) * f))
}
