"""gym_telemetry.compat.TelemetryEmitter: the predecessor's emitter, delivering through the shim.

Driven with the call sequence the predecessor's BDI worker fixture implies, it yields the same
records as gym-telemetry-proxy does for the fixture's printed lines (compared without the
producer stamp and the wall-clock time, which differ by nature).
"""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

import gym_telemetry
from gym_telemetry.compat import TelemetryEmitter

# A copy of the predecessor's BDI worker output (shared/fixtures/legacy-bdi-worker.jsonl).
FIXTURE = Path(__file__).with_name("fixtures") / "legacy-bdi-worker.jsonl"
RUN_ID = "bdi-compat"
VOLATILE = {"producer_id", "producer_seq", "ts_unix_ns"}


def proxy_bin() -> str:
    path = os.environ.get("GYM_TELEMETRY_PROXY_BIN")
    if not path:
        daemon = os.environ.get("GYM_TELEMETRY_DAEMON_BIN")
        if not daemon:
            pytest.skip("GYM_TELEMETRY_DAEMON_BIN is not set (scripts/test.sh builds the binaries)")
        path = str(Path(daemon).with_name("gym-telemetry-proxy"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not an executable (cargo build -p telemetry-proxy)")
    return path


def fixture_lines() -> list[dict]:
    with open(FIXTURE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def drive(emitter: TelemetryEmitter, events: list[dict]) -> None:
    """The calls the BDI worker made to print the fixture."""
    for ev in events:
        kind = ev["type"]
        fields = {k: v for k, v in ev.items() if k not in ("type", "ts")}
        run_id = fields.pop("run_id")
        if kind == "run_started":
            emitter.run_started(run_id, fields.pop("config"))
        elif kind == "step":
            emitter.step(run_id, fields.pop("episode"), fields.pop("step"), **fields)
        elif kind == "episode":
            emitter.episode(run_id, fields.pop("episode"), **fields)
        elif kind == "artifact":
            emitter.artifact(run_id, fields.pop("kind"), fields.pop("path"), **fields)
        elif kind == "run_completed":
            emitter.run_completed(run_id, fields.pop("status"), **fields)
        else:
            emitter.emit(kind, run_id=run_id, **fields)


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_signatures_match_the_predecessor() -> None:
    sig = {name: str(inspect.signature(getattr(TelemetryEmitter, name)))
           for name in ("emit", "run_started", "run_completed", "step", "episode", "artifact")}
    assert sig == {
        "emit": "(self, event_type: 'str', **fields: 'Any') -> 'None'",
        "run_started": "(self, run_id: 'str', config: 'Mapping[str, Any]') -> 'None'",
        "run_completed": "(self, run_id: 'str', status: 'str', **fields: 'Any') -> 'None'",
        "step": "(self, run_id: 'str', episode: 'int', step_index: 'int', **fields: 'Any') -> 'None'",
        "episode": "(self, run_id: 'str', episode: 'int', **fields: 'Any') -> 'None'",
        "artifact": "(self, run_id: 'str', kind: 'str', path: 'str', **fields: 'Any') -> 'None'",
    }
    first = list(inspect.signature(TelemetryEmitter.__init__).parameters.values())[1]
    assert (first.name, first.default) == ("stream", None)


def test_a_stream_gets_the_predecessors_lines() -> None:
    out = io.StringIO()
    e = TelemetryEmitter(out)
    e.step("r", 0, 1, action=2, reward=0.5)
    line = json.loads(out.getvalue())
    assert line.pop("ts").endswith("Z")
    assert line == {"type": "step", "run_id": "r", "episode": 0, "step": 1, "action": 2, "reward": 0.5}


def test_the_emitter_yields_the_proxys_records_for_the_bdi_fixture(tmp_path: Path) -> None:
    assert FIXTURE.is_file(), FIXTURE
    events = fixture_lines()
    by_proxy = tmp_path / "proxy.jsonl"
    subprocess.run(
        [proxy_bin(), "--input", str(FIXTURE), "--run-id", RUN_ID, "--dry-run", str(by_proxy)],
        check=True, timeout=60, capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GYM_TELEMETRY_")},
    )
    by_emitter = tmp_path / "emitter.jsonl"
    tel = gym_telemetry.Telemetry(run_id=RUN_ID, dry_run=str(by_emitter))
    emitter = TelemetryEmitter(telemetry=tel, run_id=RUN_ID)
    drive(emitter, events)
    tel.close()

    proxy_records = stable(read(by_proxy))
    emitter_records = stable(read(by_emitter))
    assert len(proxy_records) == len(events) == 11
    assert [r["type"] for r in emitter_records] == [e["type"] for e in events]
    assert emitter_records == proxy_records
    # The mapping is the JSONL contract's: run context, aliases, extras kept.
    step = next(r for r in emitter_records if r["type"] == "step")
    assert step["run_id"] == RUN_ID and step["agent_id"] == "bdi_rl_demo"
    assert json.loads(step["info_json"])["epsilon"] == 1.0
    episode = next(r for r in emitter_records if r["type"] == "episode")
    assert episode["control_mode"] == "agent"


@pytest.mark.daemon
def test_the_emitter_delivers_to_the_daemon(daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_ENDPOINT", daemon.endpoint)
    monkeypatch.setenv("GYM_TELEMETRY_RUN_ID", "bdi-live")
    with TelemetryEmitter() as emitter:
        drive(emitter, fixture_lines())
        report = emitter.flush(10.0)
    assert report is not None
    steps = [r for r in daemon.dump("bdi-live") if r["type"] == "step"]
    episodes = daemon.dump("bdi-live", episodes=True)
    assert len(steps) == 6
    assert len([r for r in episodes if r["type"] == "episode"]) == 2
    assert {s["agent_id"] for s in steps} == {"bdi_rl_demo"}
