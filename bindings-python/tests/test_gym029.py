"""The wrappers under Gymnasium 0.29.x (the version CleanRL pins): same-step autoreset with
``infos["final_observation"]`` / ``infos["final_info"]``. Run in .venv-gym029 by scripts/test.sh
(``bindings-python/scripts/venv.sh --gymnasium-0.29``); skipped under Gymnasium 1.x, whose
behaviour tests/test_wrappers.py covers.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

if hasattr(gym.vector, "VectorWrapper"):
    pytest.skip("Gymnasium 1.x: see test_wrappers.py (this file runs in .venv-gym029)", allow_module_level=True)

from gym_telemetry import Telemetry, TelemetryVectorWrapper, TelemetryWrapper  # noqa: E402

from conftest import of_type, read_jsonl  # noqa: E402


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def test_version_under_test() -> None:
    assert gym.__version__.startswith("0.29.")


def test_single_env_exact_counts_and_render_hints(out: Path) -> None:
    with Telemetry(dry_run=str(out), run_id="fl-029") as tel:
        env = TelemetryWrapper(gym.make("FrozenLake-v1"), tel, agent_id="q")
        env.action_space.seed(0)
        lengths = []
        for ep in range(10):
            env.reset(seed=ep)
            n, done = 0, False
            while not done:
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                n += 1
                done = term or trunc
            lengths.append(n)
    recs = read_jsonl(out)
    steps, episodes = of_type(recs, "step"), of_type(recs, "episode")
    assert len(steps) == sum(lengths) and [e["steps"] for e in episodes] == lengths
    hint = json.loads(steps[0]["render_hint_json"])
    assert (hint["rows"], hint["cols"]) == (4, 4)
    returns = of_type(recs, "scalar")
    assert [s["step"] for s in returns if s["tag"] == "charts/episodic_length"] == list(np.cumsum(lengths))


def test_vector_env_records_the_final_step_not_the_reset(out: Path) -> None:
    n, T = 3, 40
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1", max_episode_steps=7)) for _ in range(n)]
    )
    finals = {i: [] for i in range(n)}
    ends = []
    with Telemetry(dry_run=str(out), run_id="vec-029") as tel:
        w = TelemetryVectorWrapper(envs, tel, agent_id="ppo")
        w.reset(seed=5)
        w.action_space.seed(5)
        for t in range(T):
            _, _, term, trunc, infos = w.step(w.action_space.sample())
            if "final_observation" in infos:
                for i in np.flatnonzero(infos["_final_observation"]):
                    finals[i].append(infos["final_observation"][i].tolist())
                    ep = infos["final_info"][i]["episode"]
                    ends.append((n * (t + 1), float(ep["r"][0]), int(ep["l"][0])))
        assert tel.global_step == n * T
    recs = read_jsonl(out)
    for i in range(n):
        steps = [s for s in of_type(recs, "step") if s["agent_id"] == f"ppo-{i}"]
        assert len(steps) == T, "same-step autoreset: every entry is a real step"
        last = [json.loads(s["observation_json"]) for s in steps if s.get("terminated") or s.get("truncated")]
        assert len(last) == len(finals[i]) and np.allclose(last, finals[i], rtol=1e-6), "the final observation, not the reset one"
        eps = [e for e in of_type(recs, "episode") if e["agent_id"] == f"ppo-{i}"]
        assert len(eps) == len(finals[i]) >= 4
        assert all(e["steps"] <= 7 for e in eps)
        ended = next(s for s in steps if s.get("terminated") or s.get("truncated"))
        assert "episode" in json.loads(ended["info_json"]), "the final info is the step's info"
    scalars = of_type(recs, "scalar")
    got = sorted((s["step"], s["value"]) for s in scalars if s["tag"] == "charts/episodic_return")
    assert got == sorted((step, r) for step, r, _ in ends)
    got = sorted((s["step"], s["value"]) for s in scalars if s["tag"] == "charts/episodic_length")
    assert got == sorted((step, float(l)) for step, _, l in ends)


def test_vector_env_without_record_info(out: Path) -> None:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=5)] * 2)
    with Telemetry(dry_run=str(out), run_id="vec-029b") as tel:
        w = TelemetryVectorWrapper(envs, tel, record_info=False, episode_scalars=False)
        w.reset(seed=1)
        for _ in range(10):
            w.step(w.action_space.sample())
        assert not tel.episode_scalars
    recs = read_jsonl(out)
    assert len(of_type(recs, "step")) == 20 and len(of_type(recs, "episode")) == 4
    assert all(s.get("info_json", "") == "" for s in of_type(recs, "step"))
    assert of_type(recs, "scalar") == []
