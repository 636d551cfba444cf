#!/usr/bin/env bash
# Nightly-style run of the randomized differential test (tests/server/differential_test.py):
# rounds with fresh random seeds until the time budget is spent, each a longer workload than
# the CI one. Stops at the first failing round and prints the command that reproduces it.
#   tools/soak/differential.sh [BUDGET_SECONDS] [extra differential_test.py flags...]
# BUILD_DIR (default: build) selects the build; SEED, when set, is the first round's seed
# (the next rounds use SEED+1, SEED+2, ...). Logs go to $LOG_DIR (default: a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
budget=${1:-3600}
shift || true
build_dir=${BUILD_DIR:-build}
log_dir=${LOG_DIR:-$(mktemp -d /tmp/lizard-differential.XXXXXX)}
seed=${SEED:-$(( (RANDOM << 15) | RANDOM ))}
references=$(( $(nproc) / 2 > 2 ? $(nproc) / 2 : 2 ))  # fresh reference servers at once
end=$(( $(date +%s) + budget ))
rounds=0
echo "differential soak: budget ${budget}s, first seed ${seed}, logs in ${log_dir}"
# A round needs about --duration of workload plus its reference checks; none starts that
# could not finish within the budget.
while (( $(date +%s) + 240 <= end )); do
  log="${log_dir}/seed-${seed}.log"
  args=(--seed "$seed" --requests 4000 --duration 60 --checks 150 --clients 8
        --sessions-per-client 3 --host-states 20 --max-new 64 --references "$references" "$@")
  if ! /usr/bin/python3 tests/server/differential_test.py \
      --server "${build_dir}/server/lizard-server" --model models/lizard-tiny \
      --proto-dir proto "${args[@]}" > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "FAILED in round $((rounds + 1)); reproduce with:"
    echo "  /usr/bin/python3 tests/server/differential_test.py --server ${build_dir}/server/lizard-server --model models/lizard-tiny --proto-dir proto ${args[*]}"
    exit 1
  fi
  grep -E '^(seed|  )' "$log" | head -n 8
  rounds=$((rounds + 1))
  seed=$((seed + 1))
done
echo "differential soak: ${rounds} rounds passed"
