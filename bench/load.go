package bench

import (
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
	// MaxSendLag is how late the open loop's sender got behind its
	// schedule at worst (Latency counts the lag in).
	MaxSendLag time.Duration
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
		res.Requests += t.requests
		res.Admitted += t.admitted
		res.ErrorReplies += t.errors
		if t.lastError != "" {
			res.LastError = t.lastError
		}
		res.Latency.Merge(&t.hist)
	}
	if elapsed > 0 {
		res.OpsPerSec = float64(res.Requests) / elapsed.Seconds()
	}
	return res
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
	case open && !(l.Rate > 0 && l.Rate <= 1e8):
		return fmt.Errorf("cannot run a load: --rate must be above 0 and at most 1e8, got %v", l.Rate)
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

// Latency runs an open loop: Rate requests per second, request j
// intended at start + j/Rate and sent on connection j mod Conns whether or
// not the replies before it have come back, and each one's latency
// measured from that intended time (so a stall counts for every request it
// delays, not once: no coordinated omission).
//
// One pacer goroutine sends them all. A Go timer would not do: a runtime
// with nothing to run sleeps in epoll with millisecond resolution, so a
// sender per connection with time.Sleep came out up to 1 ms late and that
// lag dominated what was measured (at 2000/s against the limit server, p50
// 750–930 µs in three runs; with the pacer 180–230 µs, same machine and
// load). The pacer sleeps on its own thread with nanosleep and a 1 µs
// timer slack instead (see pace). A receiver per connection reads the
// replies.
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
	interval := float64(time.Second) / l.Rate
	streams := make([]*client.Stream, len(conns))
	// intended carries each send's intended time to its connection's
	// receiver; its room bounds the requests in flight on a connection.
	intended := make([]chan time.Time, len(conns))
	for i, c := range conns {
		streams[i] = c.Split()
		intended[i] = make(chan time.Time, 1<<14)
	}
	ts := make([]tally, len(conns))
	errs := make([]error, len(conns)+1)
	stop := progress(l.Progress, l.Duration)
	start := time.Now().Add(10 * time.Millisecond) // every receiver is ready
	var wg sync.WaitGroup
	var lag time.Duration
	wg.Go(func() { // the pacer
		defer func() {
			for _, ch := range intended {
				close(ch)
			}
		}()
		lag, errs[len(conns)] = pace(ctx, start, interval, total, func(j int64, at time.Time) error {
			i := int(j % int64(len(conns)))
			select {
			case intended[i] <- at:
			default:
				return fmt.Errorf("%s: more than %d requests without a reply on one connection", l.Addr, cap(intended[i]))
			}
			if err := streams[i].Send(l.Frame); err != nil && errs[i] == nil {
				return err
			}
			return nil
		})
	})
	for i, s := range streams {
		wg.Go(func() { // a receiver
			defer s.Close()
			t := &ts[i]
			for at := range intended[i] {
				r, err := s.Receive()
				if err != nil {
					errs[i] = err
					_ = s.Close() // the pacer's next Send on it fails
					for range intended[i] {
					}
					return
				}
				t.hist.Record(time.Since(at))
				t.add(r)
			}
		})
	}
	wg.Wait()
	stop()
	res := merge(ts, time.Since(start))
	res.MaxSendLag = lag
	return res, errors.Join(errs...)
}
