#!/usr/bin/env bash
# Prepares the Python side for scripts/test.sh and scripts/bench.sh: creates .venv at the
# repository root if it is missing, installs the tools in bindings-python/requirements-dev.txt,
# and builds gym_telemetry into it with maturin (debug; --release for benchmarks). Needs only
# Rust and python3. Usage: bindings-python/scripts/venv.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=()
if [ "${1:-}" = "--release" ]; then PROFILE=(--release); fi
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r bindings-python/requirements-dev.txt
VIRTUAL_ENV="$PWD/.venv" .venv/bin/maturin develop --quiet "${PROFILE[@]}" -m bindings-python/Cargo.toml
