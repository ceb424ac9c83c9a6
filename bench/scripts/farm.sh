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
vendor_keys
"$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service voice --caps 100000000 --sessions 50000000 \
  --subscribers 50000000 --cluster farm --id S1 >"$W/s.lic"
farm $NODES farm
ctl license add "$W/s.lic" >/dev/null
python3 bench/scripts/farm_load.py "$SUBS" "$(IFS=,; echo "${RESPS[*]}")" "$(IFS=,; echo "${ADMINS[*]}")"
