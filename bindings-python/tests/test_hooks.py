"""register_on_step / register_on_episode_end: the dict view, enrichment, and failures."""

from __future__ import annotations

import gc
import json
import logging
import weakref
from pathlib import Path

import numpy as np
import pytest

from gym_telemetry import Telemetry

from conftest import of_type, read_jsonl


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def test_step_hook_sees_the_decorated_record(out: Path) -> None:
    seen = []
    tel = Telemetry(dry_run=str(out), run_id="r", agent_id="cfg-agent", control_mode="agent")
    tel.set_metadata(policy_label="eps-greedy")
    tel.register_on_step(seen.append)
    tel.step({"s": 1}, 2, 0.5, False, True, {"prob": 1.0}, render_hint='{"ansi":"x"}', frame_ref="f/1.png")
    tel.close()
    (d,) = seen
    assert d["type"] == "step" and d["run_id"] == "r" and d["agent_id"] == "cfg-agent"
    assert (d["episode_index"], d["step_index"], d["reward"], d["terminated"], d["truncated"]) == (0, 0, 0.5, False, True)
    assert (d["observation_json"], d["action_json"], d["info_json"]) == ('{"s":1}', "2", '{"prob":1.0}')
    assert (d["render_hint_json"], d["frame_ref"]) == ('{"ansi":"x"}', "f/1.png")
    assert d["policy_label"] == "eps-greedy" and d["control_mode"] == "agent"
    assert isinstance(d["ts_unix_ns"], int) and d["ts_unix_ns"] > 1_600_000_000 * 10**9


def test_hooks_enrich_in_registration_order(out: Path) -> None:
    tel = Telemetry(dry_run=str(out), run_id="r")

    @tel.register_on_step
    def add_q(rec):
        return {"q_value": np.float32(0.25), "epsilon": 0.1, "reward": rec["reward"] * 2}

    @tel.register_on_step
    def relabel(rec):
        assert rec["reward"] == 2.0, "sees the previous hook's change"
        assert json.loads(rec["info_json"])["epsilon"] == 0.1
        return {"policy_label": "greedy", "observation_json": [1, 2], "action_json": "3", "epsilon": 0.05}

    tel.register_on_episode_end(lambda rec: {"success": rec["total_reward"] > 0, "steps": rec["steps"] + 100})
    tel.register_on_episode_end(lambda rec: None)
    assert add_q.__name__ == "add_q", "register_* returns the hook (usable as a decorator)"
    tel.step(0, 0, 1.0, info={"prob": 1.0})
    tel.episode_end()
    tel.close()
    step, ep = read_jsonl(out)
    assert step["reward"] == 2.0 and step["policy_label"] == "greedy"
    assert step["observation_json"] == "[1,2]" and step["action_json"] == "3"
    assert json.loads(step["info_json"]) == {"prob": 1.0, "q_value": 0.25, "epsilon": 0.05}
    assert ep["steps"] == 101 and json.loads(ep["metadata_json"]) == {"success": True}
    assert tel.stats()["hook_errors"] == 0


def test_failing_hooks_are_logged_counted_and_never_fail_the_step(out: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gym_telemetry")
    tel = Telemetry(dry_run=str(out), run_id="r")

    def explodes(rec):
        raise RuntimeError("hook bug")

    tel.register_on_step(explodes)
    tel.register_on_step(lambda rec: ["not", "a", "dict"])
    tel.register_on_step(lambda rec: {"reward": float("nan"), "policy_label": "never applied"})
    tel.register_on_step(lambda rec: {"ts_unix_ns": 0})
    tel.register_on_step(lambda rec: {"info_json": "{not json"})
    tel.register_on_step(lambda rec: {"kept": True})
    tel.register_on_episode_end(lambda rec: 1 / 0)
    tel.step(0, 0, 1.0)
    tel.episode_end()
    tel.close()
    step, ep = read_jsonl(out)
    assert step["reward"] == 1.0 and "policy_label" not in step, "a failed hook's changes are all dropped"
    assert json.loads(step["info_json"]) == {"kept": True}, "later hooks still run"
    assert ep["steps"] == 1
    assert tel.stats()["hook_errors"] == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "gym_telemetry"]
    assert any("explodes" in m and "hook bug" in m for m in messages)
    assert any("must return a dict or None" in m for m in messages)
    assert any("ts_unix_ns is read-only" in m for m in messages)
    assert any("on_episode_end" in m and "division by zero" in m for m in messages)
    assert any(r.exc_info for r in caplog.records), "the traceback is attached"


def test_hook_error_logging_is_bounded(out: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="gym_telemetry")
    tel = Telemetry(dry_run=str(out), run_id="r")
    tel.register_on_step(lambda rec: 1 / 0)
    for _ in range(500):
        tel.step(0, 0, 0.0)
    tel.close()
    assert tel.stats()["hook_errors"] == 500
    assert len(read_jsonl(out)) == 500
    assert len([r for r in caplog.records if "on_step hook" in r.getMessage()]) <= 11


def test_hooks_are_visible_to_the_garbage_collector(out: Path) -> None:
    """A hook that references its Telemetry (a cycle through Rust) is still collected."""

    class Worker:
        def __init__(self) -> None:
            self.tel = Telemetry(dry_run=str(out), run_id="r")
            self.tel.register_on_step(self.on_step)

        def on_step(self, rec):
            return None

    w = Worker()
    w.tel.step(0, 0, 1.0)
    ref = weakref.ref(w)
    del w
    gc.collect()
    assert ref() is None
    assert len(of_type(read_jsonl(out), "step")) == 1, "collected and flushed"
