"""TelemetryWrapper and TelemetryVectorWrapper on real Gymnasium environments (dry-run JSONL)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from gym_telemetry import Telemetry, TelemetryVectorWrapper, TelemetryWrapper

from conftest import of_type, read_jsonl

SGR = re.compile(r"\x1b\[[0-9;]*m")


def latest(name: str) -> str:
    """The newest registered version of an environment (Taxi-v3 became Taxi-v4 in 1.3)."""
    ids = [k for k in gym.registry if re.fullmatch(rf"{name}-v\d+", k)]
    return max(ids, key=lambda k: int(k.rsplit("-v", 1)[1]))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def run_episodes(env: gym.Env, episodes: int, seed: int = 0, max_steps: int = 10_000) -> list[int]:
    """Plays random episodes; returns each episode's length."""
    env.action_space.seed(seed)
    lengths = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        n = 0
        while n < max_steps:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            n += 1
            if terminated or truncated:
                break
        lengths.append(n)
    return lengths


def test_frozenlake_exact_counts_and_render_hints(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="fl")
    env = TelemetryWrapper(gym.make("FrozenLake-v1", map_name="4x4", is_slippery=False), tel, agent_id="q-agent")
    lengths = run_episodes(env, episodes=12)
    env.close()
    tel.close()
    recs = read_jsonl(out)
    steps, eps = of_type(recs, "step"), of_type(recs, "episode")
    assert len(steps) == sum(lengths) and len(eps) == 12
    assert [e["steps"] for e in eps] == lengths
    assert [e["episode_index"] for e in eps] == list(range(12))
    for ep_index, length in enumerate(lengths):
        mine = [s for s in steps if s["episode_index"] == ep_index]
        assert [s["step_index"] for s in mine] == list(range(length))
        last = mine[-1]
        assert last.get("terminated", False) or last.get("truncated", False)
        assert eps[ep_index].get("total_reward", 0.0) == sum(s.get("reward", 0.0) for s in mine)
    assert all(s["agent_id"] == "q-agent" and s["control_mode"] == "agent" for s in steps)
    meta = json.loads(eps[0]["metadata_json"])
    assert meta["game_id"] == "FrozenLake-v1" and meta["seed"] == 0
    hint = json.loads(steps[0]["render_hint_json"])
    assert (hint["rows"], hint["cols"]) == (4, 4)
    assert "\x1b[41m" in hint["ansi"], "the agent's cell is highlighted with an SGR escape"
    grid = [line for line in SGR.sub("", hint["ansi"]).splitlines() if line and "(" not in line]
    assert grid == ["SFFF", "FHFH", "FFFH", "HFFG"]
    assert json.loads(steps[0]["info_json"]) == {"prob": 1.0}
    assert env.telemetry_errors == 0


def test_render_hint_matches_the_env_text_at_every_step(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="fl")
    env = TelemetryWrapper(gym.make("FrozenLake-v1", is_slippery=True), tel)
    env.reset(seed=3)
    env.action_space.seed(3)
    expected = []
    for _ in range(30):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        expected.append(env.unwrapped._render_text())
        if terminated or truncated:
            env.reset()
    tel.close()
    got = [json.loads(s["render_hint_json"])["ansi"] for s in of_type(read_jsonl(out), "step")]
    assert got == expected


@pytest.mark.parametrize(
    "env_id, rows, cols",
    [("Taxi", 5, 5), ("CliffWalking", 4, 12), ("FrozenLake8x8", 8, 8)],
)
def test_text_grid_envs_get_ansi_hints(out: Path, env_id: str, rows: int, cols: int) -> None:
    tel = Telemetry(dry_run=str(out), run_id="grid")
    env = TelemetryWrapper(gym.make(latest(env_id), max_episode_steps=20), tel)
    lengths = run_episodes(env, episodes=2)
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    assert len(steps) == sum(lengths)
    hints = [json.loads(s["render_hint_json"]) for s in steps]
    assert all((h["rows"], h["cols"]) == (rows, cols) and h["ansi"] for h in hints)
    eps = of_type(read_jsonl(out), "episode")
    assert [e["steps"] for e in eps] == lengths


def test_ansi_render_mode_envs_get_hints(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="ansi")
    env = TelemetryWrapper(gym.make(latest("Taxi"), render_mode="ansi"), tel, render_hint=True)
    env.reset(seed=1)
    env.step(0)
    env.step(1)
    tel.close()
    hints = [json.loads(s["render_hint_json"]) for s in of_type(read_jsonl(out), "step")]
    assert len(hints) == 2 and "(North)" in hints[1]["ansi"]


def test_cartpole_numpy_observations_and_no_hint(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="cp")
    env = TelemetryWrapper(gym.make("CartPole-v1"), tel, agent_id="pg", render_hint=True)
    lengths = run_episodes(env, episodes=3)
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    assert len(steps) == sum(lengths)
    obs = json.loads(steps[0]["observation_json"])
    assert len(obs) == 4 and all(isinstance(x, float) for x in obs)
    assert "render_hint_json" not in steps[0]
    eps = of_type(read_jsonl(out), "episode")
    assert [e["total_reward"] for e in eps] == [float(n) for n in lengths]


def test_reset_mid_episode_abandons_it(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="abandon")
    env = TelemetryWrapper(gym.make("CartPole-v1"), tel)
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    env.reset()  # mid-episode
    env.reset()  # nothing happened in between: same index
    env.step(0)
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    assert [(s["episode_index"], s["step_index"]) for s in steps] == [(0, 0), (0, 1), (1, 0)]
    assert of_type(read_jsonl(out), "episode") == []


def test_human_control_mode_and_bad_arguments(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="h")
    with pytest.raises(ValueError, match="unknown control_mode"):
        TelemetryWrapper(gym.make("FrozenLake-v1"), tel, control_mode="robot")
    with pytest.raises(TypeError, match="telemetry must be a gym_telemetry.Telemetry"):
        TelemetryWrapper(gym.make("FrozenLake-v1"), object())
    env = TelemetryWrapper(gym.make("FrozenLake-v1"), tel, control_mode="manual")
    env.reset(seed=0)
    env.step(2)
    tel.close()
    (step,) = of_type(read_jsonl(out), "step")
    assert step["control_mode"] == "human"


def test_wrapper_survives_a_closed_telemetry(out: Path, caplog) -> None:
    tel = Telemetry(dry_run=str(out), run_id="c")
    env = TelemetryWrapper(gym.make("CartPole-v1"), tel)
    env.reset(seed=0)
    tel.close()
    for _ in range(3):
        env.step(0)
    assert env.telemetry_errors == 3
    assert any("closed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------
# vector envs


def make_vec(mode: AutoresetMode, n: int = 3, env_id: str = "CartPole-v1", **kw) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **kw) for _ in range(n)], autoreset_mode=mode
    )


def drive(envs, steps: int, seed: int = 0):
    """Steps a vector env with random actions; returns per-sub-env lists of
    (real step count per finished episode), computed independently of the wrapper."""
    mode = envs.metadata["autoreset_mode"]
    n = envs.num_envs
    envs.action_space.seed(seed)
    envs.reset(seed=seed)
    finished = [[] for _ in range(n)]
    current = [0] * n
    pending_reset = [False] * n
    real_steps = 0
    for _ in range(steps):
        if mode == AutoresetMode.DISABLED and any(pending_reset):
            envs.reset(options={"reset_mask": np.array(pending_reset)})
            pending_reset = [False] * n
        _, _, term, trunc, _ = envs.step(envs.action_space.sample())
        for i in range(n):
            if mode == AutoresetMode.NEXT_STEP and pending_reset[i]:
                pending_reset[i] = False  # this entry was the reset
                continue
            current[i] += 1
            real_steps += 1
            if term[i] or trunc[i]:
                finished[i].append(current[i])
                current[i] = 0
                pending_reset[i] = mode != AutoresetMode.SAME_STEP
    return finished, current, real_steps


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_vector_env_counts_under_each_autoreset_mode(out: Path, mode: AutoresetMode) -> None:
    tel = Telemetry(dry_run=str(out), run_id="vec")
    envs = TelemetryVectorWrapper(make_vec(mode, max_episode_steps=15), tel, agent_id="ppo")
    finished, current, real_steps = drive(envs, steps=120)
    envs.close()
    tel.close()
    recs = read_jsonl(out)
    steps, eps = of_type(recs, "step"), of_type(recs, "episode")
    assert len(steps) == real_steps
    assert len(eps) == sum(len(f) for f in finished) > 3
    assert envs.telemetry_errors == 0
    for i in range(3):
        agent = f"ppo-{i}"
        mine = [s for s in steps if s["agent_id"] == agent]
        mine_eps = [e for e in eps if e["agent_id"] == agent]
        assert [e["steps"] for e in mine_eps] == finished[i]
        assert [e["episode_index"] for e in mine_eps] == list(range(len(finished[i])))
        # Steps of each episode are numbered 0..n-1, and only the last one ends it.
        expected = [(ep, k) for ep, n in enumerate(finished[i]) for k in range(n)]
        expected += [(len(finished[i]), k) for k in range(current[i])]
        assert [(s["episode_index"], s["step_index"]) for s in mine] == expected
        ends = [s for s in mine if s.get("terminated") or s.get("truncated")]
        assert len(ends) == len(finished[i])
        for e in mine_eps:
            assert e["total_reward"] == float(e["steps"])  # CartPole: +1 per step


def test_same_step_records_the_final_observation(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="vec")
    envs = TelemetryVectorWrapper(make_vec(AutoresetMode.SAME_STEP, n=2, max_episode_steps=5), tel)
    envs.reset(seed=0)
    finals = []
    for _ in range(5):
        _, _, term, trunc, infos = envs.step(np.array([0, 1]))
    assert all(term | trunc)
    finals = [infos["final_obs"][i] for i in range(2)]
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    last = [s for s in steps if s["step_index"] == 4]
    assert len(last) == 2
    for s, final in zip(sorted(last, key=lambda s: s["agent_id"]), finals):
        assert json.loads(s["observation_json"]) == pytest.approx(final.tolist())
        assert s["truncated"] is True


def test_vector_infos_are_split_per_sub_env(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="vec")
    envs = TelemetryVectorWrapper(
        make_vec(AutoresetMode.NEXT_STEP, n=2, env_id="FrozenLake-v1"), tel, agent_id="fl"
    )
    envs.reset(seed=0)
    _, _, _, _, infos = envs.step(np.array([1, 2]))
    tel.close()
    steps = sorted(of_type(read_jsonl(out), "step"), key=lambda s: s["agent_id"])
    assert [s["agent_id"] for s in steps] == ["fl-0", "fl-1"]
    assert [json.loads(s["info_json"]) for s in steps] == [{"prob": float(p)} for p in infos["prob"]]
    assert sorted(json.loads(s["action_json"]) for s in steps) == [1, 2]
    assert envs.agent_ids == ["fl-0", "fl-1"]


class Weird(gym.Env):
    """Returns an observation telemetry cannot encode, or raises from step."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        if action == 1:
            raise RuntimeError("env bug")
        return object(), 1.0, False, False, {}


def test_telemetry_failures_never_break_the_env_but_env_errors_propagate(out: Path, caplog) -> None:
    tel = Telemetry(dry_run=str(out), run_id="weird")
    env = TelemetryWrapper(Weird(), tel)
    env.reset(seed=0)
    obs, reward, *_ = env.step(0)
    assert reward == 1.0 and type(obs) is object
    assert env.telemetry_errors == 1 and tel.stats()["invalid_calls"] == 1
    assert any("cannot encode" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="env bug"):
        env.step(1)
    # The class-level step does the same as the installed per-instance one.
    TelemetryWrapper.step(env, 0)
    assert env.telemetry_errors == 2
    tel.close()
    assert read_jsonl(out) == []
