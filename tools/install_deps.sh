#!/usr/bin/env bash
# Installs the Debian packages lizard-serve needs (idempotent; needs root or sudo).
#   tools/install_deps.sh build   what building and running lizard-server needs
#   tools/install_deps.sh test    that, plus what the test suite needs (the default)
# CUDA is not a Debian package here: the build uses /usr/local/cuda when nvcc is there.
set -euo pipefail
set_name=${1:-test}

build_packages=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  prometheus-cpp-dev libcpp-httplib-dev nlohmann-json3-dev libpcre2-dev
  libssl-dev libgtest-dev libgmock-dev
)
# Tests only: the float64 PyTorch reference, Python gRPC clients, certificates for the TLS tests,
# offline checks of deploy/ (yamllint, promtool, haproxy); Node.js + npm for the tokenizer parity,
# manifest validation and OpenAI client tests.
test_packages=(
  python3 python3-numpy python3-torch python3-grpcio python3-grpc-tools python3-regex
  python3-jinja2
  openssl curl yamllint prometheus haproxy
)

case "$set_name" in
  build) packages=("${build_packages[@]}") ;;
  test) packages=("${build_packages[@]}" "${test_packages[@]}") ;;
  *) echo "usage: tools/install_deps.sh [build|test]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Use the system's Node.js + npm if present.
if [ "$set_name" = test ] && ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all $set_name packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
