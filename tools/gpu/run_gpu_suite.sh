#!/bin/bash
# Builds everything the GPU run needs for sm_90a in its own build directory and collects it in
# bundle-gpu/ (git-ignored): the GPU test binaries, the server's integration tests, lizard-cli,
# lizard-server, the CUDA plugin, the shared libraries they need beyond glibc, the CUDA driver and
# toolkit (as lib.tar.xz), and the shipped model.
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
ninja -C "$build" -j2 gpu_kernels_test gpu_cuda_backend_test gpu_gemm_test gpu_gemm_bench lizard-cli \
  lizard-server lizard-loadgen lizard_cuda_plugin server_integration_test gpu_lizard_chunked_test lizard-bench-op \
  gpu_lizard_window_prefill_test

rm -rf "$bundle"
# The server's integration tests run against a CUDA server too; the GPU machine has no protoc,
# so the Python stubs travel.
mkdir -p "$bundle/py"
protoc -I "$repo/proto" --python_out="$bundle/py" --grpc_python_out="$bundle/py" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin "$repo/proto/lizard/v1/lizard.proto"
# tools/bundle.sh: lizard-server, lizard-cli, the CUDA plugin and the test binaries with the
# libraries they need beyond glibc, the driver and the CUDA toolkit.
# The tests use models/lizard-tiny (the tree travels too, so the bundle's copy stays small).
sh "$repo/tools/bundle.sh" --model "$repo/models/lizard-tiny" \
  --extra "$build/tests/gpu/gpu_kernels_test" --extra "$build/tests/gpu/gpu_cuda_backend_test" \
  --extra "$build/tests/gpu/gpu_gemm_test" --extra "$build/tests/gpu/gpu_gemm_bench" \
  --extra "$build/tests/gpu/gpu_lizard_chunked_test" --extra "$build/tools/lizard-bench-op" \
  --extra "$build/tests/gpu/gpu_lizard_window_prefill_test" \
  --extra "$build/tests/server/server_integration_test" "$build" "$bundle"
# The libraries and executables travel xz-compressed (the CUDA toolkit's libraries and the
# kernels' fat binaries are large); on_device.sh unpacks them.
tar -C "$bundle" -cf - lib libexec | xz -T2 -6 > "$bundle/lib.tar.xz"
rm -rf "$bundle/lib" "$bundle/libexec"
size=$(du -sm "$bundle" | cut -f1)
echo "bundle-gpu: ${size} MiB ($(tar -tJf "$bundle/lib.tar.xz" | grep '^libexec/.' | tr '\n' ' '))"
# The working tree (~28 MiB with models/) travels as well, in 64 MiB together.
(( size < 34 )) || { echo "bundle-gpu is over 34 MiB" >&2; exit 1; }
cat <<'CMD'

Device call (tool `run`):
  command:   bash tools/gpu/on_device.sh tests memcheck server bench
  carry:     ["bundle-gpu"]
  timeout_s: 540
(phases: tests, memcheck, server (the server's integration tests on --backend cuda and CPU vs
 CUDA greedy tokens), ncu (per-kernel times), bench (llama3-8b decode/prefill, sampling and GEMM
 comparisons), load (lizard-loadgen against a llama3-8b-shaped server), bench-full (all tables of docs/benchmarks.md), drift (bf16 vs f32 state over
 10K tokens); logs come back under the call's files_at)
CMD
