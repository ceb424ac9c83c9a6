package cluster_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// soakOp is one ADMIT's answer, for the sliding-window bound.
type soakOp struct {
	at       time.Time
	admitted bool
}

// TestSoak runs mixed ADMIT (with and without CALL), RELEASE through any
// node, REGISTER, DEREGISTER and CONSUME with IDs over a 3-node cluster,
// loads a licence every 20 s and kills and restarts a node half way, and
// checks the SPEC's guarantees all along: nothing admitted beyond the
// licence in any 10 s window, every request answered, no token
// under-counted, a subscriber counted once, every session released, and
// the three nodes' ledgers verified together.
func TestSoak(t *testing.T) {
	needsProcesses(t, "a 3-node soak")
	d := farm.Seconds(t, "CAPSGATE_SOAK_SECONDS", 120*time.Second) // hours are fine
	seed := uint64(time.Now().UnixNano())
	t.Logf("soak for %v, seed %d", d, seed)
	c := farm.New(t, 3, farm.WithArgs("--ledger-interval", "2s"))
	c.WaitMembers(3, 5*time.Second)
	var licensed atomic.Int64 // CAPS, as loaded so far
	licensed.Store(600)
	c.LoadLicense(1, c.Issue("--service", "voice", "--caps", "600", "--sessions", "5000", "--subscribers", "5000",
		"--tokens", "1000000000", "--id", "soak-base"))
	c.WaitCAPS("voice", 600, 2*time.Second)
	nodes := c.Nodes()

	start := time.Now()
	end := start.Add(d)
	var down atomic.Int32 // the node being restarted (1..3), 0: none
	var mu sync.Mutex     // guards the fields below
	var ops []soakOp
	calls := map[string]bool{} // open calls, admitted with CALL
	subs := map[string]bool{}  // registered
	// One request at a time for a subscriber: two in flight (a REGISTER
	// and a DEREGISTER from two workers) are applied in one order and
	// answered in either, and subs would follow the answers.
	var subLocks [1000]sync.Mutex
	var consumed, answered, errs atomic.Int64
	var killedAt atomic.Int64    // when n3 was killed (ns)
	var releasedOnN3 []time.Time // RELEASEs n3 acknowledged, guarded by mu
	var lastErr atomic.Value

	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			var conn *farm.Conn
			defer func() {
				if conn != nil {
					conn.Close()
				}
			}()
			do := func(node int, args ...string) (any, bool) {
				if int(down.Load()) == node+1 {
					if node == i && conn != nil {
						conn.Close() // the killed process's: a new one after the restart
						conn = nil
					}
					return nil, false
				}
				if node != i {
					v, err := nodes[node].Do(args...)
					if err != nil {
						if int(down.Load()) != node+1 {
							errs.Add(1)
							lastErr.Store(fmt.Sprintf("%v on n%d at +%v: %v", args, node+1, time.Since(start).Round(time.Millisecond), err))
						}
						return nil, false
					}
					answered.Add(1)
					return v, true
				}
				if conn == nil {
					var err error
					if conn, err = nodes[i].Dial(); err != nil {
						return nil, false
					}
				}
				v, err := conn.Do(args...)
				if err != nil {
					conn.Close()
					conn = nil
					if int(down.Load()) != i+1 {
						errs.Add(1)
						lastErr.Store(fmt.Sprintf("%v on n%d (its own connection) at +%v: %v", args, i+1, time.Since(start).Round(time.Millisecond), err))
					}
					return nil, false
				}
				answered.Add(1)
				return v, true
			}
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			n := 0
			for time.Now().Before(end) {
				<-tick.C
				// 6 commands a tick on each node: ~1800/s in all, ADMIT
				// about 1000/s, above the licence most of the time.
				for range 6 {
					n++
					switch k := rng.IntN(100); {
					case k < 55: // ADMIT, a third of them a call
						args := []string{"ADMIT", "voice"}
						call := ""
						if rng.IntN(3) == 0 {
							call = fmt.Sprintf("c-%d-%d", i, n)
							args = append(args, "CALL", call)
						}
						v, ok := do(i, args...)
						if !ok {
							continue
						}
						a, _ := v.([]any)
						adm := len(a) == 4 && a[0] == int64(1)
						mu.Lock()
						ops = append(ops, soakOp{at: time.Now(), admitted: adm})
						if adm && call != "" {
							calls[call] = true
						}
						mu.Unlock()
					case k < 70: // RELEASE an open call through any node
						mu.Lock()
						var call string
						for c := range calls {
							call = c
							break
						}
						delete(calls, call)
						mu.Unlock()
						if call != "" {
							at := rng.IntN(len(nodes))
							_, ok := do(at, "RELEASE", "voice", call, "SECONDS", strconv.Itoa(rng.IntN(300)))
							mu.Lock()
							if !ok {
								calls[call] = true // not sent: still open
							} else if at == 2 {
								releasedOnN3 = append(releasedOnN3, time.Now())
							}
							mu.Unlock()
						}
					case k < 85: // REGISTER one of 1000 subscribers through any node
						s := rng.IntN(len(subLocks))
						sub := fmt.Sprintf("sip:s%d@soak", s)
						subLocks[s].Lock()
						if _, ok := do(rng.IntN(len(nodes)), "REGISTER", "voice", sub, "TTL", "3600"); ok {
							mu.Lock()
							subs[sub] = true
							mu.Unlock()
						}
						subLocks[s].Unlock()
					case k < 90:
						s := rng.IntN(len(subLocks))
						sub := fmt.Sprintf("sip:s%d@soak", s)
						subLocks[s].Lock()
						if _, ok := do(rng.IntN(len(nodes)), "DEREGISTER", "voice", sub); ok {
							mu.Lock()
							delete(subs, sub)
							mu.Unlock()
						}
						subLocks[s].Unlock()
					default: // CONSUME with a fresh ID
						v, ok := do(i, "CONSUME", "voice", "acct", "1", "ID", fmt.Sprintf("k-%d-%d", i, n))
						if a, _ := v.([]any); ok && len(a) == 4 && a[0] == int64(1) {
							consumed.Add(1)
						}
					}
				}
			}
		})
	}
	// A licence every 20 s, loaded on a node in turn.
	wg.Go(func() {
		for k := 1; ; k++ {
			select {
			case <-time.After(time.Until(start.Add(time.Duration(k) * 20 * time.Second))):
			}
			if time.Now().After(end.Add(-5 * time.Second)) {
				return
			}
			at := 1 + k%3
			if int(down.Load()) == at {
				at = 1 + (k+1)%3
			}
			lic, err := c.Bin.Issue(c.VendorKey, "--service", "voice", "--caps", "100", "--id", fmt.Sprintf("soak-%d", k))
			if err == nil {
				err = nodes[at-1].PostLicense(lic)
			}
			if err != nil {
				errs.Add(1)
				lastErr.Store("licence load: " + err.Error())
				continue
			}
			licensed.Add(100)
		}
	})
	// Half way, n3 is killed and comes back 3 s later.
	wg.Go(func() {
		time.Sleep(time.Until(start.Add(d / 2)))
		down.Store(3)
		killedAt.Store(time.Now().UnixNano())
		nodes[2].Kill()
		time.Sleep(3 * time.Second)
		if err := nodes[2].Restart(); err != nil {
			errs.Add(1)
			lastErr.Store("restart: " + err.Error())
		}
		time.Sleep(500 * time.Millisecond)
		down.Store(0)
	})
	wg.Wait()

	// Every 10 s window (stepping 1 s) within the bound of the licence in
	// force at its end (licences only grow).
	L := float64(licensed.Load())
	worst, worstAt := 0.0, time.Duration(0)
	for w := start; w.Add(10 * time.Second).Before(end); w = w.Add(time.Second) {
		k := 0
		for _, o := range ops {
			if o.admitted && !o.at.Before(w) && o.at.Before(w.Add(10*time.Second)) {
				k++
			}
		}
		if excess := float64(k) - (1.01*L*10 + 0.1*L + 60); excess > worst || worstAt == 0 {
			worst, worstAt = excess, w.Sub(start)
		}
	}
	admitted := 0
	for _, o := range ops {
		if o.admitted {
			admitted++
		}
	}
	t.Logf("%d ADMITs (%d admitted), %d answered in all, %d errors; licensed rose to %.0f CAPS; closest 10 s window to the bound at +%v: %+.0f",
		len(ops), admitted, answered.Load(), errs.Load(), L, worstAt.Round(time.Second), worst)
	require.Zero(t, errs.Load(), "every request answered (last error: %v)", lastErr.Load())
	assert.LessOrEqual(t, worst, 0.0, "nothing admitted beyond the licence in any 10 s window")

	// Release what is still open: every session ends.
	for call := range calls {
		_, err := nodes[rand.IntN(3)].Do("RELEASE", "voice", call)
		require.NoError(t, err)
	}
	sessions, _ := total(t, c, "voice", "sessions_used", 0, 5*time.Second)
	subsUsed := int64(0)
	for _, n := range nodes {
		subsUsed += quota(t, n, "voice", "subscribers_used")
	}
	tokens := int64(0)
	for _, n := range nodes {
		tokens += quota(t, n, "voice", "tokens_used")
	}
	t.Logf("after: %d sessions open, %d subscribers counted (%d registered by the test), %d tokens counted for %d CONSUMEs acknowledged",
		sessions, subsUsed, len(subs), tokens, consumed.Load())
	// A RELEASE n3 acknowledged in the last journal interval before its
	// kill may be undone by the restore (the documented loss window).
	window := 0
	for _, at := range releasedOnN3 {
		if k := killedAt.Load(); k != 0 && at.UnixNano() >= k-int64(100*time.Millisecond) {
			window++
		}
	}
	assert.LessOrEqual(t, sessions, int64(window), "every session released, but those released on n3 in the 100 ms before its kill")
	assert.LessOrEqual(t, subsUsed, int64(len(subs)), "a subscriber counts once")
	assert.GreaterOrEqual(t, subsUsed, int64(len(subs))*9/10, "registrations survive (but those of the last 20 ms before the kill)")
	assert.GreaterOrEqual(t, tokens, consumed.Load(), "no acknowledged token is lost")

	// The three ledgers verify together (witnesses included).
	time.Sleep(2500 * time.Millisecond)
	var files []string
	for _, n := range nodes {
		b, err := n.GetRaw("/v1/ledger")
		require.NoError(t, err)
		f := filepath.Join(t.TempDir(), n.Name+".jsonl")
		require.NoError(t, os.WriteFile(f, b, 0o600))
		files = append(files, "--ledger", f)
	}
	out, err := exec.Command(c.Bin.Capslicense, append([]string{"usage", "verify"}, files...)...).CombinedOutput()
	t.Logf("capslicense usage verify over the 3 ledgers:\n%s", out)
	require.NoError(t, err, "the ledgers verify")
}
