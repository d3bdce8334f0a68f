#!/usr/bin/env bash
# End-to-end test of deploy/: builds the image from source and runs
# docker-compose.yml (broker, two example workers with `worker` scaled to 2,
# demo producer) on a private Docker engine that this script starts and stops.
#
#   deploy/test/compose_test.sh ERRANDCTL
#
# ERRANDCTL is a host errandctl binary: the test enqueues and inspects jobs
# from the host over 127.0.0.1. Run as root, with dockerd and docker (Debian's
# docker.io), docker-compose (1.29) and debootstrap installed;
# `tools/dev.sh test` installs them and runs this after the test suite.
#
# What it does, all under one temporary folder that it removes at the end:
#   * checks the compose file statically (docker-compose config -q; the
#     variables of compose.env.example are the ones the file uses, with the
#     same defaults);
#   * makes a Debian bookworm base image with debootstrap from the machine's
#     own apt mirror and imports it as debian:bookworm and debian:bookworm-slim
#     (nothing is ever pulled from a registry);
#   * starts dockerd on a private socket and data root, with no bridge and no
#     iptables changes; every service runs on the host network (hostify.py),
#     the broker on 127.0.0.1 and a free port;
#   * builds the images, brings the stack up, waits for the broker to be
#     healthy, checks the demo producer's jobs and jobs enqueued from the host,
#     stops the stack (every container must exit 0 on SIGTERM), brings it up
#     again on the same volume, backs the volume up and restores it as
#     deploy/README.md says, and finally runs `down -v --rmi all`;
#   * always (trap): removes containers and volumes, stops dockerd by its PID,
#     unmounts what it left and deletes the folder.
#
# Exit status: 0 all checks passed, 1 a check failed, 77 skipped because no
# container engine can run here (the reason is printed).
#
# Environment:
#   ERRAND_COMPOSE_TEST_CACHE  folder keeping the base image tarball between
#                              runs (saves the ~30 s debootstrap); default none
#   TMPDIR                     where the temporary folder goes (default /tmp)
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COMPOSE_FILE="$ROOT/deploy/docker-compose.yml"
ENV_EXAMPLE="$ROOT/deploy/compose.env.example"
PROJECT=errandtest
SKIP=77

passed=0
failed=0
W=""
DOCKERD_PID=""

log() { printf 'compose_test: %s\n' "$*"; }
pass() {
  passed=$((passed + 1))
  log "PASS: $*"
}
fail() {
  failed=$((failed + 1))
  log "FAIL: $*"
}
# A failed step the rest cannot do without.
fatal() {
  fail "$*"
  exit 1
}
skip() {
  log "SKIPPED: $*"
  exit "$SKIP"
}
# check NAME COMMAND...: passes when COMMAND exits 0.
check() {
  local name="$1"
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}

if (($# != 1)); then
  echo "usage: $0 ERRANDCTL" >&2
  exit 2
fi
ERRANDCTL="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
[[ -x "$ERRANDCTL" ]] || {
  echo "compose_test: not an executable: $1" >&2
  exit 2
}

# --------------------------------------------------------------------------
# Tools. Debian's 20.10 docker client (/usr/bin/docker) has BuildKit built in;
# another docker client first in PATH may not.
[[ $(id -u) -eq 0 ]] || skip "starting a private dockerd needs root"
DOCKER=/usr/bin/docker
[[ -x "$DOCKER" ]] || DOCKER="$(command -v docker || true)"
DOCKERD="$(command -v dockerd || true)"
COMPOSE="$(command -v docker-compose || true)"
DEBOOTSTRAP="$(command -v debootstrap || true)"
PYTHON=/usr/bin/python3
for tool in DOCKER DOCKERD COMPOSE DEBOOTSTRAP; do
  [[ -n "${!tool}" ]] || {
    echo "compose_test: missing $tool: apt-get install docker.io docker-compose debootstrap" >&2
    exit 1
  }
done
"$PYTHON" -c 'import yaml' 2>/dev/null || {
  echo "compose_test: $PYTHON has no yaml module: apt-get install python3-yaml" >&2
  exit 1
}

# --------------------------------------------------------------------------
# Clean-up, always.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$DOCKERD_PID" ]]; then
    if kill -0 "$DOCKERD_PID" 2>/dev/null && dk info >/dev/null 2>&1; then
      local ids vols
      ids=$(dk ps -aq)
      if [[ -n "$ids" ]]; then
        log "removing leftover containers"
        # shellcheck disable=SC2086
        dk rm -f $ids >/dev/null 2>&1
      fi
      vols=$(dk volume ls -q)
      # shellcheck disable=SC2086
      [[ -n "$vols" ]] && dk volume rm -f $vols >/dev/null 2>&1
    fi
    kill "$DOCKERD_PID" 2>/dev/null
    local i
    for i in $(seq 100); do
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
      log "dockerd (pid $DOCKERD_PID) ignored SIGTERM for 20 s; killing it"
      kill -KILL "$DOCKERD_PID" 2>/dev/null
    fi
    wait "$DOCKERD_PID" 2>/dev/null
    # Its containerd exits with it; make sure.
    local cpid
    cpid=$(cat "$W/docker-exec/containerd/containerd.pid" 2>/dev/null || true)
    if [[ -n "$cpid" ]] && kill -0 "$cpid" 2>/dev/null; then
      kill "$cpid" 2>/dev/null
      sleep 1
    fi
  fi
  if [[ -n "$W" && -d "$W" ]]; then
    # Mounts dockerd leaves (netns/default, overlays of a killed daemon).
    local m
    awk -v w="$W/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
    rm -rf "$W" || log "could not remove $W"
  fi
  if ((failed > 0)); then
    rc=1
  fi
  if ((rc == SKIP)); then
    log "skipped"
  else
    log "$passed passed, $failed failed"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

W="$(mktemp -d "${TMPDIR:-/tmp}/errand-compose-test.XXXXXX")"
mkdir -p "$W/docker-config"
SOCK="$W/docker.sock"

# docker and docker-compose against the private engine only, in a clean
# environment: no user config, no variables of the caller's shell.
dk() { DOCKER_HOST="unix://$SOCK" DOCKER_CONFIG="$W/docker-config" "$DOCKER" "$@"; }
# dc ENV_FILE ARGS...: docker-compose with that env file, killed after
# DC_TIMEOUT seconds (default 300); builds with BuildKit through the docker CLI
# (what users of Docker 23+ and compose v2 get).
dc() {
  local envfile="$1"
  shift
  timeout -k 10 "${DC_TIMEOUT:-300}" \
    env -i PATH="$(dirname "$DOCKER"):/usr/bin:/bin:/usr/sbin:/sbin" HOME="$W" \
    DOCKER_HOST="unix://$SOCK" DOCKER_CONFIG="$W/docker-config" \
    COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1 \
    "$COMPOSE" --env-file "$envfile" -p "$PROJECT" "$@"
}
now() { date +%s; }
# quiet COMMAND...: runs it with stdout discarded.
quiet() { "$@" >/dev/null; }
# gone KIND NAME: the volume or image no longer exists.
gone() { ! dk "$1" inspect "$2" >/dev/null 2>&1; }

# --------------------------------------------------------------------------
log "static checks"
: >"$W/empty.env"
check "docker-compose config -q accepts deploy/docker-compose.yml" \
  dc "$W/empty.env" -f "$COMPOSE_FILE" config -q
check "docker-compose config -q accepts it with compose.env.example" \
  dc "$ENV_EXAMPLE" -f "$COMPOSE_FILE" config -q

# The example documents exactly the variables the compose file reads.
vars_in_compose=$(grep -v "^ *#" "$COMPOSE_FILE" | grep -o '\${[A-Z_]*:-' | sed 's/^\${//; s/:-$//' | sort -u)
vars_in_example=$(grep -o '^[A-Z_]*=' "$ENV_EXAMPLE" | sed 's/=$//' | grep -vx COMPOSE_PROJECT_NAME | sort -u)
if [[ -n "$vars_in_compose" && "$vars_in_compose" == "$vars_in_example" ]]; then
  pass "compose.env.example lists the compose file's variables"
else
  fail "compose.env.example lists the compose file's variables: compose file:" \
    $vars_in_compose "; example:" $vars_in_example
fi
# ...with the same defaults: the resolved files are identical.
dc "$W/empty.env" -f "$COMPOSE_FILE" config >"$W/defaults.yml" 2>"$W/config.err"
dc "$ENV_EXAMPLE" -f "$COMPOSE_FILE" config >"$W/example.yml" 2>>"$W/config.err"
if [[ -s "$W/defaults.yml" ]] && cmp -s "$W/defaults.yml" "$W/example.yml"; then
  pass "compose.env.example values are the compose file's defaults"
else
  fail "compose.env.example values are the compose file's defaults:"
  diff "$W/defaults.yml" "$W/example.yml" | head -20
fi
# Keys docker-compose v1.29 rejects, or that would make compose pull.
if grep -nE '^name:|start_interval|^include:|develop:|!reset|^# *syntax=' \
  "$COMPOSE_FILE" "$ROOT/deploy/Dockerfile"; then
  fail "no keys outside the compose v1.29/v2 subset, no # syntax= line"
else
  pass "no keys outside the compose v1.29/v2 subset, no # syntax= line"
fi

# --------------------------------------------------------------------------
# The loopback configuration: a free port, broker bound to 127.0.0.1, and
# non-default queue names, image and job count so the variables are proven to
# reach the services.
PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR="127.0.0.1:$PORT"
HTTP_PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DEMO_QUEUE=greetings
SHELL_QUEUE=shellq
DEMO_JOBS=6
IMAGE=errand:compose-test
cat >"$W/ci.env" <<EOF
ERRAND_IMAGE=$IMAGE
ERRAND_PORT=$PORT
ERRAND_HTTP_PORT=$HTTP_PORT
ERRAND_LISTEN_HOST=127.0.0.1
ERRAND_DEMO_QUEUE=$DEMO_QUEUE
ERRAND_SHELL_QUEUE=$SHELL_QUEUE
ERRAND_WORKER_CONCURRENCY=3
ERRAND_DEMO_JOBS=$DEMO_JOBS
ERRAND_DEMO_TIMEOUT=90s
EOF
CI="$W/ci-compose.yml"
dc "$W/ci.env" -f "$COMPOSE_FILE" config | "$PYTHON" "$HERE/hostify.py" >"$CI" ||
  fatal "derive the host-network compose file"
check "the host-network variant is valid" dc "$W/ci.env" -f "$CI" config -q
cdc() { dc "$W/ci.env" -f "$CI" "$@"; }

# --------------------------------------------------------------------------
log "base image: debootstrap bookworm (minbase)"
t0=$(now)
TARBALL=""
if [[ -n "${ERRAND_COMPOSE_TEST_CACHE:-}" && -s "$ERRAND_COMPOSE_TEST_CACHE/bookworm-minbase.tar" ]]; then
  TARBALL="$ERRAND_COMPOSE_TEST_CACHE/bookworm-minbase.tar"
  log "reusing $TARBALL"
else
  # The machine's own Debian mirror: the first URIs: of a deb822 source, or
  # the first http(s) URL of a one-line source.
  MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
  if [[ -z "$MIRROR" ]]; then
    MIRROR=$(grep -hoE '^deb( \[[^]]*\])? +https?://[^ ]+' /etc/apt/sources.list \
      /etc/apt/sources.list.d/*.list 2>/dev/null | head -1 | grep -oE 'https?://[^ ]+')
  fi
  [[ -n "$MIRROR" ]] || fatal "no Debian mirror found in /etc/apt"
  "$DEBOOTSTRAP" --variant=minbase bookworm "$W/rootfs" "$MIRROR" >"$W/debootstrap.log" 2>&1 || {
    tail -20 "$W/debootstrap.log"
    fatal "debootstrap bookworm from $MIRROR"
  }
  rm -f "$W"/rootfs/var/cache/apt/archives/*.deb "$W"/rootfs/var/cache/apt/*.bin
  rm -rf "$W"/rootfs/var/lib/apt/lists/*
  # The image's apt sees the same suites as the host (updates, security).
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    rm -f "$W/rootfs/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$W/rootfs/etc/apt/sources.list.d/"
  fi
  TARBALL="$W/bookworm-minbase.tar"
  tar --numeric-owner -C "$W/rootfs" -cf "$TARBALL" . || fatal "tar the base image"
  rm -rf "$W/rootfs"
  if [[ -n "${ERRAND_COMPOSE_TEST_CACHE:-}" ]]; then
    mkdir -p "$ERRAND_COMPOSE_TEST_CACHE" && cp "$TARBALL" "$ERRAND_COMPOSE_TEST_CACHE/"
  fi
fi
log "base image ready in $(($(now) - t0)) s"

# --------------------------------------------------------------------------
log "starting a private dockerd"
"$DOCKERD" --host "unix://$SOCK" --data-root "$W/docker-root" \
  --exec-root "$W/docker-exec" --pidfile "$W/dockerd.pid" \
  --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  >"$W/dockerd.log" 2>&1 &
DOCKERD_PID=$!
ready=0
for _ in $(seq 120); do
  if dk info >/dev/null 2>&1; then
    ready=1
    break
  fi
  kill -0 "$DOCKERD_PID" 2>/dev/null || break
  sleep 0.5
done
if ((ready == 0)); then
  log "dockerd did not come up; the end of its log:"
  tail -15 "$W/dockerd.log"
  skip "no container engine can run here (dockerd failed to start)"
fi
dk import --change 'CMD ["bash"]' "$TARBALL" debian:bookworm >/dev/null || fatal "docker import"
dk tag debian:bookworm debian:bookworm-slim || fatal "docker tag"
if ! dk run --rm --network host debian:bookworm true >"$W/run.err" 2>&1; then
  cat "$W/run.err"
  skip "no container engine can run here (dockerd starts but cannot run a container)"
fi
pass "private dockerd runs containers"

# --------------------------------------------------------------------------
log "building the images (compiles errand inside the build stage)"
t0=$(now)
DC_TIMEOUT=3600 cdc build \
  >"$W/build.log" 2>&1
brc=$?
build_s=$(($(now) - t0))
if ((brc != 0)); then
  tail -40 "$W/build.log"
  fatal "docker-compose build (exit $brc)"
fi
pass "docker-compose build in ${build_s} s"
# Never pull: every image the stack names must now be local.
for image in $("$PYTHON" -c 'import sys, yaml
for s in yaml.safe_load(open(sys.argv[1]))["services"].values(): print(s["image"])' "$CI" | sort -u); do
  dk image inspect "$image" >/dev/null 2>&1 || fatal "image $image was not built"
done
size=$(dk image inspect -f '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB"
check "image runs as the non-root user errand" \
  test "$(dk image inspect -f '{{.Config.User}}' "$IMAGE")" = errand
check "image declares the data volume /var/lib/errand" \
  grep -q '"/var/lib/errand"' <<<"$(dk image inspect -f '{{json .Config.Volumes}}' "$IMAGE")"
check "image health check runs errandctl health" \
  grep -q 'errandctl.*health' <<<"$(dk image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")"

# --------------------------------------------------------------------------
# Helpers on the running stack.
ctl() { "$ERRANDCTL" --addr "$ADDR" --rpc-timeout 10s "$@"; }
containers() { # SERVICE [ps args]: ids of the service's containers
  local svc="$1"
  shift
  dk ps -q "$@" --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$svc"
}
field() { sed -n "s/^$1: *//p"; }
boot_epoch() {
  ctl --json health | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["server"].get("boot_epoch", "?"))'
}
# wait_exit CONTAINER SECONDS: waits for it to exit; prints its exit code.
wait_exit() {
  local c="$1" i
  for i in $(seq $(($2 * 2))); do
    if [[ "$(dk inspect -f '{{.State.Status}}' "$c")" == exited ]]; then
      dk inspect -f '{{.State.ExitCode}}' "$c"
      return 0
    fi
    sleep 0.5
  done
  echo timeout
}
# up LABEL: brings the stack up and checks it is serving.
up() {
  local t0
  t0=$(now)
  if ! DC_TIMEOUT=300 cdc up -d --no-build --scale worker=2 \
    >"$W/up.log" 2>&1; then
    cat "$W/up.log"
    fatal "$1: docker-compose up"
  fi
  local b
  b=$(containers broker)
  check "$1: broker is healthy ($(($(now) - t0)) s after up)" \
    test "$(dk inspect -f '{{.State.Health.Status}}' "$b")" = healthy
  check "$1: two worker containers and one worker-shell are running" \
    test "$(containers worker | wc -l) $(containers worker-shell | wc -l)" = "2 1"
  check "$1: errandctl health from the host on $ADDR" quiet ctl health
}
# producer_ok LABEL: the demo producer exited 0 with every job done.
producer_ok() {
  local p rc logs
  p=$(containers producer -a)
  rc=$(wait_exit "$p" 180)
  logs=$(dk logs "$p" 2>&1)
  check "$1: demo producer exited 0" test "$rc" = 0
  check "$1: demo producer saw $DEMO_JOBS of $DEMO_JOBS jobs succeed" \
    grep -q "^demo producer: $DEMO_JOBS of $DEMO_JOBS jobs succeeded$" <<<"$logs"
  check "$1: the worker upper-cased the producer's payloads" \
    test "$(grep -c '^job [0-9a-f]*: SUCCEEDED HELLO [0-9]* FROM THE DEMO PRODUCER$' <<<"$logs")" = "$DEMO_JOBS"
}

# --------------------------------------------------------------------------
log "first start"
up "first start"
check "first start: boot epoch 1" test "$(boot_epoch)" = 1
check "the image's broker allocates with jemalloc" \
  grep -q "allocator: jemalloc" <<<"$(dk logs "$(containers broker)" 2>&1)"
producer_ok "first start"

# Jobs from the host, one queue per worker service.
host_ids=()
for i in 1 2 3 4 5; do
  id=$(ctl enqueue "$DEMO_QUEUE" "host job $i") || fatal "enqueue from the host"
  host_ids+=("$id")
done
shell_id=$(ctl enqueue "$SHELL_QUEUE" "abcde") || fatal "enqueue from the host"
ok=0
for i in 1 2 3 4 5; do
  out=$(ctl wait "${host_ids[i - 1]}" --timeout 90s)
  [[ $? -eq 0 && "$(field result <<<"$out")" == "HOST JOB $i" ]] && ok=$((ok + 1))
done
check "host jobs on $DEMO_QUEUE: 5 of 5 SUCCEEDED with upper-cased results" test "$ok" = 5
out=$(ctl wait "$shell_id" --timeout 90s)
shell_result="job $shell_id attempt 1: 5 bytes"
check "host job on $SHELL_QUEUE: worker-shell ran the shell command" \
  test "$(field result <<<"$out")" = "$shell_result"

# The workers' own logs account for every job.
n=0
for c in $(containers worker); do
  n=$((n + $(dk logs "$c" 2>&1 | grep -c "queue=$DEMO_QUEUE attempt=1 outcome=succeeded")))
done
check "worker logs: $((DEMO_JOBS + 5)) jobs succeeded (got $n)" test "$n" = $((DEMO_JOBS + 5))
check "worker-shell log: 1 job succeeded" \
  test "$(dk logs "$(containers worker-shell)" 2>&1 | grep -c 'outcome=succeeded')" = 1
# deploy/README.md's way to watch jobs: errandctl inside the broker container.
stats=$(DC_TIMEOUT=60 cdc exec -T broker errandctl stats "$DEMO_QUEUE" 2>&1)
check "errandctl in the broker container (exec) counts $((DEMO_JOBS + 5)) succeeded on $DEMO_QUEUE" \
  test "$(field succeeded <<<"$stats")" = $((DEMO_JOBS + 5))

# The HTTP endpoints on ERRAND_HTTP_PORT: readiness, and the metrics count
# the jobs that succeeded.
http_get() {
  "$PYTHON" -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())' "http://127.0.0.1:$HTTP_PORT$1"
}
check "HTTP /readyz on ERRAND_HTTP_PORT answers 200" quiet http_get /readyz
metric=$(http_get /metrics 2>/dev/null | grep "^errand_jobs_completed_total{queue=\"$DEMO_QUEUE\"}" | awk '{print $2}')
check "HTTP /metrics counts $((DEMO_JOBS + 5)) jobs completed on $DEMO_QUEUE (got ${metric:-none})" \
  test "${metric%.*}" = $((DEMO_JOBS + 5))

# --------------------------------------------------------------------------
log "stop (SIGTERM) and down, keeping the volume"
ids=$(containers broker; containers worker; containers worker-shell)
t0=$(now)
DC_TIMEOUT=120 cdc stop \
  >"$W/stop.log" 2>&1 || fail "docker-compose stop"
log "stop took $(($(now) - t0)) s"
bad=""
for c in $ids; do
  code=$(dk inspect -f '{{.State.ExitCode}}' "$c")
  [[ "$code" == 0 ]] || bad="$bad $(dk inspect -f '{{.Name}}' "$c")=$code"
done
check "every container exited 0 on SIGTERM${bad:+ (not:$bad)}" test -z "$bad"
check "the broker logged a clean shutdown" \
  grep -q "shutdown complete" <<<"$(dk logs "$(containers broker -a)" 2>&1)"
DC_TIMEOUT=120 cdc down \
  >"$W/down.log" 2>&1 || fail "docker-compose down"
check "down removed the containers" test -z "$(dk ps -aq)"
VOLUME="${PROJECT}_errand-data"
check "down kept the data volume and no other ($(dk volume ls -q | tr '\n' ' '))" \
  test "$(dk volume ls -q)" = "$VOLUME"

# Every job finished before, with its result: the data lives in the volume.
jobs_intact() {
  local i out
  for i in 1 2 3 4 5; do
    out=$(ctl get "${host_ids[i - 1]}") || return 1
    [[ "$(field state <<<"$out")" == SUCCEEDED && "$(field result <<<"$out")" == "HOST JOB $i" ]] ||
      return 1
  done
  out=$(ctl get "$shell_id") || return 1
  [[ "$(field result <<<"$out")" == "$shell_result" ]]
}

log "second start on the same volume"
up "second start"
check "second start: boot epoch 2 (the same data directory)" test "$(boot_epoch)" = 2
check "second start: the host's finished jobs are still there" jobs_intact
producer_ok "second start"

# --------------------------------------------------------------------------
log "backup and restore of the volume (deploy/README.md)"
DC_TIMEOUT=120 cdc stop broker \
  >"$W/stop.log" 2>&1 || fail "docker-compose stop broker"
dk run --rm --network none --entrypoint tar -v "$VOLUME:/var/lib/errand:ro" "$IMAGE" \
  -C /var/lib/errand -czf - . >"$W/errand-data.tgz" 2>"$W/backup.err"
check "backup: a tar of the volume holding the RocksDB data ($(stat -c %s "$W/errand-data.tgz") bytes)" \
  grep -q 'CURRENT$' <<<"$(tar -tzf "$W/errand-data.tgz")"
DC_TIMEOUT=120 cdc down -v \
  >"$W/down.log" 2>&1 || fail "docker-compose down -v"
check "down -v removed the volume" gone volume "$VOLUME"
DC_TIMEOUT=120 cdc up --no-start --no-build --scale worker=2 \
  >"$W/up.log" 2>&1 || {
  cat "$W/up.log"
  fatal "docker-compose up --no-start"
}
dk run --rm -i --network none --entrypoint tar -v "$VOLUME:/var/lib/errand" "$IMAGE" \
  -C /var/lib/errand -xzf - <"$W/errand-data.tgz" 2>"$W/restore.err"
check "restore: untar into the new volume as user errand" test $? = 0
up "after restore"
check "after restore: boot epoch 3" test "$(boot_epoch)" = 3
check "after restore: the host's finished jobs are still there" jobs_intact

# --------------------------------------------------------------------------
log "down -v --rmi all"
t0=$(now)
DC_TIMEOUT=180 cdc down -v --rmi all \
  >"$W/down.log" 2>&1 || fail "docker-compose down -v --rmi all"
log "down took $(($(now) - t0)) s"
check "down -v left no container" test -z "$(dk ps -aq)"
check "down -v left no volume ($(dk volume ls -q | tr '\n' ' '))" test -z "$(dk volume ls -q)"
check "down --rmi all removed $IMAGE" gone image "$IMAGE"
