#!/usr/bin/env python3
"""What a notebook waits for: ``gym_telemetry.load(run, kind="scalars", store=PATH)`` of 1M
scalar rows into pandas, against ``pandas.read_parquet`` of the same rows, measured in one run.

A run with 1,000,000 scalars (10 tags x 100,000 steps, two agents) is logged through a real
daemon. The baseline file is the daemon's own ``dump --scalars --format parquet`` of that run:
the same rows, the same schema, the same writer, already on disk. ``load`` has to do what the
baseline file saved it from: walk the SQLite store page by page and encode the Parquet bytes
(``telemetry-export``), then pandas decodes them and ``load`` derives ``wall_time`` and projects
the five long columns. Each side runs several times, alternating, and is scored by its median
wall time. Prints:

    BENCH py_load_1m <seconds> s ratio=<read_parquet seconds / load seconds>

Needs GYM_TELEMETRY_DAEMON_BIN (scripts/bench.sh builds it), gym_telemetry (--release for
meaningful figures), pandas and pyarrow. ``--quick``: 200,000 rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import gym_telemetry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wrapper import start_daemon, stop_daemon  # noqa: E402

TAGS = [f"losses/t{i}" for i in range(5)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    steps = 20_000 if args.quick else 100_000  # x 5 tags x 2 agents
    rounds = 3 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp) / "var"
        proc, endpoint = start_daemon(var)
        os.environ["GYM_TELEMETRY_VAR_DIR"] = str(var)
        try:
            # block, not drop: the run must hold exactly the rows both sides read.
            tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id="load-bench", full_policy="block")
            for step in range(steps):
                values = {t: float(step % 97) / (i + 1) for i, t in enumerate(TAGS)}
                tel.log(values, step=step, agent_id="a")
                tel.log(values, step=step, agent_id="b")
            report = tel.close(timeout=300.0)
        finally:
            stop_daemon(proc)
        if report["outcome"] != "acked":
            print(f"bench_load: the daemon did not acknowledge every scalar: {report}", file=sys.stderr)
            return 1
        store = var / "telemetry.sqlite"
        baseline = Path(tmp) / "scalars.parquet"
        subprocess.run(
            [os.environ["GYM_TELEMETRY_DAEMON_BIN"], "dump", "--var-dir", str(var), "--run", "load-bench",
             "--scalars", "--format", "parquet", "-o", str(baseline)],
            check=True, env={k: v for k, v in os.environ.items() if not k.startswith("GYM_TELEMETRY_")},
        )
        ours, base = [], []
        rows = 0
        for r in range(rounds):
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                t0 = time.perf_counter()
                if which == 0:
                    df = gym_telemetry.load("load-bench", kind="scalars", store=store)
                    ours.append(time.perf_counter() - t0)
                    rows = len(df)
                else:
                    bf = pd.read_parquet(baseline)
                    base.append(time.perf_counter() - t0)
                    if len(bf) != steps * 10:
                        print(f"bench_load: the baseline file has {len(bf)} rows", file=sys.stderr)
                        return 1
    if rows != steps * 10:
        print(f"bench_load: load returned {rows} rows, expected {steps * 10}", file=sys.stderr)
        return 1
    ours_s, base_s = statistics.median(ours), statistics.median(base)
    print(f"# {rows} scalar rows: load {ours_s:.3f} s ({rows / ours_s / 1e6:.2f} M rows/s), "
          f"pandas.read_parquet of the dumped file {base_s:.3f} s", file=sys.stderr)
    print(f"BENCH py_load_1m {ours_s:.3f} s ratio={base_s / ours_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
