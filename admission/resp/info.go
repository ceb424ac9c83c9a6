package resp

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// SetConnCounter lets INFO report the number of client connections.
func (h *Handler) SetConnCounter(f func() int64) { h.stats = f }

var pid = os.Getpid()

// maxInfoServices bounds the per-service lines of INFO, so a pipeline of
// INFOs cannot make a node build huge replies.
const maxInfoServices = 100

// INFO sections, in Redis's order; each is in "default" and "all".
var infoSections = []string{"server", "clients", "persistence", "replication", "services", "keyspace"}

// info renders INFO [section ...]: Redis's sections that clients read (an
// ioredis ready check waits while Persistence says loading:1), and the
// Services section, one line per service in Redis's keyspace form,
//
//	service_demo:name=demo,licensed=1,caps=1000,caps_used=0.0,...
//
// which redis-py parses into a dict. A ':' in a service's name is written
// %3A in the field name (it would end the field name for every parser);
// name= keeps the name as it is. Unknown sections are left out, and when
// none is known the reply is empty, as in Redis.
func (h *Handler) info(args [][]byte, out []byte) []byte {
	want := make(map[string]bool, len(infoSections))
	if len(args) == 1 {
		args = [][]byte{nil, []byte("default")}
	}
	for _, a := range args[1:] {
		switch s := strings.ToLower(string(a)); s {
		case "default", "all", "everything":
			for _, n := range infoSections {
				want[n] = true
			}
		default:
			want[s] = true
		}
	}
	var b []byte
	section := func(name string) bool {
		if !want[strings.ToLower(name)] {
			return false
		}
		if len(b) > 0 {
			b = append(b, "\r\n"...)
		}
		b = append(b, "# "+name+"\r\n"...)
		return true
	}
	if section("Server") {
		up := int64(time.Since(h.started).Seconds())
		b = fmt.Appendf(b, "redis_version:7.2.0\r\ncapsgate_version:%s\r\nredis_mode:standalone\r\nos:%s %s\r\narch_bits:64\r\nprocess_id:%d\r\nuptime_in_seconds:%d\r\nuptime_in_days:%d\r\n",
			Version, runtime.GOOS, runtime.GOARCH, pid, up, up/86400)
	}
	if section("Clients") && h.stats != nil {
		b = fmt.Appendf(b, "connected_clients:%d\r\n", h.stats())
	}
	if section("Persistence") {
		// Licences, sessions and the ledger are loaded before the node
		// listens, so it never answers while loading.
		b = append(b, "loading:0\r\nasync_loading:0\r\n"...)
	}
	if section("Replication") {
		b = append(b, "role:master\r\nconnected_slaves:0\r\n"...)
	}
	if section("Services") {
		b = h.infoServices(b)
	}
	section("Keyspace") // capsgate keeps no keys
	return AppendBulk(out, b)
}

// infoServices appends the Services section's lines, at most
// maxInfoServices of them.
func (h *Handler) infoServices(b []byte) []byte {
	// Rendered again only when what it shows changed (a hundred services
	// take about 100 µs and 78 KB), so a client pipelining INFOs costs
	// the node a copy each, not a rendering.
	fp := h.eng.Fingerprint()
	if c := h.servicesInfo.Load(); c != nil && c.fingerprint == fp {
		return append(b, c.body...)
	}
	body := h.renderServices(nil, h.eng.Services())
	h.servicesInfo.Store(&servicesSnap{fingerprint: fp, body: body})
	return append(b, body...)
}

// servicesSnap is INFO's Services section as last rendered, with the
// engine's fingerprint then.
type servicesSnap struct {
	fingerprint uint64
	body        []byte
}

func (h *Handler) renderServices(b []byte, services []*admission.Service) []byte {
	b = fmt.Appendf(b, "services:%d\r\n", len(services))
	for i, s := range services {
		if i == maxInfoServices {
			b = fmt.Appendf(b, "services_shown:%d\r\nservices_more:see GET /v1/services\r\n", i)
			break
		}
		st := s.Stats()
		b = append(b, "service_"...)
		b = append(b, strings.ReplaceAll(st.Name, ":", "%3A")...)
		b = append(b, ":name="...)
		b = append(b, st.Name...)
		b = fmt.Appendf(b, ",licensed=%d,caps=", b2i(st.Limits.Licensed))
		b = appendRate(b, st.Limits.CAPS)
		b = fmt.Appendf(b, ",caps_used=%.1f,sessions=%d,subscribers=%d,tokens_used=%d,admitted=%d\r\n",
			st.UsedCAPS, st.Sessions, st.Subscribers, st.TokensUsed, st.Admissions[admission.OK])
	}
	return b
}

// appendRate appends a rate; -1 (unlimited) and whole numbers print as
// integers, others with two decimals (never in exponent form).
func appendRate(b []byte, v float64) []byte {
	switch {
	case v >= math.MaxInt64:
		// A rate saturated at the end of the range (2^63 as a float)
		// reads as the largest integer, as every other limit does.
		return strconv.AppendInt(b, math.MaxInt64, 10)
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return strconv.AppendInt(b, int64(v), 10)
	}
	return strconv.AppendFloat(b, v, 'f', 2, 64)
}
