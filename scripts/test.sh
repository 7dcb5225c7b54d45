#!/usr/bin/env bash
# The one command that runs every check and test of gym-telemetry (Rust and Python).
# .ci/run calls exactly this. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== python (bindings-python: pytest against the real daemon)"
bindings-python/scripts/venv.sh
cargo build -p gym-telemetry-daemon
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/debug/gym-telemetry-daemon"
(cd bindings-python && ../.venv/bin/python -m pytest -q)
