#!/usr/bin/env bash
# Mass expiry, side by side with Redis under the same generator:
# redis-benchmark (-c 50 -P 16, distinct keys) sends N REGISTERs with a TTL
# of 15 s (N SET ... EX 15 to redis-server, no persistence) as fast as it
# goes, so that they all expire within a few seconds; a clean client
# sends PING every 10 ms from the start until 22 s later. Prints the PING
# p99, worst and longest time between two answers, how long the load took
# (the spread of the expiries) and what is left at the end.
#
#   bench/scripts/expiry.sh [N, default 1000000]
#
# Needs: go, redis-server, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
N=${1:-1000000}
# row NAME PORT COUNT CMD...: loads CMD, probes, prints one row; COUNT is a
# function printing what PORT still holds.
row() {
  local name=$1 p=$2 count=$3; shift 3
  local stop="$W/stop-$p" t0 t1
  probe $p "$stop" 0.01 >"$W/probe-$p" &
  local pp=$!
  t0=$(date +%s.%N)
  rate $p $N "$@" >/dev/null
  t1=$(date +%s.%N)
  sleep "$(python3 -c "print(max(0, 22 - ($t1 - $t0)))")"
  touch "$stop"; wait $pp
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("| %s | %.1f s | %s / %s ms | %s ms | %s |" % (sys.argv[2], float(sys.argv[3]), p["p99_ms"], p["worst_ms"], p["longest_gap_ms"], sys.argv[4]))' \
    "$W/probe-$p" "$name" "$(python3 -c "print($t1-$t0)")" "$($count $p)"
}
subscribers() { redis-cli -p $1 QUOTA voice | paste - - | awk '$1=="subscribers_used"{print $2}'; }
keys() { redis-cli -p $1 DBSIZE; }
echo "| $(nproc) cores, $N entries expiring together | load took | PING p99 / worst | longest gap between answers | left after 22 s |"
echo "|---|---|---|---|---|"
capsgate
row "capsgate REGISTER ... TTL 15" $CGPORT subscribers REGISTER voice sub:__rand_int__ TTL 15
redis --appendonly no
row "$(redis-server --version | awk '{print $1, $3}') SET ... EX 15 (no persistence)" $RPORT keys SET sub:__rand_int__ v EX 15
