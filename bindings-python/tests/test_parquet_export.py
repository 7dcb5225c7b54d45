"""`gym-telemetry-daemon dump --format parquet` read back by pyarrow, pandas and polars.

A real daemon is filled through the Python package (steps, episodes, scalars, lifecycle
events), then each stream is exported with the daemon binary and read by each library: the
exact rows (the same seqs and values as the JSONL dump of the same selection) and the exact
column types (uint64 indices, float64 with NaN, bool, UTC nanosecond timestamps, the control
mode as a dictionary / category, JSON payloads as strings).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gym_telemetry import Telemetry

from conftest import _daemon_env, daemon_bin

pytestmark = pytest.mark.daemon

RUN = "pq-export"
BIG = 2**63 + 5  # above i64::MAX: must stay exact as uint64
STEPS = [(ep, i) for ep in range(2) for i in range(4)]


def scalar_line(tag: str, step: int, value) -> str:
    return json.dumps(
        {"type": "scalar", "schema": "gym_telemetry.v1", "run_id": RUN, "tag": tag,
         "step": step, "value": value}
    )


@pytest.fixture
def filled(daemon):
    """A daemon whose store holds RUN's records, and the wall-clock window they were made in."""
    started = time.time_ns()
    tel = Telemetry(endpoint=daemon.endpoint, run_id=RUN)
    tel.run_started(config={"lr": 0.001}, agent_id="ppo")
    for ep, i in STEPS:
        last = i == 3
        tel.step(
            {"pos": [ep, i]}, i % 2, 0.5 * i, terminated=last and ep == 0, truncated=last and ep == 1,
            info={"k": i}, episode_index=ep, step_index=i, agent_id="ppo", control_mode="agent",
        )
        if last:
            tel.episode_end(metadata={"seed": ep}, episode_index=ep, agent_id="ppo")
    # One step of a human player, with indices above i64::MAX.
    tel.step([0], 1, -1.0, episode_index=BIG, step_index=BIG + 2, agent_id="kb", control_mode="human")
    for step, value in [(0, 1.25), (100, "NaN"), (200, "Infinity"), (300, -0.5)]:
        tel.record_jsonl(scalar_line("losses/td_loss", step, value))
    tel.artifact("policy", "/tmp/policy.pt", info={"epoch": 3})
    tel.run_completed("succeeded")
    report = tel.close(timeout=30.0)
    assert report["outcome"] == "acked", report
    assert tel.stats()["rejected"] == 0
    return daemon, started, time.time_ns()


def export(daemon, tmp_path: Path, name: str, *flags: str) -> Path:
    path = tmp_path / f"{name}.parquet"
    out = subprocess.run(
        [daemon_bin(), "dump", "--var-dir", str(daemon.var_dir), "--run", RUN,
         "--format", "parquet", "-o", str(path), *flags],
        capture_output=True, env=_daemon_env(), timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def jsonl(daemon, *flags: str) -> list[dict]:
    out = subprocess.run(
        [daemon_bin(), "dump", "--var-dir", str(daemon.var_dir), "--run", RUN, *flags],
        capture_output=True, env=_daemon_env(), timeout=60, check=True,
    )
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


UTC_NS = pa.timestamp("ns", tz="UTC")
MODE = pa.dictionary(pa.int32(), pa.string())


def test_steps_read_back_with_exact_rows_and_types(filled, tmp_path: Path) -> None:
    daemon, t0, t1 = filled
    path = export(daemon, tmp_path, "steps")
    lines = jsonl(daemon)
    assert len(lines) == len(STEPS) + 1

    table = pq.read_table(path)
    assert table.num_rows == len(STEPS) + 1
    types = {f.name: f.type for f in table.schema}
    assert list(types) == [
        "seq", "run_id", "episode_index", "step_index", "action_json", "observation_json",
        "reward", "terminated", "truncated", "timestamp", "policy_label", "backend", "agent_id",
        "render_hint_json", "frame_ref", "payload_version", "control_mode", "producer_id",
        "producer_seq", "info_json",
    ]
    assert types["seq"] == types["episode_index"] == types["step_index"] == pa.uint64()
    assert types["producer_seq"] == pa.uint64()
    assert types["reward"] == pa.float64()
    assert types["terminated"] == types["truncated"] == pa.bool_()
    assert types["timestamp"] == UTC_NS
    assert types["control_mode"] == MODE
    assert types["payload_version"] == pa.uint32()
    for name in ("run_id", "action_json", "observation_json", "info_json", "agent_id"):
        assert types[name] == pa.string(), name
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == [line["seq_id"] for line in lines]
    for r, line in zip(rows, lines):
        assert r["episode_index"] == line["episode_index"]
        assert r["step_index"] == line["step_index"]
        assert r["observation_json"] == line["observation_json"]
        assert r["action_json"] == line["action_json"]
        assert r["reward"] == line.get("reward", 0.0)
        assert r["terminated"] == line.get("terminated", False)
        assert r["truncated"] == line.get("truncated", False)
        assert r["control_mode"] == line["control_mode"]
        assert r["info_json"] == line.get("info_json", "")
        assert r["producer_seq"] == line["producer_seq"]
        assert t0 <= r["timestamp"].value <= t1
        assert r["timestamp"].value == line["ts_unix_ns"]
    assert rows[-1]["episode_index"] == BIG and rows[-1]["step_index"] == BIG + 2
    assert json.loads(rows[1]["observation_json"]) == {"pos": [0, 1]}

    df = pd.read_parquet(path)
    assert len(df) == len(STEPS) + 1
    assert str(df["seq"].dtype) == "uint64"
    assert str(df["episode_index"].dtype) == "uint64"
    assert str(df["step_index"].dtype) == "uint64"
    assert str(df["reward"].dtype) == "float64"
    assert str(df["terminated"].dtype) == "bool"
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert isinstance(df["control_mode"].dtype, pd.CategoricalDtype)
    assert pd.api.types.is_string_dtype(df["observation_json"])
    assert int(df["episode_index"].iloc[-1]) == BIG
    assert df["control_mode"].astype(str).tolist() == ["agent"] * len(STEPS) + ["human"]
    assert df["reward"].tolist() == [line.get("reward", 0.0) for line in lines]
    assert [ts.value for ts in df["timestamp"]] == [line["ts_unix_ns"] for line in lines]


def test_polars_reads_the_steps_file(filled, tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    daemon, _, _ = filled
    df = pl.read_parquet(export(daemon, tmp_path, "steps-polars"))
    assert df.height == len(STEPS) + 1
    assert df.schema["seq"] == pl.UInt64
    assert df.schema["episode_index"] == pl.UInt64
    assert df.schema["reward"] == pl.Float64
    assert df.schema["terminated"] == pl.Boolean
    assert df.schema["timestamp"] == pl.Datetime("ns", "UTC")
    assert df.schema["control_mode"] == pl.Categorical
    assert df.schema["observation_json"] == pl.String
    assert df["episode_index"][-1] == BIG
    assert df["control_mode"].cast(pl.String).to_list()[-1] == "human"


def test_episodes_read_back(filled, tmp_path: Path) -> None:
    daemon, _, _ = filled
    path = export(daemon, tmp_path, "episodes", "--episodes")
    lines = jsonl(daemon, "--episodes")
    table = pq.read_table(path)
    assert table.num_rows == 2 == len(lines)
    types = {f.name: f.type for f in table.schema}
    assert types["episode_index"] == types["steps"] == pa.uint64()
    assert types["total_reward"] == pa.float64()
    assert types["metadata_json"] == pa.string()
    assert types["timestamp"] == UTC_NS
    assert types["control_mode"] == MODE
    rows = table.to_pylist()
    assert [r["steps"] for r in rows] == [4, 4]
    assert [r["total_reward"] for r in rows] == [3.0, 3.0]
    assert [(r["terminated"], r["truncated"]) for r in rows] == [(True, False), (False, True)]
    assert [json.loads(r["metadata_json"])["seed"] for r in rows] == [0, 1]
    assert [r["metadata_json"] for r in rows] == [line["metadata_json"] for line in lines]
    df = pd.read_parquet(path)
    assert str(df["steps"].dtype) == "uint64" and str(df["total_reward"].dtype) == "float64"


def test_scalars_keep_nan_and_infinity(filled, tmp_path: Path) -> None:
    daemon, _, _ = filled
    path = export(daemon, tmp_path, "scalars", "--scalars")
    table = pq.read_table(path)
    assert table.num_rows == 4
    types = {f.name: f.type for f in table.schema}
    assert types["value"] == pa.float64()
    assert types["step"] == pa.int64()
    assert types["tag"] == pa.string()
    values = table.column("value").to_pylist()
    assert values[0] == 1.25 and values[3] == -0.5
    assert math.isnan(values[1]) and values[2] == math.inf
    df = pd.read_parquet(path)
    assert str(df["value"].dtype) == "float64" and str(df["step"].dtype) == "int64"
    assert df["value"].isna().tolist() == [False, True, False, False]
    assert df["step"].tolist() == [0, 100, 200, 300]
    assert (df["tag"] == "losses/td_loss").all()


def test_lifecycle_events_are_rows_with_a_json_document(filled, tmp_path: Path) -> None:
    daemon, _, _ = filled
    path = export(daemon, tmp_path, "events", "--events")
    lines = jsonl(daemon, "--events")
    table = pq.read_table(path)
    assert table.num_rows == 3 == len(lines)
    assert table.schema.names == [
        "seq", "kind", "run_id", "timestamp", "producer_id", "producer_seq", "document"
    ]
    assert table.schema.field("timestamp").type == UTC_NS
    assert table.schema.field("seq").type == pa.uint64()
    rows = table.to_pylist()
    assert [r["kind"] for r in rows] == ["run_started", "artifact", "run_completed"]
    docs = [json.loads(r["document"]) for r in rows]
    assert docs == lines
    assert json.loads(docs[0]["config_json"]) == {"lr": 0.001}
    assert docs[1]["path"] == "/tmp/policy.pt"
    assert docs[2]["status"] == "succeeded"
    df = pd.read_parquet(path)
    assert str(df["seq"].dtype) == "uint64"
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
