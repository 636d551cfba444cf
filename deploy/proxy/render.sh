#!/bin/sh
# Renders deploy/proxy/haproxy.cfg.in to stdout.
# Usage: render.sh BIND SERVER_LINE...   e.g. render.sh 127.0.0.1:8080 "server r0 127.0.0.1:5001"
# Each SERVER_LINE becomes one line of the backend.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 BIND SERVER_LINE..." >&2; exit 2; }
bind=$1
shift
servers=""
for line in "$@"; do
  servers="$servers    $line
"
done
template=$(dirname "$0")/haproxy.cfg.in
# awk, not sed: server lines may contain characters that sed would treat specially.
awk -v bind="$bind" -v servers="$servers" '
  $0 == "@SERVERS@" { printf "%s", servers; next }
  { gsub(/@BIND@/, bind); print }
' "$template"
