#!/bin/sh
# errand-bench smoke test: spawns its own broker, runs every phase with a tiny
# N, and checks the exit code and one machine-readable line per phase.
# usage: smoke.sh ERRAND_BENCH ERRAND_BROKER
set -u
bench=$1
broker=$2
for mode in sync async; do
  out=$("$bench" --spawn-broker="$broker" --mode=$mode --n=200 --producers=2 --workers=2 \
        --rate=500 --paced-n=100 --phases=enqueue,drain,roundtrip,paced --phase-timeout=60 2>&1)
  rc=$?
  echo "$out"
  if [ $rc -ne 0 ]; then
    echo "FAIL: errand-bench --mode=$mode exited $rc"
    exit 1
  fi
  for phase in enqueue drain roundtrip paced; do
    if ! echo "$out" | grep -q "^system=errand mode=$mode phase=$phase jobs=[0-9]* .*status=ok"; then
      echo "FAIL: no ok line for mode=$mode phase=$phase"
      exit 1
    fi
  done
done
echo "PASS"
