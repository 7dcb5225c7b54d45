"""gym_telemetry.SummaryWriter without a daemon (dry-run JSONL): naming, text, hparams, the
episode-scalar dedupe, unsupported methods, lifecycle, torch-compatible signatures."""

from __future__ import annotations

import inspect
import json
import logging
import re
import socket
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import gym_telemetry
from gym_telemetry import SummaryWriter, Telemetry, TelemetryVectorWrapper, TelemetryWrapper
from gym_telemetry.tensorboard import parse_markdown_table, run_name_from_log_dir

from conftest import of_type, read_jsonl

CLEANRL_TABLE = "|param|value|\n|-|-|\n" + "\n".join(
    f"|{k}|{v}|"
    for k, v in {
        "exp_name": "dqn", "seed": 1, "torch_deterministic": True, "cuda": False,
        "wandb_entity": None, "env_id": "CartPole-v1", "learning_rate": 0.00025, "gamma": 0.99,
    }.items()
)


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # runs/ is made here
    return tmp_path / "out.jsonl"


def writer(out: Path, log_dir="runs/exp-1", **kw) -> SummaryWriter:
    return SummaryWriter(log_dir, dry_run=str(out), **kw)


def test_log_dir_names_the_run_and_is_created(out: Path) -> None:
    with writer(out, "runs/CartPole-v1__dqn__1__1700000000") as w:
        assert w.run_id == w.telemetry.run_id == "CartPole-v1__dqn__1__1700000000"
        assert w.get_logdir() == "runs/CartPole-v1__dqn__1__1700000000"
        assert Path("runs/CartPole-v1__dqn__1__1700000000").is_dir(), "scripts save models there"
        w.add_scalar("losses/td_loss", 0.5, 10)
    assert {r["run_id"] for r in read_jsonl(out)} == {"CartPole-v1__dqn__1__1700000000"}


@pytest.mark.parametrize(
    "log_dir, name",
    [("runs/a", "a"), ("runs/a/", "a"), ("./runs/ALE/Pong-v5__ppo", "ALE/Pong-v5__ppo"),
     ("/x/runs/exp/seed0", "exp/seed0"), ("logs/b", "b"), (Path("runs") / "c", "c"), ("runs", "runs")],
)
def test_run_name_from_log_dir(log_dir, name: str) -> None:
    assert run_name_from_log_dir(log_dir) == name


def test_default_log_dir_is_torchs(out: Path) -> None:
    with writer(out, None, comment="-lr0.1") as w:
        m = re.fullmatch(r"runs/([A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2})_(.+)-lr0\.1", w.get_logdir())
        assert m and m.group(2) == socket.gethostname()
        assert w.run_id == w.get_logdir()[len("runs/"):]


def test_the_daemons_run_id_wins_over_log_dir(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_RUN_ID", "run-from-daemon")
    with writer(out, "runs/mine") as w:
        assert w.run_id == "run-from-daemon"
    with writer(out, "runs/mine", run_id="explicit") as w:
        assert w.run_id == "explicit"


def test_scalars_and_add_scalars(out: Path) -> None:
    with writer(out) as w:
        w.add_scalar("charts/SPS", 1234, 100)
        w.add_scalar("losses/q_values", np.float32(1.5), 100, walltime=1_700_000_000.0)
        w.add_scalar("losses/td_loss", float("nan"), 110, new_style=True, double_precision=True)
        w.add_scalars("run", {"a": 1.0, "b": np.int64(2)}, 120)
        with pytest.raises(TypeError, match='scalar "run/bad"'):
            w.add_scalars("run", {"ok": 1.0, "bad": [1.0]}, 130)
        with pytest.raises(ValueError, match="step must be >= 0"):
            w.add_scalar("x", 1.0, -5)
    got = [(s["tag"], s["step"], s["value"]) for s in of_type(read_jsonl(out), "scalar")]
    assert got == [
        ("charts/SPS", 100, 1234.0), ("losses/q_values", 100, 1.5), ("losses/td_loss", 110, "NaN"),
        ("run/a", 120, 1.0), ("run/b", 120, 2.0),
    ]


def test_default_step_is_the_global_step(out: Path) -> None:
    with writer(out) as w:
        env = TelemetryWrapper(gym.make("CartPole-v1"), w.telemetry, episode_scalars=False)
        env.reset(seed=0)
        for _ in range(5):
            env.step(0)
        w.add_scalar("losses/x", 1.0)
        assert w.telemetry.global_step == 5
    (s,) = of_type(read_jsonl(out), "scalar")
    assert s["step"] == 5


def test_hyperparameters_table_becomes_the_run_config(out: Path) -> None:
    with writer(out) as w:
        w.add_text("hyperparameters", CLEANRL_TABLE)
        w.add_hparams({"num_envs": 4}, {"hparam/return": 200.0}, global_step=7)
    recs = read_jsonl(out)
    started = of_type(recs, "run_started")
    assert len(started) == 2, "each config change sends the whole config again"
    assert json.loads(started[0]["config_json"]) == {
        "exp_name": "dqn", "seed": 1, "torch_deterministic": True, "cuda": False,
        "wandb_entity": None, "env_id": "CartPole-v1", "learning_rate": 0.00025, "gamma": 0.99,
    }
    assert json.loads(started[-1]["config_json"])["num_envs"] == 4
    assert json.loads(started[-1]["config_json"])["learning_rate"] == 0.00025
    assert [(s["tag"], s["step"], s["value"]) for s in of_type(recs, "scalar")] == [("hparam/return", 7, 200.0)]
    assert [r["status"] for r in of_type(recs, "run_completed")] == ["succeeded"]


def test_other_text_is_a_text_artifact(out: Path) -> None:
    with writer(out) as w:
        w.add_text("notes", "first try, lr too high", 42, walltime=1_700_000_000.0)
        w.add_text("hyperparameters", "not a table")  # kept as text, not lost
        with pytest.raises(TypeError, match="text_string must be a str"):
            w.add_text("notes", 3)
    arts = of_type(read_jsonl(out), "artifact")
    assert [(a["kind"], a["path"]) for a in arts] == [("text", "notes"), ("text", "hyperparameters")]
    assert json.loads(arts[0]["info_json"]) == {"text": "first try, lr too high", "step": 42, "walltime": 1_700_000_000.0}
    assert json.loads(arts[1]["info_json"]) == {"text": "not a table", "step": 0}


def test_parse_markdown_table() -> None:
    assert parse_markdown_table("|param|value|\n|-|-|\n|a|1|\n|b|x y|\n") == {"a": 1, "b": "x y"}
    assert parse_markdown_table("|param|value|\n|:--|--:|\n|lr|1e-3|") == {"lr": 0.001}
    assert parse_markdown_table("|a|b|\n|c|d|") is None
    assert parse_markdown_table("|a|b|c|\n|-|-|-|") is None
    assert parse_markdown_table("plain text") is None


@pytest.mark.parametrize(
    "method, args, alternative",
    [
        ("add_image", ("img", np.zeros((3, 4, 4))), "frame_ref"),
        ("add_images", ("img", np.zeros((1, 3, 4, 4))), "tensorboard alongside"),
        ("add_video", ("vid", np.zeros((1, 2, 3, 4, 4))), "artifact"),
        ("add_figure", ("fig", object()), "artifact"),
        ("add_histogram", ("w", np.zeros(10)), "scalars"),
        ("add_graph", (object(),), "tensorboard alongside"),
        ("add_embedding", (np.zeros((2, 2)),), "tensorboard alongside"),
        ("add_pr_curve", ("pr", np.zeros(2), np.zeros(2)), "scalars"),
        ("add_audio", ("snd", np.zeros(10)), "artifact"),
        ("add_mesh", ("m", np.zeros((1, 3, 3))), "artifact"),
        ("add_custom_scalars", ({},), "tensorboard alongside"),
        ("add_something_new", (1,), "tensorboard alongside"),
    ],
)
def test_unsupported_methods_raise_naming_the_alternative(out: Path, method: str, args, alternative: str) -> None:
    with writer(out) as w:
        with pytest.raises(NotImplementedError, match=f"{method} is not supported.*{alternative}"):
            getattr(w, method)(*args)
        with pytest.raises(AttributeError):
            w.not_a_method  # noqa: B018
    assert of_type(read_jsonl(out), "scalar") == []


def test_episode_tags_are_stored_without_a_wrapper(out: Path) -> None:
    with writer(out) as w:
        assert not w.telemetry.episode_scalars
        w.add_scalar("charts/episodic_return", np.array([9.0]), 40)
        w.add_scalar("charts/episodic_length", np.array([9]), 40)
        assert w.stats()["episode_scalars_skipped"] == 0
    got = [(s["tag"], s["step"], s["value"]) for s in of_type(read_jsonl(out), "scalar")]
    assert got == [("charts/episodic_return", 40, 9.0), ("charts/episodic_length", 40, 9.0)]


def test_episode_tags_come_once_from_the_wrapper(out: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="gym_telemetry")
    with writer(out) as w:
        env = TelemetryWrapper(gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1")), w.telemetry)
        assert w.telemetry.episode_scalars
        env.reset(seed=3)
        env.action_space.seed(3)
        seen = []
        step = 0
        while len(seen) < 3:
            _, _, term, trunc, info = env.step(env.action_space.sample())
            step += 1
            if term or trunc:
                seen.append((step, float(info["episode"]["r"]), int(info["episode"]["l"])))
                # What a CleanRL script does at the same moment: skipped, not stored twice.
                w.add_scalar("charts/episodic_return", info["episode"]["r"], step)
                w.add_scalar("charts/episodic_length", info["episode"]["l"], step)
                w.add_scalars("charts", {"episodic_return": 1.0, "other": 2.0}, step)
                env.reset()
        assert w.stats()["episode_scalars_skipped"] == 9
    recs = read_jsonl(out)
    got = [(s["tag"], s["step"], s["value"]) for s in of_type(recs, "scalar")]
    expected = []
    for step, r, n in seen:
        expected += [("charts/episodic_return", step, r), ("charts/episodic_length", step, float(n)),
                     ("charts/other", step, 2.0)]
    assert got == expected
    assert [e["total_reward"] for e in of_type(recs, "episode")] == [r for _, r, _ in seen]
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 1 and skips[0].levelno == logging.DEBUG, "logged once, at debug"


def test_wrapper_without_episode_scalars_does_not_suppress(out: Path) -> None:
    with writer(out) as w:
        TelemetryWrapper(gym.make("CartPole-v1"), w.telemetry, episode_scalars=False)
        assert not w.telemetry.episode_scalars
        w.add_scalar("charts/episodic_return", 1.0, 1)
    assert len(of_type(read_jsonl(out), "scalar")) == 1


def test_given_telemetry_is_flushed_not_closed(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="shared")
    with SummaryWriter(telemetry=tel) as w:
        assert w.get_logdir() is None and not Path("runs").exists()
        w.add_scalar("a", 1.0, 0)
    assert not tel.closed
    tel.log_scalar("b", 2.0, 1)
    tel.close()
    recs = read_jsonl(out)
    assert [r["type"] for r in recs] == ["scalar", "scalar"], "no run_completed: the owner ends the run"
    with pytest.raises(TypeError, match="either telemetry= or Telemetry settings"):
        SummaryWriter(telemetry=tel, endpoint="http://127.0.0.1:1")


def test_close_is_idempotent_and_failure_is_recorded(out: Path) -> None:
    w = writer(out)
    w.close()
    w.close()
    assert w.telemetry.closed
    out2 = out.with_name("out2.jsonl")
    with pytest.raises(RuntimeError):
        with writer(out2, "runs/failing") as w2:
            raise RuntimeError("diverged")
    done = of_type(read_jsonl(out), "run_completed") + of_type(read_jsonl(out2), "run_completed")
    assert [(d["run_id"], d["status"]) for d in done] == [("exp-1", "succeeded"), ("failing", "failed")]
    assert "diverged" in done[1]["error"]
    assert w2.telemetry.closed


# torch.utils.tensorboard.SummaryWriter's signatures (torch 2.x), which scripts call by
# position and keyword.
TORCH_SIGNATURES = {
    "__init__": ["log_dir", "comment", "purge_step", "max_queue", "flush_secs", "filename_suffix"],
    "add_scalar": ["tag", "scalar_value", "global_step", "walltime", "new_style", "double_precision"],
    "add_scalars": ["main_tag", "tag_scalar_dict", "global_step", "walltime"],
    "add_text": ["tag", "text_string", "global_step", "walltime"],
    "add_hparams": ["hparam_dict", "metric_dict", "hparam_domain_discrete", "run_name", "global_step"],
}


@pytest.mark.parametrize("name", sorted(TORCH_SIGNATURES))
def test_signatures_match_torchs(name: str) -> None:
    params = [
        p.name for p in inspect.signature(getattr(SummaryWriter, name)).parameters.values()
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert params == TORCH_SIGNATURES[name]


def test_exported_from_the_package() -> None:
    assert gym_telemetry.SummaryWriter is SummaryWriter and "SummaryWriter" in gym_telemetry.__all__


def test_vector_wrapper_marks_the_telemetry(out: Path) -> None:
    with writer(out) as w:
        envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
        TelemetryVectorWrapper(envs, w.telemetry)
        assert w.telemetry.episode_scalars
