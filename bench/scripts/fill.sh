#!/usr/bin/env bash
# Throughput as the tables fill, side by side with Redis under the same
# generator: redis-benchmark (-c 50 -P 16, distinct keys) sends N REGISTERs
# to an empty capsgate, fills it to 2 M entries, and sends N more; the same
# with SET ... EX to redis-server (no persistence). Prints each rate, the
# server's CPU per request (user + system, from /proc) and the ratio of
# the rate at 2 M entries to the empty table's, and the state snapshots
# capsgate wrote behind its journal in each phase (a snapshot of the whole
# table is written whenever the journals since the last one pass its size,
# so at 2 M entries one may fall in a phase, and on a machine the generator
# shares its cost is taken from the rate).
#
#   bench/scripts/fill.sh [N, default 1000000]
#
# Needs: go, redis-server, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
N=${1:-1000000}
tick=$(getconf CLK_TCK)
# phase PID PORT N CMD...: "rate µs-of-CPU-per-request"
phase() {
  local pid=$1 p=$2 n=$3; shift 3
  local c0 r c1; c0=$(cpu_ticks $pid)
  r=$(rate $p $n "$@")
  c1=$(cpu_ticks $pid)
  echo "$r $(python3 -c "print(round(($c1-$c0)/$tick*1e6/$n, 2))")"
}
# started: state snapshots capsgate has begun (each starts the next journal).
started() { ls "${DIRS[0]}/state" | sed -n 's/^journal-\([0-9]*\)\.log$/\1/p' | sort -n | tail -1; }
row() { # name empty... full...
  python3 -c 'import sys; n,e,ec,f,fc=sys.argv[1:]; print("| %s | %s/s, %s µs | %s/s, %s µs | %.2f |" % (n, format(round(float(e)),","), ec, format(round(float(f)),","), fc, float(f)/float(e)))' "$@"
}
capsgate
s0=$(started)
read -r ce cec <<<"$(phase $CGPID $CGPORT $N REGISTER voice a:__rand_int__ TTL 3600)"
s1=$(started)
rate $CGPORT $((2000000 - N)) REGISTER voice f:__rand_int__ TTL 3600 >/dev/null
s2=$(started)
read -r cf cfc <<<"$(phase $CGPID $CGPORT $N REGISTER voice b:__rand_int__ TTL 3600)"
s3=$(started)
kill -9 $CGPID # nothing of it runs beside Redis's phases
redis --appendonly no
read -r re rec <<<"$(phase $RPID $RPORT $N SET a:__rand_int__ v EX 3600)"
rate $RPORT $((2000000 - N)) SET f:__rand_int__ v EX 3600 >/dev/null
read -r rf rfc <<<"$(phase $RPID $RPORT $N SET b:__rand_int__ v EX 3600)"
echo "| $(nproc) cores, $N requests a phase | empty table: rate, server CPU a request | with 2 M entries | ratio |"
echo "|---|---|---|---|"
row "capsgate REGISTER" $ce $cec $cf $cfc
row "$(redis-server --version | awk '{print $1, $3}') SET ... EX (no persistence)" $re $rec $rf $rfc
echo "capsgate state snapshots begun: $((s1 - s0)) in the empty phase, $((s3 - s2)) in the full one"
