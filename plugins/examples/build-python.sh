#!/usr/bin/env bash
# Builds a Python provider plugin into a component with componentize-py.
#
#   plugins/examples/build-python.sh SRC_DIR MODULE OUT.wasm
#
# SRC_DIR holds MODULE.py, which defines `class Provider` for world `plugin` of
# wit/since_v0.2.0. Relative paths are taken from the caller's directory, so the
# script runs from anywhere. On success it prints only OUT.wasm's path.
#
# componentize-py lives in a venv under target/ (never in the source tree) and
# is installed once; later builds reuse it while it is the pinned version.
# componentize-py generates the Python bindings itself, into a temporary
# directory, so nothing is written next to the sources.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

if [ $# -ne 3 ]; then
  echo "usage: $0 SRC_DIR MODULE OUT.wasm" >&2
  exit 2
fi
src=$1 module=$2 out=$3

# Resolve the caller's relative paths before anything changes directory.
case $src in /*) ;; *) src=$PWD/$src ;; esac
case $out in /*) ;; *) out=$PWD/$out ;; esac
if [ ! -f "$src/$module.py" ]; then
  echo "$0: no $module.py in $src" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$root/target/plugin-toolchains/python
componentize_py=$venv/bin/componentize-py

installed() {
  [ "$("$componentize_py" --version 2>/dev/null)" = "componentize-py $COMPONENTIZE_PY_VERSION" ]
}

if ! installed; then
  mkdir -p "$(dirname "$venv")"
  # Builds of several plugins may start at once (tests do): one installs, the
  # others wait for it and then find the pinned version in place.
  exec 9>"$venv.lock"
  flock 9
  if ! installed; then
    log=$(mktemp)
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "componentize-py==$COMPONENTIZE_PY_VERSION"; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "$0: could not install componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
      exit 1
    fi
    rm -f "$log"
  fi
  exec 9>&-
fi

mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

# The interpreter that componentize-py runs at build time writes __pycache__
# next to the modules it imports (PYTHONDONTWRITEBYTECODE does not reach it), so
# it gets a copy of the sources in a scratch directory, never the tree itself.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -R "$src" "$scratch/app"
rm -rf "$scratch/app/__pycache__"
log=$scratch/log

# componentize-py appends the site-packages of an active venv (VIRTUAL_ENV) to
# the app's path; the component must hold the plugin and the stdlib only,
# whatever the caller's shell has activated.
if ! (cd "$scratch/app" && env -u VIRTUAL_ENV \
  "$componentize_py" -d "$root/wit/since_v0.2.0" -w plugin componentize \
  -p "$scratch/app" -o "$out" "$module") >"$log" 2>&1; then
  cat "$log" >&2
  echo "$0: componentize-py failed for $src/$module.py" >&2
  exit 1
fi

echo "$out"
