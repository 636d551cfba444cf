#!/usr/bin/env bash
# The README's two commands:
#   tools/quickstart.sh serve [server flags...]   build, then start lizard-server on the shipped model
#   tools/quickstart.sh test                      build, then run every CPU test (ctest)
# BUILD_DIR (default: build) and JOBS (default: all cores) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}

tools/install_deps.sh
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$jobs"

case "${1:-}" in
  serve)
    shift
    exec "$build_dir/server/lizard-server" --model models/lizard-tiny "$@"
    ;;
  test)
    ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" --timeout 900
    ;;
  *)
    echo "usage: tools/quickstart.sh serve|test" >&2
    exit 2
    ;;
esac
