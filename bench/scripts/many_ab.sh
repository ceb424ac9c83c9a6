#!/usr/bin/env bash
# Decisions on a farm holding many services and accounts against an empty
# farm, interleaved so that both see the same machine: farm L (NODES
# members, default 3) holds SERVICES licences (default 1,000) and ACCOUNTS
# token allocations (default 100,000), made as many.sh makes them; farm E
# (as many members) holds the first licence alone. Then, for ROUNDS rounds
# (default 6), three slices of N ADMITs each on n1 (redis-benchmark -c 50
# -P 16, default 1,000,000): E on its one service, L on that service, L
# spread over every service at random; the order turns each round. Each
# farm runs only in its own slices (SIGSTOP otherwise), so that it takes
# no CPU in the other's, and what it does behind its requests (the others'
# reports, plans, the ledger) is done, and counted, in its own. Prints
# every slice's rate and n1's CPU a request (SETTLE: see slice), then L's
# rates against E's over all rounds (the sums of requests over the sums
# of time) and round by round.
#
#   bench/scripts/many_ab.sh [NODES] [SERVICES] [ACCOUNTS] [N] [ROUNDS]
#
# Needs: go, redis-benchmark, redis-cli, python3.
source "$(dirname "$0")/lib.sh"
NODES=${1:-3}
SERVICES=${2:-1000}
ACCOUNTS=${3:-100000}
N=${4:-1000000}
ROUNDS=${5:-6}
tick=$(getconf CLK_TCK)
vendor_keys
mkdir -p "$W/lic"
for i in $(seq 0 $((SERVICES - 1))); do
  s=$(printf 's%012d' $i)
  "$W/bin/capslicense" issue --key "$W/keys/vendor.key" --service $s --caps 1000000 --sessions 100000 \
    --subscribers 100000 --tokens 1000000000000 --cluster many --id L$i >"$W/lic/$s.lic"
done
# The loaded farm, set up by many.sh's script (it also prints its sizes).
farm $NODES many
python3 -u bench/scripts/many_setup.py "$W/lic" "$(cat "$W/keys/admin.token")" "$SERVICES" "$ACCOUNTS" \
  "$(IFS=,; echo "${ADMINS[*]}")" "$(IFS=,; echo "${NODEPIDS[*]}")" "$(IFS=,; echo "${DIRS[*]}")" |
  grep -v 'allocated,\|loaded,'
LPIDS=("${NODEPIDS[@]}"); LPORT=${RESPS[0]##*:}
# The empty farm: new data directories and ports, the first licence.
# (farm and ctl work under $W: E's under $W/e, and the clean-up, which
# removes $W, is given the root back whatever fails meanwhile.)
W0=$W
trap 'W=$W0; cleanup' EXIT
W=$W/e
mkdir -p "$W/bin" "$W/keys"
cp "$W0"/bin/* "$W/bin/"; cp "$W0"/keys/* "$W/keys/"
farm $NODES many # the same cluster id (the licence is bound to it), joined to nothing of L
ctl license add "$W0/lic/s000000000000.lic" >/dev/null
holds_licence s000000000000
EPIDS=("${NODEPIDS[@]}"); EPORT=${RESPS[0]##*:}
W=$W0
sleep 10 # both farms settle
# slice PIDS-VAR PORT CMD...: "rate µs-of-n1's-CPU-a-request" for N
# requests, with the farm in PIDS-VAR running alone, SETTLE seconds
# (default 3) after it was let go on: what a farm does on waking (the
# timers that fell due while it was stopped, its members' suspicion of
# each other) is not counted in either farm's slices.
slice() {
  local -n pids=$1
  local p=$2; shift 2
  kill -CONT "${pids[@]}"
  sleep "${SETTLE:-3}"
  local c0 r c1; c0=$(cpu_ticks ${pids[0]})
  r=$(rate $p $N "$@")
  c1=$(cpu_ticks ${pids[0]})
  kill -STOP "${pids[@]}"
  [ -n "$r" ] || { echo "slice on port $p ($*): redis-benchmark gave no rate" >&2; return 1; }
  echo "$r $(python3 -c "print(round(($c1-$c0)/$tick*1e6/$N, 2))")"
}
kill -STOP "${LPIDS[@]}" "${EPIDS[@]}"
out=""
for r in $(seq 1 "$ROUNDS"); do
  declare -A got=()
  order=(e one all)
  case $((r % 3)) in
    2) order=(one all e) ;;
    0) order=(all e one) ;;
  esac
  for k in "${order[@]}"; do
    case $k in
      e) got[e]=$(slice EPIDS $EPORT ADMIT s000000000000) ;;
      one) got[one]=$(slice LPIDS $LPORT ADMIT s000000000000) ;;
      all) got[all]=$(RANGE=$SERVICES slice LPIDS $LPORT ADMIT s__rand_int__) ;;
    esac
    [ -n "${got[$k]}" ] || { echo "round $r: the $k slice failed"; exit 1; }
  done
  out+="$r ${got[e]} ${got[one]} ${got[all]}"$'\n'
  unset got
done
kill -CONT "${LPIDS[@]}" "${EPIDS[@]}"
python3 - "$N" "$SERVICES" "$ACCOUNTS" <<PY
import sys
n, services, accounts = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows = [l.split() for l in """$out""".strip().splitlines()]
print("| round | empty farm: rate, n1's CPU a request | %s services, %s accounts: one service | spread over the %s | one ÷ empty | spread ÷ empty |" % (services, accounts, services))
print("|---|---|---|---|---|---|")
te = to = ta = 0.0
for r, e, ec, o, oc, a, ac in rows:
    e, o, a = float(e), float(o), float(a)
    te += n / e; to += n / o; ta += n / a
    print("| %s | %s/s, %s µs | %s/s, %s µs | %s/s, %s µs | %.2f | %.2f |" % (r, format(round(e), ","), ec, format(round(o), ","), oc, format(round(a), ","), ac, o / e, a / e))
k = n * len(rows)
print("| all %d | %s/s | %s/s | %s/s | %.2f | %.2f |" % (len(rows), format(round(k / te), ","), format(round(k / to), ","), format(round(k / ta), ","), te / to, te / ta))
PY
