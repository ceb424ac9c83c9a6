package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsgate/capsgate/admission/client"
)

// Load describes one load run against one address.
type Load struct {
	Addr string
	// Frame is the command sent for every request, RESP-encoded
	// (client.AppendCommand).
	Frame []byte
	// Conns is the number of connections, each driven by its own goroutines.
	Conns int
	// Pipeline is the closed loop's commands per round trip (Throughput).
	Pipeline int
	// Rate is the open loop's requests per second over all connections
	// (Latency).
	Rate float64
	// Duration bounds the run; MaxRequests (0: none) bounds it too.
	Duration    time.Duration
	MaxRequests int64
	// Progress, when set, is called from a timer with the fraction done.
	Progress func(done float64)
}

// Result is what a run measured.
type Result struct {
	// Requests were answered in Elapsed; OpsPerSec is their rate.
	Requests  int64
	Elapsed   time.Duration
	OpsPerSec float64
	// Admitted counts replies that are arrays starting with :1 (a
	// decision that admits); ErrorReplies counts RESP errors, LastError
	// keeps one.
	Admitted     int64
	ErrorReplies int64
	LastError    string
	// Latency is per request: from the intended send time (Latency), or
	// per round trip of a pipelined batch (Throughput).
	Latency Histogram
	// MaxSendLag is how late the open loop's pacer woke at worst, and
	// SendLag how late each request's write began after its intended
	// time (Latency counts both in).
	MaxSendLag time.Duration
	SendLag    Histogram
}

// tally counts one connection's replies.
type tally struct {
	requests, admitted, errors int64
	lastError                  string
	hist                       Histogram
}

func (t *tally) add(r *client.Reply) {
	t.requests++
	switch {
	case r.Kind == client.Err:
		t.errors++
		if t.lastError == "" {
			t.lastError = string(r.Str)
		}
	case r.Kind == client.Array && len(r.Elems) > 0 && r.Elems[0].Kind == client.Integer && r.Elems[0].Int == 1:
		t.admitted++
	}
}

// merge adds the tallies into a Result.
func merge(ts []tally, elapsed time.Duration) Result {
	res := Result{Elapsed: elapsed}
	for i := range ts {
		t := &ts[i]
		res.add(&Result{Requests: t.requests, Admitted: t.admitted, ErrorReplies: t.errors, LastError: t.lastError, Latency: t.hist})
	}
	return res
}

// add adds o, a run of the same load, to r (by pointer: a Result holds
// two histograms of 58 KiB each).
func (r *Result) add(o *Result) {
	r.Requests += o.Requests
	r.Elapsed += o.Elapsed
	r.Admitted += o.Admitted
	r.ErrorReplies += o.ErrorReplies
	if o.LastError != "" {
		r.LastError = o.LastError
	}
	r.Latency.Merge(&o.Latency)
	r.SendLag.Merge(&o.SendLag)
	r.MaxSendLag = max(r.MaxSendLag, o.MaxSendLag)
	if r.Elapsed > 0 {
		r.OpsPerSec = float64(r.Requests) / r.Elapsed.Seconds()
	}
}

// validate fills defaults and rejects what cannot run.
func (l *Load) validate(open bool) error {
	switch {
	case l.Addr == "":
		return errors.New("cannot run a load: no address (--addr)")
	case len(l.Frame) == 0:
		return errors.New("cannot run a load: no command (--cmd)")
	case l.Conns < 1:
		return fmt.Errorf("cannot run a load: --conns must be at least 1, got %d", l.Conns)
	case l.Duration <= 0:
		return fmt.Errorf("cannot run a load: --seconds must be above 0, got %v", l.Duration)
	case !open && l.Pipeline < 1:
		return fmt.Errorf("cannot run a load: --pipeline must be at least 1, got %d", l.Pipeline)
	case open && !validRate(l.Rate):
		return fmt.Errorf("cannot run a load: --rate must be above 0 and at most %.0f, got %v", maxRate, l.Rate)
	}
	if l.MaxRequests <= 0 {
		l.MaxRequests = math.MaxInt64
	}
	return nil
}

// dialAll opens n connections.
func dialAll(ctx context.Context, addr string, n int) ([]*client.Conn, error) {
	conns := make([]*client.Conn, 0, n)
	for range n {
		c, err := client.Dial(ctx, addr)
		if err != nil {
			for _, c := range conns {
				_ = c.Close()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// progress calls f with the fraction of d elapsed, every 200 ms, until
// the returned stop is called.
func progress(f func(float64), d time.Duration) (stop func()) {
	if f == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				f(1)
				return
			case <-t.C:
				f(min(1, time.Since(start).Seconds()/d.Seconds()))
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// Throughput runs a closed loop: every connection sends Pipeline commands,
// reads their replies and sends again, until Duration or MaxRequests.
func Throughput(ctx context.Context, l Load) (Result, error) {
	if err := l.validate(false); err != nil {
		return Result{}, err
	}
	conns, err := dialAll(ctx, l.Addr, l.Conns)
	if err != nil {
		return Result{}, err
	}
	ts := make([]tally, len(conns))
	errs := make([]error, len(conns))
	var sent atomic.Int64 // requests started, against MaxRequests
	stop := progress(l.Progress, l.Duration)
	start := time.Now()
	end := start.Add(l.Duration)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			defer c.Close()
			p := c.Pipeline()
			t := &ts[i]
			for ctx.Err() == nil {
				now := time.Now()
				if !now.Before(end) || sent.Add(int64(l.Pipeline)) > l.MaxRequests {
					return
				}
				for range l.Pipeline {
					p.AppendFrame(l.Frame, 1)
				}
				if err := p.Exec(ctx); err != nil {
					errs[i] = err
					return
				}
				t.hist.Record(time.Since(now))
				for _, r := range p.Replies() {
					t.add(&r)
				}
			}
		})
	}
	wg.Wait()
	stop()
	res := merge(ts, time.Since(start))
	return res, errors.Join(errs...)
}

// Latency runs an open loop: Rate requests per second over Conns
// connections, without pipelining, whether or not earlier replies have
// come back. Request j (j = 0, 1, ...) is intended at start + j/Rate and
// goes to connection j mod Conns, so the k-th request on connection i is
// request i + k·Conns.
//
// What is measured, per request: from its intended send time to the
// moment its connection's receiver goroutine has parsed its reply (after
// netpoll's poller read it from the socket and woke that goroutine). It
// counts every delay on the way: the generator's own lateness in sending
// (Result.SendLag), both kernel loopback paths, the server, and the
// client's wake-up. A stall counts for every request it delays, not once:
// no coordinated omission.
//
// One pacer goroutine sends every request (see pace): at each wake it
// sends all that are due, one write per connection (several due on one
// connection, after a stall, go in one write). A receiver per connection
// reads its replies; it knows from k which request each one answers, so
// nothing is handed from the pacer to it per request: the generator's
// per-request cost is the write, netpoll's read, one goroutine wake-up and
// a histogram increment, with no allocation.
func Latency(ctx context.Context, l Load) (Result, error) {
	if err := l.validate(true); err != nil {
		return Result{}, err
	}
	total := min(int64(l.Rate*l.Duration.Seconds()), l.MaxRequests)
	if total < int64(l.Conns) {
		return Result{}, fmt.Errorf("cannot run a load: %v/s for %v is fewer requests than the %d connections", l.Rate, l.Duration, l.Conns)
	}
	conns, err := dialAll(ctx, l.Addr, l.Conns)
	if err != nil {
		return Result{}, err
	}
	defer openLoopProcs()()
	C := int64(len(conns))
	sched := schedule{interval: float64(time.Second) / l.Rate, total: total}
	streams := make([]*client.Stream, len(conns))
	for i, c := range conns {
		streams[i] = c.Split()
		// No timer per wait: the watchdog below closes overdue streams.
		streams[i].SetTimeout(0)
	}
	// batch holds the frame repeated, for several requests due on one
	// connection at once.
	const batchMax = 256
	batch := bytes.Repeat(l.Frame, batchMax)
	ts := make([]tally, len(conns))
	var sendErr, stallErr, recvErr error
	var sendLag Histogram
	// A receiver that fails says so and the pacer stops; the streams are
	// closed only once the pacer is done with them (netpoll frees a
	// connection's send buffer on Close).
	var failed atomic.Bool
	errFailed := errors.New("a connection failed")
	closeAll := sync.OnceFunc(func() {
		for _, s := range streams {
			_ = s.Close()
		}
	})
	stop := progress(l.Progress, l.Duration)
	start := time.Now().Add(10 * time.Millisecond) // every receiver is ready
	var receivers sync.WaitGroup
	for i, s := range streams {
		receivers.Go(func() {
			t := &ts[i]
			for j := int64(i); j < total; j += C {
				r, err := s.Receive()
				if err != nil {
					if failed.CompareAndSwap(false, true) { // the pacer stops, then closes the other streams
						recvErr = fmt.Errorf("connection %d: %w", i, err)
					}
					return
				}
				t.hist.Record(time.Since(start) - sched.at(j))
				t.add(r)
			}
		})
	}
	var lag time.Duration
	lag, sendErr = pace(ctx, start, &sched, func(from, to int64) error {
		if failed.Load() {
			return errFailed
		}
		return byConn(from, to, C, func(i, first, n int64) error {
			at := time.Since(start)
			for k := range n {
				sendLag.Record(at - sched.at(first+k*C))
			}
			for n > 0 {
				m := min(n, batchMax)
				if err := streams[i].Send(batch[:m*int64(len(l.Frame))]); err != nil {
					return fmt.Errorf("connection %d: %w", i, err)
				}
				n -= m
			}
			return nil
		})
	})
	if sendErr != nil {
		closeAll()
	}
	// Wait for the last replies, at most a client timeout past the end.
	done := make(chan struct{})
	go func() { receivers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		closeAll()
		<-done
	case <-time.After(client.DefaultTimeout):
		stallErr = fmt.Errorf("%s: replies still missing %v after the last request", l.Addr, client.DefaultTimeout)
		closeAll()
		<-done
	}
	closeAll()
	stop()
	res := merge(ts, time.Since(start))
	res.MaxSendLag = lag
	res.SendLag = sendLag
	if errors.Is(sendErr, errFailed) {
		sendErr = nil // recvErr says why
	}
	// A receiver's error is the first one's: the others ended because
	// their streams were closed after it.
	return res, errors.Join(sendErr, stallErr, recvErr)
}

// maxRate bounds an open loop's requests per second.
const maxRate = 1e8

// validRate reports whether r can pace an open loop (NaN cannot).
func validRate(r float64) bool { return r > 0 && r <= maxRate }

// byConn splits the requests [from, to) by connection (request j goes to
// connection j mod conns): it calls f once for every connection with a
// request among them, in the order of its first one, with that request
// and how many there are (first, first+conns, first+2·conns, ...).
func byConn(from, to, conns int64, f func(conn, first, n int64) error) error {
	for j := from; j < min(to, from+conns); j++ {
		if err := f(j%conns, j, (to-1-j)/conns+1); err != nil {
			return err
		}
	}
	return nil
}
