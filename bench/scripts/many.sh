#!/usr/bin/env bash
# Many services and accounts over a farm of NODES members (default 3):
# SERVICES licences (default 1,000, one service each, s000000000000 ...)
# loaded on n1, and ACCOUNTS token allocations (default 100,000, spread
# evenly over the services) made through n1's admin API. Prints how long
# the set-up took to reach every member, each member's /metrics size, its
# demand report size and gossip bytes a second (idle), the ADMIT rate over
# every service against the rate on one service (redis-benchmark -c 50
# -P 16, the same run), what the data directories grew by over a ledger
# interval, and the RSS of each member; then each member's CPU over 10 s
# idle and n1's CPU profile of that and of the two runs (KEEP=DIR
# keeps the profiles, n1's heap profiles at the start and end of the idle
# window and the capsgate binary in DIR: go tool pprof -sample_index
# alloc_space -base heap0.pprof gives what it allocated idle; PROFILE=K
# profiles member K instead, 0 being n1);
# then each member's CPU idle after a kill -9 of the farm and a start on
# its data directories, and the two rates again on that farm once settled.
# Each rate comes with each member's CPU while it ran. Before the set-up,
# the same farm with the first licence alone (the empty farm) is measured
# the same way, its idle CPU and its ADMIT rate, and a fresh empty farm
# again at the end: the loaded farm's rates are given against both.
#
#   bench/scripts/many.sh [NODES] [SERVICES] [ACCOUNTS]
#
# Needs: go, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
NODES=${1:-3}
SERVICES=${2:-1000}
ACCOUNTS=${3:-100000}
vendor_keys
mkdir -p "$W/lic"
t0=$(date +%s.%N)
for i in $(seq 0 $((SERVICES - 1))); do
  s=$(printf 's%012d' $i)
  "$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service $s --caps 1000000 --sessions 100000 \
    --subscribers 100000 --tokens 1000000000000 --cluster many --id L$i >"$W/lic/$s.lic"
done
echo "issued $SERVICES licences in $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
farm $NODES many
RP=${RESPS[0]##*:}
tick=$(getconf CLK_TCK)
# cpu_mark, then cpu_read: each member's CPU between the two, % of a
# core, in CPU.
cpu_mark() {
  T0=()
  for p in "${NODEPIDS[@]}"; do T0+=("$(cpu_ticks $p)"); done
  TS=$(date +%s.%N)
}
cpu_read() {
  local i e
  e=$(date +%s.%N)
  CPU=()
  for i in "${!NODEPIDS[@]}"; do
    CPU+=("$(python3 -c "print(round(($(cpu_ticks ${NODEPIDS[$i]}) - ${T0[$i]}) / $tick / ($e - $TS) * 100, 1))")")
  done
}
# idle_cpu SECONDS: each member's CPU over SECONDS, % of a core.
idle_cpu() {
  cpu_mark
  sleep "$1"
  cpu_read
  echo "${CPU[*]}"
}
# rate_cpu N ARGS...: the rate on n1 (as rate) in RATE, and each member's
# CPU while it ran, % of a core, in CPU.
rate_cpu() {
  cpu_mark
  RATE=$(rate $RP "$@")
  cpu_read
}
profile() { # seconds out
  curl -s -H "Authorization: Bearer $(cat "$W/keys/admin.token")" "${ADMINS[${PROFILE:-0}]}/debug/pprof/profile?seconds=$1" -o "$2"
}
heap() { # out (after a collection: a heap profile says what the last one saw)
  curl -s -H "Authorization: Bearer $(cat "$W/keys/admin.token")" "${ADMINS[${PROFILE:-0}]}/debug/pprof/heap?gc=1" -o "$1"
}
# empty_farm WHEN: loads the first licence alone on the farm, waits for
# every member to hold it, and measures the members' idle CPU (n1 profiled
# meanwhile, as the loaded farm's is) and the ADMIT rate on n1 (EMPTY).
empty_farm() {
  ctl license add "$W/lic/s000000000000.lic" >/dev/null
  holds_licence s000000000000
  sleep 2
  profile 10 "$W/empty-$1.pprof" &
  local pp=$!
  echo "empty farm (one licence), $1: idle CPU of each member over 10 s, % of a core: $(idle_cpu 10)"
  wait $pp
  rate_cpu 1000000 ADMIT s000000000000
  EMPTY=$RATE
  echo "empty farm, $1: ADMIT on n1 (redis-benchmark -c 50 -P 16 -n 1000000): $EMPTY/s; each member's CPU meanwhile, % of a core: ${CPU[*]}"
}
empty_farm before
empty=$EMPTY
python3 -u bench/scripts/many_setup.py "$W/lic" "$(cat "$W/keys/admin.token")" "$SERVICES" "$ACCOUNTS" \
  "$(IFS=,; echo "${ADMINS[*]}")" "$(IFS=,; echo "${NODEPIDS[*]}")" "$(IFS=,; echo "${DIRS[*]}")"
[ -z "${KEEP:-}" ] || heap "$KEEP/heap0.pprof"
profile 10 "$W/idle.pprof" &
pp=$!
echo "idle: CPU of each member over 10 s, % of a core: $(idle_cpu 10)"
wait $pp
[ -z "${KEEP:-}" ] || heap "$KEEP/heap1.pprof"
profile 4 "$W/one.pprof" &
pp=$!
rate_cpu 1000000 ADMIT s000000000000
one=$RATE
onecpu=${CPU[*]}
wait $pp
profile 4 "$W/all.pprof" &
pp=$!
RANGE=$SERVICES rate_cpu 1000000 ADMIT s__rand_int__
all=$RATE
allcpu=${CPU[*]}
wait $pp
echo "ADMIT on n1 (redis-benchmark -c 50 -P 16 -n 1000000): one service $one/s; spread over all $SERVICES services $all/s ($(python3 -c "print(round($all/$one,2))")×); each member's CPU meanwhile, % of a core: $onecpu and $allcpu"
if [ -n "${KEEP:-}" ]; then
  heap "$KEEP/heap.pprof"
  cp "$W"/idle.pprof "$W"/one.pprof "$W"/all.pprof "$KEEP/"; cp "$W/bin/capsgate" "$KEEP/capsgate.bin"
fi
for label in idle one all; do
  echo "n$((${PROFILE:-0} + 1))'s CPU profile, $label:"
  go tool pprof -top -cum "$W/bin/capsgate" "$W/$label.pprof" 2>/dev/null | sed -n '6,20p'
done
# The loaded farm after a kill -9 of every member and a start on the same
# data directories (licences, allocations and token reservations come
# back; each pool counts as charged what its reservation held): each
# member's CPU idle once the farm has settled, and the licences n1 plans
# a second meanwhile (capsgate_cluster_planned_total).
for p in "${NODEPIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
PIDS=()
sleep 1
farm $NODES many
sleep 90
planned() { curl -s "${ADMINS[0]}/metrics" | awk '/^capsgate_cluster_planned_total/{print $2}'; }
p0=$(planned)
cpu=$(idle_cpu 10)
echo "restarted (kill -9, 90 s to settle): idle CPU of each member over 10 s, % of a core: $cpu; n1 planned $(python3 -c "print(round(($(planned) - $p0) / 10))") licences a second"
RP=${RESPS[0]##*:}
rate_cpu 1000000 ADMIT s000000000000
rone=$RATE
ronecpu=${CPU[*]}
RANGE=$SERVICES rate_cpu 1000000 ADMIT s__rand_int__
rall=$RATE
echo "restarted, settled: ADMIT on n1: one service $rone/s, spread $rall/s; each member's CPU meanwhile, % of a core: $ronecpu and ${CPU[*]}"
# A fresh empty farm after the loaded one: the rates are given against
# both, each measured in this run (the machine's speed moves between runs
# as much as the effect, and within a run too).
for p in "${NODEPIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
PIDS=() # the exit's clean-up kills the new farm's, not these again
sleep 1
rm -rf "${DIRS[@]}"
farm $NODES many
RP=${RESPS[0]##*:}
empty_farm after
ratio() { python3 -c "print(round($1/$2,2))"; }
echo "against the empty farm before ($empty/s) and after ($EMPTY/s): one service $(ratio $one $empty)× and $(ratio $one $EMPTY)×, spread $(ratio $all $empty)× and $(ratio $all $EMPTY)×; restarted and settled, one service $(ratio $rone $empty)× and $(ratio $rone $EMPTY)×, spread $(ratio $rall $empty)× and $(ratio $rall $EMPTY)×"
