"""Runs as DataFrames for notebooks: ``gym_telemetry.load`` and ``gym_telemetry.pivot``.

W&B users have an API and TensorBoard users an export for analysing runs; this is ours::

    import gym_telemetry as gt

    steps = gt.load("run-1", store="var/telemetry/telemetry.sqlite")            # pandas
    eps = gt.load("run-1", kind="episodes", agent_id="player_0", backend="polars", store=...)
    curves = gt.pivot(gt.load("run-1", kind="scalars", store=...))              # one column per tag

``load`` with ``store=PATH`` opens the store file read-only (no daemon needed; a running daemon
is not disturbed: each page of rows is its own short read transaction). Without one it reads
through the daemon's Query API with the credential a worker would use (the daemon pages its
store by seq; nothing is loaded whole into it). Either way the rows are laid out in typed
columns in Rust, by the same code as ``gym-telemetry-daemon dump --format parquet``
(``telemetry-export``: the schemas are documented there), and handed over as Parquet bytes,
which ``pandas.read_parquet`` (pyarrow) or ``polars.read_parquet`` turn into a DataFrame.

Columns:

- ``steps``, ``episodes``, ``events``: the Parquet export's columns, in seq order: ``seq``,
  ``run_id``, indices as unsigned integers, JSON payloads (``*_json``) as strings,
  ``timestamp`` as a UTC datetime, ``control_mode`` as a category.
- ``scalars``: long, one row per point in seq order: ``step``, ``tag``, ``value``,
  ``wall_time`` (Unix seconds as a float, NaN/null when the point had no timestamp) and
  ``agent_id`` ("" for run-wide scalars). ``pivot`` makes it wide.
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterable, Literal, Optional, Union

from . import _native

__all__ = ["load", "pivot"]

_KINDS = ("steps", "episodes", "scalars", "events")
_SCALAR_COLUMNS = ["step", "tag", "value", "wall_time", "agent_id"]


def load(
    run_id: str,
    kind: Literal["steps", "episodes", "scalars", "events"] = "steps",
    *,
    agent_id: Optional[str] = None,
    control_mode: Optional[str] = None,
    tags: Optional[Iterable[str]] = None,
    since_seq: int = 0,
    backend: Literal["pandas", "polars"] = "pandas",
    store: Union[str, "os.PathLike[str]", None] = None,
    endpoint: Optional[str] = None,
) -> Any:
    """One stream of a run as a pandas DataFrame (or polars with ``backend="polars"``).

    Args:
        run_id: the run.
        kind: "steps" (default), "episodes", "scalars" or "events" (lifecycle events).
        agent_id: only this agent's rows (steps, episodes, scalars).
        control_mode: only rows of this control mode (steps, episodes; any spelling
            ``normalize_control_mode`` accepts).
        tags: scalars only: these exact tags (at most 256).
        since_seq: only rows stored after this seq (the ``seq`` column of an earlier load).
        backend: "pandas" (needs pandas and pyarrow) or "polars".
        store: the store file (``<var-dir>/telemetry.sqlite``), opened read-only. Without
            one, the rows come through the daemon's Query API (stored records only).
        endpoint: the daemon (default: ``GYM_TELEMETRY_ENDPOINT``, else
            ``http://127.0.0.1:50151``), with the credential and TLS settings a worker's
            ``Telemetry`` uses (``GYM_TELEMETRY_AUTH_TOKEN``, the var dir's token, ...).
            Lifecycle events (``kind="events"``) need ``store``.

    Raises ValueError for a bad argument, TelemetryError when the store or the daemon cannot
    be read.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(map(repr, _KINDS))}")
    if backend not in ("pandas", "polars"):
        raise ValueError(f"backend: {backend!r} is not 'pandas' or 'polars'")
    if isinstance(tags, str):
        raise TypeError("tags must be a list of tags, not a str")
    if store is not None and endpoint is not None:
        raise ValueError("pass store or endpoint, not both")
    selection = dict(
        agent_id=agent_id, control_mode=control_mode,
        tags=None if tags is None else [str(t) for t in tags], since_seq=int(since_seq),
    )
    if store is not None:
        data = _native._read_parquet(os.fspath(store), run_id, kind, **selection)
    else:
        data = _native._read_parquet_remote(run_id, kind, endpoint=endpoint, **selection)
    if backend == "polars":
        import polars as pl

        df = pl.read_parquet(io.BytesIO(data))
        if kind == "scalars":
            df = df.with_columns(wall_time=pl.col("timestamp").dt.epoch("ns") / 1e9).select(_SCALAR_COLUMNS)
        return df
    import pandas as pd

    df = pd.read_parquet(io.BytesIO(data))
    if kind == "scalars":
        df["wall_time"] = (df["timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        df = df[_SCALAR_COLUMNS]
    return df


def pivot(scalars: Any) -> Any:
    """Long scalars (``load(kind="scalars")``) to wide: one row per ``step`` (ascending), one
    column per tag, the latest stored value where a step was logged twice. With more than one
    ``agent_id`` in the frame, a column is ``"<agent_id>/<tag>"`` for an agent's points and the
    bare tag for run-wide ones. Works on the pandas or polars frame ``load`` returned."""
    if type(scalars).__module__.startswith("polars"):
        import polars as pl

        several = scalars["agent_id"].n_unique() > 1
        col = (
            pl.when(pl.col("agent_id") == "").then(pl.col("tag")).otherwise(pl.col("agent_id") + "/" + pl.col("tag"))
            if several
            else pl.col("tag")
        )
        wide = scalars.with_columns(_column=col).pivot(
            on="_column", index="step", values="value", aggregate_function="last"
        )
        return wide.sort("step")
    several = scalars["agent_id"].nunique() > 1
    column = scalars["tag"]
    if several:
        column = scalars["tag"].where(scalars["agent_id"] == "", scalars["agent_id"] + "/" + scalars["tag"])
    wide = scalars.assign(_column=column).pivot_table(
        index="step", columns="_column", values="value", aggfunc="last", dropna=False
    )
    wide.columns.name = None
    return wide.sort_index()
