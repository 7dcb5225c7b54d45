"""gym_telemetry.sb3 against a stand-in for stable_baselines3.common.logger (SB3 needs torch,
which the test environment does not install): its KVWriter / FormatUnsupportedError / value
classes and Logger.record / dump as SB3 2.x writes them, Logger.dump's isinstance(KVWriter)
filter included."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections import defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from gym_telemetry import SummaryWriter, Telemetry, TelemetryWrapper

from conftest import of_type, read_jsonl


def fake_sb3_logger() -> types.ModuleType:
    """The parts of stable_baselines3.common.logger that an output format meets."""
    m = types.ModuleType("stable_baselines3.common.logger")

    class KVWriter:
        def write(self, key_values, key_excluded, step=0):
            raise NotImplementedError

        def close(self):
            raise NotImplementedError

    class FormatUnsupportedError(NotImplementedError):
        def __init__(self, unsupported_formats, value_description):
            super().__init__(f"The format {unsupported_formats[0]} is not supported for the {value_description} value logged.")

    class Video:
        def __init__(self, frames, fps):
            self.frames, self.fps = frames, fps

    class HParam:
        def __init__(self, hparam_dict, metric_dict):
            self.hparam_dict, self.metric_dict = hparam_dict, metric_dict

    class Logger:
        def __init__(self, folder, output_formats):
            self.name_to_value = defaultdict(float)
            self.name_to_excluded = defaultdict(str)
            self.dir = folder
            self.output_formats = output_formats

        def record(self, key, value, exclude=None):
            self.name_to_value[key] = value
            self.name_to_excluded[key] = exclude

        def dump(self, step=0):
            for _format in self.output_formats:
                if isinstance(_format, KVWriter):
                    _format.write(self.name_to_value, self.name_to_excluded, step)
            self.name_to_value.clear()
            self.name_to_excluded.clear()

        def close(self):
            for _format in self.output_formats:
                _format.close()

    class HumanOutputFormat(KVWriter):
        def __init__(self):
            self.lines = []

        def write(self, key_values, key_excluded, step=0):
            self.lines.append(dict(key_values))

        def close(self):
            pass

    def make_output_format(_format, log_dir, log_suffix=""):
        assert _format == "stdout"
        return HumanOutputFormat()

    for c in (KVWriter, FormatUnsupportedError, Video, HParam, Logger, HumanOutputFormat):
        setattr(m, c.__name__, c)
    m.make_output_format = make_output_format
    return m


@pytest.fixture
def sb3(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    m = fake_sb3_logger()
    for name in ("stable_baselines3", "stable_baselines3.common"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "stable_baselines3.common.logger", m)
    return m


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path / "out.jsonl"


class Tensor:
    """A torch scalar as SB3 may hold one (size() is a method, numel() the count)."""

    def __init__(self, *v: float) -> None:
        self.v = v

    def size(self):
        return (len(self.v),)

    def numel(self) -> int:
        return len(self.v)

    def item(self) -> float:
        return self.v[0]


def test_importing_does_not_import_sb3_or_torch() -> None:
    code = ("import sys, gym_telemetry, gym_telemetry.sb3; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('stable_baselines3', 'torch', 'jax')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sb3_logger_dump_lands_as_scalars(sb3, out: Path) -> None:
    from gym_telemetry.sb3 import TelemetryOutputFormat

    tel = Telemetry(dry_run=str(out), run_id="sb3-run")
    fmt = TelemetryOutputFormat(tel)
    assert isinstance(fmt, sb3.KVWriter), "Logger.dump writes only to KVWriter instances"
    assert type(fmt).__name__ == "TelemetryOutputFormat"
    logger = sb3.Logger(None, [fmt])
    for it, step in enumerate((2048, 4096)):
        logger.record("rollout/ep_rew_mean", np.float32(20.5 + it))
        logger.record("time/fps", 1000 + it)
        logger.record("time/total_timesteps", step, exclude="tensorboard")
        logger.record("time/iterations", it + 1, exclude=("stdout", "log", "json", "csv"))
        logger.record("train/loss", Tensor(float("nan") if it else 0.5))
        logger.record("train/clip_range", np.float64(0.2))
        logger.record("train/skipped", 1.0, exclude=("telemetry",))
        logger.record("train/n_updates", np.int64(10 * (it + 1)))
        logger.record("train/use_sde", False)
        logger.dump(step)
    logger.record("config/note", "warm start")
    logger.record("hparams", sb3.HParam({"lr": 3e-4, "gamma": 0.99}, {"rollout/ep_rew_mean": 0}))
    logger.dump(4096)
    logger.close()
    assert not tel.closed, "a given Telemetry is flushed, not closed"
    tel.close()

    recs = read_jsonl(out)
    got = sorted((s["tag"], s["step"], str(s["value"])) for s in of_type(recs, "scalar"))
    assert got == sorted([
        ("rollout/ep_rew_mean", 2048, "20.5"), ("rollout/ep_rew_mean", 4096, "21.5"),
        ("time/fps", 2048, "1000.0"), ("time/fps", 4096, "1001.0"),
        ("time/iterations", 2048, "1.0"), ("time/iterations", 4096, "2.0"),
        ("train/loss", 2048, "0.5"), ("train/loss", 4096, "NaN"),
        ("train/clip_range", 2048, "0.2"), ("train/clip_range", 4096, "0.2"),
        ("train/n_updates", 2048, "10.0"), ("train/n_updates", 4096, "20.0"),
        ("train/use_sde", 2048, "0.0"), ("train/use_sde", 4096, "0.0"),
        ("rollout/ep_rew_mean", 4096, "0.0"),  # the HParam's metric
    ])
    (note,) = of_type(recs, "artifact")
    assert (note["kind"], note["path"], json.loads(note["info_json"])["text"]) == ("text", "config/note", "warm start")
    (started,) = of_type(recs, "run_started")
    assert json.loads(started["config_json"]) == {"lr": 3e-4, "gamma": 0.99}


def test_unsupported_values_raise_sb3s_error(sb3, out: Path) -> None:
    from gym_telemetry.sb3 import TelemetryOutputFormat

    with Telemetry(dry_run=str(out), run_id="sb3-u") as tel:
        fmt = TelemetryOutputFormat(tel)
        with pytest.raises(sb3.FormatUnsupportedError, match="video"):
            fmt.write({"eval/video": sb3.Video(np.zeros((1, 3, 2, 2)), 30)}, {"eval/video": None}, 10)
        with pytest.raises(sb3.FormatUnsupportedError, match="ndarray"):
            fmt.write({"w": np.zeros(3)}, {"w": None}, 10)
        fmt.write({"eval/video": sb3.Video(None, 30), "x": 1.0}, {"eval/video": ("telemetry",), "x": None}, 11)
    assert [(s["tag"], s["step"]) for s in of_type(read_jsonl(out), "scalar")] == [("x", 11)]


def test_configure_logger_owns_its_run(sb3, out: Path) -> None:
    from gym_telemetry.sb3 import TelemetryOutputFormat, configure_logger

    logger = configure_logger("runs/ppo_1", dry_run=str(out))
    human, fmt = logger.output_formats
    assert isinstance(fmt, TelemetryOutputFormat) and fmt.telemetry.run_id == "ppo_1"
    logger.record("train/loss", 0.25)
    logger.dump(64)
    logger.close()
    assert human.lines == [{"train/loss": 0.25}]
    recs = read_jsonl(out)
    assert [(s["tag"], s["step"]) for s in of_type(recs, "scalar")] == [("train/loss", 64)]
    assert [r["status"] for r in of_type(recs, "run_completed")] == ["succeeded"]


def test_episode_tags_are_not_stored_twice(sb3, out: Path) -> None:
    from gym_telemetry.sb3 import TelemetryOutputFormat

    with Telemetry(dry_run=str(out), run_id="sb3-e") as tel:
        TelemetryWrapper(gym.make("CartPole-v1"), tel)
        fmt = TelemetryOutputFormat(writer=SummaryWriter(telemetry=tel))
        fmt.write({"charts/episodic_return": 10.0, "rollout/ep_rew_mean": 9.0}, {}, 5)
        assert fmt.writer.stats()["episode_scalars_skipped"] == 1
    assert [s["tag"] for s in of_type(read_jsonl(out), "scalar")] == ["rollout/ep_rew_mean"]


def test_without_sb3_loaded_it_is_duck_typed(out: Path) -> None:
    assert "stable_baselines3.common.logger" not in sys.modules
    from gym_telemetry.sb3 import TelemetryOutputFormat

    with Telemetry(dry_run=str(out), run_id="sb3-d") as tel:
        fmt = TelemetryOutputFormat(tel)
        assert type(fmt) is TelemetryOutputFormat
        fmt.write({"a": 1}, {"a": None}, 3)
        fmt.close()
    assert [(s["tag"], s["step"]) for s in of_type(read_jsonl(out), "scalar")] == [("a", 3)]
