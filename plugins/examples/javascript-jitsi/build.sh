#!/bin/sh
# Builds the JavaScript Jitsi plugin into a WebAssembly component.
#
#   plugins/examples/javascript-jitsi/build.sh [--engine quickjs|starlingmonkey] OUT.wasm
#
# The engine is QuickJS-NG (jco's `qjs` backend, componentize-qjs) unless
# `--engine starlingmonkey` asks for SpiderMonkey (componentize-js): README.md
# compares the two. Works from any directory; OUT.wasm is relative to the
# caller's. Installs the pinned toolchain (package-lock.json) first when
# node_modules is missing or older than the lock file. Prints only the output
# path on success; on failure prints the tools' output to stderr.
set -eu

engine=quickjs
if [ $# -eq 3 ] && [ "$1" = "--engine" ]; then
  engine=$2
  shift 2
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--engine quickjs|starlingmonkey] OUT.wasm" >&2
  exit 2
fi
case "$engine" in
  # Every WASI import becomes a trap stub: the plugin reaches the host only
  # through the loopcall:provider imports. The synchronous runtime, since the
  # provider world has no async function.
  quickjs) engine_flags="--backend qjs --backend-qjs-disable-async --backend-qjs-stub-wasi" ;;
  # `--disable all` turns off every WASI-backed feature of the engine (stdio,
  # random, clocks, http, fetch-event), so the component imports no WASI.
  starlingmonkey) engine_flags="--backend starlingmonkey --disable all" ;;
  *)
    echo "$0: unknown engine '$engine' (quickjs or starlingmonkey)" >&2
    exit 2
    ;;
esac

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

# shellcheck disable=SC2086 # engine_flags is a list of flags
node_modules/.bin/jco componentize jitsi.js \
  --wit "$repo/wit/since_v0.2.0" \
  --world-name plugin \
  $engine_flags \
  --out "$out" >"$log" 2>&1 || fail "jco componentize ($engine)"

echo "$out"
