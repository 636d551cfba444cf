#!/bin/sh
# Makes a relocatable bundle of the lizard binaries:
#   OUT_DIR/bin/NAME      small sh wrapper: points LD_LIBRARY_PATH at ../lib, execs ../libexec/NAME
#   OUT_DIR/libexec/NAME  the real executables (lizard-server, and lizard-cli / lizard-loadgen if built)
#   OUT_DIR/lib/          every shared library they need except glibc's own, the CUDA driver
#                         (comes from the host) and, unless --with-cuda-libs, the CUDA toolkit
#                         runtime (the CUDA runtime images and the device machines have it)
#   OUT_DIR/models/       the default small model
# Wrappers instead of patchelf'd RPATHs: no extra tool needed, and the bundle can be moved anywhere.
# The bundle needs a glibc at least as new as the build machine's (printed at the end).
#
# Usage: tools/bundle.sh [--with-cuda-libs] [--model DIR] [--extra FILE]... BUILD_DIR OUT_DIR
set -eu

usage() {
  echo "usage: $0 [--with-cuda-libs] [--model MODEL_DIR] [--extra FILE]... BUILD_DIR OUT_DIR" >&2
  exit 2
}

repo=$(cd "$(dirname "$0")/.." && pwd)
with_cuda_libs=0
model_dir=$repo/models/lizard-demo
extras=""  # more executables for libexec/ (test binaries for the GPU run), no wrapper
while [ $# -gt 0 ]; do
  case $1 in
    --with-cuda-libs) with_cuda_libs=1; shift ;;
    --model) [ $# -ge 2 ] || usage; model_dir=$2; shift 2 ;;
    --model=*) model_dir=${1#--model=}; shift ;;
    --extra) [ $# -ge 2 ] || usage; extras="$extras $2"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
build_dir=$1
out_dir=$2

[ -d "$build_dir" ] || { echo "no build directory: $build_dir" >&2; exit 1; }
[ -f "$model_dir/config.json" ] || { echo "no model at $model_dir (config.json missing)" >&2; exit 1; }

# Which libraries stay out of the bundle, by soname. Prints "glibc", "driver", "cuda" or nothing.
lib_kind() {
  case $1 in
    ld-linux*|libc.so.*|libm.so.*|libmvec.so.*|libpthread.so.*|libdl.so.*|librt.so.*|\
    libresolv.so.*|libutil.so.*|libanl.so.*|libnsl.so.*|libBrokenLocale.so.*|\
    libc_malloc_debug.so.*|libthread_db.so.*|libnss_*) echo glibc ;;
    libcuda.so*|libnvidia-*) echo driver ;;
    libcublas.so*|libcublasLt.so*|libcudart.so*) echo cuda ;;
  esac
}

# True when the library named $1 belongs in OUT_DIR/lib.
bundled() {
  case $(lib_kind "$1") in
    glibc|driver) return 1 ;;
    cuda) [ "$with_cuda_libs" -eq 1 ] ;;
    *) return 0 ;;
  esac
}

# "soname path" for every library a binary loads, transitively (ldd already follows the chain).
needed_libs() {
  ldd "$1" | awk '$2 == "=>" { print $1, $3 }'
}

# Debug info stays in the build tree: the bundle travels (device machine, container image) and
# must stay small.
strip_debug() {
  chmod u+w "$1"
  strip --strip-debug "$1" 2>/dev/null || true
}

# Copies the libraries that binary or library $1 loads into OUT_DIR/lib (see `bundled`).
copy_needed_libs() {
  needed_libs "$1" | while read -r soname path; do
    if [ "$path" = "not" ]; then  # ldd prints "=> not found"
      if bundled "$soname"; then
        echo "$1 needs $soname, which is not found on this machine" >&2
        exit 1
      fi
      continue
    fi
    if bundled "$soname" && [ ! -e "$out_dir/lib/$soname" ]; then
      # -L: copy the file behind the soname link (Debian's alternatives for OpenBLAS included).
      cp -L "$path" "$out_dir/lib/$soname"
      strip_debug "$out_dir/lib/$soname"
    fi
  done
}

mkdir -p "$out_dir/bin" "$out_dir/libexec" "$out_dir/lib" "$out_dir/models"
out_dir=$(cd "$out_dir" && pwd)

binaries=""
for name in lizard-server lizard-cli lizard-loadgen; do
  exe=$(find "$build_dir" -name CMakeFiles -prune -o -type f -name "$name" -perm -u+x -print | head -n 1)
  if [ -z "$exe" ]; then
    [ "$name" = lizard-server ] && { echo "lizard-server not found under $build_dir" >&2; exit 1; }
    echo "skipping $name: not built"
    continue
  fi
  binaries="$binaries $name"
  cp "$exe" "$out_dir/libexec/$name"
  strip_debug "$out_dir/libexec/$name"
  cat > "$out_dir/bin/$name" <<EOF
#!/bin/sh
# Runs the bundled $name with the bundle's own shared libraries (see tools/bundle.sh).
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="\$here/../lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "\$here/../libexec/$name" "\$@"
EOF
  chmod 755 "$out_dir/bin/$name"

  copy_needed_libs "$exe"
done

for exe in $extras; do
  cp "$exe" "$out_dir/libexec/"
  strip_debug "$out_dir/libexec/$(basename "$exe")"
  copy_needed_libs "$exe"
done

# The CUDA backend is a plugin that the binaries dlopen (engine/cuda/CMakeLists.txt says why).
plugin=$(find "$build_dir" -name CMakeFiles -prune -o -type f -name liblizard_cuda_plugin.so -print | head -n 1)
if [ -n "$plugin" ]; then
  cp "$plugin" "$out_dir/lib/"
  strip_debug "$out_dir/lib/liblizard_cuda_plugin.so"
  copy_needed_libs "$plugin"
else
  echo "no CUDA plugin in $build_dir: the bundle serves on the CPU only"
fi

# Self-check: with the bundle's lib first, every library is either bundled or one the target
# provides; nothing resolves into the build tree or to a library we meant to bundle.
for name in $binaries; do
  LD_LIBRARY_PATH=$out_dir/lib ldd "$out_dir/libexec/$name" | awk '$2 == "=>" { print $1, $3 }' |
    while read -r soname path; do
      if bundled "$soname"; then
        case $path in
          "$out_dir"/lib/*) ;;
          *) echo "bundle check failed: $name loads $soname from $path" >&2; exit 1 ;;
        esac
      fi
    done
done

cp -R "$model_dir" "$out_dir/models/"

# The newest glibc symbol version the binaries use: the oldest glibc the bundle runs on.
glibc_needed=$(for name in $binaries; do
  objdump -T "$out_dir/libexec/$name" "$out_dir"/lib/*.so* 2>/dev/null
done | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)

echo "bundle: $out_dir"
echo "binaries:$binaries"
echo "libraries: $(find "$out_dir/lib" -type f | wc -l)"
echo "needs glibc >= $glibc_needed"
echo "size: $(du -sh "$out_dir" | cut -f1)"
