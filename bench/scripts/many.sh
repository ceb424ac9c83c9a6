#!/usr/bin/env bash
# Many services and accounts over a farm of NODES members (default 3):
# SERVICES licences (default 1,000, one service each, s000000000000 ...)
# loaded on n1, and ACCOUNTS token allocations (default 100,000, spread
# evenly over the services) made through n1's admin API. Prints how long
# the set-up took to reach every member, each member's /metrics size, its
# demand report size and gossip bytes a second (idle), the ADMIT rate over
# every service against the rate on one service (redis-benchmark -c 50
# -P 16, the same run), what the data directories grew by over a ledger
# interval, and the RSS of each member.
#
#   bench/scripts/many.sh [NODES] [SERVICES] [ACCOUNTS]
#
# Needs: go, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
NODES=${1:-3}
SERVICES=${2:-1000}
ACCOUNTS=${3:-100000}
mkdir -p "$W/keys" "$W/lic"
"$W/bin/capslicense" keygen --out "$W/keys" >/dev/null
head -c 32 /dev/urandom | base64 >"$W/keys/gossip.key"
head -c 24 /dev/urandom | base64 >"$W/keys/admin.token"
t0=$(date +%s.%N)
for i in $(seq 0 $((SERVICES - 1))); do
  s=$(printf 's%012d' $i)
  "$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service $s --caps 1000000 --sessions 100000 \
    --subscribers 100000 --tokens 1000000000000 --cluster many --id L$i >"$W/lic/$s.lic"
done
echo "issued $SERVICES licences in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
RESPS=() ADMINS=() PIDLIST=() DIRS=() first=""
for i in $(seq 1 $NODES); do
  rp=$(port); ap=$(port); gp=$(port)
  join=()
  [ -n "$first" ] && join=(--join "$first")
  "$W/bin/capsgate" --node-name n$i --cluster-id many --data-dir "$W/n$i" --resp-addr 127.0.0.1:$rp \
    --admin-addr 127.0.0.1:$ap --gossip-addr 127.0.0.1:$gp --gossip-key-file "$W/keys/gossip.key" \
    --admin-token-file "$W/keys/admin.token" --vendor-key "$W/keys/vendor.pub" "${join[@]}" >>"$W/n$i.log" 2>&1 &
  PIDS+=($!); PIDLIST+=($!)
  [ -z "$first" ] && first=127.0.0.1:$gp
  RESPS+=(127.0.0.1:$rp); ADMINS+=(http://127.0.0.1:$ap); DIRS+=("$W/n$i")
done
for a in "${RESPS[@]}"; do wait_pong ${a##*:} 30; done
python3 -u bench/scripts/many_setup.py "$W/lic" "$(cat "$W/keys/admin.token")" "$SERVICES" "$ACCOUNTS" \
  "$(IFS=,; echo "${ADMINS[*]}")" "$(IFS=,; echo "${PIDLIST[*]}")" "$(IFS=,; echo "${DIRS[*]}")"
RP=${RESPS[0]##*:}
one=$(rate $RP 1000000 ADMIT s000000000000)
all=$(redis-benchmark -p $RP -c 50 -P 16 -n 1000000 -r $SERVICES -q ADMIT s__rand_int__ 2>/dev/null | tr '\r' '\n' |
  awk '/requests per second/{for(i=1;i<=NF;i++) if($i=="requests") print $(i-1)}' | tail -1)
echo "ADMIT on n1 (redis-benchmark -c 50 -P 16 -n 1000000): one service $one/s; spread over all $SERVICES services $all/s ($(python3 -c "print(round($all/$one,2))")×)"
