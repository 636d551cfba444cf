#!/bin/sh
# Builds a bundle with tools/bundle.sh, moves it to another directory (it must be relocatable),
# then checks that
#   * every shared library the binaries load comes from the bundle, except glibc's, the CUDA
#     driver's and the CUDA toolkit runtime's (provided by the target),
#   * the glibc it needs is no newer than Ubuntu 24.04's (2.39), and
#   * the bundled lizard-server, started with an empty environment, serves the bundled model
#     and exits 0 on SIGTERM, and
#   * it knows every flag that deploy/Dockerfile and deploy/k8s/deployment.yaml pass it.
# Usage: bundle_test.sh BUILD_DIR
set -eu
build_dir=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill -9 "$server_pid" 2> /dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

"$repo/tools/bundle.sh" "$build_dir" "$tmp/built" | tee "$tmp/bundle.log"
mv "$tmp/built" "$tmp/moved"
bundle=$tmp/moved

for f in bin/lizard-server libexec/lizard-server models/lizard-demo/config.json; do
  [ -e "$bundle/$f" ] || { echo "FAIL: bundle lacks $f" >&2; exit 1; }
done

# What ldd finds outside the bundle must be glibc, the CUDA driver or the CUDA toolkit runtime.
for exe in "$bundle"/libexec/*; do
  LD_LIBRARY_PATH=$bundle/lib ldd "$exe" | awk '$2 == "=>" { print $1, $3 }' |
    while read -r soname path; do
      case $path in "$bundle"/lib/*) continue ;; esac
      case $soname in
        ld-linux*|libc.so.*|libm.so.*|libmvec.so.*|libpthread.so.*|libdl.so.*|librt.so.*) ;;
        libcuda.so*|libcublas.so*|libcublasLt.so*|libcudart.so*) ;;
        *) echo "FAIL: $(basename "$exe") loads $soname from outside the bundle: $path" >&2; exit 1 ;;
      esac
    done
done

glibc=$(sed -n 's/^needs glibc >= //p' "$tmp/bundle.log")
if [ "$(printf '%s\n2.39\n' "$glibc" | sort -V | tail -n 1)" != 2.39 ]; then
  echo "FAIL: bundle needs glibc $glibc, newer than Ubuntu 24.04's 2.39" >&2
  exit 1
fi

# Run it the way the container does: only the wrapper, no inherited library path.
env -i PATH=/usr/bin:/bin "$bundle/bin/lizard-server" --model="$bundle/models/lizard-demo" \
  --backend=cpu --host=127.0.0.1 --port=0 --metrics-port=0 --http-port=0 > "$tmp/server.log" 2>&1 &
server_pid=$!
tries=0
until grep -q "metrics listening on" "$tmp/server.log"; do
  tries=$((tries + 1))
  if [ $tries -gt 600 ] || ! kill -0 "$server_pid" 2> /dev/null; then
    echo "FAIL: bundled lizard-server did not start:" >&2
    cat "$tmp/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
if [ $status -ne 0 ]; then
  echo "FAIL: bundled lizard-server exited $status after SIGTERM:" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi
# Flags the deployment files pass; absl spells them with underscores in --helpfull.
"$bundle/bin/lizard-server" --helpfull > "$tmp/help.txt" 2>&1 || true
flags=$(grep -ho -e '- --[a-z-]*' -e '"--[a-z-]*' "$repo/deploy/k8s/deployment.yaml" \
          "$repo/deploy/Dockerfile" | sed 's/^[-" ]*--//' | sort -u)
for flag in $flags; do
  if ! grep -q -e "^ *--$(echo "$flag" | tr - _) " "$tmp/help.txt"; then
    echo "FAIL: lizard-server has no flag --$flag (used in deploy/)" >&2
    exit 1
  fi
done
echo "deployment flags known to lizard-server:" $flags

echo "bundle_test.sh: bundle is complete, relocatable and runs"
