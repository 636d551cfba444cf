#!/bin/bash
# Runs on the GPU machine, in the repository root, from the bundle made by
# tools/gpu/run_gpu_suite.sh: the GPU tests, compute-sanitizer memcheck over them, and the
# benchmarks. Everything is logged under $OUT (at most a few files: the device tool returns 8).
#
#   bash tools/gpu/on_device.sh [tests] [memcheck] [server] [ncu] [ncu-prefill] [ncu-detail] [bench] [bench-full]
#                                [load] [load-small] [drift] [bench-quick] [bench-pdl]
#                                [bin:NAME,ARG,...]
# (bench runs lizard-bench-op too: the chunked Lizard attention op alone)
# (default: tests memcheck bench-full; ncu: per-kernel times of llama3-8b decode steps at batch
# 1, 64 and 256)
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
repo=$(cd "$(dirname "$0")/../.." && pwd)
bundle=$repo/bundle-gpu
phases=${*:-tests memcheck bench-full}

[[ -f $bundle/lib.tar.xz && ! -d $bundle/libexec ]] && tar -C "$bundle" -xJf "$bundle/lib.tar.xz"
# The bundle's own libraries first, then the machine's CUDA toolkit (cuBLAS, cudart).
cuda_libs=$(dirname "$(ls /usr/local/cuda/lib64/libcublas.so* 2>/dev/null | head -n 1)" 2>/dev/null)
py_cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(nvidia.cublas.__path__[0], "lib"))' 2>/dev/null)
py_cudart=$(python3 -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="$bundle/lib:${cuda_libs:-/usr/local/cuda/lib64}:${py_cublas}:${py_cudart}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

summary=$OUT/summary.txt
note() { echo "$*" | tee -a "$summary"; }
note "== $(date -u) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
ldd "$bundle/libexec/gpu_kernels_test" | grep -E "not found|cublas|cudart" >> "$summary" 2>&1

models=/tmp/gpu-test-models
if [[ ! -d $models ]]; then
  python3 "$repo/tools/gpu/make_test_models.py" "$models" > /dev/null || note "making test models FAILED"
fi
export LIZARD_GPU_TEST_MODELS=$models

run_test() {  # name, extra args...
  local name=$1; shift
  local t0=$SECONDS
  timeout 300 "$bundle/libexec/$name" "$@" >> "$OUT/tests.log" 2>&1
  note "$name $*: exit $? in $((SECONDS - t0)) s"
}

ncu_summary() {  # csv, label: device time summed by kernel name, the largest first
  python3 - "$1" "$2" >> "$summary" <<'PY'
import collections, csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; name = head.index("Kernel Name"); value = head.index("Metric Value")
total = collections.Counter(); count = collections.Counter()
for r in rows[1:]:
    try: t = float(r[value].replace(",", ""))
    except ValueError: continue
    # The function's own name: the identifier before its template arguments or parameters (not
    # a namespace such as "(anonymous namespace)").
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)(<[^(]*>)?\(", r[name].replace("(anonymous namespace)", ""))
    key = (m.group(1) if m else r[name])[:60]
    total[key] += t; count[key] += 1
all_ns = sum(total.values())
print("%s: %.3f ms in %d kernels" % (sys.argv[2], all_ns / 1e6, sum(count.values())))
for key, t in total.most_common(14):
    print("  %-60s %8.3f ms %5.1f%% (%d launches)" % (key, t / 1e6, 100 * t / all_ns, count[key]))
PY
}

bench() {  # label, args...: lizard-cli bench on the CUDA backend, logged to bench.log
  local label=$1; shift
  local t0=$SECONDS
  echo "### $label: lizard-cli bench $*" >> "$OUT/bench.log"
  timeout 240 "$bundle/libexec/lizard-cli" bench --backend cuda "$@" >> "$OUT/bench.log" 2>&1
  note "bench $label: exit $? in $((SECONDS - t0)) s"
}

load_run() {  # name, --max-batch-tokens, --max-running, requests per second
  local name=$1 budget=$2 running=$3 rate=$4 port=50070 metrics=9470
  "$bundle/bin/lizard-server" --model synthetic:llama3-8b --backend cuda --port $port \
    --metrics-port $metrics --http-port 0 --max-batch-tokens "$budget" --max-running "$running" \
    --device-state-slots 128 --prefix-cache-bytes 0 > "$OUT/$name-server.log" 2>&1 &
  local srv=$! t0=$SECONDS
  for _ in $(seq 120); do
    grep -q "listening" "$OUT/$name-server.log" && break
    sleep 1
  done
  timeout 120 "$bundle/bin/lizard-loadgen" --target 127.0.0.1:$port --rate "$rate" --duration 40s \
    --prompt-tokens 2048 --output-tokens 512 > "$OUT/$name.log" 2>&1
  note "loadgen $name (budget $budget, $rate req/s): exit $? in $((SECONDS - t0)) s"
  curl -s 127.0.0.1:$metrics/metrics |
    grep -E "^lizard_(step_duration_seconds|batch_size|batch_tokens)_(sum|count)" >> "$OUT/$name.log"
  grep -E "^(requests|throughput|ttft|inter-token|request latency|errors|lizard_)" "$OUT/$name.log" >> "$summary"
  kill $srv
  wait $srv
}

for phase in $phases; do
  case $phase in
    bin:*)
      # One bundled executable with its arguments, commas for spaces (a short call for one test
      # or bench): bin:gpu_kernels_test,--gtest_filter=LizardState*
      args=${phase#bin:}
      t0=$SECONDS
      echo "### ${args//,/ }" >> "$OUT/bin.log"
      timeout 300 "$bundle/libexec/${args%%,*}" $( [[ $args == *,* ]] && echo "${args#*,}" | tr ',' ' ') \
        > "$OUT/bin-last.log" 2>&1
      note "${args//,/ }: exit $? in $((SECONDS - t0)) s"
      tail -n 40 "$OUT/bin-last.log" >> "$summary"
      cat "$OUT/bin-last.log" >> "$OUT/bin.log" && rm "$OUT/bin-last.log"
      ;;
    tests)
      run_test gpu_kernels_test
      run_test gpu_cuda_backend_test
      run_test gpu_gemm_test
      run_test gpu_lizard_chunked_test
      run_test gpu_lizard_window_prefill_test
      grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$OUT/tests.log" | sort | uniq -c >> "$summary"
      ;;
    server)
      # The server's integration tests (C++ and Python clients) against lizard-server on the
      # CUDA backend, then the same greedy requests on CPU and CUDA servers side by side.
      export LIZARD_SERVER_BIN=$bundle/bin/lizard-server LIZARD_PY_STUBS=$bundle/py
      export LIZARD_TEST_MODEL_DIR=$repo/models/lizard-tiny
      LIZARD_TEST_SERVER_FLAGS="--backend cuda" run_test server_integration_test
      t0=$SECONDS
      LIZARD_TEST_SERVER_FLAGS="--backend cuda" timeout 300 python3 "$repo/tests/server/test_server.py" \
        --server "$LIZARD_SERVER_BIN" --model "$LIZARD_TEST_MODEL_DIR" --proto-dir "$repo/proto" \
        >> "$OUT/tests.log" 2>&1
      note "test_server.py --backend cuda: exit $? in $((SECONDS - t0)) s"
      t0=$SECONDS
      LIZARD_TEST_SERVER_FLAGS="--backend cuda" timeout 300 python3 "$repo/tests/server/test_prefix_cache.py" \
        --server "$LIZARD_SERVER_BIN" --model "$LIZARD_TEST_MODEL_DIR" --proto-dir "$repo/proto" \
        >> "$OUT/tests.log" 2>&1
      note "test_prefix_cache.py --backend cuda: exit $? in $((SECONDS - t0)) s"
      timeout 300 python3 "$repo/tools/gpu/compare_backends.py" --server "$LIZARD_SERVER_BIN" \
        --model "$LIZARD_TEST_MODEL_DIR" --proto-dir "$repo/proto" --requests 16 > "$OUT/compare.log" 2>&1
      note "compare_backends (CPU vs CUDA greedy): exit $? -- $(tail -n 1 "$OUT/compare.log")"
      ;;
    memcheck)
      for t in gpu_kernels_test gpu_cuda_backend_test gpu_gemm_test gpu_lizard_chunked_test gpu_lizard_window_prefill_test; do
        t0=$SECONDS
        filter=()
        # The whole-model comparison is covered without the sanitizer; memcheck the rest.
        [[ $t == gpu_cuda_backend_test ]] && filter=(--gtest_filter=-*LongPrefill*:*Neighbours*)
        timeout 300 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 99 \
          "$bundle/libexec/$t" "${filter[@]}" >> "$OUT/memcheck.log" 2>&1
        note "memcheck $t: exit $? in $((SECONDS - t0)) s"
      done
      grep -E "ERROR SUMMARY|Invalid|out of bounds" "$OUT/memcheck.log" | sort | uniq -c | head -20 >> "$summary"
      ;;
    bench-quick)
      # Issue #12's headline figures only: decode 1/8/64/256, prefill 2K/8K, spill, and the op.
      bench 8b-lizard --shape llama3-8b --batch-sizes 1,8,64,256 --context 1024 --prompt-lengths 2048,8192 --steps 10
      t0=$SECONDS
      timeout 120 "$bundle/libexec/lizard-bench-op" --iters 50 > "$OUT/bench-op.txt" 2>&1
      note "lizard-bench-op: exit $? in $((SECONDS - t0)) s"
      grep -E "^(###|backend|weights|copy bw|state spill| +[0-9]+ )" "$OUT/bench.log" >> "$summary"
      grep -E "median" "$OUT/bench-op.txt" >> "$summary"
      ;;
    bench|bench-full)
      bench 8b-lizard --shape llama3-8b --batch-sizes 1,8,32,64,128,256 --context 1024 --prompt-lengths 512,2048,8192,32768
      # What sampling on the device costs (top-p: the dearest path) and what copying the logits
      # back would cost instead; the same steps with cuBLAS projections.
      bench 8b-lizard-top-p --shape llama3-8b --sample top-p --batch-sizes 1,64,256 --prompt-lengths 512 --steps 10
      bench 8b-lizard-logits --shape llama3-8b --sample logits --batch-sizes 1,64,256 --prompt-lengths 512 --steps 10
      bench 8b-lizard-cublas --shape llama3-8b --gemm cublas --batch-sizes 1,8,64,256 --prompt-lengths 512,8192 --steps 10
      t0=$SECONDS
      # The chunked Lizard attention op alone (kernels/lizard_attention/), issue #12's op figures.
      timeout 120 "$bundle/libexec/lizard-bench-op" --iters 50 > "$OUT/bench-op.txt" 2>&1
      note "lizard-bench-op: exit $? in $((SECONDS - t0)) s"
      t0=$SECONDS
      timeout 200 "$bundle/libexec/gpu_gemm_bench" > "$OUT/gemm-bench.txt" 2>&1
      note "gpu_gemm_bench: exit $? in $((SECONDS - t0)) s"
      if [[ $phase == bench-full ]]; then
        bench 8b-lizard-bf16-state-128k --shape llama3-8b --state-dtype bf16 --batch-sizes 1,64,256,512 --context 131072 --prompt-lengths 512
        for ctx in 1024 16384 131072; do
          bench "8b-lizard-ctx$ctx" --shape llama3-8b --batch-sizes 1,32 --context $ctx --prompt-lengths 512 --steps 10
        done
        for ctx in 1024 16384 131072; do
          bench "8b-teacher-ctx$ctx" --shape llama3-8b --teacher --batch-sizes 1,4 --context $ctx --prompt-lengths 512 --steps 10
        done
        bench 8b-teacher-ctx131072-b8 --shape llama3-8b --teacher --batch-sizes 8 --context 131072 --prompt-lengths 512 --steps 5
        bench 1b-lizard --shape llama3.2-1b --batch-sizes 1,8,32,64,128,256 --context 1024 --prompt-lengths 512,8192
        bench tiny-lizard --shape tiny --batch-sizes 1,8,64,256 --context 1024 --prompt-lengths 512
      fi
      grep -E "^(###|backend|weights|copy bw|state spill| +[0-9]+ )" "$OUT/bench.log" >> "$OUT/bench-table.txt"
      ;;
    load)
      # The server under load: llama3-8b-shaped random weights (--model synthetic:llama3-8b),
      # Poisson arrivals of 2K-token prompts, long answers so that many streams are in flight.
      # A step budget of 256 tokens keeps a prefill chunk from stretching the decodes' steps.
      load_run load 256 96 3
      ;;
    drift)
      # bf16 against float32 S/z over 10K+ teacher-forced greedy tokens (random weights).
      for shape in llama3.2-1b llama3-8b; do
        t0=$SECONDS
        echo "### drift $shape" >> "$OUT/drift.log"
        timeout 280 "$bundle/libexec/lizard-cli" drift --backend cuda --shape $shape --tokens 10240 \
          --report-every 1024 >> "$OUT/drift.log" 2>&1
        note "drift $shape: exit $? in $((SECONDS - t0)) s"
      done
      ;;
    ncu)
      # Per-kernel device time of one llama3-8b decode step per batch size (kernels inside the
      # graph one by one), summed by kernel name.
      for b in 1 64 256; do
        t0=$SECONDS
        timeout 240 ncu --clock-control none --graph-profiling node --csv --metrics gpu__time_duration.sum \
          --kernel-name 'regex:^(?!Random)' --launch-count 420 \
          "$bundle/libexec/lizard-cli" bench --backend cuda --shape llama3-8b --batch-sizes $b --steps 1 \
          --prompt-lengths 64 > "$OUT/ncu-decode-$b.csv" 2>&1
        note "ncu batch $b: exit $? in $((SECONDS - t0)) s"
        ncu_summary "$OUT/ncu-decode-$b.csv" "ncu decode batch $b"
      done
      ;;
    ncu-detail)
      # Where kernels wait (ncu sections: throughput, memory, warp stalls, occupancy, instructions):
      # the first layer's decode window and state kernels at batch 1 and 256, and the prefill
      # feature maps of one 2048-token sequence (lizard-bench-op).
      sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section Occupancy --section SchedulerStats --section LaunchStats --section InstructionStats"
      for b in 1 256; do
        t0=$SECONDS
        timeout 200 ncu --clock-control none --graph-profiling node --kernel-name 'regex:LizardDecode' \
          --launch-skip 2 --launch-count 2 $sections \
          "$bundle/libexec/lizard-cli" bench --backend cuda --shape llama3-8b --batch-sizes $b --steps 1 \
          --prompt-lengths 64 > "$OUT/ncu-detail-decode-$b.txt" 2>&1
        note "ncu detail decode batch $b: exit $? in $((SECONDS - t0)) s"
      done
      t0=$SECONDS
      timeout 200 ncu --clock-control none --kernel-name 'regex:PrefillFeatureMaps' --launch-count 1 $sections \
        "$bundle/libexec/lizard-bench-op" --batch 1 --seq 2048 --f2 256 --iters 1 > "$OUT/ncu-detail-maps.txt" 2>&1
      note "ncu detail maps: exit $? in $((SECONDS - t0)) s"
      ;;
    ncu-prefill)
      # Per-kernel device time of llama3-8b prefills of 2048 tokens (after one decode step, which
      # the totals include), summed by kernel name: where prefill time goes.
      t0=$SECONDS
      timeout 300 ncu --clock-control none --csv --metrics gpu__time_duration.sum \
        --kernel-name 'regex:^(?!Random)' --launch-count 4000 \
        "$bundle/libexec/lizard-cli" bench --backend cuda --shape llama3-8b --batch-sizes 1 --steps 1 \
        --prompt-lengths 2048 > "$OUT/ncu-prefill.csv" 2>&1
      note "ncu prefill: exit $? in $((SECONDS - t0)) s"
      ncu_summary "$OUT/ncu-prefill.csv" "ncu prefill"
      ;;
    bench-pdl)
      # Decode steps with programmatic dependent launches off and on, alternating (A/B in one run).
      for round in 1 2; do
        for pdl in 0 1; do
          LIZARD_PDL=$pdl bench "decode-pdl$pdl-round$round" --shape llama3-8b --batch-sizes 1,8,64,256 \
            --context 1024 --prompt-lengths 512 --steps 20
        done
      done
      grep -E "^(###| +[0-9]+ )" "$OUT/bench.log" | grep -v "^ *512 " >> "$summary"
      ;;
    load-small)
      # The same with a step budget of 128 tokens (decodes first, prompt chunks get the rest).
      load_run load-small 128 64 1.5
      ;;
    *) note "unknown phase $phase" ;;
  esac
done
note "== done $(date -u)"
# The device tool returns at most 8 files: everything but the summary travels as one archive.
(cd "$OUT" && tar -czf logs.tar.gz --remove-files $(ls | grep -v -e '^summary.txt$' -e '^logs.tar.gz$'))
cat "$summary"
