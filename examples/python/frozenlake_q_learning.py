#!/usr/bin/env python3
"""Tabular Q-learning on FrozenLake, reporting to gym-telemetry like the BDI worker did.

The predecessor's BDI worker printed JSONL by hand: a ``run_started`` with its config, one
``step`` per transition with the learner's view (state, next_state, q_before, q_after,
epsilon), one ``episode`` with a ``success`` flag, an ``artifact`` for the saved policy and a
``run_completed``. This worker sends the same records through ``gym_telemetry``: the extras
travel in each step's ``info``, the board as an ANSI render hint, and nothing is printed.

The policy is saved in the BDI worker's format (``{"format": "q_table/v1", "metadata": {...},
"q_table": [[...]]}``); its ``artifact`` event registers it in the daemon's policy inventory.
Submitted as an evaluation run (``SubmitRun.evaluate``), the daemon equips the policy: the
worker finds it in ``tel.policy`` (verified path, manifest, and ``evaluation.episodes``) and
plays that many episodes greedily, learning nothing, in control mode ``replay``.

    gym-telemetry-daemon serve &                      # prints its address
    GYM_TELEMETRY_ENDPOINT=http://127.0.0.1:50151 python frozenlake_q_learning.py
    python frozenlake_q_learning.py --endpoint http://127.0.0.1:50151 --episodes 200
    python frozenlake_q_learning.py --dry-run -       # validated JSONL on stdout, no daemon
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np

import gym_telemetry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="daemon URL (default: GYM_TELEMETRY_ENDPOINT)")
    p.add_argument("--dry-run", help="write validated JSONL here ('-' = stdout) instead of sending")
    p.add_argument("--run-id", help="default: GYM_TELEMETRY_RUN_ID, or generated")
    p.add_argument("--agent-id", default=os.environ.get("GYM_TELEMETRY_AGENT_ID") or "bdi_rl_demo")
    p.add_argument("--env-id", default="FrozenLake-v1")
    p.add_argument("--map", default="4x4", choices=["4x4", "8x8"])
    p.add_argument("--slippery", action="store_true", help="the stochastic variant")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--max-steps", type=int, default=100, help="per episode")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=0.95)
    p.add_argument("--epsilon-decay", type=float, default=0.99)
    p.add_argument("--policy-path", type=Path, help="where to save the Q-table (JSON)")
    return p.parse_args(argv)


def render_hint(env: gym.Env) -> dict:
    u = env.unwrapped
    return {"ansi": u._render_text(), "rows": int(u.nrow), "cols": int(u.ncol)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("endpoint", args.endpoint), ("dry_run", args.dry_run), ("run_id", args.run_id)) if v}
    mode = os.environ.get("GYM_TELEMETRY_CONTROL_MODE") or "agent"
    tel = gym_telemetry.from_env(agent_id=args.agent_id, control_mode=mode, **overrides)
    if tel.policy is not None and tel.policy.get("evaluation"):
        return evaluate(args, tel)
    env = gym.make(args.env_id, map_name=args.map, is_slippery=args.slippery, max_episode_steps=args.max_steps)
    rng = np.random.default_rng(args.seed)
    q = np.zeros((env.observation_space.n, env.action_space.n))
    epsilon = 1.0
    policy_path = args.policy_path or Path(tempfile.gettempdir()) / f"{tel.run_id}-q.json"
    config = {
        "env_id": args.env_id, "map": args.map, "seed": args.seed, "max_episodes": args.episodes,
        "max_steps_per_episode": args.max_steps, "alpha": args.alpha, "gamma": args.gamma,
        "policy_strategy": "train_and_save", "policy_path": str(policy_path), "agent_id": args.agent_id,
    }
    tel.set_metadata(seed=args.seed, game_id=args.env_id, policy_label="q-table", backend="numpy")
    tel.run_started(config=config)
    successes = 0
    try:
        for episode in range(args.episodes):
            state, _ = env.reset(seed=args.seed + episode)
            total, done, steps = 0.0, False, 0
            while not done:
                if rng.random() < epsilon:
                    action = int(rng.integers(env.action_space.n))
                else:
                    action = int(rng.choice(np.flatnonzero(q[state] == q[state].max())))
                next_state, reward, terminated, truncated, _ = env.step(action)
                q_before = float(q[state, action])
                target = reward + (0.0 if terminated else args.gamma * q[next_state].max())
                q[state, action] += args.alpha * (target - q[state, action])
                tel.step(
                    next_state, action, reward, terminated, truncated,
                    info={"state": int(state), "next_state": int(next_state), "q_before": q_before,
                          "q_after": float(q[state, action]), "epsilon": epsilon},
                    episode_index=episode, step_index=steps, render_hint=render_hint(env),
                )
                total += reward
                steps += 1
                state = next_state
                done = terminated or truncated
            success = total > 0
            successes += success
            tel.episode_end(total, steps, terminated, truncated, metadata={"success": success}, episode_index=episode)
            epsilon = max(0.01, epsilon * args.epsilon_decay)
        metadata = {"run_id": tel.run_id, "env_id": args.env_id, "agent_id": args.agent_id,
                    "episodes": args.episodes, "strategy": "train_and_save", "map": args.map,
                    "slippery": args.slippery}
        policy_path.write_text(json.dumps({"format": "q_table/v1", "metadata": metadata,
                                           "q_table": q.tolist()}, indent=2))
        tel.artifact("policy", policy_path.resolve(), info={"format": "q_table/v1", "env_id": args.env_id})
        tel.run_completed("succeeded", info={"success_rate": successes / max(args.episodes, 1)})
    except BaseException as e:
        tel.run_completed("failed", error=repr(e))
        raise
    finally:
        report = tel.close(timeout=10.0)
        env.close()
    print(f"run {tel.run_id}: {successes}/{args.episodes} episodes reached the goal; "
          f"telemetry {report['outcome']} ({tel.stats()['acked']} records acked)", file=sys.stderr)
    return 0



def evaluate(args: argparse.Namespace, tel: "gym_telemetry.Telemetry") -> int:
    """The evaluation run: the equipped Q-table, greedily, for exactly the episodes asked."""
    policy = tel.policy
    plan = policy["evaluation"]
    saved = json.loads(Path(policy["path"]).read_text())
    q = np.array(saved["q_table"])
    meta = saved.get("metadata", {})
    env = gym.make(policy["manifest"]["env_id"], map_name=meta.get("map", args.map),
                   is_slippery=bool(meta.get("slippery", args.slippery)), max_episode_steps=args.max_steps)
    tel.set_metadata(seed=args.seed, game_id=policy["manifest"]["env_id"], policy_label="q-table", backend="numpy")
    tel.run_started(config={"policy_strategy": "eval", "epsilon": 0.0, "policy_id": policy["policy_id"],
                            "episodes": plan["episodes"]})
    successes = 0
    try:
        for episode in range(int(plan["episodes"])):
            state, _ = env.reset(seed=args.seed + episode)
            total, done, steps = 0.0, False, 0
            while not done:
                action = int(np.argmax(q[state]))
                next_state, reward, terminated, truncated, _ = env.step(action)
                tel.step(next_state, action, reward, terminated, truncated,
                         info={"state": int(state), "next_state": int(next_state), "epsilon": 0.0},
                         episode_index=episode, step_index=steps, render_hint=render_hint(env))
                total += reward
                steps += 1
                state = next_state
                done = terminated or truncated
            success = total > 0
            successes += success
            tel.episode_end(total, steps, terminated, truncated, metadata={"success": success}, episode_index=episode)
        tel.run_completed("succeeded", info={"success_rate": successes / max(int(plan["episodes"]), 1)})
    except BaseException as e:
        tel.run_completed("failed", error=repr(e))
        raise
    finally:
        tel.close(timeout=10.0)
        env.close()
    print(f"evaluation {tel.run_id}: {successes}/{plan['episodes']} episodes reached the goal", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
