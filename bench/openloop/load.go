// Package openloop is the farm tests' load generator: a Load offers a
// command to a farm open loop, one TCP connection per address, writing
// each connection's requests in the 10 ms ticks its Arrivals plan them in
// (paced, seeded Poisson, or Poisson from a proxy that stalls and then
// sends its backlog at once; a late tick is caught up at once), and
// tallies every decision, with the bounds a GCRA bucket allows for what
// it sent (Count.GCRABounds). It reaches the nodes through a
// farm.DialFunc (another network namespace, say), and encodes and parses
// RESP with admission/client.
package openloop

import (
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cluster/farm"
)

const (
	// tick is the load's interval between writes, as in checks/resp.py.
	tick = 10 * time.Millisecond
	// replyTimeout bounds the wait for one batch's replies.
	replyTimeout = 10 * time.Second
	// stallGrace is how far past its planned end a load may go (a node
	// answering slowly) before it gives up.
	stallGrace = 10 * time.Second
)

// Count is what one connection, or all of them, sent and got back.
type Count struct {
	Sent     int
	Admitted int
	Rejected int
	// Reasons counts rejections by reason (CAPS, OVERLOAD, ...).
	Reasons map[string]int
	// RetryHints counts rejections that carried retry_after_ms > 0.
	RetryHints int
	// Errors counts replies that are not decisions (RESP errors ...);
	// LastError is the last of them.
	Errors    int
	LastError string
	// FirstSend is just before the first batch was written and FirstReply
	// just after its replies were read; LastSend and LastReply the same for
	// the last batch. Summed over connections: the earliest first and the
	// latest last instants.
	FirstSend, FirstReply, LastSend, LastReply time.Time
	// MaxGap is the longest time between two writes on one connection:
	// with paced arrivals, one tick (10 ms) when client and server kept
	// up; with others, also the ticks planned empty.
	MaxGap time.Duration
	// MaxLate is how long after its planned tick a request was written,
	// at worst: under a tick when client and server kept up; more is a
	// stall of the load generator or of a node, not of the arrivals.
	MaxLate time.Duration
	// Batches are every write and its replies, in the order of Send.
	Batches []Batch
	// Err is what ended a connection before everything was sent and read.
	Err error
}

// Batch is one write of N commands: Send is just before the write, Reply
// just after the last of its replies was read.
type Batch struct {
	Send, Reply time.Time
	N, Admitted int
}

// Span bounds the span between the server's first and last decisions: it
// is at least LastSend − FirstReply and at most LastReply − FirstSend,
// however the machine schedules client and server.
func (c Count) Span() (lo, hi time.Duration) {
	return max(c.LastSend.Sub(c.FirstReply), 0), c.LastReply.Sub(c.FirstSend)
}

// GCRABounds returns the range of admissions a GCRA bucket of rate per
// second and depth burst allows for the run, when the bucket is full at the
// start and decides alone on everything the run sent, however the machine
// scheduled client and server. It admits the burst, plus what it refills
// over the span of its decisions, less what it could not hold: refill lost
// while it was full (a stall: a gap between batches longer than the room
// left in it after the one before), and what is left in it at the end. So
// at most burst + rate × span + 1, and, for a run offered above rate with
// no stall, at least burst + rate × span − 1. Decisions within one batch
// are taken to come less than 1/rate apart. The lower bound is tight for
// one connection; for several on one bucket (a Tally's Total) it judges
// each batch by the one before in time only, so it is looser.
func (c Count) GCRABounds(rate, burst float64) (lo, hi float64) {
	slo, shi := c.Span()
	hi = burst + rate*shi.Seconds() + 1
	if len(c.Batches) == 0 {
		return 0, hi
	}
	// left bounds what the bucket holds after batch b's decisions.
	left := func(b Batch) float64 {
		refill := rate * b.Reply.Sub(b.Send).Seconds()
		if b.Admitted < b.N { // it was empty at a rejection
			return min(burst, 1+refill)
		}
		return min(burst, burst-float64(b.Admitted)+refill)
	}
	lo = burst + rate*slo.Seconds()
	for k := 1; k < len(c.Batches); k++ {
		gap := c.Batches[k].Reply.Sub(c.Batches[k-1].Send).Seconds()
		lo -= max(0, rate*gap-(burst-left(c.Batches[k-1])))
	}
	return lo - left(c.Batches[len(c.Batches)-1]), hi
}

// RejectedFraction is Rejected / Sent (0 when nothing was sent).
func (c Count) RejectedFraction() float64 {
	if c.Sent == 0 {
		return 0
	}
	return float64(c.Rejected) / float64(c.Sent)
}

func (c Count) String() string {
	s := fmt.Sprintf("sent %d, admitted %d, rejected %d", c.Sent, c.Admitted, c.Rejected)
	if len(c.Reasons) > 0 {
		reasons := make([]string, 0, len(c.Reasons))
		for r := range c.Reasons {
			reasons = append(reasons, r)
		}
		sort.Strings(reasons)
		for i, r := range reasons {
			reasons[i] = fmt.Sprintf("%s %d", r, c.Reasons[r])
		}
		s += " (" + strings.Join(reasons, ", ") + ")"
	}
	if c.MaxLate > 5*tick {
		s += fmt.Sprintf(", a stall: a write %v late", c.MaxLate.Round(time.Millisecond))
	}
	if c.Errors > 0 {
		s += fmt.Sprintf(", %d non-decision replies (last %q)", c.Errors, c.LastError)
	}
	if c.Err != nil {
		s += fmt.Sprintf(", error: %v", c.Err)
	}
	return s
}

// add tallies one reply.
func (c *Count) add(r *client.Reply) {
	if d, err := r.Decision(); err == nil {
		if d.Admitted {
			c.Admitted++
		} else {
			c.Rejected++
			c.Reasons[d.Reason]++
			if d.RetryAfterMs > 0 {
				c.RetryHints++
			}
		}
		return
	}
	c.Errors++
	c.LastError = r.String()
}

// merge adds o into c.
func (c *Count) merge(o Count) {
	c.Sent += o.Sent
	c.Admitted += o.Admitted
	c.Rejected += o.Rejected
	c.RetryHints += o.RetryHints
	for r, k := range o.Reasons {
		c.Reasons[r] += k
	}
	c.Errors += o.Errors
	if o.LastError != "" {
		c.LastError = o.LastError
	}
	c.MaxGap = max(c.MaxGap, o.MaxGap)
	c.MaxLate = max(c.MaxLate, o.MaxLate)
	c.Batches = append(c.Batches, o.Batches...)
	if o.Sent > 0 {
		if c.FirstSend.IsZero() || o.FirstSend.Before(c.FirstSend) {
			c.FirstSend = o.FirstSend
		}
		if c.FirstReply.IsZero() || (!o.FirstReply.IsZero() && o.FirstReply.Before(c.FirstReply)) {
			c.FirstReply = o.FirstReply
		}
		if o.LastSend.After(c.LastSend) {
			c.LastSend = o.LastSend
		}
		if o.LastReply.After(c.LastReply) {
			c.LastReply = o.LastReply
		}
	}
	c.Err = errors.Join(c.Err, o.Err)
}

// Tally is a Load's result: a Count per address, in order, and their sum.
// Total.Err joins every connection's error.
type Tally struct {
	Total Count
	Nodes []Count
	// Arrivals is the model the load was offered in.
	Arrivals Arrivals
}

func (t Tally) String() string {
	s := t.Total.String()
	if len(t.Nodes) > 1 {
		per := make([]string, len(t.Nodes))
		for i, c := range t.Nodes {
			per[i] = fmt.Sprintf("#%d %d/%d/%d", i+1, c.Sent, c.Admitted, c.Rejected)
		}
		s += "; sent/admitted/rejected per node: " + strings.Join(per, ", ")
	}
	if t.Arrivals.Model != PacedArrivals {
		s += "; " + t.Arrivals.String()
	}
	return s
}

// Load is an open-loop load: Command (e.g. "ADMIT voice", sent as a RESP
// multibulk) offered to Addrs at Rate per second in all for Duration.
// Address i gets the share Weights[i] / ΣWeights (nil Weights: equal
// shares) over its own TCP connection, written in the ticks its Arrivals
// plan (the zero value: paced), each tick's due requests in one write; a
// late tick is caught up at once. Every reply is read and tallied. An
// address whose share of Rate × Duration rounds to 0 is not dialled. A
// run ends with its plan, or early on an error or when it is more than
// 10 s past its planned end (Err).
type Load struct {
	// Dial reaches the addresses (nil: net.Dialer).
	Dial     farm.DialFunc
	Addrs    []string
	Weights  []float64
	Rate     float64
	Duration time.Duration
	Command  string
	Arrivals Arrivals
}

// Paced runs a paced Load of command on addrs: address i gets exactly its
// share of ratePerSec × d, spread evenly over the 10 ms ticks.
func Paced(addrs []string, weights []float64, ratePerSec float64, d time.Duration, command string) Tally {
	return PacedVia(nil, addrs, weights, ratePerSec, d, command)
}

// PacedVia is Paced dialling the addresses with dial (nil: net.Dialer).
func PacedVia(dial farm.DialFunc, addrs []string, weights []float64, ratePerSec float64, d time.Duration, command string) Tally {
	return Load{Dial: dial, Addrs: addrs, Weights: weights, Rate: ratePerSec, Duration: d, Command: command}.Run()
}

// Run offers the load and returns its tally; it blocks until every
// connection is done.
func (l Load) Run() Tally {
	t := Tally{Total: Count{Reasons: map[string]int{}}, Nodes: make([]Count, len(l.Addrs)), Arrivals: l.Arrivals}
	for i := range t.Nodes {
		t.Nodes[i].Reasons = map[string]int{}
	}
	weights := l.Weights
	if weights == nil {
		weights = slices.Repeat([]float64{1}, len(l.Addrs))
	}
	var sum float64
	for _, w := range weights {
		if !(w >= 0) || math.IsInf(w, 1) {
			t.Total.Err = fmt.Errorf("cannot pace: weight %v is not a finite number ≥ 0", w)
			return t
		}
		sum += w
	}
	args := strings.Fields(l.Command)
	switch {
	case len(weights) != len(l.Addrs):
		t.Total.Err = fmt.Errorf("cannot pace: %d weights for %d addresses", len(weights), len(l.Addrs))
	case sum == 0 || !(l.Rate > 0) || math.IsInf(l.Rate, 1) || l.Duration <= 0:
		t.Total.Err = fmt.Errorf("cannot pace: want a total weight, a rate and a duration above 0")
	case len(args) == 0:
		t.Total.Err = errors.New("cannot pace: empty command")
	case !l.Arrivals.Model.valid():
		t.Total.Err = fmt.Errorf("cannot pace: unknown arrival model %d", l.Arrivals.Model)
	}
	if t.Total.Err != nil {
		return t
	}
	frame := client.AppendCommand(nil, args...)

	plans := make([]*plan, len(l.Addrs))
	conns := make([]net.Conn, len(l.Addrs))
	for i, addr := range l.Addrs {
		plans[i] = l.Arrivals.plan(i, l.Rate*weights[i]/sum, l.Duration)
		if plans[i].over() {
			continue
		}
		conn, err := farm.DialTimeout(l.Dial, addr, 5*time.Second)
		if err != nil {
			t.Nodes[i].Err = fmt.Errorf("cannot connect to %s: %w", addr, err)
			continue
		}
		conns[i] = conn
	}
	start := time.Now() // every connection ticks in phase
	var wg sync.WaitGroup
	for i, conn := range conns {
		if conn != nil {
			wg.Go(func() {
				pace(&t.Nodes[i], conn, frame, plans[i], start, start.Add(l.Duration+l.Arrivals.maxLate()+stallGrace))
			})
		}
	}
	wg.Wait()
	for _, c := range t.Nodes {
		t.Total.merge(c)
	}
	slices.SortFunc(t.Total.Batches, func(a, b Batch) int { return a.Send.Compare(b.Send) })
	return t
}

// pace writes frame on conn as p plans from start: each tick's count in
// one write, and when late, what is due by now at once. It tallies the
// replies into c, closes conn, and gives up at giveUp.
func pace(c *Count, conn net.Conn, frame []byte, p *plan, start, giveUp time.Time) {
	defer conn.Close()
	addr := conn.RemoteAddr().String()
	r := client.NewReplyReader(conn)
	var batch []byte
	due, oldest := 0, 0 // what the first p.k ticks plan; the first tick of what is unsent
	for k := 1; ; k++ {
		// Tick k-1 is due at (k-1) ticks; when late, send what is due now.
		k = max(k, int(time.Since(start)/tick)+1)
		for p.k < k && !p.over() {
			j, n := p.k, p.next()
			if n > 0 && due == c.Sent {
				oldest = j
			}
			due += n
		}
		if n := due - c.Sent; n > 0 {
			now := time.Now()
			c.MaxLate = max(c.MaxLate, now.Sub(start.Add(time.Duration(oldest)*tick)))
			if now.After(giveUp) {
				c.Err = fmt.Errorf("%s: gave up %s after the planned end with %d sent", addr, stallGrace, c.Sent)
				return
			}
			batch = batch[:0]
			for range n {
				batch = append(batch, frame...)
			}
			_ = conn.SetDeadline(now.Add(replyTimeout))
			if c.Sent == 0 {
				c.FirstSend = now
			} else {
				c.MaxGap = max(c.MaxGap, now.Sub(c.LastSend))
			}
			c.LastSend = now
			if _, err := conn.Write(batch); err != nil {
				c.Err = fmt.Errorf("%s: cannot send: %w", addr, err)
				return
			}
			c.Sent += n
			admitted := c.Admitted
			for range n {
				v, err := r.Read()
				if err != nil {
					c.Err = fmt.Errorf("%s: %w", addr, err)
					return
				}
				c.add(v)
			}
			reply := time.Now()
			if c.FirstReply.IsZero() {
				c.FirstReply = reply
			}
			c.LastReply = reply
			c.Batches = append(c.Batches, Batch{Send: now, Reply: reply, N: n, Admitted: c.Admitted - admitted})
		}
		if p.over() {
			return
		}
		if wait := time.Until(start.Add(time.Duration(k) * tick)); wait > 0 {
			time.Sleep(wait)
		}
	}
}
