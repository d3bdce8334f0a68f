#!/bin/sh
# errand-demo-producer: the demo producer of deploy/docker-compose.yml.
#
# Enqueues ERRAND_DEMO_JOBS jobs (default 10) on ERRAND_DEMO_QUEUE (default
# "demo") of the broker at ERRAND_ADDR, then waits for each one (at most
# ERRAND_DEMO_TIMEOUT, default 60s) and prints its outcome. Exits 0 when every
# job SUCCEEDED, 1 otherwise. It is errandctl and nothing more, so it doubles
# as an example of driving errand from a shell script.
set -u

queue=${ERRAND_DEMO_QUEUE:-demo}
count=${ERRAND_DEMO_JOBS:-10}
timeout=${ERRAND_DEMO_TIMEOUT:-60s}

case "$count" in
  '' | *[!0-9]*)
    echo "errand-demo-producer: ERRAND_DEMO_JOBS must be a whole number, not '$count'" >&2
    exit 1
    ;;
esac

ids=""
i=1
while [ "$i" -le "$count" ]; do
  # errandctl prints the new job's id; the payload becomes the job's stdin.
  if ! id=$(errandctl enqueue "$queue" "hello $i from the demo producer"); then
    echo "errand-demo-producer: enqueue $i on $queue failed" >&2
    exit 1
  fi
  ids="$ids $id"
  i=$((i + 1))
done
echo "enqueued $count jobs on queue $queue"

ok=0
for id in $ids; do
  # Exit 0: SUCCEEDED; 7: DEAD or CANCELLED; 5: still not finished.
  out=$(errandctl wait "$id" --timeout "$timeout")
  rc=$?
  state=$(printf '%s\n' "$out" | sed -n 's/^state: *//p')
  result=$(printf '%s\n' "$out" | sed -n 's/^result: *//p')
  echo "job $id: ${state:-no answer (errandctl exit $rc)} ${result}"
  [ "$rc" -eq 0 ] && ok=$((ok + 1))
done
echo "demo producer: $ok of $count jobs succeeded"
[ "$ok" -eq "$count" ]
