#!/usr/bin/env bash
# A farm of NODES capsgate processes on loopback (default 10): SUBS
# subscribers (default 1,000,000) REGISTER through randomly chosen nodes,
# then each REGISTERs again through another randomly chosen node (a proxy
# failing over); the farm must count each once. Prints how long each pass
# took, how long the count took to settle and what it settled at, what
# forwarding dropped, and the gossip bytes each node sent per second:
# idle before the load, during it, and idle again after.
#
#   bench/scripts/farm.sh [NODES] [SUBS]
#
# Needs: go, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
NODES=${1:-10}
SUBS=${2:-1000000}
mkdir -p "$W/keys"
"$W/bin/capslicense" keygen --out "$W/keys" >/dev/null
head -c 32 /dev/urandom | base64 >"$W/keys/gossip.key"
head -c 24 /dev/urandom | base64 >"$W/keys/admin.token"
"$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service voice --caps 100000000 --sessions 50000000 \
  --subscribers 50000000 --cluster farm --id S1 >"$W/s.lic"
RESPS=() ADMINS=() first=""
for i in $(seq 1 $NODES); do
  rp=$(port); ap=$(port); gp=$(port)
  join=()
  [ -n "$first" ] && join=(--join "$first")
  "$W/bin/capsgate" --node-name n$i --cluster-id farm --data-dir "$W/n$i" --resp-addr 127.0.0.1:$rp \
    --admin-addr 127.0.0.1:$ap --gossip-addr 127.0.0.1:$gp --gossip-key-file "$W/keys/gossip.key" \
    --admin-token-file "$W/keys/admin.token" --vendor-key "$W/keys/vendor.pub" "${join[@]}" >>"$W/n$i.log" 2>&1 &
  PIDS+=($!)
  [ -z "$first" ] && first=127.0.0.1:$gp
  RESPS+=(127.0.0.1:$rp); ADMINS+=(http://127.0.0.1:$ap)
done
for a in "${RESPS[@]}"; do wait_pong ${a##*:} 30; done
"$W/bin/capsctl" --addr ${ADMINS[0]} --token-file "$W/keys/admin.token" license add "$W/s.lic" >/dev/null
python3 bench/scripts/farm_load.py "$SUBS" "$(IFS=,; echo "${RESPS[*]}")" "$(IFS=,; echo "${ADMINS[*]}")"
