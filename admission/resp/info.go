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
var infoSections = [...]string{"Server", "Clients", "Persistence", "Replication", "Services", "Keyspace"}

// serverInfo is the Server section's lines up to the uptime, which is all
// that changes.
var serverInfo = "redis_version:7.2.0\r\ncapsgate_version:" + Version + "\r\nredis_mode:standalone\r\nos:" +
	runtime.GOOS + " " + runtime.GOARCH + "\r\narch_bits:64\r\nprocess_id:" + strconv.Itoa(pid) + "\r\n"

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
//
// It is built in place in out and allocates nothing: a client pipelining
// INFOs makes the node copy the cached Services section, not make garbage.
func (h *Handler) info(args [][]byte, out []byte) []byte {
	var want uint8 // bit i: infoSections[i]
	if len(args) == 1 {
		want = 1<<len(infoSections) - 1
	}
	for _, a := range args[1:] {
		if strings.EqualFold(string(a), "default") || strings.EqualFold(string(a), "all") || strings.EqualFold(string(a), "everything") {
			want = 1<<len(infoSections) - 1
		}
		for i, name := range infoSections {
			if strings.EqualFold(string(a), name) {
				want |= 1 << i
			}
		}
	}
	out, mark := bulkStart(out)
	for i, name := range infoSections {
		if want&(1<<i) == 0 {
			continue
		}
		if len(out) > mark {
			out = append(out, "\r\n"...)
		}
		out = append(out, "# "...)
		out = append(out, name...)
		out = append(out, "\r\n"...)
		switch name {
		case "Server":
			up := int64(time.Since(h.started).Seconds())
			out = append(out, serverInfo...)
			out = append(out, "uptime_in_seconds:"...)
			out = strconv.AppendInt(out, up, 10)
			out = append(out, "\r\nuptime_in_days:"...)
			out = strconv.AppendInt(out, up/86400, 10)
			out = append(out, "\r\n"...)
		case "Clients":
			if h.stats == nil {
				break
			}
			out = append(out, "connected_clients:"...)
			out = strconv.AppendInt(out, h.stats(), 10)
			out = append(out, "\r\n"...)
		case "Persistence":
			// Licences, sessions and the ledger are loaded before the
			// node listens, so it never answers while loading.
			out = append(out, "loading:0\r\nasync_loading:0\r\n"...)
		case "Replication":
			out = append(out, "role:master\r\nconnected_slaves:0\r\n"...)
		case "Services":
			out = h.infoServices(out)
		}
		// Keyspace: capsgate keeps no keys.
	}
	return bulkEnd(out, mark)
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
