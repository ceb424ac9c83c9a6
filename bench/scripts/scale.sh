#!/usr/bin/env bash
# Carrier-scale state on one node, side by side with Redis under the same
# generator: redis-benchmark (-c 50 -P 16) sends 1 M REGISTERs and then 1 M
# ADMIT ... CALLs with distinct keys to capsgate, and 1 M SET ... EX twice
# to redis-server, while a clean client sends PING every 50 ms to each; then
# each is killed with SIGKILL and restarted, and the time to its first
# answer measured (Redis with appendonly/fsync everysec, as capsgate's
# journal). Prints one table.
#
#   bench/scripts/scale.sh [entries per phase, default 1000000]
#
# Needs: go, redis-server, redis-benchmark, python3. Uses loopback only;
# everything it starts is killed when it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000000}
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
for b in redis-server redis-benchmark python3; do
  command -v $b >/dev/null || { echo "scale.sh needs $b"; exit 2; }
done
go build -o "$W/bin/" ./cmd/...
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
wait_pong() { # port, seconds
  for _ in $(seq $(($2 * 100))); do
    [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.01
  done
  return 1
}
probe() { # port stopfile: worst and p99 of PING every 50 ms, as JSON
  python3 - "$1" "$2" <<'PY'
import json, os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.settimeout(30)
lat = []
while not os.path.exists(sys.argv[2]):
    t0 = time.perf_counter(); s.sendall(b"*1\r\n$4\r\nPING\r\n"); b = b""
    while not b.endswith(b"\r\n"): b += s.recv(64)
    lat.append((time.perf_counter() - t0) * 1000); time.sleep(0.05)
lat.sort(); print(json.dumps({"max": lat[-1], "p99": lat[int(0.99 * (len(lat) - 1))]}))
PY
}
# load PORT CMD...: requests/s of redis-benchmark, N requests of distinct keys
load() {
  local p=$1; shift
  redis-benchmark -p "$p" -c 50 -P 16 -n "$N" -r 1000000000 -q "$@" 2>/dev/null | tr '\r' '\n' |
    awk '/requests per second/{for(i=1;i<=NF;i++) if($i=="requests") print $(i-1)}' | tail -1
}

# capsgate
mkdir -p "$W/keys" "$W/cg"
"$W/bin/capslicense" keygen --out "$W/keys" >/dev/null
head -c 32 /dev/urandom | base64 >"$W/keys/gossip.key"
echo "scale-admin-token" >"$W/keys/admin.token"
"$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service voice --caps 100000000 --sessions 50000000 \
  --subscribers 50000000 --cluster scale --id S1 >"$W/s.lic"
cp=$(port); ca=$(port); cgp=$(port)
cg() {
  "$W/bin/capsgate" --node-name n1 --cluster-id scale --data-dir "$W/cg" --resp-addr 127.0.0.1:$cp \
    --admin-addr 127.0.0.1:$ca --gossip-addr 127.0.0.1:$cgp --gossip-key-file "$W/keys/gossip.key" \
    --admin-token-file "$W/keys/admin.token" --vendor-key "$W/keys/vendor.pub" >>"$W/cg.log" 2>&1 &
  CGPID=$!; PIDS+=($CGPID)
}
cg; wait_pong $cp 15
"$W/bin/capsctl" --addr http://127.0.0.1:$ca --token-file "$W/keys/admin.token" license add "$W/s.lic" >/dev/null
r0=$(rss $CGPID)
probe $cp "$W/stop-cg" >"$W/probe-cg" & pp=$!
reg=$(load $cp REGISTER voice sub:__rand_int__ TTL 3600)
adm=$(load $cp ADMIT voice CALL call:__rand_int__)
touch "$W/stop-cg"; wait $pp
r1=$(rss $CGPID)
q=$(redis-cli -p $cp QUOTA voice | paste - - | awk '$1=="sessions_used"||$1=="subscribers_used"{n+=$2} END{print n}')
sleep 1; kill -9 $CGPID; sleep 0.3
t0=$(date +%s.%N); cg; wait_pong $cp 60; t1=$(date +%s.%N)
back=$(redis-cli -p $cp QUOTA voice | paste - - | awk '$1=="sessions_used"||$1=="subscribers_used"{n+=$2} END{print n}')
cg_row=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("%s/s | %s/s | %.0f | %.1f / %.0f ms | %.1f s" % (sys.argv[2], sys.argv[3], (int(sys.argv[5])-int(sys.argv[4]))*1024/max(int(sys.argv[6]),1), p["p99"], p["max"], float(sys.argv[8])-float(sys.argv[7])))' \
  "$W/probe-cg" "$reg" "$adm" "$r0" "$r1" "$q" "$t0" "$t1")

# Redis, the same generator and probe: with an append-only file synced every
# second (what comes back after kill -9), and with no persistence at all.
redis_row() { # extra redis-server options...
  local rp; rp=$(port); rm -rf "$W/redis" "$W/stop-r"; mkdir -p "$W/redis"
  rs() {
    redis-server --port $rp --bind 127.0.0.1 --dir "$W/redis" --save '' --daemonize no "$@" >>"$W/redis.log" 2>&1 &
    RPID=$!; PIDS+=($RPID)
  }
  rs "$@"; wait_pong $rp 15
  local r0 r1 s1 s2 q t0 t1
  r0=$(rss $RPID)
  probe $rp "$W/stop-r" >"$W/probe-r" & local pp=$!
  s1=$(load $rp SET sub:__rand_int__ v EX 3600)
  s2=$(load $rp SET call:__rand_int__ v EX 3600)
  touch "$W/stop-r"; wait $pp
  r1=$(rss $RPID)
  q=$(redis-cli -p $rp DBSIZE)
  sleep 1; kill -9 $RPID; sleep 0.3
  t0=$(date +%s.%N); rs "$@"; wait_pong $rp 60; t1=$(date +%s.%N)
  local back; back=$(redis-cli -p $rp DBSIZE)
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("%s/s | %s/s | %.0f | %.1f / %.0f ms | %.1f s, %s of %s back" % (sys.argv[2], sys.argv[3], (int(sys.argv[5])-int(sys.argv[4]))*1024/max(int(sys.argv[6]),1), p["p99"], p["max"], float(sys.argv[8])-float(sys.argv[7]), sys.argv[9], sys.argv[6]))' \
    "$W/probe-r" "$s1" "$s2" "$r0" "$r1" "$q" "$t0" "$t1" "$back"
  kill -9 $RPID
}
aof_row=$(redis_row --appendonly yes --appendfsync everysec)
mem_row=$(redis_row --appendonly no)
v=$(redis-server --version | awk '{print $1, $3}')

echo "| $(nproc) cores, $N + $N entries | first phase | second phase | bytes per entry (RSS growth) | PING p99 / worst during the load | kill -9 to first answer |"
echo "|---|---|---|---|---|---|"
echo "| capsgate (REGISTER, then ADMIT ... CALL; journal) | $cg_row, $back of $q back |"
echo "| $v (SET ... EX, twice; AOF, fsync every second) | $aof_row |"
echo "| $v (SET ... EX, twice; no persistence) | $mem_row |"
