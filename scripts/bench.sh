#!/usr/bin/env bash
# Runs every benchmark of gym-telemetry and prints one line per figure:
#   BENCH <name> <value> <unit> ratio=<x>
# where ratio compares against a baseline measured in the same run (machines are shared and noisy).
# Usage: scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; fi

cargo build --release -p gym-telemetry-benches --bins
BIN=target/release

# One line per bench binary (benches/src/bin/<name>.rs).
BENCHES=(
  store_bench
  hub_bench
  shim_bench
)

for b in "${BENCHES[@]}"; do
  echo "== $b" >&2
  "$BIN/$b" $QUICK
done
