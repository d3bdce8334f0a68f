#!/usr/bin/env bash
# bench/peers/run.sh: issue 6's job round trip workload on beanstalkd, Redis
# streams, RabbitMQ (classic and quorum queues) and NATS JetStream, then on
# errand, all on 127.0.0.1, and one table of the figures side by side; and the
# gRPC floor (errand-floor-broker: errand-bench's calls answered from memory,
# no broker work), which says what any broker serving this workload over
# gRPC with errand's client could reach at best.
#
#   bench/peers/run.sh [--n=20000] [--producers=1,4,16,64] [--workers=4]
#       [--phases=enqueue,drain,roundtrip,paced] [--modes=sync,async]
#       [--systems=beanstalkd,redis,rabbitmq-classic,rabbitmq-quorum,nats,errand,grpc-floor]
#       [--rate=1000] [--paced-n=5000] [--phase-timeout=60] [--budget=840]
#       [--build-dir=build] [--no-install] [--no-build] [--out=FILE] [--keep]
#
# For every mode it starts each peer from its Debian package with a fresh data
# directory under a temp dir, runs peer-bench (bench/peers/peer_bench.cc) once
# per producer count, stops the peer by PID and checks it is gone; then it runs
# errand-bench against a fresh errand-broker per mode and producer count, and
# against a fresh errand-floor-broker per mode and producer count (sync: its
# log fsynced by group commit).
#   sync   (acknowledged after fsync): beanstalkd -b DIR -f0; Redis appendonly
#          with appendfsync always; RabbitMQ durable queue, persistent
#          messages, publisher confirms (classic and quorum); errand and the
#          floor --commit=sync.
#          NATS: '-' (nats-server 2.9 has no setting to fsync each write).
#   async  (acknowledged before fsync): beanstalkd -f1000; Redis appendfsync
#          everysec; NATS JetStream file store; errand and the floor
#          --commit=async.
#          RabbitMQ: '-' (no setting confirms a persistent message before its
#          fsync: a confirm waits for the disk or for the consumers).
# The whole run is bounded by --budget seconds (plus starting and stopping the
# servers): each benchmark invocation gets 1.5 times its fair share of what
# is left and is cut off when its time is up; rows it did not finish show 'cut'.
#
# Installs what is missing with apt-get (Debian; root or sudo), builds
# peer-bench, errand-bench, errand-broker and errand-floor-broker into
# --build-dir (relative to the repository root unless absolute) with -j2.
# Every line of every benchmark is kept in --out (default: a file in the temp
# dir, printed at the end).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

N=20000
PRODUCERS=1,4,16,64
WORKERS=4
PHASES=enqueue,drain,roundtrip,paced
MODES=sync,async
SYSTEMS=beanstalkd,redis,rabbitmq-classic,rabbitmq-quorum,nats,errand,grpc-floor
RATE=1000
PACED_N=5000
PHASE_TIMEOUT=60
BUDGET=840
BUILD_DIR=build
INSTALL=1
BUILD=1
OUT=""
KEEP=0

usage() { # the comment at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

die() {
  printf 'run.sh: %s\n' "$*" >&2
  exit 2
}

log() { printf '==> %s\n' "$*" >&2; }

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

for arg in "$@"; do
  case "$arg" in
    --n=*) N="${arg#*=}" ;;
    --producers=*) PRODUCERS="${arg#*=}" ;;
    --workers=*) WORKERS="${arg#*=}" ;;
    --phases=*) PHASES="${arg#*=}" ;;
    --modes=*) MODES="${arg#*=}" ;;
    --systems=*) SYSTEMS="${arg#*=}" ;;
    --rate=*) RATE="${arg#*=}" ;;
    --paced-n=*) PACED_N="${arg#*=}" ;;
    --phase-timeout=*) PHASE_TIMEOUT="${arg#*=}" ;;
    --budget=*) BUDGET="${arg#*=}" ;;
    --build-dir=*) BUILD_DIR="${arg#*=}" ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --out=*) OUT="${arg#*=}" ;;
    --keep) KEEP=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown flag '$arg' (see --help)" ;;
  esac
done

is_count "$N" || die "--n must be a positive integer (got '$N')"
is_count "$WORKERS" || die "--workers must be a positive integer (got '$WORKERS')"
is_count "$PACED_N" || die "--paced-n must be a positive integer (got '$PACED_N')"
is_count "$PHASE_TIMEOUT" || die "--phase-timeout must be a positive integer (got '$PHASE_TIMEOUT')"
is_count "$BUDGET" || die "--budget must be a positive integer of seconds (got '$BUDGET')"
is_count "$RATE" || die "--rate must be a positive integer of jobs/s (got '$RATE')"
IFS=, read -r -a P_LIST <<<"$PRODUCERS"
((${#P_LIST[@]} > 0)) || die "--producers is empty"
for p in "${P_LIST[@]}"; do is_count "$p" || die "--producers: '$p' is not a positive integer"; done
IFS=, read -r -a PHASE_LIST <<<"$PHASES"
((${#PHASE_LIST[@]} > 0)) || die "--phases is empty"
for ph in "${PHASE_LIST[@]}"; do
  case "$ph" in enqueue | drain | roundtrip | paced) ;; *) die "unknown phase '$ph'" ;; esac
done
IFS=, read -r -a MODE_LIST <<<"$MODES"
((${#MODE_LIST[@]} > 0)) || die "--modes is empty"
for m in "${MODE_LIST[@]}"; do
  case "$m" in sync | async) ;; *) die "unknown mode '$m' (sync or async)" ;; esac
done
IFS=, read -r -a SYSTEM_LIST <<<"$SYSTEMS"
((${#SYSTEM_LIST[@]} > 0)) || die "--systems is empty"
for s in "${SYSTEM_LIST[@]}"; do
  case "$s" in
    beanstalkd | redis | rabbitmq-classic | rabbitmq-quorum | nats | errand | grpc-floor) ;;
    *) die "unknown system '$s' (beanstalkd, redis, rabbitmq-classic, rabbitmq-quorum, nats, errand, grpc-floor)" ;;
  esac
done
[[ "$BUILD_DIR" = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
DRAIN_P_DEFAULT=${P_LIST[0]}
for p in "${P_LIST[@]}"; do [[ $p == 4 ]] && DRAIN_P_DEFAULT=4; done

want() { # want SYSTEM: was it asked for?
  local s
  for s in "${SYSTEM_LIST[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  return 1
}
want_rabbitmq() { want rabbitmq-classic || want rabbitmq-quorum; }

# ---------------------------------------------------------------------------
# Packages.

install_packages() {
  local pkgs=(libhiredis-dev librabbitmq-dev libnats-dev)
  want beanstalkd && pkgs+=(beanstalkd)
  want redis && pkgs+=(redis-server)
  want_rabbitmq && pkgs+=(rabbitmq-server)
  want nats && pkgs+=(nats-server)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]}, and no apt-get (Debian only)"
  local SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  log "installing: ${missing[*]}"
  # The packages must not start their services on the default ports: a
  # policy-rc.d that says no, only while we install, unless one is there.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
    own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  ((own_policy)) && $SUDO rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed"
}

((INSTALL)) && install_packages

if ((BUILD)); then
  log "building peer-bench, errand-bench, errand-broker, errand-floor-broker in $BUILD_DIR"
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake failed"
  targets=(--target errand-bench errand-broker errand-floor-broker)
  for s in "${SYSTEM_LIST[@]}"; do [[ $s != errand && $s != grpc-floor ]] && targets+=(peer-bench) && break; done
  cmake --build "$BUILD_DIR" -j2 "${targets[@]}" >/dev/null || die "build failed"
fi
PEER_BENCH="$BUILD_DIR/bench/peer-bench"
ERRAND_BENCH="$BUILD_DIR/bench/errand-bench"
ERRAND_BROKER="$BUILD_DIR/broker/errand-broker"
ERRAND_FLOOR="$BUILD_DIR/bench/errand-floor-broker"
for s in "${SYSTEM_LIST[@]}"; do
  if [[ $s == errand ]]; then
    [[ -x $ERRAND_BENCH && -x $ERRAND_BROKER ]] || die "no $ERRAND_BENCH or $ERRAND_BROKER"
  elif [[ $s == grpc-floor ]]; then
    [[ -x $ERRAND_BENCH && -x $ERRAND_FLOOR ]] || die "no $ERRAND_BENCH or $ERRAND_FLOOR"
  else
    [[ -x $PEER_BENCH ]] || die "no $PEER_BENCH (needs libhiredis-dev, librabbitmq-dev, libnats-dev)"
  fi
done

# ---------------------------------------------------------------------------
# Processes we start: every one is stopped by its PID, whatever happens.

WORK="$(mktemp -d "${TMPDIR:-/tmp}/errand-peers-XXXXXX")" || die "mktemp failed"
RESULTS="${OUT:-$WORK/results.txt}"
: >"$RESULTS" || die "cannot write $RESULTS"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
declare -A STARTED=() # pid -> what

track() { # track PID WHAT: stopped at exit if still running
  STARTED[$1]=$2
  log "started $2, pid $1"
}

# stop_pid PID WHAT [SECS]: SIGTERM, up to SECS (10) for it to go, then SIGKILL.
stop_pid() {
  local pid=$1 what=$2 secs=${3:-10} i
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$what (pid $pid) still running after ${secs}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  unset "STARTED[$pid]"
}

cleanup() {
  local pid
  for pid in "${!STARTED[@]}"; do stop_pid "$pid" "${STARTED[$pid]}" 5; done
  if ((KEEP)); then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port on 127.0.0.1 (nothing answers on it).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
      echo "$p"
      return
    }
  done
}

# wait_port PID PORT SECS: until PORT accepts connections; fails if PID dies.
wait_port() {
  local pid=$1 port=$2 secs=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------
# Time budget: each invocation gets a share of what is left.

START=$SECONDS
END=$((START + BUDGET))
TOTAL_RUNS=0
RUNS_DONE=0

count_runs() {
  local m s
  for m in "${MODE_LIST[@]}"; do
    for s in "${SYSTEM_LIST[@]}"; do
      applies "$s" "$m" && TOTAL_RUNS=$((TOTAL_RUNS + ${#P_LIST[@]}))
    done
  done
}

# applies SYSTEM MODE: does the system have this mode at all?
applies() {
  case "$1/$2" in
    nats/sync | rabbitmq-classic/async | rabbitmq-quorum/async) return 1 ;;
  esac
  return 0
}

# Seconds the next invocation may take: 1.5 times its fair share of what is
# left (time the earlier ones did not use goes to the later ones, errand's
# last), at least 20 s, at most every phase's timeout, never past the end.
slot_secs() {
  local left=$((END - SECONDS)) runs_left=$((TOTAL_RUNS - RUNS_DONE))
  ((runs_left < 1)) && runs_left=1
  local cap=$((${#PHASE_LIST[@]} * (PHASE_TIMEOUT + 5) + 30))
  local share=$((3 * left / (2 * runs_left)))
  ((share > cap)) && share=$cap
  ((share < 20)) && share=20
  ((share > left)) && share=$left
  echo "$share"
}

# The drain phase has no producers, so it runs at one producer count only:
# 4 when that is in the list, else the first.
DRAIN_P=$DRAIN_P_DEFAULT
phases_for() { # phases_for P: --phases for this producer count
  local out="" ph
  for ph in "${PHASE_LIST[@]}"; do
    [[ $ph == drain && $1 != "$DRAIN_P" ]] && continue
    out="${out:+$out,}$ph"
  done
  echo "$out"
}

# run_bench SYSTEM MODE P CMD...: runs one benchmark invocation in its time
# slot, keeps its machine-readable lines, and marks the rows it did not finish.
run_bench() {
  local system=$1 mode=$2 p=$3
  shift 3
  local slot
  slot=$(slot_secs)
  PHASES_NOW=$(phases_for "$p")
  RUNS_DONE=$((RUNS_DONE + 1))
  local log_file="$LOGS/$system-$mode-p$p.log"
  if ((slot <= 0)); then
    log "$system $mode P=$p: skipped, the --budget of ${BUDGET}s is spent"
  else
    log "$system $mode P=$p (up to ${slot}s)"
    timeout --kill-after=5 "$slot" "$@" >"$log_file" 2>&1
    local rc=$?
    ((rc == 124 || rc == 137)) && log "$system $mode P=$p: cut off after ${slot}s"
    ((rc != 0 && rc != 124 && rc != 137)) && log "$system $mode P=$p: exit $rc; $(grep -m1 '^#' "$log_file")"
    grep "^system=$system mode=$mode phase=" "$log_file" >>"$RESULTS"
  fi
  local ph
  for ph in ${PHASES_NOW//,/ }; do
    grep -q "^system=$system mode=$mode phase=$ph .*producers=$p " "$RESULTS" ||
      echo "system=$system mode=$mode phase=$ph producers=$p workers=$WORKERS status=cut" >>"$RESULTS"
  done
}

peer_bench() { # peer_bench SYSTEM MODE PORT SERVER_PID
  local system=$1 mode=$2 port=$3 spid=$4 p
  for p in "${P_LIST[@]}"; do
    run_bench "$system" "$mode" "$p" "$PEER_BENCH" --system="$system" --addr="127.0.0.1:$port" \
      --mode="$mode" --n="$N" --producers="$p" --workers="$WORKERS" --rate="$RATE" \
      --paced-n="$PACED_N" --phases="$(phases_for "$p")" --phase-timeout="$PHASE_TIMEOUT" \
      --server-pid="$spid"
  done
}

# Marks every row of a system that could not start.
mark_failed() { # mark_failed SYSTEM MODE
  local p ph
  for p in "${P_LIST[@]}"; do
    RUNS_DONE=$((RUNS_DONE + 1))
    for ph in $(phases_for "$p" | tr , ' '); do
      echo "system=$1 mode=$2 phase=$ph producers=$p workers=$WORKERS status=nostart" >>"$RESULTS"
    done
  done
}

# ---------------------------------------------------------------------------
# The peers.

run_beanstalkd() { # MODE
  local mode=$1 dir="$WORK/beanstalkd-$1" port
  mkdir -p "$dir/binlog"
  port=$(free_port)
  local fsync=-f0
  [[ $mode == async ]] && fsync=-f1000
  beanstalkd -l 127.0.0.1 -p "$port" -b "$dir/binlog" "$fsync" >"$LOGS/beanstalkd-$mode.server.log" 2>&1 &
  local pid=$!
  track "$pid" beanstalkd
  if ! wait_port "$pid" "$port" 20; then
    log "beanstalkd did not start: $(tail -3 "$LOGS/beanstalkd-$mode.server.log")"
    stop_pid "$pid" beanstalkd
    mark_failed beanstalkd "$mode"
    return
  fi
  peer_bench beanstalkd "$mode" "$port" "$pid"
  stop_pid "$pid" beanstalkd
}

run_redis() { # MODE
  local mode=$1 dir="$WORK/redis-$1" port
  mkdir -p "$dir"
  port=$(free_port)
  local fsync=always
  [[ $mode == async ]] && fsync=everysec
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize no --save "" \
    --appendonly yes --appendfsync "$fsync" --logfile "$LOGS/redis-$mode.server.log" \
    >/dev/null 2>&1 &
  local pid=$!
  track "$pid" redis-server
  if ! wait_port "$pid" "$port" 20; then
    log "redis-server did not start: $(tail -3 "$LOGS/redis-$mode.server.log")"
    stop_pid "$pid" redis-server
    mark_failed redis "$mode"
    return
  fi
  peer_bench redis "$mode" "$port" "$pid"
  stop_pid "$pid" redis-server
}

run_nats() { # MODE
  local mode=$1 dir="$WORK/nats-$1" port
  mkdir -p "$dir"
  port=$(free_port)
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir" -l "$LOGS/nats-$mode.server.log" &
  local pid=$!
  track "$pid" nats-server
  if ! wait_port "$pid" "$port" 20; then
    log "nats-server did not start: $(tail -3 "$LOGS/nats-$mode.server.log")"
    stop_pid "$pid" nats-server
    mark_failed nats "$mode"
    return
  fi
  peer_bench nats "$mode" "$port" "$pid"
  stop_pid "$pid" nats-server
}

# RabbitMQ: one node for both queue types, everything of its own under the
# temp dir (data, logs, config, Erlang cookie via HOME), its own epmd on a
# port of its own, every listener on 127.0.0.1.
RMQ_NODE=errandpeers@localhost
rmq_env() { # rmq_env DIR PORT EPMD_PORT DIST_PORT: for a subshell
  local dir=$1 port=$2 epmd=$3 dist=$4
  export HOME="$dir/home" ERL_EPMD_PORT="$epmd" ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_NODENAME="$RMQ_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port"
  export RABBITMQ_DIST_PORT="$dist"
  export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/rabbit.pid"
  export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" # rabbitmqctl's node
  # A crashing node or rabbitmqctl writes its dump here, not into the cwd.
  export ERL_CRASH_DUMP="$dir/erl_crash.dump"
  cd "$dir" || return 1
}

rmq_fail() { # rmq_fail MODE
  local s
  for s in rabbitmq-classic rabbitmq-quorum; do want "$s" && mark_failed "$s" "$1"; done
}

run_rabbitmq() { # MODE
  local mode=$1 dir="$WORK/rabbitmq-$1" port epmd_port dist_port
  mkdir -p "$dir/home" "$dir/log"
  port=$(free_port)
  while :; do
    epmd_port=$(free_port)
    dist_port=$(free_port)
    ((epmd_port != port && dist_port != port && dist_port != epmd_port)) && break
  done
  printf 'listeners.tcp.default = 127.0.0.1:%s\nlog.file.level = warning\nlog.console = false\n' \
    "$port" >"$dir/rabbitmq.conf"
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  epmd -address 127.0.0.1 -port "$epmd_port" >"$LOGS/epmd-$mode.log" 2>&1 &
  local epmd_pid=$!
  track "$epmd_pid" epmd
  # Not detached: this shell is its parent, and SIGTERM to it runs
  # `rabbitmqctl stop` (its own signal handler) and waits for the node.
  (
    rmq_env "$dir" "$port" "$epmd_port" "$dist_port"
    exec /usr/lib/rabbitmq/bin/rabbitmq-server
  ) >"$LOGS/rabbitmq-$mode.server.log" 2>&1 </dev/null &
  local pid=$!
  track "$pid" rabbitmq-server
  local ok=0 i
  for ((i = 0; i < 120; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if (rmq_env "$dir" "$port" "$epmd_port" "$dist_port" && /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RMQ_NODE" \
      await_startup --timeout 5) >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 1
  done
  local beam_pid
  beam_pid=$(cat "$dir/rabbit.pid" 2>/dev/null)
  if ((ok)) && [[ -n $beam_pid ]] && wait_port "$pid" "$port" 20; then
    log "rabbitmq-server up in $i s, node pid $beam_pid"
    want rabbitmq-classic && peer_bench rabbitmq-classic "$mode" "$port" "$beam_pid"
    want rabbitmq-quorum && peer_bench rabbitmq-quorum "$mode" "$port" "$beam_pid"
  else
    log "rabbitmq-server did not start: $(tail -5 "$LOGS/rabbitmq-$mode.server.log")"
    rmq_fail "$mode"
  fi
  stop_pid "$pid" rabbitmq-server 60
  # The Erlang node the script ran: gone with it, or we end it.
  if [[ -n $beam_pid ]] && kill -0 "$beam_pid" 2>/dev/null; then
    log "rabbitmq node pid $beam_pid outlived its script: SIGKILL"
    kill -KILL "$beam_pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do kill -0 "$beam_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  stop_pid "$epmd_pid" epmd
}

# ---------------------------------------------------------------------------
# The run.

count_runs
log "results: $RESULTS; budget ${BUDGET}s for $TOTAL_RUNS invocations"
for mode in "${MODE_LIST[@]}"; do
  want beanstalkd && run_beanstalkd "$mode"
  want redis && run_redis "$mode"
  if [[ $mode == sync ]] && want_rabbitmq; then run_rabbitmq "$mode"; fi
  if [[ $mode == async ]] && want nats; then run_nats "$mode"; fi
done
if want errand; then
  for mode in "${MODE_LIST[@]}"; do
    for p in "${P_LIST[@]}"; do
      # errand-bench's own temp dir (broker data) goes under ours.
      TMPDIR="$WORK" run_bench errand "$mode" "$p" "$ERRAND_BENCH" --spawn-broker="$ERRAND_BROKER" \
        --mode="$mode" --n="$N" --producers="$p" --workers="$WORKERS" --rate="$RATE" \
        --paced-n="$PACED_N" --phases="$(phases_for "$p")" --phase-timeout="$PHASE_TIMEOUT"
    done
  done
fi
if want grpc-floor; then
  for mode in "${MODE_LIST[@]}"; do
    applies grpc-floor "$mode" || continue
    for p in "${P_LIST[@]}"; do
      run_bench grpc-floor "$mode" "$p" "$ERRAND_BENCH" --spawn-broker="$ERRAND_FLOOR" \
        --mode="$mode" --n="$N" --producers="$p" --workers="$WORKERS" --rate="$RATE" \
        --paced-n="$PACED_N" --phases="$(phases_for "$p")" --phase-timeout="$PHASE_TIMEOUT"
    done
  done
fi
log "benchmarks took $((SECONDS - START)) s"

# ---------------------------------------------------------------------------
# The table: rows mode x phase x P, a column per system, errand's ratio to the
# best peer. enqueue/drain/roundtrip: jobs/s, ratio = errand / best peer.
# paced: p99 latency in ms, ratio = best peer / errand. A ratio above 1 means
# errand is better in every row. grpc-floor is no peer: floor/best is its
# ratio to the best peer, the most a gRPC broker with errand's client could
# reach in that row.

awk -v systems="$SYSTEMS" -v modes="$MODES" -v phases="$PHASES" -v plist="$PRODUCERS" \
  -v n="$N" -v w="$WORKERS" -v rate="$RATE" -v drainp="$DRAIN_P" '
function field(line, key,   re, m) {
  re = "(^| )" key "=[^ ]*"
  if (match(line, re)) { m = substr(line, RSTART, RLENGTH); sub(/^ /, "", m); return substr(m, length(key) + 2) }
  return ""
}
{
  k = field($0, "mode") "|" field($0, "phase") "|" field($0, "producers") "|" field($0, "system")
  status[k] = field($0, "status"); rt[k] = field($0, "rate")
  p50[k] = field($0, "p50_us"); p99[k] = field($0, "p99_us"); mx[k] = field($0, "max_us")
}
function cell(k, ph) {
  if (!(k in status)) return "-"
  if (status[k] != "ok") return status[k]
  if (ph == "paced") return sprintf("%.2f", p99[k] / 1000)
  return sprintf("%d", rt[k])
}
function lat(k) {
  if (!(k in status)) return "-"
  if (status[k] != "ok") return status[k]
  return sprintf("%.2f/%.2f/%.1f", p50[k] / 1000, p99[k] / 1000, mx[k] / 1000)
}
END {
  hasfloor = ("," systems ",") ~ /,grpc-floor,/
  ns = split(systems, sys, ","); nm = split(modes, md, ","); np = split(phases, ph, ","); nq = split(plist, pp, ",")
  printf "\nJob round trip, %d-job phases, %d workers, 256-byte payloads, paced %d jobs/s offered; all on 127.0.0.1.\n", n, w, rate
  printf "enqueue/drain/roundtrip: jobs/s. paced: p99 ms from enqueue to completion.\n"
  printf "drain has no producers: it runs once, in the P=%s invocation.\n", drainp
  printf "errand/best: errand over the best peer (paced: best peer p99 over errand p99); > 1 means errand is ahead.\n"
  if (("," systems ",") ~ /,grpc-floor,/) printf "grpc-floor: errand-bench against errand-floor-broker, no broker work behind gRPC (sync: plus an fsynced log); floor/best: its ratio to the best peer, the ceiling for a gRPC broker with this client.\n"
  printf "'-': not run (NATS sync: no fsync-per-write setting; RabbitMQ async: no confirm-before-fsync setting).\n\n"
  hdr = sprintf("%-6s %-9s %3s", "mode", "phase", "P")
  for (i = 1; i <= ns; i++) hdr = hdr sprintf(" %16s", sys[i])
  hdr = hdr sprintf(" %12s", "errand/best")
  if (hasfloor) hdr = hdr sprintf(" %11s", "floor/best")
  print hdr
  for (a = 1; a <= nm; a++) for (b = 1; b <= np; b++) for (c = 1; c <= nq; c++) {
    if (ph[b] == "drain" && pp[c] != drainp) continue
    row = sprintf("%-6s %-9s %3s", md[a], ph[b], pp[c])
    best = -1; ev = -1; fv = -1
    for (i = 1; i <= ns; i++) {
      k = md[a] "|" ph[b] "|" pp[c] "|" sys[i]
      row = row sprintf(" %16s", cell(k, ph[b]))
      if (!(k in status) || status[k] != "ok") continue
      v = (ph[b] == "paced") ? p99[k] + 0 : rt[k] + 0
      if (sys[i] == "errand") { ev = v; continue }
      if (sys[i] == "grpc-floor") { fv = v; continue }
      if (best < 0 || (ph[b] == "paced" ? v < best : v > best)) best = v
    }
    ratio = "-"
    if (best > 0 && ev > 0) {
      r = ph[b] == "paced" ? best / ev : ev / best
      ratio = sprintf(r < 0.1 ? "%.3f" : "%.2f", r)
    }
    row = row sprintf(" %12s", ratio)
    if (hasfloor) {
      ratio = "-"
      if (best > 0 && fv > 0) {
        r = ph[b] == "paced" ? best / fv : fv / best
        ratio = sprintf(r < 0.1 ? "%.3f" : "%.2f", r)
      }
      row = row sprintf(" %11s", ratio)
    }
    print row
  }
  if (("," phases ",") !~ /,paced,/) exit
  printf "\npaced latency, p50/p99/max ms from enqueue to completion:\n"
  hdr = sprintf("%-6s %3s", "mode", "P")
  for (i = 1; i <= ns; i++) hdr = hdr sprintf(" %20s", sys[i])
  print hdr
  for (a = 1; a <= nm; a++) for (c = 1; c <= nq; c++) {
    row = sprintf("%-6s %3s", md[a], pp[c])
    for (i = 1; i <= ns; i++) row = row sprintf(" %20s", lat(md[a] "|paced|" pp[c] "|" sys[i]))
    print row
  }
}' "$RESULTS"

if [[ -n $OUT ]]; then
  log "every line: $RESULTS"
else
  printf '\nEvery line:\n'
  cat "$RESULTS"
fi
# Exit 1 if a row that should have run did not come out ok.
if grep -q "status=" "$RESULTS" && grep -v "status=ok" "$RESULTS" | grep -q "status="; then
  exit 1
fi
exit 0
