#!/usr/bin/env python3
"""What a training scalar costs the training thread: ``gym_telemetry.SummaryWriter.add_scalar``
(connected to a real gym-telemetry-daemon) against tensorboardX's ``SummaryWriter.add_scalar``
writing its own event file, measured in one run.

Both writers get the same calls (a CleanRL-style mix of tags, float and numpy values, the step
rising). What is scored is the training thread's own CPU time per call (``time.thread_time``):
both writers do their I/O on background threads, and on a shared machine other processes'
bursts would otherwise land on one side of the ratio at random. The two alternate in short
chunks and each is scored by its median chunk. Prints:

    BENCH py_log_scalar <ours> us/call ratio=<tensorboardX / ours>   (goal: ratio >= 5)

Needs the daemon binary in GYM_TELEMETRY_DAEMON_BIN (scripts/bench.sh builds it), gym_telemetry
(built with --release for meaningful figures) and tensorboardX (requirements-dev.txt).
``--quick``: a few seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gym_telemetry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wrapper import start_daemon, stop_daemon  # noqa: E402

TAGS = ["losses/td_loss", "losses/q_values", "charts/SPS", "charts/learning_rate", "losses/entropy"]


def calls(n: int) -> list[tuple]:
    rng = np.random.default_rng(2)
    out = []
    for i in range(n):
        v = rng.random()
        value = np.float32(v) if i % 2 else float(v)
        out.append((TAGS[i % len(TAGS)], value, i))
    return out


def chunk(add_scalar, items: list[tuple], step0: int) -> float:
    """CPU seconds per add_scalar call of the training thread."""
    c0 = time.thread_time()
    for tag, value, i in items:
        add_scalar(tag, value, step0 + i)
    return (time.thread_time() - c0) / len(items)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    from tensorboardX import SummaryWriter as TbxWriter

    rounds, size = (20, 2000) if args.quick else (80, 5000)
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_daemon(Path(tmp) / "var")
        os.environ["GYM_TELEMETRY_VAR_DIR"] = str(Path(tmp) / "var")
        try:
            ours = gym_telemetry.SummaryWriter(str(Path(tmp) / "runs" / "bench-scalar"), endpoint=endpoint)
            tbx = TbxWriter(str(Path(tmp) / "tbx"))
            items = calls(size)
            chunk(ours.add_scalar, items[:500], 0)  # warm up: imports, caches, the connection
            chunk(tbx.add_scalar, items[:500], 0)
            ours.flush()
            a, b = [], []
            step0 = 1000
            for r in range(rounds):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        a.append(chunk(ours.add_scalar, items, step0))
                        ours.telemetry.flush(timeout=30.0)  # the next chunk starts with the sender idle
                    else:
                        b.append(chunk(tbx.add_scalar, items, step0))
                        tbx.flush()
                step0 += size
            tbx.close()
            report = ours.telemetry.flush(timeout=30.0)
            stats = ours.telemetry.stats()
            ours.close()
        finally:
            stop_daemon(proc)

    ours_us, tbx_us = statistics.median(a) * 1e6, statistics.median(b) * 1e6
    print(f"# training-thread CPU per add_scalar: gym_telemetry {ours_us:.2f} us, tensorboardX {tbx_us:.2f} us",
          file=sys.stderr)
    print(f"# flush: {report['outcome']}, acked {stats['acked']} of {stats['accepted']}, dropped {stats['dropped']}",
          file=sys.stderr)
    print(f"BENCH py_log_scalar {ours_us:.3f} us/call ratio={tbx_us / ours_us:.2f}")
    if report["outcome"] != "acked" or stats["acked"] != stats["accepted"]:
        print("bench_scalar: the daemon did not acknowledge every scalar; the figure measured a path "
              "that did not deliver", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
