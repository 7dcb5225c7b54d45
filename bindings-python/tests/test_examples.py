"""The examples in examples/python run against a real daemon and store what they claim."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.daemon

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script), *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_frozenlake_q_learning(daemon, tmp_path: Path) -> None:
    policy = tmp_path / "q.json"
    log = run("frozenlake_q_learning.py", "--endpoint", daemon.endpoint, "--run-id", "ex-fl",
              "--episodes", "25", "--policy-path", str(policy))
    assert "telemetry acked" in log
    episodes = daemon.dump("ex-fl", episodes=True)
    steps = daemon.dump("ex-fl")
    assert sorted(e["episode_index"] for e in episodes) == list(range(25))
    assert len(steps) == sum(e["steps"] for e in episodes)
    info = json.loads(steps[0]["info_json"])
    assert {"state", "next_state", "q_before", "q_after", "epsilon"} <= set(info)
    assert all(s["agent_id"] == "bdi_rl_demo" and s["control_mode"] == "agent" for s in steps)
    assert "success" in json.loads(episodes[0]["metadata_json"])
    saved = json.loads(policy.read_text())
    assert saved["format"] == "q_table/v1" and len(saved["q_table"]) == 16


def test_cleanrl_cartpole(daemon) -> None:
    log = run("cleanrl_cartpole.py", "--endpoint", daemon.endpoint, "--run-id", "ex-cp",
              "--num-envs", "2", "--num-steps", "64", "--total-timesteps", "1024")
    assert "telemetry acked" in log
    steps = daemon.dump("ex-cp")
    episodes = daemon.dump("ex-cp", episodes=True)
    assert {s["agent_id"] for s in steps} == {"cartpole-pg-0", "cartpole-pg-1"}
    per_episode = collections.Counter((s["agent_id"], s["episode_index"]) for s in steps)
    assert episodes, "1024 CartPole steps under a random-ish policy finish episodes"
    for e in episodes:
        assert per_episode[(e["agent_id"], e["episode_index"])] == e["steps"]
    # 1024 env entries: real steps plus one autoreset entry after each finished episode
    # (except an episode that ended on a sub-env's very last entry).
    assert 1024 - len(episodes) <= len(steps) <= 1024 - len(episodes) + 2


def test_human_play_records_a_human_episode(daemon) -> None:
    log = run("human_play.py", "--endpoint", daemon.endpoint, "--run-id", "ex-human",
              "--keys", "ssdsdd", "--quiet")
    assert "goal after 6 steps" in log
    steps = daemon.dump("ex-human")
    (episode,) = daemon.dump("ex-human", episodes=True)
    assert [s["step_index"] for s in steps] == list(range(6))
    assert all(s["control_mode"] == "human" and s["agent_id"] == "human" for s in steps)
    assert json.loads(steps[-1]["render_hint_json"])["rows"] == 4
    assert episode["total_reward"] == 1.0 and episode["steps"] == 6 and episode["control_mode"] == "human"
    assert len(daemon.dump("ex-human", episodes=True, agent_id="human")) == 1
