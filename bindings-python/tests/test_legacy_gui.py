"""The predecessor's GUI flow against the real daemon, through a grpcio client generated at test
time from proto/gymgui/trainer/trainer.proto (so the test fails if that file drifts from what
the predecessor's GUI was built from).

The GUI's sequence: GetHealth; SubmitRun with a TrainRunConfig (its worker a small JSONL-printing
module of this repository); WatchRuns until COMPLETED; StreamRunSteps / StreamRunEpisodes from
seq 0; ListRuns with a status filter; CancelRun of a second, long run. The one change a real
GUI needs is the credential on each call (or a daemon started with --insecure-no-auth).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest

# Installed by bindings-python/scripts/venv.sh (requirements-dev.txt).
import grpc
import grpc_tools
from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "proto"
WORKER_DIR = REPO / "telemetry-server" / "tests" / "fixtures"
DEADLINE = 60.0


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """trainer_pb2 / trainer_pb2_grpc generated from the repository's proto."""
    out = tmp_path_factory.mktemp("generated")
    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        str(PROTO_ROOT / "gymgui" / "trainer" / "trainer.proto"),
    ])
    assert rc == 0, "protoc failed on proto/gymgui/trainer/trainer.proto"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("gymgui.trainer.trainer_pb2")
        pb2_grpc = importlib.import_module("gymgui.trainer.trainer_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


def train_run_config(name: str, worker_config: dict) -> dict:
    """A TrainRunConfig as the GUI builds it, every default spelled out (so it is its own
    normalised form)."""
    return {
        "run_name": name,
        "entry_point": sys.executable,
        "arguments": ["-m", "legacy_gui_worker"],
        "environment": {"PYTHONPATH": str(WORKER_DIR), "PYTHONUNBUFFERED": "1"},
        "resources": {"cpus": 1, "memory_mb": 512, "gpus": {"requested": 0, "mandatory": False}},
        "artifacts": {"output_prefix": f"runs/{name}", "persist_logs": True, "keep_checkpoints": True},
        "metadata": {"worker": {"module": "legacy_gui_worker", "agent_id": "gui-agent",
                                "config": worker_config}},
    }


def status_name(pb2, status: int) -> str:
    return pb2.RunStatus.Name(status)


def watch_until(stub, pb2, md, run_id: str, final: set, since_seq: int = 0) -> list:
    """Every WatchRuns update of run_id until one whose status is in `final`."""
    call = stub.WatchRuns(pb2.WatchRunsRequest(since_seq=since_seq), metadata=md, timeout=DEADLINE)
    got = []
    try:
        for rec in call:
            if rec.run_id != run_id:
                continue
            got.append(rec)
            if status_name(pb2, rec.status) in final:
                return got
    finally:
        call.cancel()
    raise AssertionError(f"WatchRuns ended before {final}: {got}")


@pytest.mark.daemon
def test_the_predecessors_gui_flow(daemon, trainer) -> None:
    pb2, pb2_grpc = trainer
    token = (daemon.var_dir / "auth-token").read_text(encoding="utf-8").strip()
    md = [("authorization", "Bearer " + token)]
    address = daemon.endpoint.removeprefix("http://")
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.TrainerServiceStub(channel)

        # Without the credential, every call is refused.
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetHealth(pb2.HealthCheckRequest(), timeout=DEADLINE)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        health = stub.GetHealth(pb2.HealthCheckRequest(), metadata=md, timeout=DEADLINE)
        assert health.healthy
        assert health.pid == daemon.proc.pid
        assert health.listen_address == address
        assert health.started_at.seconds > 0

        cfg = train_run_config("gui-flow", {"episodes": 2, "steps": 3})
        resp = stub.SubmitRun(pb2.SubmitRunRequest(run_id="", config_json=json.dumps(cfg)),
                              metadata=md, timeout=DEADLINE)
        canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        assert resp.digest == hashlib.sha256(canonical.encode()).hexdigest()
        run_id = resp.run_id
        assert len(run_id) == 40 and int(run_id, 16) >= 0

        updates = watch_until(stub, pb2, md, run_id, {"RUN_STATUS_COMPLETED", "RUN_STATUS_FAILED"})
        assert [status_name(pb2, u.status) for u in updates] == [
            "RUN_STATUS_PENDING", "RUN_STATUS_DISPATCHING", "RUN_STATUS_RUNNING", "RUN_STATUS_COMPLETED",
        ]
        seqs = [u.seq_id for u in updates]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert all(u.digest == resp.digest for u in updates)
        # since_seq: a GUI reconnecting after RUNNING sees only what came later.
        later = watch_until(stub, pb2, md, run_id, {"RUN_STATUS_COMPLETED"}, since_seq=updates[2].seq_id)
        assert [status_name(pb2, u.status) for u in later] == ["RUN_STATUS_COMPLETED"]

        steps = list(stub.StreamRunSteps(pb2.StreamStepsRequest(run_id=run_id, since_seq=0),
                                         metadata=md, timeout=DEADLINE))
        episodes = list(stub.StreamRunEpisodes(pb2.StreamEpisodesRequest(run_id=run_id, since_seq=0),
                                               metadata=md, timeout=DEADLINE))
        assert len(steps) == 6
        assert [(s.episode_index, s.step_index) for s in steps] == [(e, i) for e in range(2) for i in range(3)]
        assert {s.agent_id for s in steps} == {"gui-agent"}
        assert len(episodes) == 2
        assert [e.steps for e in episodes] == [3, 3]
        assert json.loads(episodes[0].metadata_json)["env_id"] == "FrozenLake-v2"

        done = stub.ListRuns(pb2.ListRunsRequest(status_filter=[pb2.RUN_STATUS_COMPLETED]),
                             metadata=md, timeout=DEADLINE)
        assert [r.run_id for r in done.runs] == [run_id]

        # A second, long run, cancelled from the GUI.
        long_cfg = train_run_config("gui-long", {"episodes": 1, "steps": 100000, "step_delay": 0.05})
        long_id = stub.SubmitRun(pb2.SubmitRunRequest(run_id="gui-long-1", config_json=json.dumps(long_cfg)),
                                 metadata=md, timeout=DEADLINE).run_id
        assert long_id == "gui-long-1"
        running = watch_until(stub, pb2, md, long_id, {"RUN_STATUS_RUNNING"})
        assert [status_name(pb2, u.status) for u in running] == [
            "RUN_STATUS_PENDING", "RUN_STATUS_DISPATCHING", "RUN_STATUS_RUNNING",
        ]
        stub.CancelRun(pb2.CancelRunRequest(run_id=long_id), metadata=md, timeout=DEADLINE)
        ended = watch_until(stub, pb2, md, long_id, {"RUN_STATUS_CANCELLED", "RUN_STATUS_COMPLETED",
                                                     "RUN_STATUS_FAILED"},
                            since_seq=running[-1].seq_id)
        assert [status_name(pb2, u.status) for u in ended] == ["RUN_STATUS_CANCELLED"]
        assert ended[-1].failure_reason == "cancelled by request"

        cancelled = stub.ListRuns(pb2.ListRunsRequest(status_filter=[pb2.RUN_STATUS_CANCELLED]),
                                  metadata=md, timeout=DEADLINE)
        assert [r.run_id for r in cancelled.runs] == [long_id]
        both = stub.ListRuns(pb2.ListRunsRequest(status_filter=[pb2.RUN_STATUS_COMPLETED,
                                                                pb2.RUN_STATUS_CANCELLED]),
                             metadata=md, timeout=DEADLINE)
        assert sorted(r.run_id for r in both.runs) == sorted([run_id, long_id])


@pytest.mark.daemon
def test_an_invalid_config_is_refused_naming_its_path(daemon, trainer) -> None:
    pb2, pb2_grpc = trainer
    token = (daemon.var_dir / "auth-token").read_text(encoding="utf-8").strip()
    md = [("authorization", "Bearer " + token)]
    cfg = train_run_config("bad", {})
    cfg["resources"]["memory_mb"] = 128
    with grpc.insecure_channel(daemon.endpoint.removeprefix("http://")) as channel:
        stub = pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitRun(pb2.SubmitRunRequest(config_json=json.dumps(cfg)), metadata=md, timeout=DEADLINE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "config_json $.resources.memory_mb: must be an integer ≥ 256"

