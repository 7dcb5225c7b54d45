#!/usr/bin/env python3
"""Play FrozenLake from the keyboard and record the episode as a human demonstration.

Every step is recorded with ``control_mode="human"`` (so viewers can show "Human Replay" apart
from agent training) and an ANSI render hint of the board. Keys: w = up, a = left, s = down,
d = right, q = quit; type them and press Enter (several at once are fine). ``--keys`` plays a
fixed sequence instead of reading stdin, for scripts and tests.

    GYM_TELEMETRY_ENDPOINT=http://127.0.0.1:50151 python human_play.py
    python human_play.py --endpoint http://127.0.0.1:50151 --keys ssdsdd    # reaches the goal
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterator, Optional

import gymnasium as gym

import gym_telemetry

KEYS = {"a": 0, "s": 1, "d": 2, "w": 3}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="daemon URL (default: GYM_TELEMETRY_ENDPOINT)")
    p.add_argument("--dry-run", help="write validated JSONL here ('-' = stdout) instead of sending")
    p.add_argument("--run-id")
    p.add_argument("--player", default="human", help="the agent id of the recording")
    p.add_argument("--keys", help="play these keys instead of reading stdin")
    p.add_argument("--map", default="4x4", choices=["4x4", "8x8"])
    p.add_argument("--slippery", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="do not draw the board")
    return p.parse_args(argv)


def keys_from(args: argparse.Namespace) -> Iterator[str]:
    if args.keys is not None:
        yield from args.keys
        return
    while True:
        print("move (w/a/s/d, q to quit): ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield from line.strip()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("endpoint", args.endpoint), ("dry_run", args.dry_run), ("run_id", args.run_id)) if v}
    tel = gym_telemetry.from_env(control_mode="human", **overrides)
    tel.set_metadata(game_id="FrozenLake-v1", seed=args.seed, agent_id=args.player)
    tel.run_started(config={"env_id": "FrozenLake-v1", "map": args.map, "player": args.player})
    env = gym.make("FrozenLake-v1", map_name=args.map, is_slippery=args.slippery, render_mode="ansi")
    env = gym_telemetry.TelemetryWrapper(env, tel, agent_id=args.player, control_mode="human")
    env.reset(seed=args.seed)
    if not args.quiet:
        print(env.render(), file=sys.stderr)
    total, steps, outcome = 0.0, 0, "quit"
    for key in keys_from(args):
        key = key.lower()
        if key == "q":
            break
        if key not in KEYS:
            print(f"unknown key {key!r} (w/a/s/d, q)", file=sys.stderr)
            continue
        _, reward, terminated, truncated, _ = env.step(KEYS[key])
        total += float(reward)
        steps += 1
        if not args.quiet:
            print(env.render(), file=sys.stderr)
        if terminated or truncated:
            outcome = "goal" if reward > 0 else ("hole" if terminated else "time limit")
            break
    status = "succeeded" if outcome != "quit" else "cancelled"
    tel.run_completed(status, reason=outcome)
    report = tel.close(timeout=10.0)
    env.close()
    print(f"{outcome} after {steps} steps (return {total}); run {tel.run_id}; telemetry {report['outcome']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
