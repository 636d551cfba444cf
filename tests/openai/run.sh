#!/bin/sh
# Runs openai_client_test.mjs (the official `openai` npm client against lizard-server).
# Installs the pinned package of package-lock.json into tests/openai/node_modules on first use.
# Usage: run.sh SERVER_BINARY MODEL_DIR. Exits 77 (ctest: skipped) without node and npm.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in node npm; do
  if ! command -v "$tool" > /dev/null; then
    echo "SKIP: the openai client test needs $tool (apt-get install nodejs npm)"
    exit 77
  fi
done
if [ ! -f "$here/node_modules/openai/package.json" ]; then
  npm ci --prefix "$here" --no-audit --no-fund
fi
exec node "$here/openai_client_test.mjs" "$@"
