#!/usr/bin/env bash
# Builds the Python LiveKit plugin: plugins/examples/python-livekit/build.sh OUT.wasm
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT.wasm" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case $1 in /*) out=$1 ;; *) out=$PWD/$1 ;; esac
exec "$here/../build-python.sh" "$here" livekit_provider "$out"
