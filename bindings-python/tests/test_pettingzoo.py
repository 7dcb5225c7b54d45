"""TelemetryParallelWrapper and TelemetryAECWrapper on PettingZoo's own environments.

Each test plays the env with its own loop, counting what the env gave every agent (steps,
rewards, episode ends), and asserts the records match exactly: in a real daemon's store
(read back with ``gym_telemetry.load``) or in a dry-run JSONL file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

pettingzoo = pytest.importorskip("pettingzoo")

from gym_telemetry import Telemetry  # noqa: E402
from gym_telemetry.pettingzoo import TelemetryAECWrapper, TelemetryParallelWrapper  # noqa: E402

from conftest import of_type, read_jsonl  # noqa: E402


def example_envs():
    """PettingZoo's generated-agents test envs. Importing ``pettingzoo.test`` imports its API
    test, which still makes connect_four through the old creation API (a DeprecationWarning of
    PettingZoo's own, not of this code)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pettingzoo.test import example_envs

    return example_envs


def generated_aec(**kwargs):
    """``generated_agents_env_v0.env()`` with arguments (its ``env()`` takes none): the raw env
    under the same two PettingZoo wrappers."""
    from pettingzoo.utils import wrappers

    raw = example_envs().generated_agents_env_v0.raw_env(**kwargs)
    return wrappers.OrderEnforcingWrapper(wrappers.AssertOutOfBoundsWrapper(raw))


def play_parallel(env, episodes: int, seed: int = 0):
    """Random actions; per agent: steps, return and length of each episode, and the env step
    (counted over all episodes) at which each of its episodes ended."""
    steps: Counter = Counter()
    returns: dict = defaultdict(list)
    lengths: dict = defaultdict(list)
    ended_at: dict = defaultdict(list)
    env_steps = []
    total = 0
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        for a in env.agents:
            env.action_space(a).seed(seed + ep)
        ret: Counter = Counter()
        length: Counter = Counter()
        n = 0
        while env.agents:
            actions = {a: env.action_space(a).sample() for a in env.agents}
            _, rewards, terms, truncs, _ = env.step(actions)
            n += 1
            total += 1
            for a, r in rewards.items():
                steps[a] += 1
                ret[a] += float(r)
                length[a] += 1
                if terms.get(a) or truncs.get(a):
                    returns[a].append(ret.pop(a))
                    lengths[a].append(length.pop(a))
                    ended_at[a].append(total)
        env_steps.append(n)
    return steps, returns, env_steps, lengths, ended_at


def play_aec(env, episodes: int, seed: int = 0):
    """Random legal actions; per agent: actions taken, return of each episode in which it acted
    (the sum of the cumulative rewards ``last()`` reports at each of its turns), and the
    actions of each episode."""
    actions: Counter = Counter()
    returns: dict = defaultdict(list)
    turns = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        ret: Counter = Counter()
        acted: Counter = Counter()
        n = 0
        for agent in env.agent_iter():
            obs, reward, term, trunc, _ = env.last()
            ret[agent] += float(reward)
            if term or trunc:
                r = ret.pop(agent)
                if acted[agent]:  # an agent that never acted has no episode record
                    returns[agent].append(r)
                env.step(None)
                continue
            space = env.action_space(agent)
            mask = obs["action_mask"] if isinstance(obs, dict) and "action_mask" in obs else None
            space.seed(seed + ep + n)
            env.step(space.sample(mask))
            actions[agent] += 1
            acted[agent] += 1
            n += 1
        turns.append(n)
    return actions, returns, turns


@pytest.mark.daemon
def test_parallel_knights_archers_zombies_counts_in_the_store(daemon) -> None:
    """Butterfly's knights-archers-zombies (Parallel): agents leave when zombies reach them."""
    from gym_telemetry import load

    tel = Telemetry(endpoint=daemon.endpoint, run_id="kaz")
    env = TelemetryParallelWrapper(
        pettingzoo.make("parallel", "butterfly/knights_archers_zombies-v11", max_cycles=80), tel
    )
    steps, returns, env_steps, lengths, ended_at = play_parallel(env, episodes=3)
    env.close()
    assert tel.close(timeout=60.0)["outcome"] == "acked"
    assert env.telemetry_errors == 0
    store = daemon.var_dir / "telemetry.sqlite"
    s = load("kaz", kind="steps", store=store, backend="polars")
    assert dict(Counter(s["agent_id"].to_list())) == dict(steps)
    assert set(s["control_mode"].cast(str).to_list()) == {"multi_agent"}
    e = load("kaz", kind="episodes", store=store, backend="polars")
    per_agent = e.filter(e["agent_id"] != "")
    assert sorted(set(per_agent["agent_id"].to_list())) == sorted(returns)
    for agent, rets in returns.items():
        mine = per_agent.filter(per_agent["agent_id"] == agent).sort("episode_index")
        assert mine["episode_index"].to_list() == [0, 1, 2]
        assert mine["total_reward"].to_list() == pytest.approx(rets)
        assert mine["steps"].to_list() == lengths[agent]
    run = e.filter(e["agent_id"] == "").sort("episode_index")
    assert run["episode_index"].to_list() == [0, 1, 2]
    assert run["steps"].to_list() == env_steps
    assert set(run["control_mode"].cast(str).to_list()) == {"multi_agent"}
    for i, meta in enumerate(run["metadata_json"].to_list()):
        m = json.loads(meta)
        assert m["game_id"] == "knights_archers_zombies_v11" and m["seed"] == i
        assert sorted(m["agents"]) == sorted(returns)
        assert {a: v["return"] for a, v in m["agents"].items()} == pytest.approx(
            {a: r[i] for a, r in returns.items()}
        )
        assert {a: v["length"] for a, v in m["agents"].items()} == {a: n[i] for a, n in lengths.items()}
        assert max(v["length"] for v in m["agents"].values()) == env_steps[i]
    sc = load("kaz", kind="scalars", store=store, tags=["agents/archer_0/episodic_return"])
    assert sc["value"].tolist() == pytest.approx(returns["archer_0"])
    assert set(sc["agent_id"]) == {"archer_0"}
    assert sc["step"].tolist() == ended_at["archer_0"]


@pytest.mark.daemon
def test_parallel_pistonball_image_observations_in_the_store(daemon) -> None:
    """Pistonball's per-agent observations are images (~600 KB as JSON each): few steps."""
    from gym_telemetry import load

    tel = Telemetry(endpoint=daemon.endpoint, run_id="piston")
    env = TelemetryParallelWrapper(
        pettingzoo.make("parallel", "butterfly/pistonball-v6", n_pistons=4, max_cycles=5), tel
    )
    steps, returns, env_steps, _, _ = play_parallel(env, episodes=2)
    assert tel.close(timeout=60.0)["outcome"] == "acked"
    store = daemon.var_dir / "telemetry.sqlite"
    s = load("piston", store=store, backend="polars")
    assert dict(Counter(s["agent_id"].to_list())) == dict(steps)
    e = load("piston", kind="episodes", store=store, backend="polars")
    assert e.filter(e["agent_id"] == "")["steps"].to_list() == env_steps
    got = e.filter(e["agent_id"] == "piston_0")["total_reward"].to_list()
    assert got == pytest.approx(returns["piston_0"])


@pytest.mark.daemon
def test_aec_tictactoe_counts_in_the_store(daemon) -> None:
    from gym_telemetry import load

    tel = Telemetry(endpoint=daemon.endpoint, run_id="ttt")
    env = TelemetryAECWrapper(pettingzoo.make("aec", "classic/tictactoe-v3"), tel)
    actions, returns, turns = play_aec(env, episodes=6)
    env.close()
    assert tel.close()["outcome"] == "acked"
    assert env.telemetry_errors == 0
    store = daemon.var_dir / "telemetry.sqlite"
    s = load("ttt", store=store)  # pandas, steps
    assert s["agent_id"].value_counts().to_dict() == dict(actions)
    assert s["action_json"].map(json.loads).between(0, 8).all()
    e = load("ttt", kind="episodes", store=store)
    for agent in ("player_1", "player_2"):
        mine = e[e["agent_id"] == agent].sort_values("episode_index")
        assert mine["episode_index"].tolist() == list(range(6))
        assert mine["total_reward"].tolist() == returns[agent]
        assert mine["steps"].sum() == actions[agent]
    # Tic-tac-toe is zero-sum: each game's returns cancel out, and every game terminates.
    run = e[e["agent_id"] == ""].sort_values("episode_index")
    assert run["steps"].tolist() == turns
    assert run["total_reward"].tolist() == [0.0] * 6
    assert run["terminated"].all()
    wide = load("ttt", kind="scalars", store=store, agent_id="player_1")
    assert sorted(set(wide["tag"])) == ["agents/player_1/episodic_length", "agents/player_1/episodic_return"]


def test_agents_that_join_and_leave(tmp_path: Path) -> None:
    """PettingZoo's generated-agents env adds agents during an episode (they get rewards
    before their first turn), terminates some of them once there are 20, and truncates."""
    out = tmp_path / "out.jsonl"
    tel = Telemetry(dry_run=str(out), run_id="gen")
    env = TelemetryAECWrapper(generated_aec(max_cycles=40), tel)
    env.reset(seed=4)
    first = set(env.agents)
    actions, returns, turns = play_aec(env, episodes=2, seed=4)
    tel.close()
    assert env.telemetry_errors == 0
    assert set(actions) - first, "the env added agents during the episode"
    recs = read_jsonl(out)
    assert dict(Counter(r["agent_id"] for r in of_type(recs, "step"))) == dict(actions)
    got = defaultdict(list)
    for r in of_type(recs, "episode"):
        if r.get("agent_id"):
            got[r["agent_id"]].append(r.get("total_reward", 0.0))
    assert dict(got) == {a: pytest.approx(r) for a, r in returns.items()}
    terminated = {r["agent_id"] for r in of_type(recs, "episode") if r.get("terminated")}
    assert terminated, "some agents left by termination before the truncation"
    run = [r for r in of_type(recs, "episode") if not r.get("agent_id")]
    assert [r["steps"] for r in run] == turns
    assert sum(len(json.loads(r["metadata_json"])["agents"]) for r in run) == sum(
        len(r) for r in returns.values()
    )


def test_per_agent_control_modes_make_the_run_hybrid(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    tel = Telemetry(dry_run=str(out), run_id="mixed")
    env = TelemetryAECWrapper(
        pettingzoo.make("aec", "classic/tictactoe-v3"), tel, control_modes={"player_2": "human"}
    )
    actions, _, _ = play_aec(env, episodes=1)
    tel.close()
    recs = read_jsonl(out)
    modes = {(r["agent_id"], r["control_mode"]) for r in of_type(recs, "step")}
    assert modes == {("player_1", "multi_agent"), ("player_2", "human")}
    run = [r for r in of_type(recs, "episode") if not r.get("agent_id")]
    assert [r["control_mode"] for r in run] == ["hybrid"]


def test_ansi_render_hints_from_capture_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """PettingZoo's CaptureStdoutWrapper gives a printing env an ``ansi`` render mode."""
    from pettingzoo.utils.wrappers import CaptureStdoutWrapper

    out = tmp_path / "out.jsonl"
    tel = Telemetry(dry_run=str(out), run_id="ansi")
    env = TelemetryAECWrapper(CaptureStdoutWrapper(generated_aec(render_mode="human", max_cycles=5)), tel)
    env.reset(seed=1)
    agent = env.agent_selection
    env.step(env.action_space(agent).sample())
    expected = env.render()  # nothing changed since that step
    env.reset(seed=2)  # records the pending step of the abandoned episode
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    mine = [s for s in steps if s["agent_id"] == agent]
    assert mine, "the first agent's action was recorded at the reset"
    hint = json.loads(mine[0]["render_hint_json"])
    assert hint["ansi"] == expected and hint["rows"] >= 1


def test_importing_gym_telemetry_does_not_import_pettingzoo() -> None:
    code = "import sys, gym_telemetry; gym_telemetry.Telemetry; print('pettingzoo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_recorders_of_departed_agents_are_forgotten_past_the_limit(tmp_path: Path, monkeypatch) -> None:
    import gym_telemetry.pettingzoo as gpz

    monkeypatch.setattr(gpz, "MAX_AGENTS", 6)
    tel = Telemetry(dry_run=str(tmp_path / "out.jsonl"), run_id="many")
    env = TelemetryAECWrapper(generated_aec(max_cycles=60), tel)
    seen: set = set()
    most = peak_live = 0
    for ep in range(3):
        env.reset(seed=ep)
        for agent in env.agent_iter():
            seen.add(agent)
            _, _, term, trunc, _ = env.last()
            env.step(None if term or trunc else env.action_space(agent).sample())
            # Bounded by the limit, or by the most agents the env itself held at once.
            peak_live = max(peak_live, len(env.agents))
            most = max(most, len(env._tel.recs) - max(gpz.MAX_AGENTS, peak_live + 1))
    tel.close()
    assert len(seen) > gpz.MAX_AGENTS
    assert env.agents_evicted > 0
    assert most <= 0 and len(seen) > max(gpz.MAX_AGENTS, peak_live + 1), "the bound bit"
