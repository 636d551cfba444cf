#!/bin/bash
# Builds everything the GPU run needs for sm_90a in its own build directory and collects it in
# bundle-gpu/ (git-ignored): the GPU test binaries, lizard-cli, lizard-server when it builds, the
# shared libraries they need beyond glibc, the CUDA driver and toolkit (as lib.tar.xz), and the
# shipped model.
# Then prints the device `run` call that executes tools/gpu/on_device.sh on the GPU machine.
#
#   tools/gpu/run_gpu_suite.sh            (BUILD_DIR=... to use another build directory)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$repo/build-gpu}
bundle=$repo/bundle-gpu

if [[ ! -f $build/build.ninja ]]; then
  cmake -S "$repo" -B "$build" -G Ninja -DLIZARD_CUDA_ARCHS=90a -DCMAKE_BUILD_TYPE=Release
fi
ninja -C "$build" -j2 gpu_kernels_test gpu_cuda_backend_test lizard-cli
server=1
ninja -C "$build" -j2 lizard-server server_integration_test ||
  { server=0; echo "lizard-server does not build: left out"; }

rm -rf "$bundle"
if [[ $server == 1 ]]; then
  # tools/bundle.sh: lizard-server, lizard-cli (and lizard-loadgen) with their libraries.
  sh "$repo/tools/bundle.sh" "$build" "$bundle"
else
  mkdir -p "$bundle/libexec" "$bundle/lib"
  cp "$build/tools/cli/lizard-cli" "$bundle/libexec/"
fi
cp "$build/tests/gpu/gpu_kernels_test" "$build/tests/gpu/gpu_cuda_backend_test" "$bundle/libexec/"
if [[ $server == 1 ]]; then
  # The server's integration tests run against a CUDA server too; the GPU machine has no protoc,
  # so the Python stubs travel.
  cp "$build/tests/server/server_integration_test" "$bundle/libexec/"
  mkdir -p "$bundle/py"
  protoc -I "$repo/proto" --python_out="$bundle/py" --grpc_python_out="$bundle/py" \
    --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin "$repo/proto/lizard/v1/lizard.proto"
fi
chmod u+w "$bundle"/libexec/*
strip --strip-debug "$bundle"/libexec/*

# Libraries of the binaries not already there, leaving out glibc, the driver and CUDA's own.
for exe in "$bundle"/libexec/*; do
  ldd "$exe" | awk '$2 == "=>" && $3 != "not" { print $1, $3 }' | while read -r soname path; do
    case $soname in
      ld-linux*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libresolv.so.*) continue ;;
      libcuda.so*|libnvidia-*|libcublas*|libcudart*) continue ;;
    esac
    [[ -e $bundle/lib/$soname ]] || cp -L "$path" "$bundle/lib/$soname"
  done
done
# OpenBLAS alone is ~36 MiB: the libraries travel xz-compressed; on_device.sh unpacks them.
tar -C "$bundle" -cf - lib | xz -T2 -6 > "$bundle/lib.tar.xz"
rm -rf "$bundle/lib"
size=$(du -sm "$bundle" | cut -f1)
echo "bundle-gpu: ${size} MiB ($(ls "$bundle/libexec" | tr '\n' ' '))"
(( size < 50 )) || { echo "bundle-gpu is over 50 MiB" >&2; exit 1; }
cat <<'CMD'

Device call (tool `run`):
  command:   bash tools/gpu/on_device.sh tests memcheck server ncu bench-full
  carry:     ["bundle-gpu"]
  timeout_s: 540
(phases: tests, memcheck, server (the server's integration tests on --backend cuda and CPU vs
 CUDA greedy tokens), ncu (per-kernel times), bench (llama3-8b decode/prefill only),
 bench-full (all tables of docs/bench-gpu.md); logs come back under the call's files_at)
CMD
