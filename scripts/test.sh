#!/usr/bin/env bash
# The one command that runs every check and test of gym-telemetry (Rust and Python).
# .ci/run calls exactly this. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# Frames (issue 18): the clip tests check exports with ffprobe (Debian's `ffmpeg` package).
command -v ffprobe >/dev/null || { echo "ffprobe is missing: apt-get install ffmpeg" >&2; exit 1; }
echo "== cargo test"
if [[ -z "${GYM_TELEMETRY_TEST_PG:-}" && "${CI:-}" != true ]]; then
    echo "note: GYM_TELEMETRY_TEST_PG is unset, so the PostgreSQL tests skip" \
        "(export GYM_TELEMETRY_TEST_PG=\"\$(scripts/pg-test-cluster.sh start)\"; .ci/run does)"
fi
# Every binary first: some tests run other packages' binaries (the proxy, the demo worker, the
# viewer as another account), and cargo test builds only the binaries of packages with tests.
cargo build --workspace --bins
cargo test --workspace
echo "== python (bindings-python: pytest against the real daemon)"
bindings-python/scripts/venv.sh
cargo build -p gym-telemetry-daemon
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export GYM_TELEMETRY_DAEMON_BIN="$TARGET_DIR/debug/gym-telemetry-daemon"
(cd bindings-python && ../.venv/bin/python -m pytest -q)
echo "== python, Gymnasium 0.29.1 (CleanRL's pin): the wrapper and CleanRL compatibility tests"
bindings-python/scripts/venv.sh --gymnasium-0.29
(cd bindings-python && ../.venv-gym029/bin/python -m pytest -q tests/test_gym029.py tests/test_cleanrl.py)
echo "== multi-host PostgreSQL (scripts/pg-multihost.sh: network namespaces, root only)"
if [[ "$(id -u)" == 0 ]] && command -v ip >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    scripts/pg-multihost.sh "$TARGET_DIR/debug/gym-telemetry-daemon" "$TARGET_DIR/debug/gym-telemetry-demo"
elif [[ "${CI:-}" == true ]]; then
    echo "the multi-host test needs root, ip(8) and PostgreSQL in CI" >&2
    exit 1
else
    echo "note: skipped (needs root, ip(8) and Debian's postgresql)"
fi
echo "== chaos (scripts/chaos.sh --quick: kills, TCP faults, stalls, full queues and disks, corruption, crashes)"
# Debug binaries: `cargo test --workspace` above built every dependency in debug already, so
# this only links the harness (seconds); a release build would compile the tree again (minutes
# on 2 cores). The quick scenarios take well under a minute either way.
scripts/chaos.sh --quick --debug
echo "== web dashboard in headless chromium (telemetry-web/tests/browser: playwright-core, Debian's chromium)"
# Needs `apt-get install chromium` and node/npm; outside CI a machine without chromium skips it.
if [[ -x /usr/bin/chromium || "${CI:-}" == true ]]; then
    WEB_TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    (cd telemetry-web/tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    # The Video tab's worker (frames through the shim's FrameSender): telemetry-web's example.
    cargo build -p telemetry-web --examples
    FRAME_WORKER_BIN="$WEB_TARGET_DIR/debug/examples/frame_worker" \
    WEB_ARTIFACTS="$WEB_TARGET_DIR/web-artifacts" \
        GYM_TELEMETRY_DAEMON_BIN="$WEB_TARGET_DIR/debug/gym-telemetry-daemon" \
        GYM_TELEMETRY_DEMO_BIN="$WEB_TARGET_DIR/debug/gym-telemetry-demo" \
        node --test --test-concurrency=1 telemetry-web/tests/browser/dashboard.test.mjs
    echo "screenshots in $WEB_TARGET_DIR/web-artifacts"
else
    echo "note: /usr/bin/chromium is missing (apt-get install chromium), so the browser test skips"
fi
