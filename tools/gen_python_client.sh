#!/usr/bin/env bash
# Regenerates the gRPC stubs shipped in clients/python/lizard_client/ from proto/ with Debian's
# protoc and grpc_python_plugin (run after changing the proto; a test checks they are current).
#   tools/gen_python_client.sh [OUT_DIR]    (default: clients/python/lizard_client)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-clients/python/lizard_client}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc -I proto --python_out="$tmp" --grpc_python_out="$tmp" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin proto/lizard/v1/lizard.proto
# The generated service module imports "lizard.v1.lizard_pb2"; inside the package it must be
# relative so that `import lizard_client` works from any directory.
sed -i 's/^from lizard\.v1 import lizard_pb2 as/from . import lizard_pb2 as/' \
  "$tmp/lizard/v1/lizard_pb2_grpc.py"
mkdir -p "$out"
cp "$tmp/lizard/v1/lizard_pb2.py" "$tmp/lizard/v1/lizard_pb2_grpc.py" "$out/"
