"""``SummaryWriter``: the part of ``torch.utils.tensorboard.SummaryWriter`` that CleanRL and
Stable-Baselines3 use, writing training scalars to gym-telemetry instead of event files.

Change one import::

    # from torch.utils.tensorboard import SummaryWriter
    from gym_telemetry import SummaryWriter

    writer = SummaryWriter(f"runs/{run_name}")          # the run is named run_name
    writer.add_text("hyperparameters", "|param|value|\\n|-|-|\\n" + rows)   # the run's config
    envs = gym_telemetry.TelemetryVectorWrapper(envs, writer.telemetry)  # env steps, same run
    writer.add_scalar("losses/td_loss", loss, global_step)
    writer.close()

What goes where:

- ``add_scalar`` / ``add_scalars`` are ``Telemetry.log_scalar`` / ``Telemetry.log``: one stored
  scalar per call (``add_scalars("a", {"x": 1})`` stores tag ``a/x``). ``global_step=None`` is the
  run's global step (``telemetry.global_step``: env steps recorded, every agent's).
- ``add_text("hyperparameters", table)`` with CleanRL's markdown table (``|param|value|`` rows)
  becomes the run's config: a ``RunStarted`` record whose ``config_json`` is the table as a dict
  (numbers, booleans and ``None`` parsed; other values kept as text). ``add_hparams`` merges its
  ``hparam_dict`` into the same config and stores ``metric_dict`` as scalars. Each change sends
  the whole config again: the run's latest ``RunStarted`` holds it.
- Any other ``add_text`` is an ``Artifact`` record of kind ``"text"`` whose path is the tag and
  whose ``info_json`` is ``{"text": ..., "step": ..., "walltime": ...}`` (read them with the
  store's lifecycle events, as ``RunStarted`` and ``RunCompleted`` are read).
- Images, videos, histograms, figures, graphs, embeddings, PR curves, audio, meshes: not
  stored; each of those methods raises ``NotImplementedError`` naming what to use instead,
  never dropping the data silently.

Episode statistics are stored once. When a ``TelemetryWrapper`` / ``TelemetryVectorWrapper``
records episodes into the writer's Telemetry (``telemetry.episode_scalars`` is True), the
wrapper itself records ``charts/episodic_return`` and ``charts/episodic_length`` at each
episode's end, at the global step; ``add_scalar`` of exactly those two tags is then skipped
(counted in ``stats()["episode_scalars_skipped"]``, logged once at debug level to the
``"gym_telemetry"`` logger). Without a wrapper they are stored as given.

Lifecycle. Without ``telemetry=``, the writer makes its own through ``gym_telemetry.from_env``
(``GYM_TELEMETRY_*`` settings; ``**telemetry_kwargs`` override them) with the run id derived
from ``log_dir`` (unless ``GYM_TELEMETRY_RUN_ID`` or ``run_id=`` names it: a worker the daemon
started must keep the run id it was given), creates ``log_dir`` as torch does (scripts save
models there), and owns it: ``close()`` records the run as succeeded (``failed`` when leaving a
``with`` block by an exception) and closes it. With ``telemetry=``, the writer only flushes it on
``close()``; ending the run is its owner's business.

``purge_step``, ``max_queue``, ``flush_secs`` and ``filename_suffix`` are accepted for
compatibility and have no effect: the shim batches and sends in the background, and the store
keeps every point (a step logged twice has both; curves show the latest).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Mapping, Optional, Type, Union

from ._native import Telemetry, from_env

__all__ = ["SummaryWriter", "parse_markdown_table", "run_name_from_log_dir"]

_log = logging.getLogger("gym_telemetry")

#: The tags a Gymnasium wrapper records from its episodes (CleanRL's names).
EPISODE_TAGS = frozenset(("charts/episodic_return", "charts/episodic_length"))

_UNSUPPORTED = {
    "add_image": "log frames as render hints or a frame_ref on steps (Telemetry.step), or run "
    "tensorboard alongside for images",
    "add_images": "log frames as render hints or a frame_ref on steps, or run tensorboard alongside",
    "add_image_with_boxes": "run tensorboard alongside for images",
    "add_figure": "save the figure to a file and record it with Telemetry.artifact(\"figure\", path), "
    "or run tensorboard alongside",
    "add_video": "save the video to a file and record it with Telemetry.artifact(\"video\", path) "
    "(or step frame_refs), or run tensorboard alongside",
    "add_audio": "save the audio to a file and record it with Telemetry.artifact(\"audio\", path)",
    "add_histogram": "log summary statistics as scalars (add_scalar(tag + \"/mean\", ...)), or run "
    "tensorboard alongside for histograms",
    "add_histogram_raw": "log summary statistics as scalars, or run tensorboard alongside",
    "add_graph": "run tensorboard alongside for model graphs",
    "add_onnx_graph": "run tensorboard alongside for model graphs",
    "add_embedding": "run tensorboard alongside for embeddings",
    "add_pr_curve": "log precision/recall at chosen thresholds as scalars, or run tensorboard "
    "alongside",
    "add_pr_curve_raw": "log precision/recall as scalars, or run tensorboard alongside",
    "add_custom_scalars": "curves are grouped by their tag prefix (\"losses/...\") already; run "
    "tensorboard alongside for custom layouts",
    "add_custom_scalars_multilinechart": "run tensorboard alongside for custom layouts",
    "add_custom_scalars_marginchart": "run tensorboard alongside for custom layouts",
    "add_mesh": "save the mesh to a file and record it with Telemetry.artifact(\"mesh\", path)",
}


def _unsupported(name: str, alternative: str):
    def method(self: "SummaryWriter", *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"gym_telemetry.SummaryWriter.{name} is not supported (gym-telemetry stores scalars, "
            f"steps and episodes; nothing of this call was stored): {alternative}"
        )

    method.__name__ = name
    method.__qualname__ = f"SummaryWriter.{name}"
    method.__doc__ = f"Not supported: raises NotImplementedError. Instead, {alternative}."
    return method


def run_name_from_log_dir(log_dir: Union[str, "os.PathLike[str]"]) -> str:
    """The run id a ``log_dir`` names: what follows its last ``runs`` component
    (``runs/<name>`` -> ``<name>``, ``runs/exp/seed0`` -> ``exp/seed0``), else its last
    component."""
    parts = [p for p in Path(os.fspath(log_dir)).parts if p not in ("", "/", ".")]
    if not parts:
        raise ValueError(f"log_dir {os.fspath(log_dir)!r} names no run")
    if "runs" in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index("runs")
        return "/".join(parts[last + 1:])
    return parts[-1]


def _default_log_dir(comment: str) -> str:
    # torch.utils.tensorboard's default: runs/<Mon><day>_<H-M-S>_<host><comment>
    current_time = datetime.now().strftime("%b%d_%H-%M-%S")
    return os.path.join("runs", current_time + "_" + socket.gethostname() + comment)


def _cell_value(text: str) -> Any:
    t = text.strip()
    if t in ("True", "true"):
        return True
    if t in ("False", "false"):
        return False
    if t in ("None", "null"):
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def parse_markdown_table(text: str) -> Optional[Dict[str, Any]]:
    """A two-column markdown table (CleanRL's ``|param|value|`` hyperparameters) as a dict, or
    None when ``text`` is not one. The header row and the ``|-|-|`` rule are skipped; numbers,
    booleans and None are parsed, other values kept as text."""
    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(rows) < 2 or not all(r.startswith("|") and r.endswith("|") for r in rows):
        return None
    cells = [[c.strip() for c in r[1:-1].split("|")] for r in rows]
    if not all(len(c) == 2 for c in cells):
        return None
    if not all(set(c) <= set("-: ") and c for c in cells[1]):
        return None  # no header rule: not a table
    return {k: _cell_value(v) for k, v in cells[2:] if k}


class SummaryWriter:
    """Writes training scalars, the run's hyperparameters and text to gym-telemetry, with
    ``torch.utils.tensorboard.SummaryWriter``'s signatures (see the module docs).

    Args:
        log_dir: ``runs/<name>`` names the run ``<name>`` (see ``run_name_from_log_dir``);
            None: torch's default ``runs/<datetime>_<host><comment>``.
        comment: appended to the default log_dir (ignored with a log_dir, as in torch).
        purge_step, max_queue, flush_secs, filename_suffix: accepted, no effect.
        telemetry: a ``gym_telemetry.Telemetry`` to write through (the writer then does not
            own it); None: one from ``gym_telemetry.from_env(**telemetry_kwargs)``.
        **telemetry_kwargs: settings for that Telemetry (``endpoint=``, ``queue_dir=``, ...).
    """

    def __init__(
        self,
        log_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        comment: str = "",
        purge_step: Optional[int] = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        telemetry: Optional[Telemetry] = None,
        **telemetry_kwargs: Any,
    ) -> None:
        if telemetry is not None and telemetry_kwargs:
            raise TypeError("pass either telemetry= or Telemetry settings, not both")
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise TypeError(f"telemetry must be a gym_telemetry.Telemetry, not {type(telemetry).__name__}")
        if log_dir is None and telemetry is None:
            log_dir = _default_log_dir(comment)
        self.log_dir: Optional[str] = None if log_dir is None else os.fspath(log_dir)
        self._owns = telemetry is None
        if telemetry is None:
            if "run_id" not in telemetry_kwargs and not os.environ.get("GYM_TELEMETRY_RUN_ID"):
                assert self.log_dir is not None
                telemetry_kwargs["run_id"] = run_name_from_log_dir(self.log_dir)
            telemetry = from_env(**telemetry_kwargs)
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
        self._tel = telemetry
        self._log_scalar = telemetry.log_scalar
        self._config: Dict[str, Any] = {}
        self._skipped = 0
        self._closed = False

    @property
    def telemetry(self) -> Telemetry:
        """The underlying Telemetry: pass it to ``TelemetryVectorWrapper`` / ``TelemetryWrapper``
        to record the env steps and episodes in the same run."""
        return self._tel

    @property
    def run_id(self) -> str:
        """The run the writer writes to."""
        return self._tel.run_id

    def get_logdir(self) -> Optional[str]:
        """The log directory (None when given a Telemetry and no log_dir)."""
        return self.log_dir

    def add_scalar(
        self,
        tag: str,
        scalar_value: Any,
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
        new_style: bool = False,
        double_precision: bool = False,
    ) -> None:
        """Stores one scalar (``Telemetry.log_scalar``): any number, numpy scalar, 0-d or
        one-element array, or tensor with ``.item()``; NaN and infinities kept. ``global_step``
        None: the run's global step. ``charts/episodic_return`` / ``charts/episodic_length``
        are skipped when a wrapper records them from the episodes (module docs).
        ``new_style`` and ``double_precision`` have no effect (values are stored as doubles)."""
        if tag in EPISODE_TAGS and self._tel.episode_scalars:
            self._skip(tag)
            return
        self._log_scalar(tag, scalar_value, global_step, walltime=walltime)

    def add_scalars(
        self,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
    ) -> None:
        """Stores ``{sub: value}`` as the scalars ``f"{main_tag}/{sub}"``, all at one step (each
        value checked first: a bad one raises and none is stored)."""
        self._log_many({f"{main_tag}/{k}": v for k, v in tag_scalar_dict.items()}, global_step, walltime)

    def add_text(
        self,
        tag: str,
        text_string: str,
        global_step: Optional[int] = None,
        walltime: Optional[float] = None,
    ) -> None:
        """``add_text("hyperparameters", table)`` (CleanRL's markdown table) becomes the run's
        config; other text is an Artifact of kind "text" named by the tag (module docs)."""
        if not isinstance(text_string, str):
            raise TypeError(f"text_string must be a str, not {type(text_string).__name__}")
        if tag == "hyperparameters":
            table = parse_markdown_table(text_string)
            if table is not None:
                self._update_config(table)
                return
        step = self._tel.global_step if global_step is None else global_step
        info: Dict[str, Any] = {"text": text_string, "step": step}
        if walltime is not None:
            info["walltime"] = float(walltime)
        self._tel.artifact("text", tag, info=info)

    def add_hparams(
        self,
        hparam_dict: Mapping[str, Any],
        metric_dict: Mapping[str, Any],
        hparam_domain_discrete: Optional[Mapping[str, Any]] = None,
        run_name: Optional[str] = None,
        global_step: Optional[int] = None,
    ) -> None:
        """Merges ``hparam_dict`` into the run's config and stores ``metric_dict`` as scalars at
        ``global_step`` (None: the global step). ``hparam_domain_discrete`` and ``run_name``
        have no effect (the run is this writer's)."""
        self._update_config(dict(hparam_dict))
        if metric_dict:
            self._tel.log(dict(metric_dict), global_step)

    def flush(self) -> Dict[str, Any]:
        """Waits (at most 5 s) until what was written is acked or on disk; returns the
        Telemetry's flush report."""
        return self._tel.flush()

    def close(self) -> None:
        """Flushes; a writer that made its Telemetry records the run as succeeded and closes
        it. Idempotent."""
        self._close("succeeded")

    def stats(self) -> Dict[str, Any]:
        """The Telemetry's counters plus the writer's ``episode_scalars_skipped``."""
        out = dict(self._tel.stats())
        out["episode_scalars_skipped"] = self._skipped
        return out

    def __enter__(self) -> "SummaryWriter":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._close("succeeded" if exc_type is None else "failed", None if exc is None else repr(exc))

    def __repr__(self) -> str:
        return f"SummaryWriter(run_id={self._tel.run_id!r}, log_dir={self.log_dir!r})"

    def __getattr__(self, name: str) -> Any:
        # Any other add_* of torch's or tensorboardX's writers: refuse loudly, never drop.
        if name.startswith("add_"):
            return _unsupported(name, "run tensorboard alongside for this kind of data").__get__(self)
        raise AttributeError(f"'SummaryWriter' object has no attribute {name!r}")

    def _log_many(self, values: Dict[str, Any], step: Optional[int], walltime: Optional[float] = None) -> None:
        """``Telemetry.log`` of ``values`` (a fresh dict), the episode tags skipped as in add_scalar."""
        if self._tel.episode_scalars:
            for t in EPISODE_TAGS & values.keys():
                del values[t]
                self._skip(t)
        if values:
            self._tel.log(values, step, walltime=walltime)

    def _skip(self, tag: str) -> None:
        if self._skipped == 0:
            _log.debug(
                "SummaryWriter: %s is recorded by the Gymnasium wrapper from its episodes; "
                "add_scalar of %s is skipped (counted in stats()['episode_scalars_skipped'])",
                tag, sorted(EPISODE_TAGS),
            )
        self._skipped += 1

    def _update_config(self, values: Mapping[str, Any]) -> None:
        self._config.update(values)
        self._tel.run_started(config=self._config)

    def _close(self, status: str, error: Optional[str] = None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tel.closed:
            return
        if self._owns:
            self._tel.run_completed(status, error)
            self._tel.close()
        else:
            self._tel.flush()


for _name, _alternative in _UNSUPPORTED.items():
    setattr(SummaryWriter, _name, _unsupported(_name, _alternative))
del _name, _alternative
