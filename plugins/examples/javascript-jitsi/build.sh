#!/bin/sh
# Builds the JavaScript Jitsi plugin into a WebAssembly component.
#
#   plugins/examples/javascript-jitsi/build.sh OUT.wasm
#
# Works from any directory; OUT.wasm is relative to the caller's. Installs the
# pinned toolchain (package-lock.json) first when node_modules is missing or
# older than the lock file. Prints only the output path on success; on failure
# prints the tools' output to stderr.
set -eu

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT.wasm" >&2
  exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out_dir=$(mkdir -p "$(dirname "$1")" && cd "$(dirname "$1")" && pwd)
out="$out_dir/$(basename "$1")"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() {
  cat "$log" >&2
  echo "$0: $1 failed" >&2
  exit 1
}

cd "$here"

# npm ci leaves node_modules/.package-lock.json behind: older than the
# committed lock file means the lock changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund >"$log" 2>&1 || fail "npm ci"
fi

# `--disable all` turns off every WASI-backed feature of the JS engine
# (stdio, random, clocks, http, fetch-event). The plugin reaches the host only
# through the loopcall:provider imports, so the component imports no WASI
# interface at all. The price: an uncaught JS exception traps instead of
# being printed, and `console`, `fetch`, timers, `Date.now`, `Math.random`
# and `crypto.getRandomValues` must not be relied on.
node_modules/.bin/jco componentize jitsi.js \
  --wit "$repo/wit/since_v0.2.0" \
  --world-name plugin \
  --disable all \
  --out "$out" >"$log" 2>&1 || fail "jco componentize"

echo "$out"
