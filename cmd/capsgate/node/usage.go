package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/names"
	"github.com/capsgate/capsgate/admission/sat"
	"github.com/capsgate/capsgate/admission/strictjson"
	"github.com/capsgate/capsgate/licensing/ledger"
)

// maxAccountBody bounds a PUT .../accounts/{account} body.
const maxAccountBody = 4 << 10

// timeRange reads ?from=&to= (RFC 3339; either may be missing).
func timeRange(r *http.Request) (from, to time.Time, err error) {
	parse := func(key string) (time.Time, error) {
		v := r.URL.Query().Get(key)
		if v == "" {
			return time.Time{}, nil
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return time.Time{}, errors.New(key + " must be an RFC 3339 time such as 2026-12-01T00:00:00Z, got " + v)
		}
		return t, nil
	}
	if from, err = parse("from"); err != nil {
		return
	}
	if to, err = parse("to"); err != nil {
		return
	}
	if !from.IsZero() && !to.IsZero() && !to.After(from) {
		err = errors.New("to must be after from")
	}
	return
}

// getLedger serves this node's ledger records overlapping [from, to) as
// JSON lines, exactly as stored (the exchange format capslicense reads).
func (n *Node) getLedger(w http.ResponseWriter, r *http.Request) {
	from, to, err := timeRange(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_range", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	err = n.ledger.Read(from, to, func(line []byte, _ *ledger.Record) error {
		if _, err := w.Write(line); err != nil || bytes.HasSuffix(line, []byte("\n")) {
			return err
		}
		_, err := w.Write([]byte("\n"))
		return err
	})
	if err != nil {
		n.log.Warn("cannot serve the ledger", "err", err)
	}
}

// getLedgerKey serves the node's public ledger key.
func (n *Node) getLedgerKey(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write(ledger.MarshalNodePublicKey(n.ledger.PublicKey()))
}

// AccountView is one account of GET/PUT /v1/services/{s}/accounts.
type AccountView struct {
	Account string `json:"account"`
	Tokens  int64  `json:"tokens"`
	Overage string `json:"overage"`
	Used    int64  `json:"used"`
	Left    int64  `json:"left"`
}

func (n *Node) accountViews(s *admission.Service) []AccountView {
	var out []AccountView
	for _, p := range s.Pools() {
		if p.Account != "" {
			out = append(out, accountView(p))
		}
	}
	return out
}

func accountView(p admission.PoolState) AccountView {
	return AccountView{Account: p.Account, Tokens: p.Size, Overage: p.Policy.String(), Used: p.Used, Left: max(p.Limit-p.Used, 0)}
}

// AccountBody is the JSON of PUT /v1/services/{s}/accounts/{a}.
type AccountBody struct {
	Tokens  *int64 `json:"tokens"`
	Overage string `json:"overage"`
}

func (n *Node) putAccount(w http.ResponseWriter, r *http.Request) {
	service, ok := pathName(w, r, "service")
	if !ok {
		return
	}
	account, ok := pathName(w, r, "account")
	if !ok {
		return
	}
	body, ok := readBody(w, r, maxAccountBody, "invalid_body")
	if !ok {
		return
	}
	a, err := decodeAccount(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_body", err.Error())
		return
	}
	if a.Overage == "" {
		a.Overage = "none"
	}
	if !n.allocate(w, service, account, admission.Allocation{Tokens: *a.Tokens, Overage: a.Overage}) {
		return
	}
	// One pool, not a walk of every account: a PUT costs the same
	// whatever their number.
	if p, ok := n.eng.Service(service).Pool(account); ok {
		writeJSON(w, http.StatusOK, accountView(p))
	}
}

// allocate makes an account's allocation here, as of now, and spreads it
// to every member; or answers 422 and returns false.
func (n *Node) allocate(w http.ResponseWriter, service, account string, a admission.Allocation) bool {
	a.At = time.Now().UnixNano()
	if err := n.reserver.SetAccount(service, account, a); err != nil {
		writeError(w, http.StatusUnprocessableEntity, "invalid_allocation", err.Error())
		return false
	}
	if n.cluster != nil {
		n.cluster.SpreadAllocation(service, account, a)
	}
	return true
}

// decodeAccount reads an allocation body strictly: one JSON object, no
// key twice, no other key, tokens present.
func decodeAccount(body []byte) (AccountBody, error) {
	const want = `want {"tokens": N, "overage": "none|percent:N|unlimited"}`
	var a AccountBody
	if err := strictjson.Decode(body, &a); err != nil {
		return a, fmt.Errorf("%s: %v", want, err)
	}
	if a.Tokens == nil {
		return a, errors.New(want + `: no "tokens"`)
	}
	return a, nil
}

// pathName returns the {key} of the request's path if it is a valid name
// (names.Valid); else it answers 400 and returns false.
func pathName(w http.ResponseWriter, r *http.Request, key string) (string, bool) {
	return validName(w, key, r.PathValue(key))
}

// queryName returns the ?key= of the request: "" when absent, else a
// valid name (names.Valid); else it answers 400 and returns false.
func queryName(w http.ResponseWriter, r *http.Request, key string) (string, bool) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return "", true
	}
	return validName(w, key, v)
}

// validName returns v if it is a valid name; else it answers 400
// invalid_<key> and returns false.
func validName(w http.ResponseWriter, key, v string) (string, bool) {
	if !names.Valid([]byte(v)) {
		writeError(w, http.StatusBadRequest, "invalid_"+key, fmt.Sprintf("invalid %s name %q: want [A-Za-z0-9._:-]{1,64}, not . or ..", key, v))
		return "", false
	}
	return v, true
}

func (n *Node) listAccounts(w http.ResponseWriter, r *http.Request) {
	name, ok := pathName(w, r, "service")
	if !ok {
		return
	}
	s := n.eng.Service(name)
	if s == nil {
		writeError(w, http.StatusNotFound, "unknown_service", "no licence covers service "+name)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"service": s.Name(), "accounts": n.accountViews(s)})
}

// UsageRow is one service (or account) in one time step of GET /v1/usage.
type UsageRow struct {
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Service string    `json:"service"`
	Account string    `json:"account,omitempty"`
	Trunk   string    `json:"trunk,omitempty"`
	ledger.Usage
	Nodes []string `json:"nodes"`
}

// getUsage sums the ledger records of the whole cluster per service,
// account and time step (?step=1h; default: the whole range): this node's,
// and every live member's asked through its admin API (?local=1 asks one
// node alone). Members that do not answer are listed in "missing".
func (n *Node) getUsage(w http.ResponseWriter, r *http.Request) {
	if n.refuseBrokenLedger(w) {
		return
	}
	from, to, err := timeRange(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_range", err.Error())
		return
	}
	var step time.Duration
	if v := r.URL.Query().Get("step"); v != "" {
		if step, err = parseStep(v); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_step", err.Error())
			return
		}
	}
	service, ok := queryName(w, r, "service")
	if !ok {
		return
	}
	rows := map[[4]string]*UsageRow{}
	err = n.ledger.Read(from, to, func(_ []byte, rec *ledger.Record) error {
		u := rec.Usage
		if u == nil || (service != "" && u.Service != service) {
			return nil
		}
		var start, end time.Time
		if step > 0 {
			start = rec.From.Truncate(step)
			end = start.Add(step)
		}
		k := [4]string{start.Format(time.RFC3339), u.Service, u.Account, u.Trunk}
		if step == 0 {
			k[0] = ""
		}
		row := rows[k]
		if row == nil {
			row = &UsageRow{From: start, To: end, Service: u.Service, Account: u.Account, Trunk: u.Trunk}
			row.Usage.Service, row.Usage.Account, row.Usage.Trunk = u.Service, u.Account, u.Trunk
			rows[k] = row
		}
		if step == 0 {
			// The whole range: what the records cover.
			if row.From.IsZero() || rec.From.Before(row.From) {
				row.From = rec.From
			}
			if rec.To.After(row.To) {
				row.To = rec.To
			}
		}
		Add(&row.Usage, u)
		if !contains(row.Nodes, rec.Node) {
			row.Nodes = append(row.Nodes, rec.Node)
		}
		return nil
	})
	if err != nil {
		writeError(w, http.StatusInternalServerError, "ledger", err.Error())
		return
	}
	var missing []string
	nodes := []string{n.cfg.NodeName}
	if r.URL.Query().Get("local") != "1" && n.cluster != nil {
		q := r.URL.Query()
		q.Set("local", "1")
		for _, m := range n.cluster.Members() {
			if m.Name == n.cfg.NodeName || m.State == "left" || (m.State == "dead" && m.Reclaimed) {
				continue
			}
			peer, err := n.peerUsage(r, m.AdminAddr, m.Addr, q.Encode())
			if err != nil {
				n.log.Warn("cannot get a member's usage", "member", m.Name, "err", err)
				missing = append(missing, m.Name)
				continue
			}
			nodes = append(nodes, m.Name)
			for _, pr := range peer {
				k := [4]string{pr.From.Format(time.RFC3339), pr.Service, pr.Account, pr.Trunk}
				if step == 0 {
					k[0] = ""
				}
				row := rows[k]
				if row == nil {
					rows[k] = pr
					continue
				}
				if pr.From.Before(row.From) {
					row.From = pr.From
				}
				if pr.To.After(row.To) {
					row.To = pr.To
				}
				Add(&row.Usage, &pr.Usage)
				for _, name := range pr.Nodes {
					if !contains(row.Nodes, name) {
						row.Nodes = append(row.Nodes, name)
					}
				}
			}
		}
	}
	out := make([]*UsageRow, 0, len(rows))
	for _, row := range rows {
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.From.Equal(b.From) {
			return a.From.Before(b.From)
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		if a.Account != b.Account {
			return a.Account < b.Account
		}
		return a.Trunk < b.Trunk
	})
	writeJSON(w, http.StatusOK, map[string]any{"node": n.cfg.NodeName, "nodes": nodes, "missing": missing, "usage": out})
}

// peerUsage asks a member's admin API at addr, advertised by the member
// whose gossip address is gossip, for its own usage rows.
func (n *Node) peerUsage(r *http.Request, addr, gossip, query string) ([]*UsageRow, error) {
	if err := n.checkPeerAdmin(addr, gossip); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/v1/usage?"+query, nil)
	if err != nil {
		return nil, err
	}
	if n.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+n.adminToken)
	}
	resp, err := n.peerHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errors.New("answered " + resp.Status)
	}
	var v struct {
		Usage []*UsageRow `json:"usage"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&v); err != nil {
		return nil, err
	}
	return v.Usage, nil
}

// checkPeerAdmin vets a member's advertised admin address before this
// node's admin token is sent to it: a bare scheme://host:port on the
// member's own gossip host, and https when this node's own admin API is
// served over TLS, so that a member advertising http://, another host, a
// path, a user or a query never gets the token in the clear or somewhere
// else.
func (n *Node) checkPeerAdmin(addr, gossip string) error {
	if addr == "" {
		return errors.New("no admin address in its metadata")
	}
	u, err := url.Parse(addr)
	switch {
	case err != nil:
		return fmt.Errorf("admin address %q: %w", addr, err)
	case u.Scheme != "http" && u.Scheme != "https", u.Port() == "", u.User != nil, u.Path != "", u.RawQuery != "", u.Fragment != "", u.Opaque != "":
		return fmt.Errorf("admin address %q is not scheme://host:port", addr)
	case n.cfg.Admin.TLSCertFile != "" && u.Scheme != "https":
		return fmt.Errorf("admin address %q is not https, and this node's admin API is: its token is not sent in the clear", addr)
	}
	gh, _, err := net.SplitHostPort(gossip)
	if ip, gip := net.ParseIP(u.Hostname()), net.ParseIP(gh); err != nil || ip == nil || gip == nil || !ip.Equal(gip) {
		return fmt.Errorf("admin address %q is not on the member's gossip host (%s)", addr, gossip)
	}
	return nil
}

// Add adds u to sum: counts add (saturating), peaks take the larger.
func Add(sum *ledger.Usage, u *ledger.Usage) {
	sum.Attempts = sat.AddU(sum.Attempts, u.Attempts)
	sum.Admitted = sat.AddU(sum.Admitted, u.Admitted)
	sum.Emergency = sat.AddU(sum.Emergency, u.Emergency)
	sum.Tokens = sat.AddU(sum.Tokens, u.Tokens)
	sum.Overage = sat.AddU(sum.Overage, u.Overage)
	sum.PeakCAPS = max(sum.PeakCAPS, u.PeakCAPS)
	sum.PeakSessions = max(sum.PeakSessions, u.PeakSessions)
	sum.PeakSubscribers = max(sum.PeakSubscribers, u.PeakSubscribers)
	for r, v := range u.Rejected {
		if sum.Rejected == nil {
			sum.Rejected = map[string]uint64{}
		}
		sum.Rejected[r] = sat.AddU(sum.Rejected[r], v)
	}
}

// parseStep reads a usage step: a Go duration (15m, 1h) or Nd for days.
func parseStep(v string) (time.Duration, error) {
	if len(v) > 1 && v[len(v)-1] == 'd' {
		var days int
		for _, c := range v[:len(v)-1] {
			if c < '0' || c > '9' {
				return 0, errors.New("step must be a duration such as 1h or 1d, got " + v)
			}
			days = days*10 + int(c-'0')
			if days > 366 {
				return 0, errors.New("step must be at most 366d")
			}
		}
		if days == 0 {
			return 0, errors.New("step must be above 0")
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second {
		return 0, errors.New("step must be a duration of at least 1s such as 1h or 1d, got " + v)
	}
	return d, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
