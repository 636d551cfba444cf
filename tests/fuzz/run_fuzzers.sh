#!/bin/bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz and runs each one for
# SECONDS seconds (default 120), one after the other, on a copy of its seed corpus.
#   tests/fuzz/run_fuzzers.sh [SECONDS] [TARGET...]
# Each run's output goes to build-fuzz/fuzz-logs/<target>.log (its final stats are printed here),
# crash inputs to build-fuzz/fuzz-artifacts/<target>/; the script exits non-zero if any fuzzer failed.
set -euo pipefail
seconds=${1:-120}
shift || true
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
build_dir=${source_dir}/build-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_model_config fuzz_checkpoint fuzz_serialized_state fuzz_tokenizer_json fuzz_tokenizer_encode
           fuzz_http_endpoint fuzz_rpc_request fuzz_chat_template fuzz_session_blob)
fi

# Every library is instrumented for coverage and the sanitizers; only the fuzz targets get main().
sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
cmake -S "${source_dir}" -B "${build_dir}" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DLIZARD_FUZZ=ON -DLIZARD_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS="${sanitize}" -DCMAKE_CXX_FLAGS="${sanitize}" >/dev/null
ninja -C "${build_dir}" -j2 "${targets[@]}"

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
failed=0
for target in "${targets[@]}"; do
  name=${target#fuzz_}
  corpus=${build_dir}/fuzz-corpus/${name}      # grows while fuzzing; the seeds stay untouched
  artifacts=${build_dir}/fuzz-artifacts/${name}/
  log=${build_dir}/fuzz-logs/${target}.log
  mkdir -p "${corpus}" "${artifacts}" "${build_dir}/fuzz-logs"
  echo "== ${target}: ${seconds} s, log ${log}"
  if ! "${build_dir}/tests/fuzz/${target}" -max_total_time="${seconds}" -max_len=65536 -timeout=10 \
       -rss_limit_mb=4096 -artifact_prefix="${artifacts}" -print_final_stats=1 \
       "${corpus}" "${source_dir}/tests/fuzz/corpus/${name}" >"${log}" 2>&1; then
    tail -n 40 "${log}"
    echo "!! ${target} failed; the input is in ${artifacts}"
    failed=1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' "${log}" || true
done
exit ${failed}
