// Package usageevents turns usage-ledger records into CloudEvents 1.0
// (JSON format, structured mode), the events billing tools ingest:
// OpenMeter takes them as they are; Lago's and Stripe's meter-event APIs
// take a field or two of each (README, "Exporting usage to billing tools").
//
// One event per usage record — a service's totals, or one account's part
// of them, in one ledger interval on one node. Witness, genesis and any
// other records carry no usage and make no event. The event's id is a
// name-based UUID (version 5, RFC 9562) of the record's cluster, node,
// node key, seq, service and account, so exporting the same ledger again
// gives the same ids, and a billing tool that deduplicates by id (OpenMeter
// by source and id, Lago by transaction_id, Stripe by identifier) counts
// each record once however often it is sent. Everything else in an event
// comes from the record alone, so the bytes are the same on every export.
//
//	w := usageevents.NewWriter(out, usageevents.Lines)
//	l.Read(from, to, func(_ []byte, r *ledger.Record) error { _, err := w.Write(r); return err })
//	w.Close()
package usageevents

import (
	"crypto/sha1" // RFC 9562 name-based UUIDs (version 5) are SHA-1 by definition
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"

	"github.com/capsgate/capsgate/licensing/ledger"
)

// Event attributes that are the same for every event.
const (
	// SpecVersion is the CloudEvents version the events follow.
	SpecVersion = "1.0"
	// Type is every usage event's type; a later, incompatible data
	// layout gets a new one (io.capsgate.usage.v2).
	Type = "io.capsgate.usage.v1"
	// DataContentType says data is a JSON object.
	DataContentType = "application/json"
)

// Namespace is the UUID namespace of the event ids (a random UUID chosen
// once for capsgate usage events; see ID).
const Namespace = "48befae0-416b-48f9-afc7-eb7c9bfcabea"

var namespace = mustUUID(Namespace)

// Reasons are the reject reasons every event's data lists, zero or not,
// so that a meter on one of them always finds a number.
var Reasons = []string{"CAPS", "SESSIONS", "SUBSCRIBERS", "TOKENS", "UNLICENSED", "OVERLOAD"}

// Event is one usage record as a CloudEvent. The fields are in the order
// they are written, so that an event has one byte form.
type Event struct {
	SpecVersion string `json:"specversion"`
	ID          string `json:"id"`
	// Source names the node that metered the usage:
	// capsgate:CLUSTER/NODE.
	Source string `json:"source"`
	Type   string `json:"type"`
	// Subject is the service, or SERVICE/ACCOUNT for an account's part of
	// the service's totals.
	Subject string `json:"subject"`
	// Time is the end of the record's interval (RFC 3339, UTC).
	Time            string `json:"time"`
	DataContentType string `json:"datacontenttype"`
	// Sequence is the record's ledger seq, 20 digits with leading zeros
	// (the CloudEvents "sequence" extension: ordered as strings).
	Sequence string `json:"sequence"`
	Data     Data   `json:"data"`
}

// Data is what the record says was used: the record's usage fields as
// the ledger names them (service, account, attempts, admitted, emergency,
// peak_caps, peak_sessions, peak_subscribers, tokens, overage), then the
// interval, every reject reason and the record it was made from. Account
// is absent for a service's totals, which include every account's part:
// sum either the service events or the account events, never both.
type Data struct {
	ledger.Usage
	// From and To bound the record's interval, [From, To).
	From string `json:"from"`
	To   string `json:"to"`
	// Rejected has every reason of Reasons (and any other the record
	// names), zeros included; RejectedTotal is their sum.
	Rejected      map[string]uint64 `json:"rejected"`
	RejectedTotal uint64            `json:"rejected_total"`
	// Cluster, Node, Seq and Hash name the signed ledger record the event
	// was made from (what capslicense usage verify checks).
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	Seq     uint64 `json:"ledger_seq"`
	Hash    string `json:"ledger_hash"`
}

// FromRecord returns r's event, and false if r is not a usage record.
func FromRecord(r *ledger.Record) (Event, bool) {
	u := r.Usage
	if u == nil {
		return Event{}, false
	}
	subject := u.Service
	if u.Account != "" {
		subject += "/" + u.Account
	}
	if u.Trunk != "" {
		subject += "#" + u.Trunk // a trunk key's record
	}
	rejected := make(map[string]uint64, len(Reasons)+len(u.Rejected))
	for _, reason := range Reasons {
		rejected[reason] = 0
	}
	var total uint64
	for reason, n := range u.Rejected {
		rejected[reason] = n
		total = satAdd(total, n)
	}
	return Event{
		SpecVersion: SpecVersion, ID: ID(r), Source: Source(r.Cluster, r.Node), Type: Type, Subject: subject,
		Time: formatTime(r), DataContentType: DataContentType, Sequence: fmt.Sprintf("%020d", r.Seq),
		Data: Data{Usage: *u, From: r.From.UTC().Format(timeLayout), To: r.To.UTC().Format(timeLayout),
			Rejected: rejected, RejectedTotal: total, Cluster: r.Cluster, Node: r.Node, Seq: r.Seq, Hash: r.Hash},
	}, true
}

// Encode returns r's event as one line of JSON without a newline, and
// false if r is not a usage record.
func Encode(r *ledger.Record) ([]byte, bool, error) {
	ev, ok := FromRecord(r)
	if !ok {
		return nil, false, nil
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, false, fmt.Errorf("cannot encode the event of ledger record %d: %w", r.Seq, err)
	}
	return b, true, nil
}

// Source returns the source of a node's events: capsgate:CLUSTER/NODE
// (each part path-escaped; an absolute URI).
func Source(cluster, node string) string {
	return "capsgate:" + url.PathEscape(cluster) + "/" + url.PathEscape(node)
}

// ID returns the id of r's event: the version 5 UUID, in namespace
// Namespace, of the name
//
//	"capsgate-usage-v1\n" + cluster + "\n" + node + "\n" + key + "\n" + seq + "\n" + service + "\n" + account
//
// (seq in decimal, key the record's base64 node key, account "" for a
// service's totals). Any UUID library recomputes it, e.g. Python's
// uuid.uuid5(uuid.UUID(Namespace), name). The key keeps the ids of a
// node whose ledger was started again (a new data dir: a new key, seq
// from 1) apart from the old ones, so that no billing tool drops its
// usage as already seen.
func ID(r *ledger.Record) string {
	var service, account string
	if r.Usage != nil {
		service, account = r.Usage.Service, r.Usage.Account
		if r.Usage.Trunk != "" {
			account += "\n#" + r.Usage.Trunk // a trunk key's record; the others' ids as before
		}
	}
	name := "capsgate-usage-v1\n" + r.Cluster + "\n" + r.Node + "\n" + r.Key + "\n" +
		strconv.FormatUint(r.Seq, 10) + "\n" + service + "\n" + account
	return uuid5(namespace, name)
}

// uuid5 returns the RFC 9562 version 5 UUID of name in namespace ns.
func uuid5(ns [16]byte, name string) string {
	h := sha1.New()
	h.Write(ns[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // the RFC 9562 variant
	return formatUUID(u)
}

func formatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

func mustUUID(s string) [16]byte {
	var u [16]byte
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil || len(b) != 16 {
		panic("usageevents: bad UUID " + s)
	}
	copy(u[:], b)
	return u
}

// timeLayout is RFC 3339 with only the fraction a time needs, as the
// ledger writes times.
const timeLayout = "2006-01-02T15:04:05.999999999Z07:00"

func formatTime(r *ledger.Record) string { return r.To.UTC().Format(timeLayout) }

func satAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return ^uint64(0)
}
