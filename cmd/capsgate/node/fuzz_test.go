package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/capsgate/capsgate/admission/strictjson"
	"github.com/capsgate/capsgate/licensing"
)

// FuzzConfigFile feeds the config loader any bytes: it must answer with
// one line naming the problem, or a config that validates or names its
// problem in one line; never panic.
func FuzzConfigFile(f *testing.F) {
	example, err := os.ReadFile("../../../configs/capsgate.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"", "node_name: a\n", "resp: {addr: x}\n", "join: [a, b]\n", "admission: {burst: 5}\n",
		"a: &x [*x]\n", "<<: {node_name: b}\n", "--- \n--- \n", "resp:\n  addr:\n    - 1\n",
		"ledger: {interval: 1e400s}\n", "node: {max_caps: .nan}\n", "cluster: {partition_policy: fail_open}\n",
		"vendor_keys: !!binary aGVsbG8=\n", strings.Repeat("[", 10000),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := DefaultConfig()
		if err := c.parse(data); err != nil {
			if strings.ContainsAny(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
			return
		}
		// No files: a fuzzed path could name a FIFO or a device that blocks.
		c.Dev = true
		c.VendorKeys, c.RESP.PasswordFile, c.Admin.TokenFile, c.Gossip.KeyFile = nil, "", "", ""
		c.Admin.TLSCertFile, c.Admin.TLSKeyFile = "", ""
		if err := c.Validate(); err != nil && strings.ContainsAny(err.Error(), "\n") {
			t.Fatalf("error of more than one line: %q", err)
		}
	})
}

// FuzzAdminBodies posts any body to the admin API's endpoints that take
// one: a licence file, an account allocation. The answer is a JSON error
// or a success; nothing panics, a refused body changes nothing, and only
// strict bodies are taken. The seed corpus (testdata/fuzz/FuzzAdminBodies)
// holds trailing data, duplicate and case-folded keys, deep nesting, values
// past int64 and licence files of several, nested or truncated documents.
func FuzzAdminBodies(f *testing.F) {
	cfg, err := Load([]string{"--dev", "--data-dir", f.TempDir()}, io.Discard)
	if err != nil {
		f.Fatal(err)
	}
	n, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = n.Stop(context.Background()) })
	h := n.adminHandler("")
	for _, s := range []string{
		`{"tokens": 10, "overage": "none"}`, `{"tokens": -1}`, `{"tokens": 1e99}`, `{"tokens": 5, "overage": "percent:x"}`,
		`{"tokens": 5, "x": 1}`, `[]`, `null`, "-----BEGIN CAPSGATE LICENSE-----\nabc\n-----END CAPSGATE LICENSE-----\n", "\x00\xff",
	} {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	// Size extremes: a byte past each body's bound, nesting to the bound.
	f.Add(uint8(0), append([]byte(`{"tokens": 1, "overage": "`), bytes.Repeat([]byte("x"), maxAccountBody)...))
	f.Add(uint8(0), []byte(strings.Repeat(`{"overage":`, 2000)))
	f.Add(uint8(1), bytes.Repeat([]byte("-----BEGIN CAPSGATE LICENSE-----\n"), maxLicenseBytes/33+1))
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		method, path := "PUT", "/v1/services/demo/accounts/fz"
		if which%2 == 1 {
			method, path = "POST", "/v1/licenses"
		}
		state := func() string {
			b, _ := json.Marshal([]any{n.reg.List(), n.accountViews(n.eng.Service("demo"))})
			return string(b)
		}
		before := state()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, bytes.NewReader(body)))
		switch rec.Code {
		case 200, 201:
			// Only a strict body is taken: one JSON value without
			// duplicate keys; licence files of whole documents.
			if method == "PUT" {
				if err := strictjson.Check(body); err != nil {
					t.Fatalf("PUT took a body that is not strict JSON (%v): %q", err, body)
				}
			} else if _, err := licensing.Split(body); err != nil {
				t.Fatalf("POST took a body that is not a licence file (%v): %q", err, body)
			}
		case 400, 413, 422:
			if !strings.Contains(rec.Body.String(), `"error"`) {
				t.Fatalf("%s %s answered %d without a JSON error: %q", method, path, rec.Code, rec.Body.String())
			}
			if state() != before {
				t.Fatalf("a refused body changed the node")
			}
		default:
			t.Fatalf("%s %s answered %d: %q", method, path, rec.Code, rec.Body.String())
		}
	})
}
