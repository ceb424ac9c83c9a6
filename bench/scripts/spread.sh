#!/usr/bin/env bash
# ADMIT spread over many services against ADMIT on one, on a farm of NODES
# members (default 1) holding SERVICES licences (default 1,000), no
# accounts: redis-benchmark -c 50 -P 16 on n1, one service then every
# service at random, in the same run, with n1's CPU profile of each
# (go tool pprof -top, the ten heaviest functions) to say where a spread
# decision's time goes. First, what the licences cost each member idle:
# its CPU over 10 s without traffic.
#
#   bench/scripts/spread.sh [NODES] [SERVICES]
#
# KEEP=DIR keeps the two profiles and the capsgate binary in DIR, for
# go tool pprof -peek and -list. PROFILE=K profiles member K (0: n1)
# instead. Each phase also gives every member's CPU and early plans a
# second while it ran.
#
# Needs: go, redis-benchmark, redis-cli, python3, curl.
source "$(dirname "$0")/lib.sh"
NODES=${1:-1}
SERVICES=${2:-1000}
vendor_keys
mkdir -p "$W/lic"
for i in $(seq 0 $((SERVICES - 1))); do
  s=$(printf 's%012d' $i)
  "$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service $s --caps 1000000 --sessions 100000 \
    --subscribers 100000 --cluster spread --id L$i >"$W/lic/$s.lic"
done
farm $NODES spread
for f in "$W"/lic/*.lic; do ctl license add "$f" >/dev/null; done
sleep 2
# What the licences cost each member idle: its CPU over 10 s without traffic.
idle=()
for p in "${NODEPIDS[@]}"; do idle+=("$(cpu_ticks $p)"); done
sleep 10
tick=$(getconf CLK_TCK)
for i in "${!NODEPIDS[@]}"; do
  idle[$i]=$(python3 -c "print(round(($(cpu_ticks ${NODEPIDS[$i]}) - ${idle[$i]}) / $tick / 10 * 100, 1))")
done
echo "$NODES member(s), $SERVICES services, idle: CPU of each member over 10 s, % of a core: ${idle[*]}"
RP=${RESPS[0]##*:}
profile() { # seconds out
  curl -s -H "Authorization: Bearer $(cat "$W/keys/admin.token")" "${ADMINS[${PROFILE:-0}]}/debug/pprof/profile?seconds=$1" -o "$2"
}
early() { curl -s "${ADMINS[$1]}/metrics" | awk '/^capsgate_cluster_early_plans_total/{print $2}'; }
measure() { # label, benchmark args...
  local label=$1; shift
  local t0=() e0=() i s0 s1
  for i in "${!NODEPIDS[@]}"; do t0+=("$(cpu_ticks ${NODEPIDS[$i]})"); e0+=("$(early $i)"); done
  s0=$(date +%s.%N)
  profile 4 "$W/$label.pprof" &
  local pp=$!
  local r; r=$(rate $RP 2000000 "$@")
  wait $pp
  s1=$(date +%s.%N)
  local usage=""
  for i in "${!NODEPIDS[@]}"; do
    usage+=" n$((i + 1)) $(python3 -c "d=$s1-$s0; print(f'{($(cpu_ticks ${NODEPIDS[$i]})-${t0[$i]})/$tick/d*100:.0f}% of a core, {($(early $i)-${e0[$i]})/d:.1f} early plans/s')");"
  done
  echo "$label:$usage" >&2
  echo "$r"
}
one=$(measure one ADMIT s000000000000)
all=$(RANGE=$SERVICES measure all ADMIT s__rand_int__)
echo "$NODES member(s), $SERVICES services: ADMIT on n1 (redis-benchmark -c 50 -P 16 -n 2000000): one service $one/s; spread over all $all/s ($(python3 -c "print(round($all/$one,2))")×)"
cp "$W"/one.pprof "$W"/all.pprof "${KEEP:-$W}/" 2>/dev/null || true; cp "$W/bin/capsgate" "${KEEP:-$W}/capsgate.bin" 2>/dev/null || true
for label in one all; do
  echo "n$((${PROFILE:-0} + 1))'s CPU profile, $label (first 4 s):"
  go tool pprof -top "$W/bin/capsgate" "$W/$label.pprof" 2>/dev/null | sed -n '6,16p'
done
