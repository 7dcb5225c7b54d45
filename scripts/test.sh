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
