#!/usr/bin/env python3
"""What frame capture costs a Python training loop, per step, measured in one run.

CartPole-v1 made with ``render_mode="rgb_array"`` under ``TelemetryWrapper`` connected to a
real gym-telemetry-daemon, in three configurations that alternate in short chunks (each scored
by its median chunk, in the training thread's CPU time, as bench_wrapper.py does):

(a) no capture; (b) ``capture_frames=FrameCapture(every_k_steps=10, episode_trigger=never)``;
(c) no capture, but the loop itself calls ``env.render()`` after every 10th step and drops the
frame (the env's own rendering cost, which any capture pays).

Prints:

    BENCH frames_capture_overhead <b - a> us/step ratio=<b/a>            (goal: ratio <= 1.3)
    BENCH frames_capture_overhead_vs_render <b - c> us/step ratio=<b/c>  (what capture adds
        beyond the env's render: the copy out of numpy and the hand-off to the sender)

Needs GYM_TELEMETRY_DAEMON_BIN and gym_telemetry installed (--release for real figures), and
pygame (CartPole's renderer). ``--quick``: ~15 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import gym_telemetry  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_wrapper import start_daemon, stop_daemon  # noqa: E402


def chunk(env, actions, render_every: int = 0) -> float:
    step, reset = env.step, env.reset
    c0 = time.thread_time()
    for i, a in enumerate(actions):
        _, _, terminated, truncated, _ = step(a)
        if render_every and i % render_every == 0:
            env.render()
        if terminated or truncated:
            reset()
    return (time.thread_time() - c0) / len(actions)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rounds, n = (8, 1000) if args.quick else (30, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_daemon(Path(tmp) / "var")
        os.environ["GYM_TELEMETRY_VAR_DIR"] = str(Path(tmp) / "var")
        try:
            tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id="bench-frames")
            make = lambda: gym.make("CartPole-v1", render_mode="rgb_array")  # noqa: E731
            plain = gym_telemetry.TelemetryWrapper(make(), tel, agent_id="plain")
            capture = gym_telemetry.TelemetryWrapper(
                make(), tel, agent_id="capture",
                capture_frames=gym_telemetry.FrameCapture(every_k_steps=10, episode_trigger=lambda i: False),
            )
            for e in (plain, capture):
                e.reset(seed=0)
            actions = np.random.default_rng(0).integers(2, size=n)
            chunk(plain, actions[:200], 10)  # warm up (pygame surfaces, the connections)
            chunk(capture, actions[:200])
            a, b, c = [], [], []
            for r in range(rounds):
                order = [0, 1, 2] if r % 2 == 0 else [2, 1, 0]
                for which in order:
                    if which == 0:
                        a.append(chunk(plain, actions))
                    elif which == 1:
                        b.append(chunk(capture, actions))
                        tel.flush_frames(60)  # the next chunk starts with the frame sender idle
                    else:
                        c.append(chunk(plain, actions, 10))
                tel.flush(timeout=30.0)
            fstats = tel.frame_stats()
            tel.close(timeout=30.0)
        finally:
            stop_daemon(proc)
    med = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    a_us, b_us, c_us = med(a), med(b), med(c)
    print(f"# training-thread CPU per CartPole step: no capture {a_us:.2f} us, capture every 10th "
          f"{b_us:.2f} us, render every 10th by hand {c_us:.2f} us; frames stored "
          f"{fstats['stored']} of {fstats['captured']}, dropped {fstats['dropped']}", file=sys.stderr)
    print(f"BENCH frames_capture_overhead {b_us - a_us:.3f} us/step ratio={b_us / a_us:.3f}")
    print(f"BENCH frames_capture_overhead_vs_render {b_us - c_us:.3f} us/step ratio={b_us / c_us:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
