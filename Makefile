# make bench: capsbench compare (capsgate vs redis-server+Lua vs the gnet
# transport limit) and its report, into bench/results/: compare.json,
# report.md, compare.svg, and CPU profiles of the capsgate latency run (the
# node's, capsgate-latency.pprof, and the generator's,
# capsbench-latency.pprof), whose top entries report.md shows under a
# missed target. Needs Debian's
# redis-server. About 3 minutes: the machine's own pauses for 5 s, then 3
# targets × (2 modes + 3 lower open-loop rates) × BENCH_SECONDS. The
# machine should be quiet (see `uptime`): the report records the load
# average and the pauses.
BENCH_SECONDS ?= 10
RESULTS ?= bench/results
BIN ?= $(CURDIR)/bench/results/tmp/bin

.PHONY: build bench

build:
	go build -o $(BIN)/ ./cmd/...

bench: build
	mkdir -p $(RESULTS)
	$(BIN)/capsbench compare --seconds $(BENCH_SECONDS) --json $(RESULTS)/compare.json
	$(BIN)/capsbench report --json $(RESULTS)/compare.json --out $(RESULTS)
