"""gym_telemetry.sb3 with the real Stable-Baselines3 (and torch), against the real daemon.

PPO and DQN train briefly on CartPole with ``model.set_logger(configure_logger(...))`` and the
env under ``TelemetryWrapper`` in the same run. A tap (a real SB3 ``KVWriter`` beside ours)
records what SB3's ``Logger.dump`` hands every output format; the store must then hold exactly
SB3's numeric values at SB3's step (``num_timesteps``), minus what SB3 excludes for
TensorBoard-like formats; every env step SB3 took; and every episode SB3's ``Monitor`` saw,
with the same returns.

Training runs in a subprocess: the stand-in tests of test_sb3.py put their own
``stable_baselines3`` modules in ``sys.modules``, and test_sb3.py checks that importing
gym_telemetry never imports SB3 in a process that has not.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.daemon

TRAIN = textwrap.dedent(
    """
    import json, sys
    import gymnasium as gym
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.logger import KVWriter
    from gym_telemetry import TelemetryWrapper
    from gym_telemetry.sb3 import TelemetryOutputFormat, configure_logger

    algo, folder, run_id, endpoint, tap_path = sys.argv[1:6]

    class Tap(KVWriter):
        # What Logger.dump hands every output format, as JSON lines.
        def __init__(self, path):
            self.f = open(path, "w")

        def write(self, key_values, key_excluded, step=0):
            values = {k: (v if isinstance(v, str) else float(v)) for k, v in key_values.items()
                      if v is not None}
            excluded = {k: (list(e) if isinstance(e, tuple) else e) for k, e in key_excluded.items()}
            self.f.write(json.dumps({"step": step, "values": values, "excluded": excluded}) + "\\n")

        def close(self):
            self.f.close()

    logger = configure_logger(folder, ["csv"], run_id=run_id, endpoint=endpoint)
    ours = logger.output_formats[-1]
    assert isinstance(ours, TelemetryOutputFormat) and isinstance(ours, KVWriter)
    logger.output_formats.append(Tap(tap_path))
    env = TelemetryWrapper(gym.make("CartPole-v1"), ours.telemetry)
    if algo == "ppo":
        model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0, device="cpu")
    else:
        model = DQN("MlpPolicy", env, learning_starts=64, train_freq=4, seed=0, device="cpu")
    model.set_logger(logger)
    model.learn(total_timesteps=512, log_interval=1 if algo == "ppo" else 2)
    monitor = model.get_env().envs[0]
    summary = {"num_timesteps": model.num_timesteps,
               "episode_rewards": [float(r) for r in monitor.get_episode_rewards()],
               "episode_lengths": [int(n) for n in monitor.get_episode_lengths()]}
    logger.close()
    print(json.dumps(summary))
    """
)


def train(daemon, tmp_path: Path, algo: str) -> tuple[str, dict, list[dict]]:
    run_id = f"sb3-{algo}"
    tap = tmp_path / f"{algo}-tap.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", TRAIN, algo, str(tmp_path / algo), run_id, daemon.endpoint, str(tap)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    dumps = [json.loads(line) for line in tap.read_text().splitlines()]
    return run_id, summary, dumps


def expected_scalars(dumps: list[dict]) -> dict[tuple[str, int], float]:
    """What the store must hold: every numeric value of every dump at its step, except keys
    SB3 excludes for "tensorboard" (time/total_timesteps, time/iterations, time/time_elapsed)."""
    want: dict[tuple[str, int], float] = {}
    for d in dumps:
        for k, v in d["values"].items():
            excl = d["excluded"].get(k) or []
            excl = [excl] if isinstance(excl, str) else excl
            if isinstance(v, str) or "tensorboard" in excl or "telemetry" in excl:
                continue
            want[(k, d["step"])] = v
    return want


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_real_sb3_training_lands_in_the_store(daemon, tmp_path: Path, algo: str) -> None:
    run_id, summary, dumps = train(daemon, tmp_path, algo)
    assert dumps, "SB3 dumped nothing"
    want = expected_scalars(dumps)
    assert any(k.startswith("train/") for k, _ in want), sorted(want)
    assert ("rollout/ep_rew_mean", dumps[-1]["step"]) in want
    # The episode scalars come from the wrapper's episodes, not from SB3.
    episode_tags = {"charts/episodic_return", "charts/episodic_length"}
    stored = daemon.dump(run_id, scalars=True)
    got: dict[tuple[str, int], float] = {}
    for s in stored:
        if s["tag"] in episode_tags:
            continue
        # (The dump leaves out zero fields, as proto3 JSON does.)
        key = (s["tag"], int(s.get("step", 0)))
        assert key not in got, f"{key} stored twice"
        got[key] = float(s.get("value", 0.0))
    assert sorted(got) == sorted(want)
    for key, v in want.items():
        # SB3 holds float32 values (torch, numpy): stored as the f64 of that value.
        assert math.isclose(got[key], v, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(v) and math.isnan(got[key])), key
    # SB3's own bookkeeping agrees with the run's steps and episodes.
    steps = daemon.dump(run_id)
    assert len(steps) == summary["num_timesteps"] == 512
    episodes = daemon.dump(run_id, episodes=True)
    assert [e["total_reward"] for e in episodes] == summary["episode_rewards"]
    assert [e["steps"] for e in episodes] == summary["episode_lengths"]
    returns = [s for s in stored if s["tag"] == "charts/episodic_return"]
    assert [float(s.get("value", 0.0)) for s in returns] == summary["episode_rewards"]
