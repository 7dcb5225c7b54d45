#!/usr/bin/env python3
"""What TelemetryWrapper costs a FrozenLake step, counted in instructions of the training thread.

``bench_wrapper.py`` scores CPU time, which on a shared two-core machine moves with whatever
else runs (the same build measured 1.36 and 1.62 an hour apart). Instructions retired by the
training thread do not: ``valgrind --tool=callgrind`` counts them exactly, run after run. This
script runs the bare and the wrapped loop under callgrind at two lengths and takes the
difference, so interpreter start-up and imports cancel out, then prints

    BENCH py_wrapper_instructions <wrapped - bare> instr/step ratio=<wrapped/bare>

(the goal of ``py_wrapper_overhead``, ratio <= 1.25, applies to time; this line tells how much
of a time ratio above it is code and how much is the machine: cache misses, the sender thread
on the other core, neighbours). The wrapped loop records to a real daemon, as in
``bench_wrapper.py``; only the training thread is counted (``--separate-threads``).

Needs valgrind and GYM_TELEMETRY_DAEMON_BIN. ``--quick``: shorter loops (same figure, ~1 min).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_wrapper import start_daemon, stop_daemon  # noqa: E402

LOOP = r"""
import sys
import numpy as np, gymnasium as gym, gym_telemetry
mode, n = sys.argv[1], int(sys.argv[2])
env = gym.make("FrozenLake-v1")
tel = None
if mode == "wrapped":
    tel = gym_telemetry.Telemetry(endpoint=sys.argv[3], run_id="instr")
    env = gym_telemetry.TelemetryWrapper(env, tel, agent_id="bench")
env.reset(seed=0)
step, reset = env.step, env.reset
for a in np.random.default_rng(0).integers(4, size=n):
    _, _, te, tr, _ = step(a)
    if te or tr:
        reset()
if tel is not None:
    tel.close(timeout=60.0)
"""


def main_thread_instructions(out_prefix: Path) -> int:
    """Instructions of thread 1 (the interpreter's main thread) from callgrind's per-thread files."""
    files = sorted(out_prefix.parent.glob(out_prefix.name + "*-01"))
    if not files:
        sys.exit(f"no callgrind output for thread 1 under {out_prefix}*")
    text = files[0].read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if not m:
        sys.exit(f"no totals in {files[0]}")
    return int(m.group(1))


def count(tmp: Path, mode: str, n: int, endpoint: str) -> int:
    prefix = tmp / f"cg-{mode}-{n}"
    env = dict(os.environ, GYM_TELEMETRY_LOG="error")
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={prefix}",
         sys.executable, "-c", LOOP, mode, str(n), endpoint],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return main_thread_instructions(prefix)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    short, long = (1000, 4000) if args.quick else (2000, 12000)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        proc, endpoint = start_daemon(tmp / "var")
        os.environ["GYM_TELEMETRY_VAR_DIR"] = str(tmp / "var")
        try:
            per = {}
            for mode in ("bare", "wrapped"):
                a, b = count(tmp, mode, short, endpoint), count(tmp, mode, long, endpoint)
                per[mode] = (b - a) / (long - short)
        finally:
            stop_daemon(proc)
    bare, wrapped = per["bare"], per["wrapped"]
    print(f"# training-thread instructions per step: bare FrozenLake {bare:.0f}, wrapped {wrapped:.0f}",
          file=sys.stderr)
    print(f"BENCH py_wrapper_instructions {wrapped - bare:.0f} instr/step ratio={wrapped / bare:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
