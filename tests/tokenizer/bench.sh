#!/usr/bin/env bash
# Encode throughput (one thread) of lizard's C++ tokenizer next to the reference (transformers.js
# port) on the same text, for the Llama-3 and Llama-2 tokenizer.json files.
# Usage: tests/tokenizer/bench.sh [BUILD_DIR] [TEXT_MB]   (defaults: build, 4)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${1:-$root/build}"
text_mb="${2:-4}"
bench="$build/tools/tokenizer_bench/lizard-tokenizer-bench"
[ -x "$bench" ] || { echo "build lizard-tokenizer-bench first ($bench)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The references and the parity corpus (English, code, numbers, CJK, emoji, RTL, ...).
bash "$here/setup_reference.sh" "$work/reference" >/dev/null

# The text: the parity corpus, the tokenizer training corpus and the repository's own sources and
# docs (prose + C++/Python/CMake), repeated up to TEXT_MB megabytes.
seed="$work/seed.txt"
node -e '
  const d = require(process.argv[1]);
  process.stdout.write(d.cases.map(c => c.text).join("\n"));
' "$work/reference/llama3.expected.json" > "$seed"
cat "$root/tools/tokenizer_corpus.txt" >> "$seed"
find "$root/engine" "$root/server" "$root/tools" "$root/docs" "$root/tests" -type f \
    \( -name '*.cc' -o -name '*.h' -o -name '*.py' -o -name '*.md' -o -name '*.txt' \) \
    -not -path '*/node_modules/*' -print0 | sort -z | xargs -0 cat >> "$seed"
text="$work/text.txt"
: > "$text"
while [ "$(stat -c %s "$text")" -lt $((text_mb * 1000000)) ]; do cat "$seed" >> "$text"; done
echo "text: $(stat -c %s "$text") bytes ($(stat -c %s "$seed") distinct bytes, repeated)"

for name in llama3 llama2; do
  json="$here/node_modules/@lenml/tokenizer-$name/models/tokenizer.json"
  echo "== $name"
  "$bench" --tokenizer "$json" --text "$text"
  node "$here/bench_reference.js" "$name" "$text"
done
