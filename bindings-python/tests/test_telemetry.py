"""Telemetry without a daemon: dry-run JSONL, index tracking, arguments, lifecycle, from_env."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import gym_telemetry
from gym_telemetry import Telemetry, TelemetryError, from_env

from conftest import free_port, of_type, read_jsonl


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def dry(out: Path, **kw) -> Telemetry:
    return Telemetry(dry_run=str(out), run_id="run-1", **kw)


def test_dry_run_writes_the_canonical_jsonl(out: Path) -> None:
    with dry(out, agent_id="a0", control_mode="agent_only") as tel:
        assert tel.mode == "dry_run" and tel.enabled and not tel.closed
        tel.run_started(config={"alpha": 0.5, "env": "FrozenLake-v1"})
        tel.step({"pos": np.array([1, 2])}, np.int64(3), 0.5, info={"prob": 1.0})
        tel.step([0.25, float("nan")], 1, 1.0, True, render_hint={"ansi": "\x1b[41mS\x1b[0m", "rows": 1, "cols": 1})
        tel.episode_end(metadata={"success": True})
        tel.artifact("policy", Path("/tmp/q.json"), info={"format": "json"})
        tel.run_completed("failed", "boom", exit_code=3)
    assert tel.closed
    recs = read_jsonl(out)
    assert [r["type"] for r in recs] == ["run_started", "step", "step", "episode", "artifact", "run_completed"]
    assert {r["run_id"] for r in recs} == {"run-1"}
    assert [r["producer_seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    started, s0, s1, ep, art, done = recs
    assert json.loads(started["config_json"]) == {"alpha": 0.5, "env": "FrozenLake-v1"}
    assert started["agent_id"] == "a0" and started["control_mode"] == "agent"
    assert (s0["episode_index"], s0["step_index"], s1["step_index"]) == (0, 0, 1)
    assert json.loads(s0["observation_json"]) == {"pos": [1, 2]}
    assert s0["action_json"] == "3" and json.loads(s0["info_json"]) == {"prob": 1.0}
    assert s0["agent_id"] == "a0" and s0["control_mode"] == "agent"
    assert s1["observation_json"] == "[0.25,null]", "NaN in a payload is written as null"
    assert s1["terminated"] is True
    assert json.loads(s1["render_hint_json"]) == {"ansi": "\x1b[41mS\x1b[0m", "rows": 1, "cols": 1}
    assert (ep["episode_index"], ep["total_reward"], ep["steps"], ep["terminated"]) == (0, 1.5, 2, True)
    assert json.loads(ep["metadata_json"])["success"] is True
    assert (art["kind"], art["path"]) == ("policy", "/tmp/q.json")
    assert (done["status"], done["error"], done["exit_code"]) == ("failed", "boom", 3)


def test_indices_are_tracked_per_agent(out: Path) -> None:
    tel = dry(out)
    tel.step(0, 0, 1.0, agent_id="a")
    tel.step(0, 0, 1.0, agent_id="b")
    tel.step(0, 0, 2.0, False, True, agent_id="a")  # truncated: a's episode 0 ends
    tel.step(0, 0, 5.0, agent_id="a")  # no episode_end called: a moves on to episode 1
    tel.episode_end(agent_id="b")
    tel.step(0, 0, 1.0, agent_id="b")
    tel.step(0, 0, 1.0, episode_index=7, step_index=40)
    tel.step(0, 0, 1.0)
    tel.episode_end(total_reward=10.0, length=99, terminated=True)
    tel.close()
    steps = of_type(read_jsonl(out), "step")
    got = [(s.get("agent_id", ""), s["episode_index"], s["step_index"]) for s in steps]
    assert got == [("a", 0, 0), ("b", 0, 0), ("a", 0, 1), ("a", 1, 0), ("b", 1, 0), ("", 7, 40), ("", 7, 41)]
    eps = of_type(read_jsonl(out), "episode")
    assert [(e.get("agent_id", ""), e["episode_index"], e["total_reward"], e["steps"]) for e in eps] == [
        ("b", 0, 1.0, 1),
        ("", 7, 10.0, 99),
    ]
    assert eps[1]["terminated"] is True


def test_episode_end_defaults_come_from_the_tracked_steps(out: Path) -> None:
    tel = dry(out)
    for r in (0.5, 0.25, 1.0):
        tel.step(0, 0, r)
    tel.step(0, 0, 2.0, terminated=np.bool_(True))
    tel.episode_end()
    tel.episode_end()  # an empty episode 1: zeros
    tel.close()
    e0, e1 = of_type(read_jsonl(out), "episode")
    assert (e0["episode_index"], e0["total_reward"], e0["steps"], e0["terminated"]) == (0, 3.75, 4, True)
    assert e0.get("truncated", False) is False
    assert (e1["episode_index"], e1.get("steps", 0), e1.get("total_reward", 0.0)) == (1, 0, 0.0)


def test_metadata_is_applied_and_merged(out: Path) -> None:
    tel = dry(out)
    tel.set_metadata(seed=42, game_id="FrozenLake-v1", policy_label="q", backend="numpy", note={"a": [1]})
    tel.set_metadata(control_mode="human", agent_id="player", note=None, difficulty=np.int64(2))
    tel.step(0, 0, 0.0)
    tel.episode_end()
    tel.close()
    step, ep = read_jsonl(out)
    assert (step["agent_id"], step["control_mode"], step["policy_label"], step["backend"]) == (
        "player", "human", "q", "numpy")
    meta = json.loads(ep["metadata_json"])
    assert meta["seed"] == 42 and meta["game_id"] == "FrozenLake-v1" and meta["difficulty"] == 2
    assert meta["control_mode"] == "human" and "note" not in meta


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda t: t.step(0, 0, "high"), TypeError, "reward must be a number"),
        (lambda t: t.step(0, 0, float("nan")), ValueError, "reward must be finite"),
        (lambda t: t.step(0, 0, 1.0, "yes"), TypeError, "terminated must be a bool"),
        (lambda t: t.step(0, 0, 1.0, truncated=[]), TypeError, "truncated must be a bool"),
        (lambda t: t.step(0, 0, 1.0, info=[1]), TypeError, "info must be a dict or None"),
        (lambda t: t.step(0, 0, 1.0, episode_index=-1), ValueError, "episode_index must be >= 0"),
        (lambda t: t.step(0, 0, 1.0, step_index=1.5), TypeError, "step_index must be an int"),
        (lambda t: t.step(0, 0, 1.0, episode_index=True), TypeError, "episode_index must be an int"),
        (lambda t: t.step(0, 0, 1.0, agent_id=""), ValueError, "agent_id must not be empty"),
        (lambda t: t.step(0, 0, 1.0, agent_id="a\nb"), ValueError, "agent_id must not contain control"),
        (lambda t: t.step(0, 0, 1.0, agent_id="x" * 129), ValueError, "agent_id is 129 bytes, the limit is 128"),
        (lambda t: t.step(0, 0, 1.0, agent_id=3), TypeError, "agent_id must be a str"),
        (lambda t: t.step(0, 0, 1.0, control_mode="robot"), ValueError, "control_mode: unknown control_mode"),
        (lambda t: t.step(0, 0, 1.0, render_hint="not json"), ValueError, "render_hint is not valid JSON"),
        (lambda t: t.step(0, 0, 1.0, render_hint=5), TypeError, "render_hint must be a dict"),
        (lambda t: t.step(object(), 0, 1.0), TypeError, "observation: cannot encode"),
        (lambda t: t.step(0, {"k": {1j}}, 1.0), TypeError, r'action\["k"\]: cannot encode'),
        (lambda t: t.episode_end(total_reward=float("inf")), ValueError, "total_reward must be finite"),
        (lambda t: t.episode_end(length=-2), ValueError, "length must be >= 0"),
        (lambda t: t.episode_end(metadata="x"), TypeError, "metadata must be a dict"),
        (lambda t: t.run_started(config=[1]), TypeError, "config must be a dict"),
        (lambda t: t.run_completed("meh"), ValueError, "status must be"),
        (lambda t: t.run_completed(exit_code="1"), TypeError, "exit_code must be an int"),
        (lambda t: t.artifact("policy", 12), TypeError, "path must be a str or os.PathLike"),
        (lambda t: t.artifact(None, "p"), TypeError, "kind must be a str"),
        (lambda t: t.set_metadata(seed=-1), ValueError, "seed must be >= 0"),
        (lambda t: t.set_metadata(blob=object()), TypeError, "blob: cannot encode"),
        (lambda t: t.flush(timeout=-1), ValueError, "timeout must be a finite number of seconds"),
        (lambda t: t.flush(timeout="soon"), TypeError, "timeout must be a number"),
        (lambda t: t.register_on_step(3), TypeError, "hook must be callable"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(out: Path, call, exc, message) -> None:
    tel = dry(out)
    with pytest.raises(exc, match=message):
        call(tel)
    tel.step(0, 0, 1.0)  # still usable
    tel.close()
    assert of_type(read_jsonl(out), "step")[-1]["step_index"] == 0, "a refused call takes no index"


def test_refused_calls_are_counted(out: Path) -> None:
    tel = dry(out)
    for bad in ("x", float("nan")):
        with pytest.raises((TypeError, ValueError)):
            tel.step(0, 0, bad)
    assert tel.stats()["invalid_calls"] == 2
    tel.close()


def test_records_larger_than_the_limit_are_refused(out: Path) -> None:
    tel = dry(out, max_record_bytes=4096)
    with pytest.raises(ValueError, match="observation: .*more than 4096 bytes"):
        tel.step("x" * 5000, 0, 0.0)
    with pytest.raises(ValueError, match="array of 100000 elements"):
        tel.step(np.zeros(100_000), 0, 0.0)
    tel.close()
    assert read_jsonl(out) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"endpoint": "not a url"}, "endpoint"),
        ({"run_id": ""}, "run_id must not be empty"),
        ({"run_id": "r" * 129}, "run_id is 129 bytes, the limit is 128"),
        ({"control_mode": "robot"}, "control_mode"),
        ({"full_policy": "sometimes"}, "full_policy must be"),
        ({"queue_max_bytes": 0}, "queue_max_bytes must be at least 1"),
        ({"max_record_bytes": 10**12}, "max_record_bytes"),
        ({"batch_linger": -1.0}, "batch_linger must be"),
        ({"reconnect_max": 0}, "reconnect_max must be > 0"),
        ({"auth_token": "tok\x00"}, "auth_token"),
    ],
)
def test_bad_settings_are_value_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Telemetry(**kwargs)


def test_closed_telemetry_raises_and_close_is_idempotent(out: Path) -> None:
    tel = dry(out)
    tel.step(0, 0, 1.0)
    first = tel.close()
    assert first["outcome"] == "written" and first["accepted_through"] == 1
    assert tel.close()["outcome"] == "closed"
    assert tel.closed and "closed=True" in repr(tel)
    for call in (lambda: tel.step(0, 0, 1.0), lambda: tel.episode_end(), lambda: tel.flush(),
                 lambda: tel.run_started(), lambda: tel.artifact("k", "p")):
        with pytest.raises(TelemetryError, match="closed"):
            call()
    assert tel.stats()["accepted"] == 1, "stats survive close"


def test_disabled_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_DISABLED", "1")
    monkeypatch.setenv("GYM_TELEMETRY_QUEUE_DIR", str(tmp_path / "queue"))
    tel = from_env()
    assert tel.mode == "disabled" and not tel.enabled and tel.producer_id == ""
    called = []
    tel.register_on_step(called.append)
    tel.set_metadata(seed=1)
    tel.run_started(config={"a": 1})
    tel.step(object(), object(), "not even a number")  # nothing is looked at
    tel.episode_end()
    assert tel.flush()["outcome"] == "disabled"
    stats = tel.stats()
    assert all(stats[k] == 0 for k in ("accepted", "sent", "dropped", "invalid_calls"))
    assert called == [] and not (tmp_path / "queue").exists()
    assert tel.close()["outcome"] == "disabled"
    assert Telemetry(enabled=False).mode == "disabled"


def test_from_env_reads_the_variables_and_keywords_override(monkeypatch, out: Path) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_DRY_RUN", str(out))
    monkeypatch.setenv("GYM_TELEMETRY_RUN_ID", "env-run")
    monkeypatch.setenv("GYM_TELEMETRY_AGENT_ID", "env-agent")
    monkeypatch.setenv("GYM_TELEMETRY_CONTROL_MODE", "manual")
    tel = from_env(agent_id="kw-agent")
    assert tel.mode == "dry_run" and tel.run_id == "env-run"
    tel.step(0, 0, 0.0)
    tel.close()
    (step,) = read_jsonl(out)
    assert (step["run_id"], step["agent_id"], step["control_mode"]) == ("env-run", "kw-agent", "human")


def test_from_env_bad_variable_names_it(monkeypatch) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_QUEUE_FULL", "sometimes")
    with pytest.raises(ValueError, match="GYM_TELEMETRY_QUEUE_FULL"):
        from_env()


def test_from_env_enabled_true_overrides_disabled(monkeypatch, out: Path) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_DISABLED", "1")
    assert from_env(enabled=True, dry_run=str(out)).mode == "dry_run"


def test_generated_run_id_and_queue_dir_producer_id(tmp_path: Path) -> None:
    port = free_port()
    a = Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=tmp_path / "q")
    assert a.run_id.startswith("py-") and a.mode == "live" and a.producer_id
    pid = a.producer_id
    with pytest.raises(TelemetryError):
        Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=tmp_path / "q")  # locked
    assert a.close(timeout=0.5)["outcome"] in ("on_disk", "acked")
    b = Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=tmp_path / "q")
    assert b.producer_id == pid, "the producer id lives in the queue directory"
    assert b.run_id != a.run_id
    b.close(timeout=0.5)


def test_unreachable_daemon_never_raises_in_step_and_is_logged(caplog, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="gym_telemetry")
    port = free_port()
    tel = Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=tmp_path / "q", reconnect_max=0.2)
    for i in range(50):
        tel.step(i, 0, 1.0)
    report = tel.flush(timeout=0.5)
    assert report["outcome"] == "on_disk" and report["pending_records"] == 50
    stats = tel.stats()
    assert stats["accepted"] == 50 and stats["acked"] == 0 and stats["queue_records"] == 50
    assert stats["last_error"], "the sender's error is visible in stats"
    assert any(r.name == "gym_telemetry" and "telemetry_shim" in r.getMessage() for r in caplog.records)
    tel.close(timeout=0.2)


def test_records_destroyed_in_a_corrupt_queue_are_counted_in_stats(tmp_path: Path) -> None:
    port = free_port()
    q = tmp_path / "q"
    tel = Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=q, reconnect_max=0.2)
    for i in range(200):
        tel.step({"i": i, "pad": "x" * 64}, 0, 1.0)
    assert tel.close(timeout=0.5)["outcome"] == "on_disk"
    segments = sorted(q.glob("seg-*.log"))
    assert segments, "the records are on disk"
    seg = segments[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a frame
    seg.write_bytes(bytes(data))
    again = Telemetry(endpoint=f"http://127.0.0.1:{port}", queue_dir=q, reconnect_max=0.2)
    stats = again.stats()
    lost = stats["corrupt_lost_records"]
    assert 0 < lost < 200, stats
    assert stats["queue_records"] == 200 - lost, "every record not destroyed is still queued"
    again.close(timeout=0.2)


def test_flush_without_queue_or_daemon_waits_out_its_timeout_and_reports_pending() -> None:
    tel = Telemetry(endpoint=f"http://127.0.0.1:{free_port()}", reconnect_max=0.2)
    tel.step(0, 0, 1.0)
    started = time.monotonic()
    report = tel.flush(timeout=0.3)
    # A refused connection can heal (a restarting daemon): the flush reconnects until its
    # timeout rather than answering at the first failure.
    assert time.monotonic() - started >= 0.3
    assert report["outcome"] == "timeout"
    assert report["pending_records"] == 1 and report["error"]
    tel.close(timeout=0.1)


def test_flush_releases_the_gil() -> None:
    """While the main thread waits in flush() for a daemon that never answers, another thread
    keeps running Python: it stamps the time every 10 ms, and stamps from well inside the
    flush's window prove it held the GIL then. (The "daemon" accepts TCP connections and says
    nothing, so the flush lasts its whole timeout.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        tel = Telemetry(endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}")
        tel.step(0, 0, 1.0)
        stamps: list[float] = []
        running, stop = threading.Event(), threading.Event()

        def sampler() -> None:
            running.set()
            while not stop.wait(0.01) and len(stamps) < 2000:
                stamps.append(time.monotonic())

        t = threading.Thread(target=sampler)
        t.start()
        assert running.wait(5.0)
        start = time.monotonic()
        report = tel.flush(timeout=2.0)
        end = time.monotonic()
        stop.set()
        t.join(timeout=10.0)
        tel.close(timeout=0.1)
    assert report["outcome"] == "timeout" and end - start >= 1.5, (report, end - start)
    inside = [s for s in stamps if start + 0.3 < s < end - 0.3]
    assert len(inside) >= 10, f"only {len(inside)} samples while flush() waited"


def test_package_surface() -> None:
    assert gym_telemetry.__version__
    assert gym_telemetry.normalize_control_mode("agent_only") == "agent"
    with pytest.raises(ValueError, match="unknown control_mode"):
        gym_telemetry.normalize_control_mode("robot")
    with pytest.raises(AttributeError):
        gym_telemetry.NoSuchThing  # noqa: B018
    assert issubclass(TelemetryError, Exception)


def test_dry_run_to_stdout_is_accepted(capfd) -> None:
    tel = Telemetry(dry_run="-", run_id="r")
    tel.step(1, 2, 3.0)
    tel.close()
    line = capfd.readouterr().out.strip()
    assert json.loads(line)["action_json"] == "2"


def test_unclosed_telemetry_is_flushed_on_garbage_collection(out: Path) -> None:
    tel = dry(out)
    tel.step(0, 0, 1.0)
    del tel
    import gc

    gc.collect()
    assert len(read_jsonl(out)) == 1


def test_exit_handler_closes_open_telemetries(out: Path) -> None:
    tel = dry(out)
    tel.step(0, 0, 1.0)
    assert gym_telemetry._close_all(1.0) >= 1
    assert tel.closed and len(read_jsonl(out)) == 1
    assert os.path.getsize(out) > 0


def test_status_words_are_the_jsonl_contracts(out: Path) -> None:
    """`run_completed` accepts the same words as a legacy worker's JSONL (one parser in core)."""
    words = {"successful": "succeeded", "Completed": "succeeded", "errored": "failed",
             "canceled": "cancelled", "skipped": "skipped"}
    for word, canonical in words.items():
        tel = Telemetry(dry_run=str(out), run_id="run-1")
        tel.run_completed(word)
        tel.close()
        assert of_type(read_jsonl(out), "run_completed")[-1]["status"] == canonical, word
    tel = dry(out)
    with pytest.raises(ValueError, match=r'status must be a completion status: unknown status "meh"'):
        tel.run_completed("meh")
    tel.close()


def test_ids_up_to_128_bytes_are_accepted(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="r" * 128)
    tel.step(0, 0, 1.0, agent_id="a" * 128)
    tel.close()
    (step,) = read_jsonl(out)
    assert (len(step["run_id"]), len(step["agent_id"])) == (128, 128)
