#!/usr/bin/env bash
# Installs the Debian packages lizard-serve builds and tests with (idempotent; needs root or sudo).
# CUDA is not a Debian package here: the build uses /usr/local/cuda when nvcc is there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  prometheus-cpp-dev libcpp-httplib-dev libopenblas-dev nlohmann-json3-dev libpcre2-dev
  libgtest-dev libgmock-dev libssl-dev openssl
  python3 python3-numpy python3-torch python3-grpcio python3-grpc-tools python3-jinja2
  yamllint prometheus haproxy
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js + npm run the tokenizer parity and manifest validation tests; use the system's if present.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
