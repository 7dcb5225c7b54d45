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
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/release"

# One line per bench binary (benches/src/bin/<name>.rs).
BENCHES=(
  store_bench
  hub_bench
  shim_bench
  e2e_bench
  frames_bench
)

for b in "${BENCHES[@]}"; do
  echo "== $b" >&2
  "$BIN/$b" $QUICK
done

# PostgreSQL store (benches/src/bin/pg_bench.rs): on GYM_TELEMETRY_TEST_PG, or on a throwaway
# cluster of its own (Debian's postgresql) started here and stopped after.
echo "== pg_bench" >&2
if [ -z "${GYM_TELEMETRY_TEST_PG:-}" ]; then
  export PG_TEST_DIR=/tmp/gym-telemetry-pg-bench PG_TEST_PORT=54339
  GYM_TELEMETRY_TEST_PG="$(scripts/pg-test-cluster.sh start)"
  export GYM_TELEMETRY_TEST_PG
  trap 'scripts/pg-test-cluster.sh stop >/dev/null 2>&1 || true' EXIT
fi
"$BIN/pg_bench" $QUICK
# Whole daemons on that database (benches/src/bin/pg_e2e_bench.rs): two daemons against one,
# one SQLite daemon's saturation, cross-daemon live latency at 10k steps/s.
echo "== pg_e2e_bench" >&2
"$BIN/pg_e2e_bench" $QUICK

# Python bindings: per-step cost of gym_telemetry in a training loop (benches/python/).
echo "== py bench_wrapper" >&2
bindings-python/scripts/venv.sh --release >&2
cargo build --release -p gym-telemetry-daemon >&2
GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" .venv/bin/python benches/python/bench_wrapper.py $QUICK
# The same wrapper cost counted in training-thread instructions (callgrind): repeatable on a
# shared machine, it tells how much of py_wrapper_overhead's time ratio is our code.
if command -v valgrind >/dev/null; then
  GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" .venv/bin/python benches/python/instr_wrapper.py $QUICK
else
  echo "# py_wrapper_instructions: valgrind not installed, skipped" >&2
fi

# Training scalars: SummaryWriter.add_scalar against tensorboardX's (benches/python/).
echo "== py bench_scalar" >&2
GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" .venv/bin/python benches/python/bench_scalar.py $QUICK

# Notebooks: gym_telemetry.load of 1M scalar rows against pandas.read_parquet of the same rows
# (benches/python/bench_load.py).
echo "== py bench_load" >&2
GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" .venv/bin/python benches/python/bench_load.py $QUICK

# The web dashboard in headless chromium (telemetry-web/tests/browser/bench.mjs): first chart of a
# 1M-point run, live latency at 10k steps/s, JS heap growth of an open tab (WEB_TAB_MEMORY_SECS,
# default 600 s, --quick 120 s). Needs Debian's chromium and npm.
if [ -x /usr/bin/chromium ]; then
  echo "== web bench (headless chromium)" >&2
  (cd telemetry-web/tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
  GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" WEB_FEED_BIN="$BIN/web_feed" \
    node telemetry-web/tests/browser/bench.mjs $QUICK
else
  echo "note: /usr/bin/chromium is missing (apt-get install chromium): web benches skipped" >&2
fi

# Frame capture: a CartPole step with capture every 10th step against without (benches/python/).
echo "== py bench_frames" >&2
GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/release/gym-telemetry-daemon" .venv/bin/python benches/python/bench_frames.py $QUICK
