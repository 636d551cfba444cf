#!/usr/bin/env bash
# The README's two commands:
#   tools/quickstart.sh serve [server flags...]   build, then start lizard-server on the shipped model
#   tools/quickstart.sh test                      build, then run every CPU test (ctest)
# BUILD_DIR (default: build) and JOBS (default: all cores) can be set in the environment.
# `serve` on a configured build directory goes straight to the (incremental, usually no-op) build
# of lizard-server and starts it: no package check, no CMake run (ninja re-runs CMake itself when
# a CMakeLists.txt changed).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
mode=${1:-}

configure() {
  tools/install_deps.sh "$1"
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
}

case "$mode" in
  serve)
    shift
    [ -f "$build_dir/build.ninja" ] || configure build
    cmake --build "$build_dir" -j "$jobs" --target lizard-server
    exec "$build_dir/server/lizard-server" "$@"
    ;;
  test)
    configure test
    cmake --build "$build_dir" -j "$jobs"
    ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 900
    ;;
  *)
    echo "usage: tools/quickstart.sh serve [server flags...] | test" >&2
    exit 2
    ;;
esac
