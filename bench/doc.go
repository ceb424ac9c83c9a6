// Package bench is capsbench's engine: closed-loop (pipelined throughput)
// and open-loop (latency at a fixed rate, measured from each request's
// intended send time, so a stalled server cannot hide its stall) load over
// admission/client, the targets it compares capsgate with — Redis running a
// GCRA limiter in Lua, and Limit, a gnet RESP server that decides nothing
// and so bounds what any server on this transport can do — and the
// comparison's JSON, table and report. It also runs cluster/sim's
// simulated farms beside one node holding the whole licence, for
// `capsbench sim`: a run's windows, summary, targets and plot, and the
// accuracy table (sim.go, simargs.go, simplot.go).
//
// Every load loop is bounded twice: by its duration and by a request
// count, and stops by itself; a target that stops answering ends a run
// with an error after the client's timeout.
package bench
