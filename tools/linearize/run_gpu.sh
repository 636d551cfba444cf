#!/usr/bin/env bash
# Runs the pipeline after the corpus stage on a GPU machine, the way docs/linearize.md records it.
#   tools/linearize/run_gpu.sh smoke|full CORPUS_DIR WORK_DIR RESULTS_DIR
# smoke: trains the tokenizer and runs a few steps of every stage (checks the machine and times a
# step). full: the shipped models' run. Step counts and time budgets are the ones of that run;
# WORK_DIR keeps every stage's output (re-running resumes), RESULTS_DIR gets the exported models
# (weights + config), the evaluation and the log.
set -euo pipefail
mode=$1 corpus=$2 work=$3 results=$4
here=$(cd "$(dirname "$0")" && pwd)
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
mkdir -p "$work" "$results"
log="$results/run.log"
stage() { local name=$1; shift; local t0=$SECONDS
  "$py" "$here/$name.py" "$@" 2>&1 | tee -a "$log"
  echo "[timing] $name $((SECONDS - t0)) s" | tee -a "$log"; }
if [ "$mode" = smoke ]; then
  T="--steps 30 --log-every 10"; S="--steps 20 --log-every 10"; E="--tokens 16384 --trials 2"
else
  T="--steps ${TEACHER_STEPS:-7000} --max-minutes ${TEACHER_MIN:-3.0} --warmup 200 --log-every 250"
  S="--steps ${STAGE1_STEPS:-1200} --max-minutes ${STAGE1_MIN:-1.0} --log-every 100"
  S2="--steps ${STAGE2_STEPS:-3000} --max-minutes ${STAGE2_MIN:-2.7} --log-every 250"
  E="--trials 10"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$log"
"$py" -c 'import torch, tokenizers; print("torch", torch.__version__, "tokenizers", tokenizers.__version__)' | tee -a "$log"
stage tokenizer --corpus "$corpus" --out "$work/tok" --vocab 8192
stage teacher --data "$work/tok" --out "$work/teacher" $T
stage stage1 --teacher "$work/teacher/model" --data "$work/tok" --out "$work/stage1" $S
stage stage2 --init "$work/stage1/model" --data "$work/tok" --out "$work/stage2" ${S2:-$S}
stage export --model "$work/teacher/model" --tokenizer "$work/tok" --out "$work/llama-demo"
stage export --model "$work/stage2/model" --tokenizer "$work/tok" --out "$work/lizard-demo"
if [ "$mode" = smoke ]; then  # the tokenizer and validation ids, for the C++ parity test
  mkdir -p "$results/tok"
  cp "$work"/tok/{tokenizer.json,tokenizer_config.json,val.npy,val_lengths.npy} "$results/tok/"
else
  for m in llama-demo lizard-demo; do
    mkdir -p "$results/$m"
    cp "$work/$m/config.json" "$work/$m/model.safetensors" "$results/$m/"
  done
fi
"$py" - "$work" "$results/train.json" <<'PY'
import json, sys
out = {s: json.load(open(f"{sys.argv[1]}/{s}/result.json")) for s in ("teacher", "stage1", "stage2")}
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
stage evaluate --model teacher="$work/llama-demo" --model lizard="$work/lizard-demo" \
  --data "$work/tok" --out "$results/eval.json" --gla-bench $E
