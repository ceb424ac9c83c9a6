#!/usr/bin/env bash
# Many trunk keys over a farm of NODES members (default 3): one licence
# for service voice (1,000,000 CAPS), KEYS keys with limits of their own
# (default 10,000: k000000000000 ..., KEY_CAPS each, default 1,000,000 so
# that the rate measures what a key costs a decision, and 1,000 sessions)
# set through n1's admin API. Prints how long the set-up took and when
# every member held the last key, each member's /metrics size, demand
# report size, gossip bytes and CPU a second (idle, every key with
# limits), RSS, and the ADMIT rate spread over every key against ADMIT
# without a key (redis-benchmark -c 50 -P 16, the same run).
#
#   bench/scripts/trunks.sh [NODES] [KEYS]
#
# PROFILE=DIR also keeps a 5 s CPU profile of each member, idle after the
# set-up, in DIR (go tool pprof DIR/capsgate.bin DIR/n1.pprof).
#
# Needs: go, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
NODES=${1:-3}
KEYS=${2:-10000}
vendor_keys
"$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service voice --caps 1000000 --sessions 10000000 \
  --cluster trunks --id T1 >"$W/voice.lic"
farm $NODES trunks
ctl license add "$W/voice.lic" >/dev/null
python3 -u bench/scripts/trunks_setup.py "$(cat "$W/keys/admin.token")" "$KEYS" "${KEY_CAPS:-1000000}" \
  "$(IFS=,; echo "${ADMINS[*]}")" "$(IFS=,; echo "${NODEPIDS[*]}")"
if [ -n "${PROFILE:-}" ]; then # PROFILE=DIR: a 5 s CPU profile of each member, idle, kept in DIR
  mkdir -p "$PROFILE"
  curls=()
  for i in "${!ADMINS[@]}"; do
    curl -s -H "Authorization: Bearer $(cat "$W/keys/admin.token")" "${ADMINS[$i]}/debug/pprof/profile?seconds=5" \
      -o "$PROFILE/n$((i + 1)).pprof" &
    curls+=($!)
  done
  wait "${curls[@]}" # not the members
  cp "$W/bin/capsgate" "$PROFILE/capsgate.bin"
fi
RP=${RESPS[0]##*:}
plain=$(rate $RP 1000000 ADMIT voice)
spread=$(RANGE=$KEYS rate $RP 1000000 ADMIT voice TRUNK k__rand_int__)
echo "ADMIT on n1 (redis-benchmark -c 50 -P 16 -n 1000000): no key $plain/s; TRUNK over all $KEYS keys $spread/s ($(python3 -c "print(round($spread/$plain,2))")×)"
