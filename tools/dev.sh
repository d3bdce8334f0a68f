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
  libgtest-dev libgmock-dev libbenchmark-dev
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
        --sanitize=address) dir="$ROOT/build-asan"; args+=(-DERRAND_SANITIZE=address -DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
        --sanitize=thread) dir="$ROOT/build-tsan"; args+=(-DERRAND_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
        *) echo "unknown option: $a" >&2; exit 2 ;;
      esac
    done
    build "$dir" "${args[@]}"
    log "running the test suite"
    cd "$dir"
    ctest --output-on-failure -j "$JOBS" --timeout 600
    ;;
  *)
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
