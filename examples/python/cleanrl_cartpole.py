#!/usr/bin/env python3
"""A CleanRL-style training loop on CartPole (REINFORCE with a linear policy, numpy only),
with every sub-environment's steps and episodes recorded by ``TelemetryVectorWrapper``.

The shape is CleanRL's single-file style: an ``Args`` block, vector envs, fixed-length rollouts,
one update per rollout. Gymnasium 1.x vector envs autoreset on the *next* step: the step after
an episode's end only resets that sub-environment, so the learner masks it out, and the wrapper
does not record it (each sub-environment ``i`` records as agent ``cartpole-pg-i``).

    GYM_TELEMETRY_ENDPOINT=http://127.0.0.1:50151 python cleanrl_cartpole.py
    python cleanrl_cartpole.py --endpoint http://127.0.0.1:50151 --total-timesteps 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import gym_telemetry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="daemon URL (default: GYM_TELEMETRY_ENDPOINT)")
    p.add_argument("--dry-run", help="write validated JSONL here ('-' = stdout) instead of sending")
    p.add_argument("--run-id")
    p.add_argument("--env-id", default="CartPole-v1")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=128, help="rollout length per env")
    p.add_argument("--total-timesteps", type=int, default=40_000)
    p.add_argument("--learning-rate", type=float, default=0.5)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--agent-id", default="cartpole-pg")
    return p.parse_args(argv)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("endpoint", args.endpoint), ("dry_run", args.dry_run), ("run_id", args.run_id)) if v}
    tel = gym_telemetry.from_env(**overrides)
    tel.set_metadata(game_id=args.env_id, seed=args.seed, policy_label="linear-reinforce", backend="numpy")
    tel.run_started(config=vars(args))
    rng = np.random.default_rng(args.seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(args.env_id) for _ in range(args.num_envs)])
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs = gym_telemetry.TelemetryVectorWrapper(envs, tel, agent_id=args.agent_id, record_info=False)
    obs_dim = envs.single_observation_space.shape[0]
    n_actions = envs.single_action_space.n
    weights = np.zeros((obs_dim + 1, n_actions))  # linear policy with a bias row

    def features(o: np.ndarray) -> np.ndarray:
        return np.concatenate([o, np.ones((o.shape[0], 1))], axis=1)

    obs, _ = envs.reset(seed=args.seed)
    prev_done = np.zeros(args.num_envs, dtype=bool)
    returns: list[float] = []
    start = time.time()
    iterations = max(1, args.total_timesteps // (args.num_envs * args.num_steps))
    try:
        for iteration in range(iterations):
            feats, acts, rews, dones, valid = [], [], [], [], []
            for _ in range(args.num_steps):
                x = features(obs)
                probs = softmax(x @ weights)
                action = np.array([rng.choice(n_actions, p=p) for p in probs])
                obs, reward, terminated, truncated, infos = envs.step(action)
                feats.append(x)
                acts.append(action)
                rews.append(reward)
                dones.append(terminated | truncated)
                valid.append(~prev_done)  # a step after a done was only the autoreset
                prev_done = terminated | truncated
                if "episode" in infos:
                    returns.extend(float(r) for r in infos["episode"]["r"][infos["_episode"]])
            # Discounted returns-to-go per env, cut at episode ends.
            g = np.zeros(args.num_envs)
            targets = []
            for r, d, v in zip(reversed(rews), reversed(dones), reversed(valid)):
                g = np.where(v, r + args.gamma * g * ~d, g)
                targets.append(g.copy())
            targets.reverse()
            x = np.stack(feats)  # (T, N, F)
            a = np.stack(acts)
            adv = np.stack(targets)
            mask = np.stack(valid)
            adv = (adv - adv[mask].mean()) / (adv[mask].std() + 1e-8)
            probs = softmax(x @ weights)
            grad_logits = -probs
            np.put_along_axis(grad_logits, a[..., None], np.take_along_axis(grad_logits, a[..., None], -1) + 1, -1)
            grad = np.einsum("tnf,tna->fa", x * (adv * mask)[..., None], grad_logits) / mask.sum()
            weights += args.learning_rate * grad
            if returns and iteration % 10 == 0:
                print(f"iteration={iteration} global_step={(iteration + 1) * args.num_envs * args.num_steps} "
                      f"mean_return={np.mean(returns[-20:]):.1f}", file=sys.stderr)
        policy = Path(tempfile.gettempdir()) / f"{tel.run_id}-policy.npz"
        np.savez(policy, weights=weights)
        tel.artifact("policy", policy, info={"format": "npz", "mean_return": float(np.mean(returns[-20:] or [0]))})
        tel.run_completed("succeeded")
    except BaseException as e:
        tel.run_completed("failed", error=repr(e))
        raise
    finally:
        envs.close()
        report = tel.close(timeout=10.0)
    print(f"run {tel.run_id}: {len(returns)} episodes in {time.time() - start:.1f}s, "
          f"last mean return {np.mean(returns[-20:] or [0]):.1f}; telemetry {report['outcome']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
