# Shared by the scripts beside it: a work directory cleaned up at exit, the
# binaries built from this checkout, a farm of capsgate nodes, one node with
# a licence for service voice, redis-server,
# redis-benchmark's rate, and a clean client's PING probe. Loopback only;
# everything started is killed at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
for b in redis-server redis-benchmark redis-cli python3; do
  command -v $b >/dev/null || { echo "$(basename "$0") needs $b"; exit 2; }
done
go build -o "$W/bin/" ./cmd/...
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; } # user + system, in clock ticks
wait_pong() { # port, seconds
  for _ in $(seq $(($2 * 100))); do
    [ "$(redis-cli -p "$1" PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.01
  done
  return 1
}

# vendor_keys: a vendor key pair, a gossip key and an admin token in $W/keys.
vendor_keys() {
  mkdir -p "$W/keys"
  "$W/bin/capslicense" keygen --out "$W/keys" >/dev/null
  head -c 32 /dev/urandom | base64 >"$W/keys/gossip.key"
  head -c 24 /dev/urandom | base64 >"$W/keys/admin.token"
}

# farm N CLUSTER: starts N nodes n1..nN of cluster CLUSTER, each joining n1,
# and waits for each to answer; fills RESPS (host:port), ADMINS (URLs),
# NODEPIDS and DIRS.
farm() {
  local n=$1 cluster=$2 first="" i rp ap gp
  RESPS=() ADMINS=() NODEPIDS=() DIRS=()
  for i in $(seq 1 "$n"); do
    rp=$(port); ap=$(port); gp=$(port)
    local join=()
    [ -n "$first" ] && join=(--join "$first")
    "$W/bin/capsgate" --node-name n$i --cluster-id "$cluster" --data-dir "$W/n$i" --resp-addr 127.0.0.1:$rp \
      --admin-addr 127.0.0.1:$ap --gossip-addr 127.0.0.1:$gp --gossip-key-file "$W/keys/gossip.key" \
      --admin-token-file "$W/keys/admin.token" --vendor-key "$W/keys/vendor.pub" "${join[@]}" >>"$W/n$i.log" 2>&1 &
    PIDS+=($!); NODEPIDS+=($!)
    [ -z "$first" ] && first=127.0.0.1:$gp
    RESPS+=(127.0.0.1:$rp); ADMINS+=(http://127.0.0.1:$ap); DIRS+=("$W/n$i")
  done
  for i in "${RESPS[@]}"; do wait_pong "${i##*:}" 30; done
}

# holds_licence SERVICE: waits until every member in RESPS decides on
# SERVICE other than UNLICENSED (at most 30 s each); exits if one does not.
holds_licence() {
  local r held
  for r in "${RESPS[@]}"; do
    held=
    for _ in $(seq 300); do
      if ! redis-cli -p "${r##*:}" ADMIT "$1" | grep -q UNLICENSED; then held=1; break; fi
      sleep 0.1
    done
    [ -n "$held" ] || { echo "the member at $r did not get the licence of $1 within 30 s"; exit 1; }
  done
}

# ctl ARGS...: capsctl against n1.
ctl() { "$W/bin/capsctl" --addr "${ADMINS[0]}" --token-file "$W/keys/admin.token" "$@"; }

# capsgate: starts one node (CGPID, CGPORT), licensed for voice (CAPS 100 M,
# 50 M sessions and subscribers).
capsgate() {
  vendor_keys
  "$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service voice --caps 100000000 --sessions 50000000 \
    --subscribers 50000000 --cluster bench --id S1 >"$W/s.lic"
  farm 1 bench
  CGPID=${NODEPIDS[0]}; CGPORT=${RESPS[0]##*:}
  ctl license add "$W/s.lic" >/dev/null
}

# redis: starts redis-server (RPID, RPORT) with the options given.
redis() {
  RPORT=$(port); mkdir -p "$W/redis"
  redis-server --port $RPORT --bind 127.0.0.1 --dir "$W/redis" --save '' --daemonize no "$@" >>"$W/redis.log" 2>&1 &
  RPID=$!; PIDS+=($RPID)
  wait_pong $RPORT 15
}

# rate PORT N CMD...: requests/s of redis-benchmark -c 50 -P 16 sending N
# requests with distinct keys (__rand_int__, from 0 to RANGE-1; RANGE
# defaults to 1,000,000,000).
rate() {
  local p=$1 n=$2; shift 2
  redis-benchmark -p "$p" -c 50 -P 16 -n "$n" -r "${RANGE:-1000000000}" -q "$@" 2>/dev/null | tr '\r' '\n' |
    awk '/requests per second/{for(i=1;i<=NF;i++) if($i=="requests") print $(i-1)}' | tail -1
}

# probe PORT STOPFILE EVERY: PING every EVERY seconds until STOPFILE exists;
# prints p99, worst and the longest time between two answers, in ms, as JSON.
probe() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.settimeout(30)
lat, gap, last = [], 0.0, time.perf_counter()
while not os.path.exists(sys.argv[2]):
    t0 = time.perf_counter(); s.sendall(b"*1\r\n$4\r\nPING\r\n"); b = b""
    while not b.endswith(b"\r\n"): b += s.recv(64)
    t1 = time.perf_counter(); lat.append((t1 - t0) * 1000); gap = max(gap, t1 - last); last = t1
    time.sleep(float(sys.argv[3]))
lat.sort()
print(json.dumps({"probes": len(lat), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1), "worst_ms": round(lat[-1], 1), "longest_gap_ms": round(gap * 1000)}))
PY
}
