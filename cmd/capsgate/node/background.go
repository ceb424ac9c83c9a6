package node

import (
	"time"

	"github.com/capsgate/capsgate/admission/idstore"
	"github.com/capsgate/capsgate/admission/journal"
	"github.com/capsgate/capsgate/admission/meter"
)

// tickInterval is how often the engine's housekeeping runs (expiring
// sessions and registrations, the used-CAPS figure).
const tickInterval = 100 * time.Millisecond

// task is one piece of the node's background work: a step function run at
// an instant, which says how long until it is due again. wake, when set,
// runs it at once.
type task struct {
	name string
	step func(now time.Time) (next time.Duration)
	wake <-chan struct{}
}

// tasks is all the node's background work, in one place. Each runs in a
// goroutine of its own (run), so that a slow fsync in one never delays
// another; a test calls the steps with the instants it wants.
func (n *Node) tasks() []task {
	tasks := []task{
		{name: "housekeeping", step: n.stepEngine},
		{name: "licence states", step: n.stepLicences},
		{name: "metering", step: n.stepMetering},
		{name: "token reservations", step: n.stepReserving, wake: n.reserveWake},
		{name: "state journal", step: n.stepJournal},
		{name: "CONSUME ID commits", step: n.stepIDs, wake: n.idsKick},
		{name: "CL.THROTTLE expiry", step: n.stepThrottle},
	}
	if n.cluster != nil {
		tasks = append(tasks,
			task{name: "cluster exchange", step: n.cluster.StepExchange, wake: n.cluster.Woken()},
			task{name: "cluster rejoin", step: n.cluster.StepRejoin})
	}
	return tasks
}

// run runs t's step at once, then when it is due or woken, until the node
// stops.
func (n *Node) run(t task) {
	defer n.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-timer.C:
		case <-t.wake:
			timer.Stop()
		}
		select { // both may be ready: stop wins, no step runs after it
		case <-n.stop:
			return
		default:
		}
		timer.Reset(max(t.step(time.Now()), 0))
	}
}

// stepEngine expires sessions and registrations and updates the used-CAPS
// figure, on the engine's own clock.
func (n *Node) stepEngine(time.Time) time.Duration {
	n.eng.Tick(n.clk.Now())
	return tickInterval
}

// stepLicences lets licence states change at their instants: the registry
// is ticked at its next change, or every second to follow the wall clock.
func (n *Node) stepLicences(time.Time) time.Duration {
	wait := time.Second
	if next := n.reg.Tick(); !next.IsZero() {
		wait = min(wait, max(time.Until(next), time.Millisecond))
	}
	return wait
}

// stepMetering samples the peaks every meter.SampleEvery and writes a
// usage record set at the end of each ledger interval (aligned to the wall
// clock, so nodes' intervals line up).
func (n *Node) stepMetering(now time.Time) time.Duration {
	interval := n.cfg.Ledger.Interval.Duration
	if n.meterNext.IsZero() {
		n.meterNext = now.Truncate(interval).Add(interval)
	}
	if now.Sub(n.meterSampled) >= meter.SampleEvery {
		n.meter.Sample()
		n.meterSampled = now
	}
	if !now.Before(n.meterNext) {
		if err := n.meter.Flush(now); err != nil {
			n.log.Error("cannot write usage to the ledger; retrying next interval", "err", err)
			meteringErrors.Inc()
		}
		n.meterNext = now.Truncate(interval).Add(interval)
	}
	return meter.SampleEvery
}

// stepReserving keeps token reservations ahead of the charges: every
// meter.StepEvery, and at once when the engine says a pool runs short.
// While the disk refuses them it tries again once a StepEvery, not at
// every refused charge's wake-up.
func (n *Node) stepReserving(now time.Time) time.Duration {
	if n.reserveFailing && now.Before(n.reserveRetry) {
		return n.reserveRetry.Sub(now)
	}
	if err := n.reserver.Step(now); err != nil {
		if !n.reserveFailing {
			n.log.Error("cannot reserve tokens on disk: charges beyond the last reservation are refused (OVERLOAD) until it can", "err", err)
		}
		n.reserveFailing, n.reserveRetry = true, now.Add(meter.StepEvery)
		meteringErrors.Inc()
		return meter.StepEvery
	}
	if n.reserveFailing {
		n.log.Info("token reservations are written again")
	}
	n.reserveFailing = false
	return meter.StepEvery
}

// stepJournal writes the sessions and registrations that changed to the
// state journal every journal.FlushEvery: what a kill -9 may lose.
func (n *Node) stepJournal(time.Time) time.Duration {
	_ = n.journal.Flush() // logged and counted by the journal
	return journal.FlushEvery
}

// stepIDs commits the CONSUME ID keys charged since the last commit every
// idstore.FlushEvery, and at once when a client waits for one (their
// replies wait for it: resp/durable.go), so that a lone client waits about
// one fsync, and many wait for one commit together.
func (n *Node) stepIDs(time.Time) time.Duration {
	if n.ids.Flush() == nil {
		n.handler.Released()
	}
	return idstore.FlushEvery
}
