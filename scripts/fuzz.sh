#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for N seconds each (default 60) on its corpus in
# fuzz/corpus/<target>/, and prints one line per target with libFuzzer's executions.
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`); CI has neither, so it replays the corpora on stable instead
# (tests/fuzz_corpus.rs in telemetry-core, telemetry-shim and telemetry-server).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_JOBS=1         libFuzzer processes per target (-fork)
#   FUZZ_ARGS="..."     extra libFuzzer flags
#   CARGO_TARGET_DIR    where cargo-fuzz builds (cargo's default otherwise)
# The committed corpus fuzz/corpus/TARGET/ is read, not written: new inputs the fuzzer keeps go
# to fuzz/target/new-corpus/TARGET/ (ignored by git). To keep some, merge them in minimised:
#   (cd fuzz && cargo +nightly fuzz cmin TARGET corpus/TARGET)  # after copying them over
# A crash is written to fuzz/artifacts/TARGET/; reproduce it with
#   cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs cargo-fuzz (cargo install cargo-fuzz)" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

echo "== building the fuzz targets (nightly, release with debug assertions)"
(cd fuzz && cargo +nightly fuzz build -O)

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/target/new-corpus/$t"
    log="$(mktemp)"
    echo "== $t (${secs}s)"
    # -malloc_limit_mb: an allocation from an unchecked length fails the run, not the machine.
    if (cd fuzz && cargo +nightly fuzz run -O "$t" "target/new-corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -malloc_limit_mb=256 -rss_limit_mb=1024 \
        ${FUZZ_JOBS:+-fork="$FUZZ_JOBS"} ${FUZZ_ARGS:-}) >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        tail -n 40 "$log"
    fi
    # libFuzzer's final line: "Done N runs in S second(s)"; the last "#N ... cov: C ... corp: K/B".
    runs="$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -n 1 | grep -Eo '[0-9]+' || true)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    cov="$(grep -Eo 'cov: [0-9]+' <<<"$last" | grep -Eo '[0-9]+' || true)"
    corp="$(grep -Eo 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || true)"
    line="fuzz: target=$t result=$result secs=$secs executions=${runs:-?} cov=${cov:-?} corpus=${corp:-?}"
    echo "$line"
    summary+=("$line")
    rm -f "$log"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$status"
