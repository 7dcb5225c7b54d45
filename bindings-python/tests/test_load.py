"""gym_telemetry.load and pivot: a real daemon's store read back, read-only, with exact rows and
dtypes in pandas and polars, every filter, and the errors of bad arguments."""

from __future__ import annotations

import math

import pandas as pd
import polars as pl
import pytest

import gym_telemetry
from gym_telemetry import Telemetry, TelemetryError, load, pivot

pytestmark = pytest.mark.daemon


@pytest.fixture
def store(daemon):
    """A stopped daemon's store with one run: 2 agents' steps and episodes, scalars, events."""
    tel = Telemetry(endpoint=daemon.endpoint, run_id="nb")
    tel.run_started({"lr": 0.1})
    for ep in range(3):
        for agent, mode in (("a", "agent"), ("b", "human")):
            for i in range(4):
                tel.step([i], i % 2, 0.5 * i, terminated=i == 3, agent_id=agent, control_mode=mode)
            tel.episode_end(agent_id=agent, control_mode=mode)
    for step in range(5):
        tel.log_scalar("losses/loss", 1.0 / (step + 1), step=step)
        tel.log_scalar("charts/return", float(step), step=step, agent_id="a")
        tel.log_scalar("charts/return", float(-step), step=step, agent_id="b")
    tel.log_scalar("losses/loss", float("nan"), step=5)
    tel.log_scalar("losses/loss", 7.0, step=4)  # step 4 logged twice: the later value wins
    tel.run_completed("succeeded")
    assert tel.close(timeout=20.0)["outcome"] == "acked"
    # Other runs are not read.
    other = Telemetry(endpoint=daemon.endpoint, run_id="other")
    other.step([0], 0, 1.0, agent_id="a")
    other.log_scalar("losses/loss", 9.0, step=0)
    assert other.close(timeout=20.0)["outcome"] == "acked"
    return daemon.var_dir / "telemetry.sqlite"


def test_steps_and_episodes_in_pandas_with_typed_columns(store) -> None:
    steps = load("nb", store=store)
    assert len(steps) == 24
    assert steps["seq"].is_monotonic_increasing
    assert str(steps["episode_index"].dtype) == "uint64" and str(steps["reward"].dtype) == "float64"
    assert str(steps["terminated"].dtype) == "bool"
    assert isinstance(steps["control_mode"].dtype, pd.CategoricalDtype)
    assert str(steps["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert steps["observation_json"].tolist()[:4] == ["[0]", "[1]", "[2]", "[3]"]
    eps = load("nb", kind="episodes", store=store)
    assert len(eps) == 6
    assert eps.groupby("agent_id")["total_reward"].apply(list).to_dict() == {"a": [3.0] * 3, "b": [3.0] * 3}
    assert set(eps["run_id"]) == {"nb"}


def test_filters_by_agent_control_mode_and_since_seq(store) -> None:
    a = load("nb", agent_id="a", store=store, backend="polars")
    assert a.height == 12 and set(a["agent_id"].to_list()) == {"a"}
    human = load("nb", kind="episodes", control_mode="human", store=store)
    assert set(human["agent_id"]) == {"b"} and len(human) == 3
    all_steps = load("nb", store=store)
    cut = int(all_steps["seq"].iloc[9])
    rest = load("nb", since_seq=cut, store=store)
    assert rest["seq"].tolist() == all_steps["seq"].tolist()[10:]


def test_scalars_come_back_long_and_pivot_wide(store) -> None:
    long = load("nb", kind="scalars", store=store)
    assert list(long.columns) == ["step", "tag", "value", "wall_time", "agent_id"]
    assert len(long) == 17
    assert str(long["step"].dtype) == "int64" and str(long["wall_time"].dtype) == "float64"
    assert (long["wall_time"] > 1.6e9).all(), "Unix seconds"
    loss = long[long["tag"] == "losses/loss"]
    assert math.isnan(loss["value"].tolist()[5]), "NaN is kept"
    wide = pivot(long)
    assert list(wide.index) == [0, 1, 2, 3, 4, 5]
    assert sorted(wide.columns) == ["a/charts/return", "b/charts/return", "losses/loss"]
    assert wide.loc[4, "losses/loss"] == 7.0
    assert wide["b/charts/return"].tolist()[:5] == [0.0, -1.0, -2.0, -3.0, -4.0]

    pl_long = load("nb", kind="scalars", store=store, backend="polars")
    assert pl_long.columns == ["step", "tag", "value", "wall_time", "agent_id"]
    assert pl_long.schema["wall_time"] == pl.Float64
    pl_wide = pivot(pl_long)
    assert pl_wide["step"].to_list() == [0, 1, 2, 3, 4, 5]
    assert pl_wide.filter(pl.col("step") == 4)["losses/loss"].to_list() == [7.0]

    one = load("nb", kind="scalars", tags=["charts/return"], agent_id="a", store=store)
    assert one["value"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(pivot(one).columns) == ["charts/return"], "one agent: bare tags"


def test_events_are_the_lifecycle_records(store) -> None:
    ev = load("nb", kind="events", store=store, backend="polars")
    assert ev["kind"].to_list() == ["run_started", "run_completed"]


def test_bad_arguments_raise_typed_errors(store, tmp_path) -> None:
    with pytest.raises(ValueError, match="kind"):
        load("nb", kind="frames", store=store)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        load("nb", backend="spark", store=store)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control_mode"):
        load("nb", control_mode="telepathy", store=store)
    with pytest.raises(ValueError, match="at most 256"):
        load("nb", kind="scalars", tags=[f"t{i}" for i in range(257)], store=store)
    with pytest.raises(TypeError, match="list of tags"):
        load("nb", kind="scalars", tags="losses/loss", store=store)
    with pytest.raises(TelemetryError, match="missing.sqlite"):
        load("nb", store=tmp_path / "missing.sqlite")
    assert len(load("no-such-run", store=store)) == 0


def test_load_is_exported_and_stubbed() -> None:
    assert gym_telemetry.load is load and "load" in gym_telemetry.__all__ and "pivot" in gym_telemetry.__all__


@pytest.mark.parametrize("kind", ["steps", "episodes", "scalars"])
@pytest.mark.parametrize("backend", ["pandas", "polars"])
def test_the_query_api_gives_the_same_frames_as_the_store(daemon, store, kind, backend) -> None:
    """Without store=, load reads through the daemon (the worker's credential, found through
    the var dir), with the same columns and rows."""
    kw = dict(kind=kind, backend=backend)
    for sel in ({}, {"agent_id": "b"}, {"since_seq": 3}):
        local = load("nb", store=store, **kw, **sel)
        remote = load("nb", endpoint=daemon.endpoint, **kw, **sel)
        assert len(remote) > 0
        if backend == "polars":
            assert remote.equals(local), sel
        else:
            pd.testing.assert_frame_equal(remote, local)
    if kind == "scalars":
        only = load("nb", kind="scalars", tags=["losses/loss"], endpoint=daemon.endpoint)
        assert set(only["tag"]) == {"losses/loss"} and len(only) == 7


def test_the_query_api_needs_the_credential(daemon, store, monkeypatch) -> None:
    monkeypatch.setenv("GYM_TELEMETRY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(TelemetryError, match="(?i)unauthenticated|token|credential"):
        load("nb", endpoint=daemon.endpoint)
    with pytest.raises(ValueError, match="events"):
        load("nb", kind="events", endpoint=daemon.endpoint)
    with pytest.raises(ValueError, match="not both"):
        load("nb", store=store, endpoint=daemon.endpoint)
    daemon.stop()
    monkeypatch.delenv("GYM_TELEMETRY_AUTH_TOKEN")
    with pytest.raises(TelemetryError, match="cannot connect"):
        load("nb", endpoint=daemon.endpoint)
