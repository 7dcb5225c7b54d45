"""CleanRL's dqn.py / ppo.py calls to the writer, against the real daemon, read back with
``gym-telemetry-daemon dump --scalars``: every scalar stored once, at its step, NaN kept; the
hyperparameter table is the run's config; with a wrapper, the episode scalars come from the
episodes (stored once, at the same steps). Runs under gymnasium 1.x and 0.29.x (the version
CleanRL pins; scripts/test.sh runs this file in both venvs): the loops read episode statistics
the way each version reports them.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import gymnasium as gym
import numpy as np
import pytest

from gym_telemetry import SummaryWriter, TelemetryVectorWrapper

pytestmark = pytest.mark.daemon

GYM_029 = not hasattr(gym.vector, "VectorWrapper")
EPISODE_TAGS = {"charts/episodic_return", "charts/episodic_length"}


class Args:
    """dqn.py's / ppo.py's argparse namespace (a subset), for the hyperparameter table."""

    exp_name = "cleanrl_test"
    seed = 1
    torch_deterministic = True
    cuda = False
    track = False
    wandb_entity = None
    env_id = "CartPole-v1"
    learning_rate = 0.00025
    num_envs = 4
    gamma = 0.99


def hyperparameter_table(args: Args) -> str:
    items = {k: getattr(args, k) for k in dir(args) if not k.startswith("_")}
    return "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in items.items()]))


class Item:
    """A torch scalar tensor as the loop holds it: only .item() (torch is not installed)."""

    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


def make_env(env_id: str, seed: int):
    def thunk():
        env = gym.make(env_id, max_episode_steps=30)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env.action_space.seed(seed)
        return env

    return thunk


def make_envs(n: int) -> gym.vector.VectorEnv:
    thunks = [make_env("CartPole-v1", 1 + i) for i in range(n)]
    if GYM_029:
        return gym.vector.SyncVectorEnv(thunks)
    # Same-step autoreset: the step counts of the loop and of the recorded env steps agree (as
    # they do under 0.29); under NEXT_STEP the reset entries are not env steps.
    return gym.vector.SyncVectorEnv(thunks, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def finished_episodes(infos: dict) -> Iterator[tuple]:
    """(r, l) of each episode that ended in this step, read as the CleanRL scripts read them."""
    if GYM_029:
        if "final_info" in infos:
            for info in infos["final_info"]:
                if info and "episode" in info:
                    yield info["episode"]["r"], info["episode"]["l"]
        return
    final = infos.get("final_info", {})
    if "episode" in final:
        for i in np.flatnonzero(final["_episode"]):
            yield final["episode"]["r"][i], final["episode"]["l"][i]


def key(tag: str, step: int, value) -> tuple:
    v = float(value.item() if hasattr(value, "item") else value)
    return (tag, int(step), "NaN" if math.isnan(v) else v)


def stored(daemon, run_id: str) -> Counter:
    return Counter(key(s["tag"], s["step"], float(s["value"]) if s["value"] != "NaN" else math.nan)
                   for s in daemon.dump(run_id, scalars=True))


def run_config(daemon, run_id: str) -> dict:
    started = [r.run_started for r in daemon.events(run_id) if r.WhichOneof("kind") == "run_started"]
    assert started, "no RunStarted stored"
    return json.loads(started[-1].config_json)


def completed_status(daemon, run_id: str) -> list:
    return [r.run_completed.status for r in daemon.events(run_id) if r.WhichOneof("kind") == "run_completed"]


def dqn_loop(writer: SummaryWriter, envs, total_timesteps: int = 400) -> list:
    """dqn.py's loop: global_step is the loop index; losses every train step (random policy,
    numpy 'losses'; one NaN and one inf, as diverging losses give)."""
    logged = []

    def add(tag, value, step):
        writer.add_scalar(tag, value, step)
        logged.append(key(tag, step, value))

    start_time = time.time()
    obs, _ = envs.reset(seed=1)
    rng = np.random.default_rng(0)
    for global_step in range(total_timesteps):
        actions = envs.action_space.sample()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        for r, l in finished_episodes(infos):
            add("charts/episodic_return", r, global_step)
            add("charts/episodic_length", l, global_step)
        if global_step > 50 and global_step % 10 == 0:
            loss = float(rng.random())
            if global_step == 100:
                loss = float("nan")
            if global_step == 200:
                loss = float("inf")
            add("losses/td_loss", loss, global_step)
            add("losses/q_values", Item(float(rng.random())), global_step)
            add("charts/SPS", int(global_step / (time.time() - start_time)), global_step)
        obs = next_obs
    return logged


def ppo_loop(writer: SummaryWriter, envs, num_envs: int, num_steps: int = 16, iterations: int = 6) -> list:
    """ppo.py's loop: global_step += num_envs before each envs.step; the update's scalars once
    per iteration."""
    logged = []

    def add(tag, value, step):
        writer.add_scalar(tag, value, step)
        logged.append(key(tag, step, value))

    global_step = 0
    start_time = time.time()
    envs.reset(seed=1)
    rng = np.random.default_rng(1)
    for iteration in range(1, iterations + 1):
        for _ in range(num_steps):
            global_step += num_envs
            _, _, _, _, infos = envs.step(envs.action_space.sample())
            for r, l in finished_episodes(infos):
                add("charts/episodic_return", r, global_step)
                add("charts/episodic_length", l, global_step)
        add("charts/learning_rate", 0.00025 * (1.0 - (iteration - 1.0) / iterations), global_step)
        for tag in ("value_loss", "policy_loss", "entropy", "old_approx_kl", "approx_kl"):
            add(f"losses/{tag}", Item(float(rng.normal())), global_step)
        add("losses/clipfrac", np.mean([0.1, 0.2]), global_step)
        add("losses/explained_variance", np.nan if iteration == 3 else float(rng.random()), global_step)
        add("charts/SPS", int(global_step / (time.time() - start_time)), global_step)
    return logged


@pytest.fixture
def cleanrl_env(daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A CleanRL script's surroundings: the daemon's endpoint in the environment, cwd for runs/."""
    monkeypatch.setenv("GYM_TELEMETRY_ENDPOINT", daemon.endpoint)
    monkeypatch.chdir(tmp_path)
    return daemon


def finish(writer: SummaryWriter) -> None:
    assert writer.telemetry.flush(timeout=60.0)["outcome"] == "acked"
    writer.close()
    stats = writer.telemetry.stats()
    assert stats["acked"] == stats["accepted"] and stats["rejected"] == stats["dropped"] == 0, stats


def test_dqn_style_without_a_wrapper_stores_every_scalar_once(cleanrl_env) -> None:
    daemon = cleanrl_env
    args = Args()
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", hyperparameter_table(args))
    envs = make_envs(1)
    logged = dqn_loop(writer, envs)
    envs.close()
    finish(writer)

    assert Path(f"runs/{run_name}").is_dir()
    got = stored(daemon, run_name)
    assert got == Counter(logged), "every scalar stored exactly once, at its step"
    assert sum(got.values()) == len(logged)
    assert got[("losses/td_loss", 100, "NaN")] == 1 and got[("losses/td_loss", 200, math.inf)] == 1
    episodes = sum(1 for k in logged if k[0] == "charts/episodic_return")
    assert episodes >= 10
    assert run_config(daemon, run_name) == {
        "cuda": False, "env_id": "CartPole-v1", "exp_name": "cleanrl_test", "gamma": 0.99,
        "learning_rate": 0.00025, "num_envs": 4, "seed": 1, "torch_deterministic": True,
        "track": False, "wandb_entity": None,
    }
    assert completed_status(daemon, run_name) == [1]  # COMPLETION_STATUS_SUCCEEDED


@pytest.mark.parametrize("with_wrapper", [False, True], ids=["writer-only", "with-wrapper"])
def test_ppo_style_episode_scalars_are_stored_once(cleanrl_env, with_wrapper: bool) -> None:
    daemon = cleanrl_env
    args = Args()
    run_name = f"{args.env_id}__ppo__{args.seed}__{int(with_wrapper)}"
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", hyperparameter_table(args))
    envs = make_envs(args.num_envs)
    if with_wrapper:
        envs = TelemetryVectorWrapper(envs, writer.telemetry, agent_id="ppo")
    logged = ppo_loop(writer, envs, args.num_envs)
    envs.close()
    n_episodes = sum(1 for k in logged if k[0] == "charts/episodic_return")
    assert n_episodes >= 8
    if with_wrapper:
        assert writer.stats()["episode_scalars_skipped"] == 2 * n_episodes
        assert writer.telemetry.global_step == 6 * 16 * args.num_envs
    else:
        assert writer.stats()["episode_scalars_skipped"] == 0
    finish(writer)

    got = stored(daemon, run_name)
    # The same points either way: with the wrapper they come from its episodes (at the loop's
    # global_step), and the script's own add_scalar of them is skipped.
    assert got == Counter(logged)
    assert got[("losses/explained_variance", 3 * 16 * args.num_envs, "NaN")] == 1
    if with_wrapper:
        episodes = daemon.dump(run_name, episodes=True)
        assert len(episodes) == n_episodes
        returns = Counter(float(e["total_reward"]) for e in episodes)
        assert returns == Counter(k[2] for k in logged if k[0] == "charts/episodic_return")
        assert len(daemon.dump(run_name)) == 6 * 16 * args.num_envs, "every env step recorded"
    else:
        assert daemon.dump(run_name, episodes=True) == []
