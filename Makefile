# make bench: capsbench compare (capsgate vs redis-server+Lua vs the gnet
# transport limit) and its report, into bench/results/. Needs Debian's
# redis-server. About 1 minute: 3 targets × 2 modes × BENCH_SECONDS.
BENCH_SECONDS ?= 5
RESULTS ?= bench/results
BIN ?= $(CURDIR)/bench/results/tmp/bin

.PHONY: build bench

build:
	go build -o $(BIN)/ ./cmd/...

bench: build
	mkdir -p $(RESULTS)
	$(BIN)/capsbench compare --seconds $(BENCH_SECONDS) --json $(RESULTS)/compare.json
	$(BIN)/capsbench report --json $(RESULTS)/compare.json --out $(RESULTS)
