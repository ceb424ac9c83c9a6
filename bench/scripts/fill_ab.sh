#!/usr/bin/env bash
# Throughput on an empty table against a table of 2 M entries or more,
# interleaved so that both see the same machine: one node (F) is filled to
# 2 M entries first; then, for ROUNDS rounds, a fresh node (E: a new data
# directory, the same licence) and F each take N REGISTERs with new
# distinct keys from redis-benchmark (-c 50 -P 16), E first in odd rounds
# and F first in even ones; each node runs only in its own slices (SIGSTOP
# otherwise), so that it takes no CPU in the other's and what it does
# behind its requests (F's snapshots, Redis's rehash) is done, and
# counted, in its own. F grows by N a round (2 M to 2 M + ROUNDS × N) and
# writes its snapshots as they fall due. The same with SET ... EX for
# redis-server (no persistence). Prints every round's rates and server CPU
# a request, and the ratio of F's rate to E's over all rounds (the sums of
# requests over the sums of time) and round by round.
#
#   bench/scripts/fill_ab.sh [N, default 300000] [ROUNDS, default 6]
#
# Needs: go, redis-server, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
N=${1:-300000}
ROUNDS=${2:-6}
tick=$(getconf CLK_TCK)
# slice PID PORT CMD...: "rate µs-of-CPU-per-request" for N requests.
slice() {
  local pid=$1 p=$2; shift 2
  local c0 r c1; c0=$(cpu_ticks $pid)
  r=$(rate $p $N "$@")
  c1=$(cpu_ticks $pid)
  echo "$r $(python3 -c "print(round(($c1-$c0)/$tick*1e6/$N, 2))")"
}
# fresh_capsgate: a node E on a new data directory with the licence
# (EPID, EPORT), the last one's killed.
fresh_capsgate() {
  [ -n "${EPID:-}" ] && { kill -9 "$EPID" 2>/dev/null || true; wait "$EPID" 2>/dev/null || true; }
  rm -rf "$W/e"
  local rp ap gp
  rp=$(port); ap=$(port); gp=$(port)
  "$W/bin/capsgate" --node-name e --cluster-id bench --data-dir "$W/e" --resp-addr 127.0.0.1:$rp \
    --admin-addr 127.0.0.1:$ap --gossip-addr 127.0.0.1:$gp --gossip-key-file "$W/keys/gossip.key" \
    --admin-token-file "$W/keys/admin.token" --vendor-key "$W/keys/vendor.pub" >>"$W/e.log" 2>&1 &
  EPID=$!; PIDS+=($EPID); EPORT=$rp
  wait_pong $EPORT 30
  "$W/bin/capsctl" --addr http://127.0.0.1:$ap --token-file "$W/keys/admin.token" license add "$W/s.lic" >/dev/null
}
fresh_redis() {
  [ -n "${EPID:-}" ] && { kill -9 "$EPID" 2>/dev/null || true; wait "$EPID" 2>/dev/null || true; }
  EPORT=$(port); rm -rf "$W/er"; mkdir -p "$W/er"
  redis-server --port $EPORT --bind 127.0.0.1 --dir "$W/er" --save '' --appendonly no --daemonize no >>"$W/er.log" 2>&1 &
  EPID=$!; PIDS+=($EPID)
  wait_pong $EPORT 15
}
# rounds NAME FRESH FPID FPORT CMD-E... -- CMD-F...: the rounds for one
# server; prints a row a round and the totals.
rounds() {
  local name=$1 fresh=$2 fpid=$3 fport=$4; shift 4
  local ecmd=() fcmd=()
  while [ "$1" != -- ]; do ecmd+=("$1"); shift; done
  shift; fcmd=("$@")
  local r e ec f fc out=""
  # Each node runs only in its own slices, so that what it does behind
  # them (F's snapshots, Redis's rehash) runs, and is counted, there.
  kill -STOP $fpid
  for r in $(seq 1 "$ROUNDS"); do
    $fresh
    kill -STOP $EPID
    if ((r % 2)); then
      kill -CONT $EPID; read -r e ec <<<"$(slice $EPID $EPORT "${ecmd[@]}")"; kill -STOP $EPID
      kill -CONT $fpid; read -r f fc <<<"$(slice $fpid $fport "${fcmd[@]}")"; kill -STOP $fpid
    else
      kill -CONT $fpid; read -r f fc <<<"$(slice $fpid $fport "${fcmd[@]}")"; kill -STOP $fpid
      kill -CONT $EPID; read -r e ec <<<"$(slice $EPID $EPORT "${ecmd[@]}")"; kill -STOP $EPID
    fi
    out+="$r $e $ec $f $fc"$'\n'
  done
  kill -CONT $fpid
  python3 - "$name" "$N" <<PY
import sys
name, n = sys.argv[1], int(sys.argv[2])
rows = [l.split() for l in """$out""".strip().splitlines()]
te = tf = 0.0
for r, e, ec, f, fc in rows:
    e, f = float(e), float(f)
    te += n / e; tf += n / f
    print("| %s | %s | %s/s, %s µs | %s/s, %s µs | %.2f |" % (name, r, format(round(e), ","), ec, format(round(f), ","), fc, f / e))
print("| %s | all %d | %s/s | %s/s | %.2f |" % (name, len(rows), format(round(n * len(rows) / te), ","), format(round(n * len(rows) / tf), ","), te / tf))
PY
}
echo "| $(nproc) cores, $N requests a slice | round | empty table (fresh): rate, server CPU a request | 2 M entries and more | ratio |"
echo "|---|---|---|---|---|"
capsgate
rate $CGPORT 2000000 REGISTER voice f:__rand_int__ TTL 3600 >/dev/null
rounds "capsgate REGISTER" fresh_capsgate $CGPID $CGPORT REGISTER voice e:__rand_int__ TTL 3600 -- REGISTER voice b:__rand_int__ TTL 3600
kill -9 $CGPID $EPID 2>/dev/null || true
EPID=
redis --appendonly no
rate $RPORT 2000000 SET f:__rand_int__ v EX 3600 >/dev/null
rounds "$(redis-server --version | awk '{print $1, $3}') SET ... EX" fresh_redis $RPID $RPORT SET e:__rand_int__ v EX 3600 -- SET b:__rand_int__ v EX 3600
