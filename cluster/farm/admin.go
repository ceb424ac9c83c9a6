package farm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/capsgate/capsgate/cluster"
)

// Ctl runs capsctl against the node's admin API with its token and returns
// the combined output and exit code; err is only for a capsctl that could
// not run.
func (n *Node) Ctl(args ...string) (out string, code int, err error) {
	return n.bin.ctl(nil, n.AdminAddr, n.tokenFile, args...)
}

// AddLicense loads lic with `capsctl license add -`.
func (n *Node) AddLicense(lic []byte) error {
	out, code, err := n.bin.ctl(lic, n.AdminAddr, n.tokenFile, "license", "add", "-")
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("capsctl license add on %s exited %d: %s", n.Name, code, strings.TrimSpace(out))
	}
	return nil
}

// PostLicense loads lic with POST /v1/licenses directly, without the time
// capsctl takes to start; 200 and 201 are success.
func (n *Node) PostLicense(lic []byte) error {
	_, err := n.request("POST", "/v1/licenses", lic, nil)
	return err
}

// Members returns the members the node shows in GET /v1/cluster.
func (n *Node) Members() ([]cluster.Member, error) {
	var v cluster.View
	if _, err := n.request("GET", "/v1/cluster", nil, &v); err != nil {
		return nil, err
	}
	return v.Members, nil
}

// ClusterView returns the node's GET /v1/cluster: its partition policy,
// its side and the members.
func (n *Node) ClusterView() (cluster.View, error) {
	var v cluster.View
	_, err := n.request("GET", "/v1/cluster", nil, &v)
	return v, err
}

// Service is the part of GET /v1/services/{service} the tests read.
type Service struct {
	Service  string   `json:"service"`
	Licensed bool     `json:"licensed"`
	State    string   `json:"state"`
	Licenses []string `json:"licenses"`
	Limits   Limits   `json:"limits"`
	// Cluster is the service's usage summed over the live members.
	Cluster cluster.FarmUsage `json:"cluster"`
}

// Limits are a service's effective limits and this node's share; -1 means
// unlimited.
type Limits struct {
	CAPS      float64 `json:"caps"`
	CAPSShare float64 `json:"caps_share"`
	Burst     int64   `json:"burst"`
	Sessions  int64   `json:"sessions"`
	Tokens    int64   `json:"tokens"`
}

// Service returns GET /v1/services/{service}; a service no licence covers
// is an error (404).
func (n *Node) Service(service string) (Service, error) {
	var s Service
	_, err := n.request("GET", "/v1/services/"+service, nil, &s)
	return s, err
}

// StatusError is an admin API answer other than 200 or 201.
type StatusError struct {
	Request string // "GET http://..."
	Code    int
	Body    string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %d %s", e.Request, e.Code, e.Body)
}

// PutAccount allocates tokens of service's pool to account
// (PUT /v1/services/{service}/accounts/{account}).
func (n *Node) PutAccount(service, account string, tokens int64) error {
	_, err := n.request("PUT", "/v1/services/"+service+"/accounts/"+account, fmt.Appendf(nil, `{"tokens": %d}`, tokens), nil)
	return err
}

// request sends one admin API request with the node's token and decodes a
// 200 or 201 JSON answer into v (when not nil).
func (n *Node) request(method, path string, body []byte, v any) (int, error) {
	url := "http://" + n.AdminAddr + path
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	if n.token != "" {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return resp.StatusCode, &StatusError{Request: method + " " + url, Code: resp.StatusCode, Body: strings.Join(strings.Fields(string(b)), " ")}
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: cannot decode the answer: %w", method, url, err)
		}
	}
	return resp.StatusCode, nil
}
