package node

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/licensing/registry"
)

// metricsRenders bounds the /metrics expositions rendered at once.
const metricsRenders = 2

// adminHandler routes the admin HTTP API. token == "" (--dev) needs none;
// /metrics, /healthz and /readyz never do.
func (n *Node) adminHandler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !n.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n"))
			return
		}
		if n.shares.Awaiting() {
			// A node joining a farm enforces no part of any licence before
			// the cluster's first plan: it would refuse every attempt.
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: awaiting the cluster's first plan\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	n.renders = make(chan struct{}, metricsRenders)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		// Each exposition is held whole until written (about 2 MB with
		// 1,000 licences): at most metricsRenders at once, the other
		// scrapes wait their turn, so that a client opening many
		// connections makes the node hold no more.
		select {
		case n.renders <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		defer func() { <-n.renders }()
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var buf bytes.Buffer
		buf.Grow(int(n.rendered.Load()) + 4096) // the last one's size: no doubling
		metrics.WritePrometheus(&buf, true)
		n.writeServiceMetrics(&buf)
		n.writeTrunkMetrics(&buf)
		n.reg.WriteMetrics(&buf)
		n.rendered.Store(int64(buf.Len()))
		_ = writeLinted(w, buf.Bytes())
	})
	api := http.NewServeMux()
	api.HandleFunc("POST /v1/licenses", n.postLicense)
	api.HandleFunc("GET /v1/licenses", n.listLicenses)
	api.HandleFunc("GET /v1/licenses/{id}", n.getLicense)
	api.HandleFunc("GET /v1/services", n.listServices)
	api.HandleFunc("GET /v1/cluster", n.getCluster)
	api.HandleFunc("GET /v1/services/{service}", n.getService)
	api.HandleFunc("GET /v1/services/{service}/accounts", n.listAccounts)
	api.HandleFunc("PUT /v1/services/{service}/accounts/{account}", n.putAccount)
	api.HandleFunc("GET /v1/services/{service}/limits", n.listTrunks)
	api.HandleFunc("GET /v1/services/{service}/limits/{key}", n.getTrunk)
	api.HandleFunc("PUT /v1/services/{service}/limits/{key}", n.putTrunk)
	api.HandleFunc("DELETE /v1/services/{service}/limits/{key}", n.deleteTrunk)
	api.HandleFunc("GET /v1/ledger", n.getLedger)
	api.HandleFunc("GET /v1/ledger/key", n.getLedgerKey)
	api.HandleFunc("GET /v1/usage", n.getUsage)
	api.HandleFunc("GET /v1/usage/export", n.getUsageExport)
	api.Handle("/v1/", unrouted(api, "/v1/"))
	mux.Handle("/v1/", requireToken(token, api))
	// Go's profiler, for capacity work (capsbench compare fetches a CPU
	// profile while it measures); behind the token like the API.
	prof := http.NewServeMux()
	prof.HandleFunc("/debug/pprof/", pprof.Index)
	prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
	prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
	prof.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	prof.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.Handle("/debug/pprof/", requireToken(token, prof))
	mux.Handle("/", unrouted(mux, "/"))
	return mux
}

// routedMethods are the methods unrouted tries a path with: every method
// the admin API serves (HEAD with each GET).
var routedMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete}

// unrouted answers what no other pattern of mux takes, mux's catch-all
// pattern being fallback: 405 with an Allow header when other methods are
// served at that path, else 404; both as API errors. (ServeMux's own 405
// is plain text, and a catch-all pattern hides it.)
func unrouted(mux *http.ServeMux, fallback string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allow []string
		for _, m := range routedMethods {
			probe := r.WithContext(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != fallback {
				allow = append(allow, m)
			}
		}
		if len(allow) == 0 {
			writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
			return
		}
		list := strings.Join(allow, ", ")
		w.Header().Set("Allow", list)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+list)
	})
}

// requireToken checks the bearer token in constant time. The scheme is
// case-insensitive, and spaces may separate it from the token (RFC 9110
// §11.1, §11.4).
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got = strings.TrimLeft(got, " ")
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="capsgate"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required (admin.token_file)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiError is the JSON body of every admin API error.
type apiError struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeError(w http.ResponseWriter, status int, reason, msg string) {
	writeJSON(w, status, apiError{Error: msg, Reason: reason})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// maxLicenseBytes bounds a POSTed licence or revocation (a real one is
// about 1 KiB).
const maxLicenseBytes = 64 << 10

// readBody reads a request's body of at most limit bytes, bounded before
// anything is parsed; else it answers 413 (too large) or 400 with reason
// and returns false.
func readBody(w http.ResponseWriter, r *http.Request, limit int64, reason string) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is at most %d bytes", limit))
		return nil, false
	case err != nil:
		writeError(w, http.StatusBadRequest, reason, "cannot read the body: "+err.Error())
		return nil, false
	}
	return body, true
}

// LicenseResult is the JSON of POST /v1/licenses: what became of the
// file's document, or, for a file holding several, of the first, with
// Results (and Licenses) listing every one in order.
type LicenseResult struct {
	Result   registry.Result   `json:"result"`
	License  *registry.View    `json:"license,omitempty"`
	Results  []registry.Result `json:"results,omitempty"`
	Licenses []registry.View   `json:"licenses,omitempty"`
}

// postLicense loads a licence file: every licence and revocation in it,
// or none (see registry.Load).
func (n *Node) postLicense(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r, maxLicenseBytes, "malformed")
	if !ok {
		return
	}
	results, err := n.reg.Load(body)
	if err == nil && n.reserver != nil {
		// A new service's token pool has its first reservation before the
		// client hears the licence is in.
		if serr := n.reserver.Step(time.Now()); serr != nil {
			n.log.Warn("cannot reserve tokens for a new licence yet", "err", serr)
		}
	}
	if err != nil {
		var le *registry.LoadError
		switch {
		case errors.As(err, &le) && le.Reason == registry.ReasonMalformed:
			writeError(w, http.StatusBadRequest, le.Reason, err.Error())
		case errors.As(err, &le):
			writeError(w, http.StatusUnprocessableEntity, le.Reason, err.Error())
		default:
			n.log.Error("cannot load a licence", "err", err)
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
		}
		return
	}
	out := LicenseResult{Result: results[0]}
	status := http.StatusOK
	for _, res := range results {
		if res.New {
			status = http.StatusCreated
		}
		if v, ok := n.reg.Get(res.ID); ok && res.Kind == "license" {
			out.Licenses = append(out.Licenses, v)
		}
	}
	if status == http.StatusCreated {
		n.cluster.SpreadLicence(body)
	}
	if results[0].Kind == "license" && len(out.Licenses) > 0 {
		out.License = &out.Licenses[0]
	}
	if len(results) > 1 {
		out.Results = results
	} else {
		out.Licenses = nil
	}
	writeJSON(w, status, out)
}

func (n *Node) getCluster(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, cluster.View{Node: n.cfg.NodeName, ClusterID: n.cfg.ClusterID,
		Policy: n.cfg.Cluster.PartitionPolicy, Side: n.cluster.Side(), Members: n.cluster.Members()})
}

func (n *Node) listLicenses(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"licenses": n.reg.List()})
}

func (n *Node) getLicense(w http.ResponseWriter, r *http.Request) {
	v, ok := n.reg.Get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no licence "+r.PathValue("id")+" is loaded")
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// ServiceView is the JSON of GET /v1/services/{service}.
type ServiceView struct {
	Service  string     `json:"service"`
	Licensed bool       `json:"licensed"`
	State    string     `json:"state"`
	Licenses []string   `json:"licenses"`
	Limits   LimitsView `json:"limits"`
	// Cluster is the service's usage summed over the farm's live members
	// as their last reports say (a node alone: its own).
	Cluster cluster.FarmUsage `json:"cluster"`
	Node    UsageView         `json:"node"`
}

// LimitsView shows a service's effective limits; -1 means unlimited.
type LimitsView struct {
	CAPS             Rate   `json:"caps"`
	CAPSShare        Rate   `json:"caps_share"`
	Burst            int64  `json:"burst"`
	Sessions         int64  `json:"sessions"`
	Subscribers      int64  `json:"subscribers"`
	Tokens           int64  `json:"tokens"`
	TokensPerAttempt int64  `json:"tokens_per_attempt"`
	TokensPerMinute  int64  `json:"tokens_per_minute"`
	Overage          string `json:"overage"`
}

// Rate is a CAPS limit in the admin API's JSON: a float64 (the engine's
// CAPS) whose integral values are written as exact integers. A sum of
// licences past the int64 range saturates at math.MaxInt64
// (admission.Limits), which as a float64 is 2^63; encoding/json would
// write it as 9223372036854776000, a number no licence holds and no
// int64 reader takes, so Rate writes the limit it stands for,
// 9223372036854775807. Fractions are written as encoding/json does.
type Rate float64

// MarshalJSON implements json.Marshaler.
func (r Rate) MarshalJSON() ([]byte, error) {
	f := float64(r)
	switch {
	case f >= math.MaxInt64: // float64(math.MaxInt64) is 2^63
		return strconv.AppendInt(nil, math.MaxInt64, 10), nil
	case f == math.Trunc(f) && f >= math.MinInt64:
		return strconv.AppendInt(nil, int64(f), 10), nil
	}
	return json.Marshal(f)
}

// UsageView is this node's usage of a service.
type UsageView struct {
	UsedCAPS          float64           `json:"used_caps"`
	Sessions          int64             `json:"sessions"`
	EmergencySessions int64             `json:"emergency_sessions"`
	Subscribers       int64             `json:"subscribers"`
	TokensUsed        int64             `json:"tokens_used"`
	TokensLeft        int64             `json:"tokens_left"`
	Overage           int64             `json:"tokens_overage"`
	Admissions        map[string]uint64 `json:"admissions"`
	Emergency         uint64            `json:"emergency_admitted"`
}

func (n *Node) getService(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r, "service")
	if !ok {
		return
	}
	s := n.eng.Service(name)
	if s == nil {
		writeError(w, http.StatusNotFound, "unlicensed", "no licence covers service "+name)
		return
	}
	writeJSON(w, http.StatusOK, n.serviceView(s.Stats()))
}

func (n *Node) listServices(w http.ResponseWriter, _ *http.Request) {
	out := []ServiceView{}
	for _, s := range n.eng.Services() {
		out = append(out, n.serviceView(s.Stats()))
	}
	writeJSON(w, http.StatusOK, map[string]any{"services": out})
}

func (n *Node) serviceView(st admission.Stats) ServiceView {
	l := st.Limits
	state := l.State
	if !l.Licensed {
		state = "unlicensed"
	}
	licensed := l.LicensedCAPS
	if licensed == 0 {
		licensed = l.CAPS
	}
	v := ServiceView{
		Service: st.Name, Licensed: l.Licensed, State: state, Licenses: n.reg.ForService(st.Name),
		Limits: LimitsView{CAPS: Rate(licensed), CAPSShare: Rate(l.CAPS), Burst: st.Burst, Sessions: l.Sessions,
			Subscribers: l.Subscribers, Tokens: l.Tokens, TokensPerAttempt: l.TokensPerAttempt,
			TokensPerMinute: l.TokensPerMinute, Overage: l.Overage.String()},
		Node: UsageView{UsedCAPS: st.UsedCAPS, Sessions: st.Sessions, EmergencySessions: st.EmergencySessions,
			Subscribers: st.Subscribers, TokensUsed: st.TokensUsed, TokensLeft: st.TokensLeft, Overage: st.Overage,
			Admissions: map[string]uint64{}, Emergency: st.Emergency},
	}
	for i, c := range st.Admissions {
		v.Node.Admissions[strings.ToUpper(admission.Reason(i).String())] = c
	}
	v.Cluster = cluster.FarmUsage{Members: 1, OfferedCAPS: st.UsedCAPS, Sessions: st.Sessions, Subscribers: st.Subscribers, TokensUsed: st.TokensUsed}
	if n.cluster != nil {
		v.Cluster = n.cluster.Usage(st.Name)
	}
	return v
}
