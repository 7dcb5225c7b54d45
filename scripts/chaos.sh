#!/usr/bin/env bash
# The chaos harness of gym-telemetry (issue 13; results in docs/RELIABILITY.md "Chaos").
# Faults at random but bounded points, on loopback only; exits by itself. Each scenario ends
# with exactly one line on stdout:
#   chaos: scenario=<name> runs=<n> sent=<n> stored=<n> lost=<n> duplicated=<n>
# and the script exits non-zero if any scenario breaks its promise (1) or cannot run (2).
#
# Usage: scripts/chaos.sh [--quick] [--debug] [--seed N] [--scenario NAME]...
#   --quick   CI size: >= 3 daemon kills over 50,000 records, 3 worker kills, 6 TCP faults,
#             a 6 s viewer stall, 1 MiB shim queues, a 5 s slow reader, 2 disk-full cycles per
#             disk, 2 corrupted queues, 2 OS crashes per fsync policy, 3 daemon kills under
#             1,500 captured frames (a couple of minutes on 2 cores). Without it: >= 10 kills over 500,000 records, 10 worker kills, 30 TCP
#             faults, a 60 s viewer stall, 16 MiB shim queues, a 90 s slow reader, 5 disk-full
#             cycles, 6 queues, 6 crashes, 10 kills under 10,000 frames.
#   --debug   use debug binaries (what `cargo test` already built) instead of a release build.
#   --seed N  replay the random points of an earlier run (the seed is printed on stderr).
# Scenarios: daemon-kill, worker-kill, tcp-faults, viewer-stall, queue-full, wal-bounded,
# disk-full, corrupt-segment, os-crash, frames-kill (default: all). Work files go under CHAOS_WORK_DIR
# (default: the system temporary directory) and are removed afterwards.
# Privileges: disk-full mounts small tmpfs file systems of its own (and unmounts them), so it
# needs root (or CAP_SYS_ADMIN); without, it prints "SKIPPED" and why, and the script exits 2
# (cannot run). The other scenarios need no privilege.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=release
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) PROFILE=debug ;;
    --quick) ARGS+=(--quick) ;;
    --seed|--scenario) ARGS+=("$1" "$2"); shift ;;
    *) echo "chaos.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

PKGS=(-p gym-telemetry-daemon -p gym-telemetry-demo -p telemetry-proxy -p gym-telemetry-benches)
if [ "$PROFILE" = release ]; then
  cargo build --release "${PKGS[@]}" --bins >&2
else
  cargo build "${PKGS[@]}" --bins >&2
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/$PROFILE"
if [ -n "${CHAOS_WORK_DIR:-}" ]; then ARGS+=(--work-dir "$CHAOS_WORK_DIR"); fi

"$BIN/chaos" --bin-dir "$BIN" "${ARGS[@]}"
