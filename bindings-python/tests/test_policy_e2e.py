"""Issue 19 end to end with the Q-learning example: train, save, equip, evaluate.

Training saves the Q-table in the predecessor's format and its ``artifact`` event registers it
in the daemon's inventory; an evaluation run equips it through ``SubmitRun.evaluate``: the
worker finds it verified in ``tel.policy``, plays exactly the episodes asked, and every record
of the evaluation carries the policy's id and digest. The daemon stores the results as scalars.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from conftest import _daemon_env, daemon_bin, v1_modules

pytestmark = pytest.mark.daemon

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "frozenlake_q_learning.py"
EPISODES = 20


def stubs(daemon):
    m = v1_modules()
    token = (daemon.var_dir / "auth-token").read_text().strip()
    channel = grpc.insecure_channel(daemon.endpoint.removeprefix("http://"))
    md = [("authorization", f"Bearer {token}")]
    return m, m["telemetry_pb2_grpc"].RunControlStub(channel), m["policy_pb2_grpc"].PoliciesStub(channel), md


def wait_final(control, md, run_id: str):
    final = {3, 4, 5}  # completed, failed, cancelled
    for info in control.WatchRuns(v1_modules()["telemetry_pb2"].WatchRunsRequest(), metadata=md, timeout=180):
        if info.run_id == run_id and info.state in final:
            return info
    raise AssertionError(f"{run_id} never ended")


def test_train_save_equip_evaluate(daemon, tmp_path: Path) -> None:
    policy_file = tmp_path / "q.json"
    train = subprocess.run(
        [sys.executable, str(EXAMPLE), "--endpoint", daemon.endpoint, "--run-id", "fl-train",
         "--episodes", "200", "--policy-path", str(policy_file)],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert train.returncode == 0, train.stderr
    sha = hashlib.sha256(policy_file.read_bytes()).hexdigest()
    policy_id = "FrozenLake-v1/fl-train/q.json"

    # The artifact event registered the file, with the training run as its provenance.
    m, control, policies, md = stubs(daemon)
    pb, ppb = m["telemetry_pb2"], m["policy_pb2"]
    listed = policies.ListPolicies(ppb.ListPoliciesRequest(env_id="FrozenLake-v1"), metadata=md)
    assert [p.policy_id for p in listed.policies] == [policy_id]
    man = listed.policies[0]
    assert (man.sha256, man.source_run_id, man.origin) == (sha, "fl-train", "artifact")
    assert (man.observation_space, man.action_space) == ("Discrete(16)", "Discrete(4)")
    assert (man.format, man.payload_version, man.agent_id) == ("q_table", 1, "bdi_rl_demo")
    # The CLI sees the same inventory while the daemon runs.
    cli = subprocess.run([daemon_bin(), "policies", "list", "--var-dir", str(daemon.var_dir)],
                         capture_output=True, text=True, env=_daemon_env(), timeout=60, check=True)
    assert cli.stdout.startswith(f"{policy_id}\tFrozenLake-v1\tbdi_rl_demo\tq_table/v1\t")

    command = pb.WorkerCommand(argv=[sys.executable, str(EXAMPLE)])
    # A policy that does not fit is refused before any worker starts.
    with pytest.raises(grpc.RpcError) as refused:
        control.SubmitRun(pb.SubmitRunRequest(
            run_id="fl-eval-taxi", command=command, game_id="Taxi-v3",
            evaluate=ppb.EvaluationSpec(policy_id=policy_id, episodes=EPISODES)), metadata=md)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details().startswith("env_mismatch:")

    control.SubmitRun(pb.SubmitRunRequest(
        run_id="fl-eval", command=command,
        evaluate=ppb.EvaluationSpec(policy_id=policy_id, episodes=EPISODES)), metadata=md)
    # Equipped to a running or pending run, the policy cannot be deleted.
    with pytest.raises(grpc.RpcError) as busy:
        policies.DeletePolicy(ppb.DeletePolicyRequest(policy_id=policy_id), metadata=md)
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = wait_final(control, md, "fl-eval")
    log = (daemon.var_dir / "runs" / "fl-eval" / "worker.log").read_text(errors="replace")
    assert info.state == pb.RUN_STATE_COMPLETED, log
    assert info.control_mode == "replay"
    assert (info.evaluation_source_run_id, info.evaluation_source_policy_id) == ("fl-train", policy_id)
    assert [(b.agent_id, b.policy_id, b.policy_digest) for b in info.policy_bindings] == [
        ("bdi_rl_demo", policy_id, sha)]

    # Exactly the episodes asked, each step and episode stamped with the policy.
    episodes = daemon.dump("fl-eval", episodes=True)
    steps = daemon.dump("fl-eval")
    assert sorted(e["episode_index"] for e in episodes) == list(range(EPISODES))
    assert len(steps) == sum(e["steps"] for e in episodes)
    for r in episodes + steps:
        assert (r.get("policy_id"), r.get("policy_digest")) == (policy_id, sha), r
        assert r["control_mode"] == "replay"
    assert all(json.loads(s["info_json"])["epsilon"] == 0.0 for s in steps)
    # Training stays apart: its records carry no policy.
    assert all("policy_id" not in s for s in daemon.dump("fl-train"))

    # The results, stored as scalars of the evaluation run.
    scalars = {s["tag"]: s for s in daemon.dump("fl-eval", scalars=True)}
    returns = [e["total_reward"] for e in episodes]
    successes = sum(json.loads(e["metadata_json"])["success"] for e in episodes)
    assert scalars["eval/episodes"]["value"] == EPISODES
    assert scalars["eval/success_rate"]["value"] == pytest.approx(successes / EPISODES)
    assert scalars["eval/mean_return"]["value"] == pytest.approx(statistics.fmean(returns))
    assert scalars["eval/std_return"]["value"] == pytest.approx(statistics.pstdev(returns))
    assert all(s["step"] == EPISODES for s in scalars.values())

    # The run has ended: now the policy may be deleted.
    policies.DeletePolicy(ppb.DeletePolicyRequest(policy_id=policy_id), metadata=md)
    assert not policies.ListPolicies(ppb.ListPoliciesRequest(), metadata=md).policies
