package node

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/licensing"
)

// Every numeric licence field at 0, 1, the maximum and two licences at the
// maximum (a sum past it), end to end: licences loaded through the admin
// API, decisions over RESP, QUOTA, GET /v1/services/{s} and /metrics. No
// figure anywhere is below -1 (unlimited), and a limit at the end of the
// range admits. Before limits saturated, 9223372036854775807 sessions or
// subscribers showed as -9223372036854775808 and refused every call.
func TestLicenceFieldsAtTheEndOfTheirRange(t *testing.T) {
	dir, key, token := vendorFiles(t)
	n := startNode(t, "--admin-token-file", token, "--gossip-insecure", "--vendor-key", filepath.Join(dir, licensing.PublicKeyFile))
	base := "http://" + n.AdminAddr()
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Addr: n.RESPAddr()})
	require.NoError(t, err)
	defer c.Close()

	const max = math.MaxInt64
	type probe func(t *testing.T, service string)
	decide := func(want string, remaining int64, do func(service string, i int) (client.Decision, error)) probe {
		return func(t *testing.T, service string) {
			t.Helper()
			d, err := do(service, 0)
			// A charge larger than a reservation step waits for the next
			// step (50 ms): OVERLOAD until then.
			for i := 0; err == nil && d.Reason == "OVERLOAD" && want != "OVERLOAD" && i < 100; i++ {
				time.Sleep(20 * time.Millisecond)
				d, err = do(service, i)
			}
			require.NoError(t, err)
			require.Equal(t, want, d.Reason, "%+v", d)
			if remaining != -2 {
				require.Equal(t, remaining, d.Remaining, "%+v", d)
			}
		}
	}
	calls := 0
	admit := func(want string, prio client.Priority, call bool) probe {
		return decide(want, -2, func(service string, _ int) (client.Decision, error) {
			o := client.AdmitOptions{Priority: prio}
			if call {
				calls++
				o.Call = fmt.Sprintf("call-%d", calls)
			}
			return c.Admit(ctx, service, o)
		})
	}
	subs := 0
	register := func(want string, remaining int64) probe {
		return decide(want, remaining, func(service string, _ int) (client.Decision, error) {
			subs++
			return c.Register(ctx, service, fmt.Sprintf("sub-%d", subs), 0)
		})
	}
	consume := func(units int64, want string, remaining int64) probe {
		return decide(want, remaining, func(service string, _ int) (client.Decision, error) {
			return c.Consume(ctx, service, "acme", units, "")
		})
	}
	quota := func(field, want string) probe {
		return func(t *testing.T, service string) {
			t.Helper()
			q, err := c.Quota(ctx, service)
			require.NoError(t, err)
			require.Equal(t, want, q[field], "%v", q)
		}
	}
	release := func(seconds int64) probe {
		return func(t *testing.T, service string) {
			t.Helper()
			calls++
			call := fmt.Sprintf("call-%d", calls)
			d, err := c.Admit(ctx, service, client.AdmitOptions{Call: call})
			require.NoError(t, err)
			require.True(t, d.Admitted, "%+v", d)
			ok, err := c.Release(ctx, service, call, seconds)
			require.NoError(t, err)
			require.True(t, ok)
		}
	}
	times := func(k int, p probe) probe {
		return func(t *testing.T, service string) {
			for range k {
				p(t, service)
			}
		}
	}

	type value struct {
		name  string
		v     int64
		twice bool // two licences at v
	}
	values := []value{{"0", 0, false}, {"1", 1, false}, {"max", max, false}, {"twice-max", max, true}}
	cases := []struct {
		field string
		set   func(l *licensing.License, v int64)
		// limit is the field's figure in QUOTA and the API at each value;
		// probes are the decisions expected at each value.
		quota  string
		limit  [4]string
		probes [4][]probe
	}{
		{"caps", func(l *licensing.License, v int64) { l.CAPS = v }, "caps_licensed",
			[4]string{"0", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{admit("CAPS", "", false)},
				{admit("OK", "", false), admit("CAPS", "", false)},
				{times(200, admit("OK", "", false))},
				{times(200, admit("OK", "", false))},
			}},
		{"sessions", func(l *licensing.License, v int64) { l.Sessions = v }, "sessions_licensed",
			[4]string{"-1", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{admit("OK", "", true)},
				{admit("OK", "", true), admit("SESSIONS", "", true), admit("SESSIONS", client.PriorityHigh, true)},
				{admit("OK", "", true), admit("OK", client.PriorityHigh, true)},
				{admit("OK", "", true), admit("OK", client.PriorityHigh, true)},
			}},
		{"subscribers", func(l *licensing.License, v int64) { l.Subscribers = v }, "subscribers_licensed",
			[4]string{"-1", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{register("OK", -1)},
				{register("OK", 0), register("SUBSCRIBERS", 0)},
				{register("OK", math.MaxInt32), register("OK", math.MaxInt32)},
				{register("OK", math.MaxInt32)},
			}},
		{"tokens", func(l *licensing.License, v int64) { l.Tokens = v }, "tokens_licensed",
			[4]string{"-1", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{consume(1, "OK", -1)},
				{consume(1, "OK", 0), consume(1, "TOKENS", 0)},
				{consume(1, "OK", math.MaxInt32), consume(max-1, "OK", 0), consume(1, "TOKENS", 0), quota("tokens_left", "0")},
				{consume(max, "OK", 0), quota("tokens_used", "9223372036854775807")},
			}},
		{"tokens_per_attempt", func(l *licensing.License, v int64) { l.TokensPerAttempt = v }, "tokens_per_attempt",
			[4]string{"0", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{admit("OK", "", false), quota("tokens_used", "0")},
				{admit("OK", "", false), quota("tokens_used", "1")},
				{admit("OK", "", false), admit("OK", "", false), quota("tokens_used", "9223372036854775807")},
				{admit("OK", "", false), quota("tokens_used", "9223372036854775807")},
			}},
		{"tokens_per_minute", func(l *licensing.License, v int64) { l.TokensPerMinute = v }, "tokens_per_minute",
			[4]string{"0", "1", "9223372036854775807", "9223372036854775807"}, [4][]probe{
				{release(120), quota("tokens_used", "0")},
				{release(120), quota("tokens_used", "2")},
				{release(120), release(60), quota("tokens_used", "9223372036854775807")},
				{release(1), quota("tokens_used", "9223372036854775807")},
			}},
	}
	anyNumber := regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	for _, tc := range cases {
		for i, val := range values {
			service := tc.field + "-" + val.name
			t.Run(service, func(t *testing.T) {
				for k := range 1 + boolInt(val.twice) {
					l := licensing.License{ID: fmt.Sprintf("%s-%d", service, k), Service: service, CAPS: 1000}
					tc.set(&l, val.v)
					armored, err := key.Sign(&l, time.Now())
					require.NoError(t, err)
					code, body := post(t, base+"/v1/licenses", "t0k", armored)
					require.Equal(t, 201, code, body)
				}
				for _, p := range tc.probes[i] {
					p(t, service)
				}
				// QUOTA: the field as licensed, and no figure below -1.
				q, err := c.Quota(ctx, service)
				require.NoError(t, err)
				require.Equal(t, tc.limit[i], q[tc.quota], "%v", q)
				for k, v := range q {
					if anyNumber.MatchString(v) {
						f, err := strconv.ParseFloat(v, 64)
						require.NoError(t, err)
						require.GreaterOrEqual(t, f, -1.0, "QUOTA %s %s", k, v)
					}
				}
				// The admin API: the same figure, and none below -1.
				code, body := get(t, base+"/v1/services/"+service, "t0k")
				require.Equal(t, 200, code, body)
				var raw struct {
					Limits map[string]any `json:"limits"`
					Node   map[string]any `json:"node"`
				}
				require.NoError(t, json.Unmarshal([]byte(body), &raw))
				want, err := strconv.ParseFloat(tc.limit[i], 64)
				require.NoError(t, err)
				require.Equal(t, want, raw.Limits[tc.field], body)
				for _, m := range []map[string]any{raw.Limits, raw.Node} {
					for k, v := range m {
						if f, ok := v.(float64); ok {
							require.GreaterOrEqual(t, f, -1.0, "%s in %s", k, body)
						}
					}
				}
				// Metrics: no series of the service below -1.
				_, metrics := get(t, base+"/metrics", "")
				series := regexp.MustCompile(`(?m)^(capsgate_[a-z_]+)\{service="`+regexp.QuoteMeta(service)+`"[^}]*\} (\S+)$`).FindAllStringSubmatch(metrics, -1)
				require.NotEmpty(t, series)
				for _, s := range series {
					f, err := strconv.ParseFloat(s[2], 64)
					require.NoError(t, err, s[0])
					require.GreaterOrEqual(t, f, -1.0, s[0])
				}
			})
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
