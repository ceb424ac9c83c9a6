package node

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/strictjson"
	"github.com/capsgate/capsgate/cluster/trunks"
)

// The keys' limits (ADMIT ... TRUNK key): the book in the data directory,
// the config's entries set over it at start, and the admin API that sets,
// lists and removes them.

// openTrunks opens the book of keys' limits and sets trunks.limits over
// it (as set when the config was written: a later setting made through
// the admin API holds).
func (n *Node) openTrunks() error {
	book, err := trunks.Open(n.cfg.DataDir, n.cfg.Trunks.MaxKeys, n.shares)
	if err != nil {
		return fmt.Errorf("cannot open the keys' limits: %w", err)
	}
	settings, _, err := n.cfg.TrunkSettings()
	if err == nil {
		for _, s := range settings {
			if _, err = book.Set(s); errors.Is(err, trunks.ErrStale) {
				err = nil
			}
			if err != nil {
				err = fmt.Errorf("trunks.limits %s/%s: %w", s.Service, s.Key, err)
				break
			}
		}
	}
	if err != nil {
		book.Close()
		return err
	}
	n.trunks = book
	return nil
}

// applyConfigPools gives the keys the token pools trunks.limits gives
// them, as if allocated when the config was written: an allocation made
// later (on any member) holds, and a service not licensed yet gets its
// pools when its licence comes.
func (n *Node) applyConfigPools() {
	_, pools, _ := n.cfg.TrunkSettings() // checked at load
	for _, p := range pools {
		if err := n.reserver.Apply(p.Service, p.Key, p.Allocation); err != nil {
			n.log.Error("trunks.limits: cannot give the key its token pool", "service", p.Service, "key", p.Key, "err", err)
		}
	}
}

// TrunkBody is the JSON of PUT /v1/services/{service}/limits/{key}: a
// limit left out is not enforced. Tokens (with Overage) is the key's
// token pool: the allocation of the account of the key's name, as PUT
// /v1/services/{service}/accounts/{key} sets it; left out, the pool is
// left as it is.
type TrunkBody struct {
	CAPS     *float64 `json:"caps"`
	Burst    *int64   `json:"burst"`
	Sessions *int64   `json:"sessions"`
	Tokens   *int64   `json:"tokens"`
	Overage  *string  `json:"overage"`
}

// maxTrunkBody bounds the body of a PUT of a key's limits.
const maxTrunkBody = 4 << 10

// decodeTrunk reads a key's limits strictly, and its pool (nil: not
// given).
func decodeTrunk(body []byte) (trunks.Limit, *admission.Allocation, error) {
	const want = `want {"caps": N, "burst": N, "sessions": N, "tokens": N, "overage": "none|percent:N|unlimited"}, each optional, at least one`
	var b TrunkBody
	if err := strictjson.Decode(body, &b); err != nil {
		return trunks.Limit{}, nil, fmt.Errorf("%s: %v", want, err)
	}
	if b.CAPS == nil && b.Sessions == nil && b.Burst == nil && b.Tokens == nil {
		return trunks.Limit{}, nil, errors.New(want + ": none given")
	}
	l := trunks.Limit{CAPS: -1, Sessions: -1}
	if b.CAPS != nil {
		if *b.CAPS < 0 {
			return trunks.Limit{}, nil, fmt.Errorf("caps must be between 0 and %g, got %v", float64(trunks.MaxCAPS), *b.CAPS)
		}
		l.CAPS = *b.CAPS
	}
	if b.Sessions != nil {
		if *b.Sessions < 0 {
			return trunks.Limit{}, nil, fmt.Errorf("sessions must be 0 or more, got %d", *b.Sessions)
		}
		l.Sessions = *b.Sessions
	}
	if b.Burst != nil {
		l.Burst = *b.Burst
	}
	if err := l.Validate(); err != nil {
		return trunks.Limit{}, nil, err
	}
	if b.Tokens == nil {
		if b.Overage != nil {
			return trunks.Limit{}, nil, errors.New(`"overage" is the policy of the key's token pool: give "tokens" with it`)
		}
		return l, nil, nil
	}
	a, err := keyPool(*b.Tokens, b.Overage)
	return l, a, err
}

// keyPool checks a key's token pool as the admin API and the config
// give it.
func keyPool(tokens int64, overage *string) (*admission.Allocation, error) {
	if tokens < 0 {
		return nil, fmt.Errorf("tokens must be 0 or more, got %d", tokens)
	}
	a := &admission.Allocation{Tokens: tokens, Overage: "none"}
	if overage != nil {
		ov, err := admission.ParseOverage(*overage)
		if err != nil {
			return nil, err
		}
		a.Overage = ov.String()
	}
	return a, nil
}

// TrunkView is a key's limits and this node's part and use of them, as
// the admin API shows them.
type TrunkView struct {
	Service  string    `json:"service"`
	Key      string    `json:"key"`
	CAPS     *float64  `json:"caps"`
	Burst    int64     `json:"burst,omitempty"`
	Sessions *int64    `json:"sessions"`
	SetAt    time.Time `json:"set_at"`
	// Pool is the key's token pool (the allocation of the account of its
	// name), if it has one.
	Pool *AccountView `json:"pool,omitempty"`
	// Node is what this node enforces of them and has decided.
	Node TrunkNodeView `json:"node"`
}

// TrunkNodeView is this node's part of a key's limits and its counters.
type TrunkNodeView struct {
	CAPS         *float64          `json:"caps"`
	Burst        int64             `json:"burst"`
	Sessions     *int64            `json:"sessions"`
	SessionsOpen int64             `json:"sessions_open"`
	UsedCAPS     float64           `json:"used_caps"`
	Admitted     uint64            `json:"admitted"`
	Refused      map[string]uint64 `json:"refused,omitempty"`
}

func limitOrNil[T int64 | float64](v T) *T {
	if v < 0 {
		return nil
	}
	return &v
}

func (n *Node) trunkView(s trunks.Setting) TrunkView {
	v := TrunkView{Service: s.Service, Key: s.Key, CAPS: limitOrNil(s.Limit.CAPS), Burst: s.Limit.Burst,
		Sessions: limitOrNil(s.Limit.Sessions), SetAt: time.Unix(0, s.Limit.At).UTC()}
	if svc := n.eng.Service(s.Service); svc != nil {
		if p, ok := svc.Pool(s.Key); ok {
			pv := accountView(p)
			v.Pool = &pv
		}
	}
	if t := n.eng.Trunk(s.Service, s.Key); t != nil {
		st := t.Stats()
		v.Node = TrunkNodeView{CAPS: limitOrNil(st.Limits.CAPS), Burst: st.Burst, Sessions: limitOrNil(st.Limits.Sessions),
			SessionsOpen: st.Sessions, UsedCAPS: st.UsedCAPS, Admitted: st.Admissions[admission.OK]}
		for r := admission.Reason(1); r < admission.NumReasons; r++ {
			if c := st.Admissions[r]; c > 0 {
				if v.Node.Refused == nil {
					v.Node.Refused = map[string]uint64{}
				}
				v.Node.Refused[r.String()] = c
			}
		}
	}
	return v
}

// pathKey returns the {service} and {key} of the request's path, or
// answers 400.
func pathKey(w http.ResponseWriter, r *http.Request) (service, key string, ok bool) {
	if service, ok = pathName(w, r, "service"); ok {
		key, ok = pathName(w, r, "key")
	}
	return service, key, ok
}

func (n *Node) putTrunk(w http.ResponseWriter, r *http.Request) {
	service, key, ok := pathKey(w, r)
	if !ok {
		return
	}
	body, ok := readBody(w, r, maxTrunkBody, "invalid_body")
	if !ok {
		return
	}
	l, pool, err := decodeTrunk(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_body", err.Error())
		return
	}
	if pool != nil {
		// The pool first (the licence may refuse it), and only while the
		// key's limits can still be stored: a refusal changes nothing.
		if _, ok := n.trunks.Get(service, key); !ok && n.trunks.Len() >= n.cfg.Trunks.MaxKeys {
			writeError(w, http.StatusUnprocessableEntity, "too_many_keys",
				fmt.Sprintf("%v: %d, the most a farm's book holds (trunks.max_keys)", trunks.ErrTooMany, n.cfg.Trunks.MaxKeys))
			return
		}
		if !n.allocate(w, service, key, *pool) {
			return
		}
	}
	n.setTrunk(w, trunks.Setting{Service: service, Key: key, Limit: l}, http.StatusOK)
}

func (n *Node) deleteTrunk(w http.ResponseWriter, r *http.Request) {
	service, key, ok := pathKey(w, r)
	if !ok {
		return
	}
	if _, ok := n.trunks.Get(service, key); !ok {
		writeError(w, http.StatusNotFound, "unknown_key", fmt.Sprintf("key %q of service %q has no limits", key, service))
		return
	}
	n.setTrunk(w, trunks.Setting{Service: service, Key: key, Limit: trunks.Limit{Removed: true}}, http.StatusOK)
}

// setTrunk records s here and spreads it to every member.
func (n *Node) setTrunk(w http.ResponseWriter, s trunks.Setting, status int) {
	added, err := n.trunks.Set(s)
	switch {
	case errors.Is(err, trunks.ErrTooMany):
		writeError(w, http.StatusUnprocessableEntity, "too_many_keys", err.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "not_stored", err.Error())
		return
	}
	stored, _ := n.trunks.Lookup(s.Service, s.Key) // as set: At filled in
	if n.cluster != nil {
		n.cluster.SpreadTrunk(stored)
	}
	if added {
		status = http.StatusCreated
	}
	writeJSON(w, status, n.trunkView(stored))
}

func (n *Node) getTrunk(w http.ResponseWriter, r *http.Request) {
	service, key, ok := pathKey(w, r)
	if !ok {
		return
	}
	l, ok := n.trunks.Get(service, key)
	if !ok {
		writeError(w, http.StatusNotFound, "unknown_key", fmt.Sprintf("key %q of service %q has no limits", key, service))
		return
	}
	writeJSON(w, http.StatusOK, n.trunkView(trunks.Setting{Service: service, Key: key, Limit: l}))
}

// TrunkList is the JSON of GET /v1/services/{service}/limits: a page of
// keys in key order; Next, when set, is the after= of the next page.
type TrunkList struct {
	Service string      `json:"service"`
	Keys    []TrunkView `json:"keys"`
	Next    string      `json:"next,omitempty"`
}

// Pages of GET /v1/services/{service}/limits.
const (
	defaultTrunkPage = 1000
	maxTrunkPage     = 10000
)

func (n *Node) listTrunks(w http.ResponseWriter, r *http.Request) {
	service, ok := pathName(w, r, "service")
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := defaultTrunkPage
	if v := q.Get("limit"); v != "" {
		l, err := strconv.Atoi(v)
		if err != nil || l < 1 || l > maxTrunkPage {
			writeError(w, http.StatusBadRequest, "invalid_limit", fmt.Sprintf("limit must be 1..%d, got %q", maxTrunkPage, v))
			return
		}
		limit = l
	}
	after := q.Get("after")
	all := n.trunks.List(service)
	i := sort.Search(len(all), func(i int) bool { return all[i].Key > after })
	out := TrunkList{Service: service, Keys: []TrunkView{}}
	for ; i < len(all) && len(out.Keys) < limit; i++ {
		out.Keys = append(out.Keys, n.trunkView(all[i]))
	}
	if i < len(all) {
		out.Next = out.Keys[len(out.Keys)-1].Key
	}
	writeJSON(w, http.StatusOK, out)
}

// TopTrunks is how many trunk keys the top-N metrics name: a series per
// key would be 100,000 series a farm.
const TopTrunks = 10

// writeTrunkMetrics writes the keys' metrics, bounded whatever their
// number: how many keys have limits, the decisions on them by reason
// (all keys of a service together), and the TopTrunks keys by CAPS used,
// by open sessions and by refusals on this node.
func (n *Node) writeTrunkMetrics(w io.Writer) {
	type row struct {
		service, key string
		used         float64
		sessions     int64
		refused      uint64
	}
	var rows []row
	byService := map[string]*[admission.NumReasons]uint64{}
	n.eng.EachTrunk(func(t *admission.Trunk) {
		st := t.Stats()
		if !st.Limits.Licensed && st.Offered() == 0 {
			return
		}
		sum := byService[t.Service()]
		if sum == nil {
			sum = &[admission.NumReasons]uint64{}
			byService[t.Service()] = sum
		}
		var refused uint64
		for r, c := range st.Admissions {
			sum[r] += c
			if admission.Reason(r) != admission.OK {
				refused += c
			}
		}
		rows = append(rows, row{t.Service(), t.Key(), st.UsedCAPS, st.Sessions, refused})
	})
	metrics.WriteMetadataIfNeeded(w, "capsgate_trunk_keys", "gauge")
	fmt.Fprintf(w, "capsgate_trunk_keys %d\n", n.trunks.Len())
	services := slices.Sorted(maps.Keys(byService))
	metrics.WriteMetadataIfNeeded(w, "capsgate_trunk_admissions_total", "counter")
	for _, s := range services {
		for r, c := range byService[s] {
			if c > 0 || admission.Reason(r) == admission.OK {
				fmt.Fprintf(w, "capsgate_trunk_admissions_total{service=%q,reason=%q} %d\n", s, admission.Reason(r).String(), c)
			}
		}
	}
	top := func(name string, less func(a, b row) int, value func(row) string, keep func(row) bool) {
		metrics.WriteMetadataIfNeeded(w, name, "gauge")
		kept := slices.DeleteFunc(slices.Clone(rows), func(r row) bool { return !keep(r) })
		slices.SortFunc(kept, func(a, b row) int {
			if c := less(a, b); c != 0 {
				return c
			}
			return cmp.Or(strings.Compare(a.service, b.service), strings.Compare(a.key, b.key))
		})
		for _, r := range kept[:min(len(kept), TopTrunks)] {
			fmt.Fprintf(w, "%s{service=%q,key=%q} %s\n", name, r.service, r.key, value(r))
		}
	}
	top("capsgate_trunk_top_used_caps", func(a, b row) int { return cmp.Compare(b.used, a.used) },
		func(r row) string { return strconv.FormatFloat(r.used, 'f', -1, 64) }, func(r row) bool { return r.used > 0 })
	top("capsgate_trunk_top_sessions", func(a, b row) int { return cmp.Compare(b.sessions, a.sessions) },
		func(r row) string { return strconv.FormatInt(r.sessions, 10) }, func(r row) bool { return r.sessions > 0 })
	top("capsgate_trunk_top_refused", func(a, b row) int { return cmp.Compare(b.refused, a.refused) },
		func(r row) string { return strconv.FormatUint(r.refused, 10) }, func(r row) bool { return r.refused > 0 })
}
