#!/usr/bin/env bash
# Prepares the Python side for scripts/test.sh and scripts/bench.sh: creates .venv at the
# repository root if it is missing, installs the tools in bindings-python/requirements-dev.txt,
# and builds gym_telemetry into it with maturin (debug; --release for benchmarks). Needs only
# Rust and python3.
#
# --gymnasium-0.29 prepares .venv-gym029 instead, from bindings-python/requirements-gym029.txt:
# the same tools with Gymnasium 0.29.1 (the version CleanRL pins), for the wrapper and CleanRL
# compatibility tests. Usage: bindings-python/scripts/venv.sh [--release] [--gymnasium-0.29]
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=()
VENV=.venv
REQUIREMENTS=(-r bindings-python/requirements-dev.txt)
for arg in "$@"; do
  case "$arg" in
    --release) PROFILE=(--release) ;;
    --gymnasium-0.29)
      VENV=.venv-gym029
      REQUIREMENTS=(-r bindings-python/requirements-gym029.txt)
      ;;
    *) echo "venv.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${REQUIREMENTS[@]}"
VIRTUAL_ENV="$PWD/$VENV" "$VENV/bin/maturin" develop --quiet "${PROFILE[@]}" -m bindings-python/Cargo.toml
