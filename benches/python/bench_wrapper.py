#!/usr/bin/env python3
"""What gym_telemetry costs a Python training loop, per step, measured in one run.

(a) bare FrozenLake-v1 steps; (b) the same steps under ``TelemetryWrapper`` connected to a
real gym-telemetry-daemon (render hints and info included); (c) the predecessor's way of
emitting a step (a dict with an ISO timestamp, ``json.dump`` to a stream, newline, flush)
against one ``Telemetry.step`` call with the same payload.

What is scored is the training thread's own CPU time per step (``time.thread_time``): on a
shared machine other processes' bursts would otherwise land on one side of a ratio at random.
Configurations alternate in short chunks and each is scored by its median chunk; wall-clock
medians are printed alongside (they include the daemon and sender threads competing for cores
when the machine has few). Prints:

    BENCH py_wrapper_overhead <b - a> us/step ratio=<b/a>          (goal: ratio <= 1.25)
    BENCH py_step_vs_jsonl <our call> us/step ratio=<jsonl / ours>  (goal: ratio >= 8)

Needs the daemon binary in GYM_TELEMETRY_DAEMON_BIN (scripts/bench.sh builds it) and
gym_telemetry installed (built with --release for meaningful figures). ``--quick``: ~10 s.
The OpenBLAS variables are the machine's business: FrozenLake does no linear algebra.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np

import gym_telemetry

READY = re.compile(rb"listening on (http://127\.0\.0\.1:\d+)")


def start_daemon(var_dir: Path) -> tuple[subprocess.Popen, str]:
    binary = os.environ.get("GYM_TELEMETRY_DAEMON_BIN")
    if not binary:
        sys.exit("GYM_TELEMETRY_DAEMON_BIN must name the gym-telemetry-daemon binary")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYM_TELEMETRY_")}
    env["GYM_TELEMETRY_LOG"] = "warn"
    proc = subprocess.Popen(
        [binary, "serve", "--var-dir", str(var_dir), "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out, deadline = b"", time.monotonic() + 30
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            m = READY.search(out)
            if m:
                sel.close()
                return proc, m.group(1).decode()
    proc.kill()
    sys.exit(f"daemon not ready: {out!r}")


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def env_chunk(env: gym.Env, actions: np.ndarray) -> tuple[float, float]:
    """(CPU, wall) seconds per step of stepping ``env`` through ``actions``, resetting at episode ends
    (resets are in the time, not in the count: both configurations pay them alike)."""
    step, reset = env.step, env.reset
    c0, t0 = time.thread_time(), time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
    return (time.thread_time() - c0) / len(actions), (time.perf_counter() - t0) / len(actions)


def payloads(n: int) -> list[tuple]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        s = int(rng.integers(16))
        out.append(({"state": s, "position": {"row": s // 4, "col": s % 4}, "goal": {"row": 3, "col": 3}},
                    int(rng.integers(4)), float(s == 15), s in (5, 7, 11, 12, 15), i))
    return out


def jsonl_loop(stream, items: list[tuple]) -> tuple[float, float]:
    """The predecessor's worker: build the event, json.dump it, newline, flush."""
    c0, t0 = time.thread_time(), time.perf_counter()
    for obs, action, reward, done, i in items:
        event = {
            "type": "step", "run_id": "bench", "agent_id": "agent-0",
            "episode_index": i // 100, "step_index": i % 100,
            "action_json": json.dumps(action), "observation_json": json.dumps(obs),
            "reward": reward, "terminated": done, "truncated": False,
            "policy_label": "q-table", "backend": "numpy",
            "ts": datetime.now(timezone.utc).isoformat(),
        }
        json.dump(event, stream, separators=(",", ":"))
        stream.write("\n")
        stream.flush()
    return (time.thread_time() - c0) / len(items), (time.perf_counter() - t0) / len(items)


def telemetry_loop(tel: gym_telemetry.Telemetry, items: list[tuple]) -> tuple[float, float]:
    step = tel.step
    c0, t0 = time.thread_time(), time.perf_counter()
    for obs, action, reward, done, i in items:
        step(obs, action, reward, done, False, episode_index=i // 100, step_index=i % 100, agent_id="agent-0")
    return (time.thread_time() - c0) / len(items), (time.perf_counter() - t0) / len(items)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    # Short chunks, alternating which configuration goes first, scored by the median chunk:
    # a neighbour's burst of CPU use lands on a few chunks of both sides, not on one side.
    rounds, chunk = (30, 4000) if args.quick else (120, 5000)

    with tempfile.TemporaryDirectory() as tmp:
        proc, endpoint = start_daemon(Path(tmp) / "var")
        # The client finds the daemon's operator token as a user's worker would.
        os.environ["GYM_TELEMETRY_VAR_DIR"] = str(Path(tmp) / "var")
        try:
            tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id="bench-py")
            actions = np.random.default_rng(0).integers(4, size=chunk)
            bare = gym.make("FrozenLake-v1")
            wrapped = gym_telemetry.TelemetryWrapper(gym.make("FrozenLake-v1"), tel, agent_id="bench")
            bare.reset(seed=0)
            wrapped.reset(seed=0)
            items = payloads(chunk)
            stream = open(Path(tmp) / "worker.jsonl", "w", encoding="utf-8")
            env_chunk(bare, actions)  # warm up every path (imports, caches, the connection)
            env_chunk(wrapped, actions)
            jsonl_loop(stream, items[:500])
            telemetry_loop(tel, items[:500])
            tel.flush(timeout=30.0)
            a, b, c, d = [], [], [], []
            for r in range(rounds):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        a.append(env_chunk(bare, actions))
                    else:
                        b.append(env_chunk(wrapped, actions))
                        tel.flush(timeout=30.0)  # the next chunk starts with the sender idle
            for r in range(max(6, rounds // 3)):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        c.append(jsonl_loop(stream, items))
                    else:
                        d.append(telemetry_loop(tel, items))
                        tel.flush(timeout=30.0)
            stream.close()
            report = tel.close(timeout=30.0)
            stats = tel.stats()
        finally:
            stop_daemon(proc)

    def med(xs: list, k: int) -> float:
        return statistics.median(x[k] for x in xs) * 1e6

    bare_us, wrapped_us, jsonl_us, ours_us = (med(x, 0) for x in (a, b, c, d))
    print(f"# training-thread CPU per step: bare FrozenLake {bare_us:.2f} us, wrapped {wrapped_us:.2f} us, "
          f"JSONL emit {jsonl_us:.2f} us, Telemetry.step {ours_us:.2f} us", file=sys.stderr)
    print(f"# wall clock per step:          bare FrozenLake {med(a, 1):.2f} us, wrapped {med(b, 1):.2f} us, "
          f"JSONL emit {med(c, 1):.2f} us, Telemetry.step {med(d, 1):.2f} us", file=sys.stderr)
    print(f"# close: {report['outcome']}, acked {stats['acked']} of {stats['accepted']}, "
          f"dropped {stats['dropped']}", file=sys.stderr)
    print(f"BENCH py_wrapper_overhead {wrapped_us - bare_us:.3f} us/step ratio={wrapped_us / bare_us:.3f}")
    print(f"BENCH py_step_vs_jsonl {ours_us:.3f} us/step ratio={jsonl_us / ours_us:.2f}")
    if report["outcome"] != "acked" or stats["acked"] != stats["accepted"]:
        print("bench_wrapper: the daemon did not acknowledge every record; the figures measured "
              "a path that did not deliver", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
