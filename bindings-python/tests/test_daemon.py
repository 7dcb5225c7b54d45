"""End to end against the real gym-telemetry-daemon binary: exact counts in its store."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from gym_telemetry import Telemetry, TelemetryVectorWrapper, TelemetryWrapper, from_env

from conftest import free_port

pytestmark = pytest.mark.daemon


def test_frozenlake_wrapper_exact_counts_in_the_store(daemon) -> None:
    tel = Telemetry(endpoint=daemon.endpoint, run_id="fl-e2e")
    tel.run_started(config={"env": "FrozenLake-v1"}, agent_id="q")
    env = TelemetryWrapper(gym.make("FrozenLake-v1"), tel, agent_id="q")
    env.action_space.seed(0)
    lengths = []
    for ep in range(20):
        env.reset(seed=ep)
        n, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            n += 1
            done = terminated or truncated
        lengths.append(n)
    tel.run_completed("succeeded")
    report = tel.close(timeout=20.0)
    assert report["outcome"] == "acked", report
    stats = tel.stats()
    # Steps, episodes, run started/completed, and each episode's two episode scalars.
    assert stats["acked"] == stats["accepted"] == sum(lengths) + 20 + 2 + 2 * 20
    assert stats["rejected"] == stats["dropped"] == 0
    scalars = daemon.dump("fl-e2e", scalars=True)
    ends = [sum(lengths[: i + 1]) for i in range(20)]
    assert [(s["step"], s["value"]) for s in scalars if s["tag"] == "charts/episodic_length"] == [
        (step, float(n)) for step, n in zip(ends, lengths)
    ]
    assert len(scalars) == 40 and all("agent_id" not in s for s in scalars), "run-wide curves"

    steps = daemon.dump("fl-e2e")
    episodes = daemon.dump("fl-e2e", episodes=True)
    assert len(steps) == sum(lengths)
    assert len(episodes) == 20
    assert [e["steps"] for e in sorted(episodes, key=lambda e: e["episode_index"])] == lengths
    keys = {(s["episode_index"], s["step_index"]) for s in steps}
    assert len(keys) == len(steps), "each step stored once"
    assert all(s["agent_id"] == "q" and s["control_mode"] == "agent" for s in steps)
    hint = json.loads(steps[0]["render_hint_json"])
    assert (hint["rows"], hint["cols"]) == (4, 4) and "\x1b[" in hint["ansi"]


def test_vector_env_per_agent_counts_in_the_store(daemon) -> None:
    tel = Telemetry(endpoint=daemon.endpoint, run_id="vec-e2e")
    envs = TelemetryVectorWrapper(
        gym.vector.SyncVectorEnv(
            [lambda: gym.make("CartPole-v1", max_episode_steps=12) for _ in range(3)],
            autoreset_mode=AutoresetMode.NEXT_STEP,
        ),
        tel,
        agent_id="ppo",
    )
    envs.reset(seed=1)
    envs.action_space.seed(1)
    real = [0, 0, 0]
    done_eps = [0, 0, 0]
    skip = [False] * 3
    for _ in range(60):
        _, _, term, trunc, _ = envs.step(envs.action_space.sample())
        for i in range(3):
            if skip[i]:
                skip[i] = False
                continue
            real[i] += 1
            if term[i] or trunc[i]:
                done_eps[i] += 1
                skip[i] = True
    assert tel.close(timeout=20.0)["outcome"] == "acked"
    for i in range(3):
        assert len(daemon.dump("vec-e2e", agent_id=f"ppo-{i}")) == real[i]
        assert len(daemon.dump("vec-e2e", episodes=True, agent_id=f"ppo-{i}")) == done_eps[i]


def test_offline_then_online_delivers_exactly_once(daemon_factory, tmp_path: Path) -> None:
    port = free_port()
    tel = Telemetry(
        endpoint=f"http://127.0.0.1:{port}",
        run_id="offline",
        queue_dir=tmp_path / "queue",
        reconnect_max=0.2,
    )
    obs = np.linspace(0.0, 1.0, 8, dtype=np.float32)
    for ep in range(5):
        for k in range(40):
            tel.step(obs * k, k % 4, 0.5, terminated=k == 39, info={"k": k})
        tel.episode_end()
    offline = tel.flush(timeout=0.5)
    assert offline["outcome"] == "on_disk" and offline["pending_records"] == 205
    assert tel.stats()["acked"] == 0

    daemon = daemon_factory()
    assert daemon.start(port) == f"http://127.0.0.1:{port}"
    online = tel.flush(timeout=30.0)
    assert online["outcome"] == "acked", online
    assert online["acked_through"] == 205
    stats = tel.stats()
    assert stats["acked"] == 205 and stats["queue_records"] == 0 and stats["dropped"] == 0
    tel.close(timeout=5.0)

    steps = daemon.dump("offline")
    assert len(steps) == 200
    assert len({(s["episode_index"], s["step_index"]) for s in steps}) == 200
    assert len({s["producer_seq"] for s in steps}) == 200
    assert json.loads(steps[0]["observation_json"]) == [0.0] * 8
    episodes = daemon.dump("offline", episodes=True)
    assert sorted(e["episode_index"] for e in episodes) == [0, 1, 2, 3, 4]
    assert all(e["steps"] == 40 and e["total_reward"] == 20.0 for e in episodes)


def test_restarted_worker_resends_nothing_twice(daemon, tmp_path: Path) -> None:
    """A second process on the same queue directory keeps the producer id and adds to the
    store without duplicating what the first one delivered."""
    kw = dict(endpoint=daemon.endpoint, run_id="restart", queue_dir=tmp_path / "q")
    first = Telemetry(**kw)
    for k in range(10):
        first.step(k, 0, 1.0)
    assert first.close(timeout=20.0)["outcome"] == "acked"
    second = Telemetry(**kw)
    assert second.producer_id == first.producer_id
    for k in range(10):
        second.step(k, 0, 1.0, episode_index=1)
    assert second.close(timeout=20.0)["outcome"] == "acked"
    steps = daemon.dump("restart")
    assert len(steps) == 20
    assert sorted(s["producer_seq"] for s in steps) == list(range(1, 21))


def test_from_env_talks_to_the_daemon(daemon, monkeypatch) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_ENDPOINT", daemon.endpoint)
    monkeypatch.setenv("GYM_TELEMETRY_RUN_ID", "env-run")
    monkeypatch.setenv("GYM_TELEMETRY_AGENT_ID", "env-agent")
    with from_env() as tel:
        tel.set_metadata(game_id="CartPole-v1", seed=3)
        tel.step(np.zeros(4), 1, 1.0, True)
        tel.episode_end()
    assert tel.closed
    (step,) = daemon.dump("env-run")
    (ep,) = daemon.dump("env-run", episodes=True)
    assert step["agent_id"] == "env-agent"
    assert json.loads(ep["metadata_json"])["game_id"] == "CartPole-v1"
