#!/usr/bin/env bash
# bench/peers/smoke.sh: a quick check that every path of run.sh works: every
# system in both modes, P=1 and 4, tiny N. Not a measurement; about two
# minutes on 2 cores. Passes when run.sh exits 0, every expected row is there
# with status=ok and all its jobs, and no process it started is left (neither
# one it logged as started nor one whose command line names this check's
# temp dir, under which every server's data dir lies).
#   bench/peers/smoke.sh [run.sh flags, e.g. --no-install --build-dir=DIR]
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/errand-peers-smoke-XXXXXX")" || exit 1
trap 'rm -rf "$TMP"' EXIT
OUT="$TMP/results.txt"
N=200
PACED_N=100

fail() {
  echo "FAIL: $*"
  exit 1
}

TMPDIR="$TMP" "$HERE/run.sh" --n=$N --producers=1,4 --paced-n=$PACED_N --rate=200 \
  --phase-timeout=30 --budget=300 --out="$OUT" "$@" 2> >(tee "$TMP/run.log" >&2)
rc=$?
((rc == 0)) || fail "run.sh exited $rc"
sleep 1 # the tee above

pids=$(sed -n 's/.*started .*, pid \([0-9]*\)$/\1/p; s/.*node pid \([0-9]*\)$/\1/p' "$TMP/run.log")
[[ -n $pids ]] || fail "run.sh logged no server it started"
for pid in $pids; do
  if kill -0 "$pid" 2>/dev/null; then fail "pid $pid is still running: $(ps -o args= -p "$pid")"; fi
done
left=$(ps -eo pid=,args= | grep -F "$TMP" | grep -v grep)
[[ -z $left ]] || fail "processes left behind: $left"

want=0
for row in sync:beanstalkd sync:redis sync:rabbitmq-classic sync:rabbitmq-quorum sync:errand \
  sync:grpc-floor async:beanstalkd async:redis async:nats async:errand async:grpc-floor; do
  mode=${row%%:*}
  system=${row#*:}
  for p in 1 4; do
    phases="enqueue roundtrip paced"
    ((p == 4)) && phases="enqueue drain roundtrip paced"
    for phase in $phases; do
      want=$((want + 1))
      jobs=$N
      [[ $phase == paced ]] && jobs=$PACED_N
      grep -q "^system=$system mode=$mode phase=$phase jobs=$jobs secs=[0-9.]* rate=[1-9][0-9]* .*producers=$p workers=4 .*status=ok" "$OUT" ||
        fail "no ok row for $system $mode $phase P=$p"
    done
  done
done
got=$(grep -c "status=ok" "$OUT")
((got == want)) || fail "$got ok rows, expected $want"
echo "PASS: $got rows ok, no process left"
