#!/bin/sh
# errand-bench smoke test: spawns its own broker, runs every phase with a tiny
# N, and checks the exit code and one machine-readable line per phase (per
# producer count for the sweep phases), then the scale phases at a tiny scale
# and the flag checks; then every phase against errand-floor-broker (the
# gRPC floor) in both modes, whose lines must say system=grpc-floor.
# usage: smoke.sh ERRAND_BENCH ERRAND_BROKER ERRAND_FLOOR_BROKER
set -u
bench=$1
broker=$2
floor=$3

# has OUT PATTERN WHAT: fails the test unless OUT has a line matching PATTERN.
has() {
  if ! echo "$1" | grep -q "$2"; then
    echo "FAIL: $3"
    exit 1
  fi
}

# run WHAT ARGS...: runs errand-bench with its own $server (errand-broker
# unless set) and ARGS, keeps its output in $out and prints it; fails the
# test unless it exits 0.
server=$broker
run() {
  what=$1
  shift
  out=$("$bench" --spawn-broker="$server" "$@" 2>&1)
  rc=$?
  echo "$out"
  if [ $rc -ne 0 ]; then
    echo "FAIL: errand-bench $what exited $rc"
    exit 1
  fi
}

for mode in sync async; do
  run "--mode=$mode" --mode=$mode --n=200 --producers=1,2 --workers=2 \
      --rate=500 --paced-n=100 --batch-size=50 --batch-n=1000 \
      --phases=enqueue,drain,roundtrip,paced,batch --phase-timeout=60
  for phase in enqueue roundtrip; do
    for p in 1 2; do
      has "$out" "^system=errand mode=$mode phase=$phase jobs=200 .* broker_cpu_us_per_job=[0-9][0-9.]* bench_cpu_us_per_job=[0-9][0-9.]* broker_csw_per_job=[0-9][0-9.]* bench_csw_per_job=[0-9][0-9.]* producers=$p .*status=ok" \
          "no ok line (with CPU and context switches per job) for mode=$mode phase=$phase producers=$p"
    done
  done
  for phase in drain paced; do
    has "$out" "^system=errand mode=$mode phase=$phase jobs=[0-9]* .* producers=1 .*status=ok" \
        "no ok line for mode=$mode phase=$phase"
  done
  for p in 1 2; do
    has "$out" "^system=errand mode=$mode phase=batch jobs=1000 .* producers=$p .*acked=$mode status=ok batch_size=50$" \
        "no ok line for mode=$mode phase=batch producers=$p"
  done
done

# The worker credit modes other than the default (with-complete): each
# completes every job.
for credits in ack early; do
  run "--credits=$credits" --mode=sync --n=100 --producers=2 --workers=2 \
      --credits=$credits --phases=enqueue,drain,roundtrip --phase-timeout=60
  for phase in drain roundtrip; do
    has "$out" "^system=errand mode=sync phase=$phase jobs=100 .* credits=$credits .*status=ok" \
        "no ok line for credits=$credits phase=$phase"
  done
done

# The default phase set: the five phases, in order, nothing else.
run "with the default phases" --mode=async --n=50 --paced-n=20 --rate=500 \
    --batch-n=200 --phase-timeout=60
phases=$(echo "$out" | sed -n 's/^system=errand mode=async phase=\([a-z-]*\) .*status=ok.*/\1/p' | tr '\n' ' ')
if [ "$phases" != "enqueue drain roundtrip paced batch " ]; then
  echo "FAIL: the default phases printed ok lines for '$phases'"
  exit 1
fi

# Scale phases, tiny: each spawns its own broker. scale-ready restarts it
# after SIGKILL and must find every job again.
run "scale phases" --mode=async \
    --phases=scale-ready,scale-fanout,scale-waiters --scale-n=3000 --subscribers=20 \
    --scale-channels=3 --fanout-jobs=10 --fanout-rate=100 --waiters=100 --phase-timeout=60
has "$out" "^system=errand mode=async phase=scale-ready jobs=3000 .*status=ok .* rss_kb=[1-9][0-9]* hwm_kb=[1-9][0-9]* restart_signal=kill .* first_lease_ms=[0-9]* .* recovered_jobs=3000$" \
    "no ok scale-ready line"
has "$out" "^system=errand mode=async phase=scale-fanout jobs=10 .*status=ok subscribers=20 channels=3 events=200 missing=0 " \
    "no ok scale-fanout line"
has "$out" "^system=errand mode=async phase=scale-waiters jobs=100 .*status=ok waiters=100 channels=3 .* answered=100 not_done=0$" \
    "no ok scale-waiters line"

# A clean stop before the restart (SIGTERM) also finds every job.
run "scale-ready --restart-signal=term" --mode=sync --phases=scale-ready --scale-n=1500 \
    --restart-signal=term --phase-timeout=60
has "$out" "^system=errand mode=sync phase=scale-ready jobs=1500 .*acked=sync status=ok .* restart_signal=term .* recovered_jobs=1500$" \
    "no ok scale-ready line for --restart-signal=term"

# The gRPC floor: every phase, labelled system=grpc-floor, each credit mode
# and unpacked acks (it answers each shape errand-broker does).
server=$floor
for shape in --credits=with-complete --credits=ack --credits=early --packed-acks=false; do
  run "errand-floor-broker $shape" --mode=async --n=200 --producers=2 \
      --workers=2 --rate=500 --paced-n=100 --batch-size=50 --batch-n=1000 "$shape" \
      --phases=enqueue,drain,roundtrip,paced,batch --phase-timeout=60
  for phase in enqueue drain roundtrip paced batch; do
    has "$out" "^system=grpc-floor mode=async phase=$phase jobs=[0-9]* .*status=ok" \
        "no ok grpc-floor line for phase=$phase with $shape"
  done
  has "$out" "errand-bench summary: errand-floor-broker (the gRPC floor" \
      "the summary does not name the floor ($shape)"
done
# Sync mode adds its fsynced log: every phase ok, acknowledged as sync, with
# fsyncs counted.
run "errand-floor-broker --mode=sync" --mode=sync --n=200 --producers=2 --workers=2 \
    --rate=500 --paced-n=100 --batch-size=50 --batch-n=1000 \
    --phases=enqueue,drain,roundtrip,paced,batch --phase-timeout=60
for phase in enqueue roundtrip paced batch; do
  has "$out" "^system=grpc-floor mode=sync phase=$phase jobs=[0-9]* .* fsyncs=[1-9][0-9]* .*server_commit=sync acked=sync status=ok" \
      "no ok grpc-floor sync line with fsyncs for phase=$phase"
done
has "$out" "^system=grpc-floor mode=sync phase=drain jobs=200 .*status=ok" \
    "no ok grpc-floor sync line for phase=drain"
# Its log needs a directory.
out=$("$floor" --commit=sync 2>&1)
rc=$?
if [ $rc -ne 2 ]; then
  echo "FAIL: errand-floor-broker --commit=sync without --data-dir exited $rc, expected 2"
  exit 1
fi
has "$out" "commit=sync needs --data-dir" "no message for --commit=sync without --data-dir"
server=$broker

# --help names the floor.
out=$("$bench" --help 2>&1)
has "$out" "errand-floor-broker measures the gRPC floor" "--help does not name the floor"

# Bad flags: exit code 2 and a message naming the problem.
bad() {
  out=$("$bench" "$@" 2>&1)
  rc=$?
  if [ $rc -ne 2 ]; then
    echo "FAIL: errand-bench $* exited $rc, expected 2"
    exit 1
  fi
}
bad --producers=4,0
has "$out" "producers: 0 is not a count" "no message for --producers=4,0"
bad --phases=scale-ready
has "$out" "phase scale-ready starts a broker of its own: it needs --spawn-broker" \
    "no message for a scale phase without --spawn-broker"
bad --phases=nope
has "$out" "unknown phase nope" "no message for an unknown phase"
bad --restart-signal=hup
has "$out" "restart-signal must be kill or term" "no message for --restart-signal=hup"
echo "PASS"
