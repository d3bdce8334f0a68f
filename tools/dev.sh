#!/usr/bin/env bash
# errand developer entry point.
#
#   tools/dev.sh run  [broker flags...]   install what is missing, build, run the broker
#   tools/dev.sh test [--sanitize=address|thread]
#                                          install what is missing, build, run every test
#   tools/dev.sh deps                      only install the build and test dependencies
#   tools/dev.sh build                     only build (Release-like, into build/)
#
# Works on a fresh Debian 12 machine as root (or with sudo available).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

PACKAGES=(
  build-essential cmake pkg-config ccache git
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev grpc-proto
  librocksdb-dev libasio-dev libcli11-dev libspdlog-dev
  libjemalloc-dev  # errand-broker and errand-worker allocate with jemalloc
  libgtest-dev libgmock-dev libbenchmark-dev
  libssl-dev openssl  # token hashing; the TLS tests make certificates with openssl
  # Fuzz targets (tests/fuzz): clang and its libFuzzer/sanitizer runtimes.
  clang libclang-rt-14-dev
  prometheus
)

log() { printf '==> %s\n' "$*" >&2; }

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "dependencies present"
    return
  fi
  log "installing: ${missing[*]}"
  local SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build DIR [cmake args...]
build() {
  local dir="$1"
  shift
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS"
}

# --- deploy/ end-to-end test -------------------------------------------------
# deploy/test/compose_test.sh builds the image from source and runs
# deploy/docker-compose.yml on a private Docker engine it starts and stops
# itself. Its packages are installed for this step only.
DEPLOY_TEST_PACKAGES=(docker.io docker-compose debootstrap python3-yaml)

install_deploy_test_deps() {
  local missing=()
  for p in "${DEPLOY_TEST_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]} == 0)) && return
  log "installing for the deploy/ test: ${missing[*]}"
  local SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  # Installing docker.io may start the system's Docker daemon (where no
  # policy-rc.d forbids it). The test needs none: stop one that this install
  # started, unless systemd manages it.
  local before after pid
  before=" $(pidof dockerd || true) "
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  after="$(pidof dockerd || true)"
  for pid in $after; do
    [[ "$before" == *" $pid "* ]] && continue
    if [[ "$(ps -o comm= -p 1)" == systemd ]]; then
      log "installing docker.io started the system's dockerd (pid $pid); left running"
    else
      log "stopping the dockerd (pid $pid) that installing docker.io started"
      $SUDO kill "$pid" || true
    fi
  done
}

# compose_test BUILD_DIR: runs the test with that build's errandctl (the test
# talks to the stack from the host). Exit 77 means no container engine can
# run on this machine: reported, not a failure.
compose_test() {
  local dir="$1" rc=0
  install_deploy_test_deps
  log "running the deploy/ end-to-end test (docker-compose on a private Docker engine)"
  local SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO env ERRAND_COMPOSE_TEST_CACHE="$dir/compose-test-cache" \
    "$ROOT/deploy/test/compose_test.sh" "$dir/tools/errandctl/errandctl" || rc=$?
  if ((rc == 77)); then
    log "deploy/ end-to-end test SKIPPED: no container engine can run here (reason above)"
    return 0
  fi
  return "$rc"
}

# Fuzz targets: build them with clang (libFuzzer, ASan, UBSan) in build-fuzz/
# and run each for FUZZ_SECONDS (default 15) on a copy of its corpus. New
# inputs go to build-fuzz/found/<target>/, never into the repository. Skipped
# (with a note) when clang or libFuzzer is missing.
run_fuzz() {
  local cxx
  cxx="$(command -v clang++ || command -v clang++-14 || true)"
  if [[ -z "$cxx" ]] || ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
      "$cxx" -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
    log "clang with libFuzzer not found: fuzz targets skipped"
    return 0
  fi
  local dir="$ROOT/build-fuzz"
  export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" \
    -DERRAND_FUZZ=ON -DERRAND_BUILD_TESTS=OFF >/dev/null
  cmake --build "$dir" -j "$JOBS" --target errand_fuzz_targets
  local t seconds="${FUZZ_SECONDS:-15}"
  for t in requests records; do
    log "fuzzing $t for ${seconds}s"
    mkdir -p "$dir/found/$t"
    "$dir/tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -runs=5000000 -max_len=65536 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$dir/found/$t-" \
      "$dir/found/$t" "$ROOT/tests/fuzz/corpus/$t" 2>"$dir/found/$t.log" ||
      { tail -50 "$dir/found/$t.log" >&2; log "fuzz target $t failed; see $dir/found/$t.log"; return 1; }
    grep -E '^stat::number_of_executed_units|^Done' "$dir/found/$t.log" >&2 || true
  done
}

cmd="${1:-}"
shift || true
case "$cmd" in
  deps)
    install_deps
    ;;
  build)
    install_deps
    build "$ROOT/build" "$@"
    ;;
  run)
    install_deps
    build "$ROOT/build" -DERRAND_BUILD_TESTS=OFF
    log "starting errand-broker on 127.0.0.1:7600 (data in ./errand-data; Ctrl-C stops it)"
    exec "$ROOT/build/broker/errand-broker" --listen=127.0.0.1:7600 --data-dir="$ROOT/errand-data" "$@"
    ;;
  test)
    install_deps
    dir="$ROOT/build"
    args=()
    for a in "$@"; do
      case "$a" in
        --sanitize=address) dir="$ROOT/build-asan"; args+=(-DERRAND_SANITIZE=address -DCMAKE_BUILD_TYPE=RelWithDebInfo)
          # The tests' waits stretch by this factor (tests/support/test_support.h).
          export ERRAND_TEST_TIME_SCALE="${ERRAND_TEST_TIME_SCALE:-3}" ;;
        --sanitize=thread) dir="$ROOT/build-tsan"; args+=(-DERRAND_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo)
          export ERRAND_TEST_TIME_SCALE="${ERRAND_TEST_TIME_SCALE:-5}"
          # Reports inside the uninstrumented Debian libraries are suppressed
          # (see the file); the broker processes the e2e tests start inherit it.
          # A longer history lets TSan restore the stack of an earlier access
          # ("failed to restore the stack" otherwise), which the suppressions
          # need to match: RocksDB's SstFileManagerImpl was reported unmatched.
          export TSAN_OPTIONS="suppressions=$ROOT/tools/tsan.supp second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}" ;;
        *) echo "unknown option: $a" >&2; exit 2 ;;
      esac
    done
    build "$dir" "${args[@]}"
    log "running the test suite"
    (cd "$dir" && ctest --output-on-failure -j "$JOBS" --timeout 600)
    # The fuzz targets and the deploy/ test run with the plain test command only.
    if ((${#args[@]} == 0)); then
      run_fuzz
      compose_test "$dir"
    fi
    ;;
  *)
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
