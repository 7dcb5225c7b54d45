"""gym-telemetry for Python RL workers.

A thin layer over gym-telemetry's Rust shim: records are batched, queued (optionally on disk)
and sent to the daemon by a background thread, so a training loop never waits for the network.

    import gym_telemetry

    tel = gym_telemetry.from_env()          # GYM_TELEMETRY_* settings, or Telemetry(endpoint=...)
    tel.set_metadata(game_id="FrozenLake-v1", seed=42)
    tel.step(obs, action, reward, terminated, truncated, info)
    tel.episode_end()                       # return, length and flags from the steps
    tel.close()

For Gymnasium environments, ``TelemetryWrapper`` / ``TelemetryVectorWrapper`` do the calls.

Training scalars: ``tel.log_scalar("losses/td_loss", loss)`` / ``tel.log({tag: value, ...})``
(step None: the run's global step, the env steps recorded). Scripts written for TensorBoard
change one import: ``from gym_telemetry import SummaryWriter`` (``gym_telemetry.tensorboard``);
Stable-Baselines3 logs through ``gym_telemetry.sb3.TelemetryOutputFormat``.

Contracts (details in the docstrings of ``Telemetry``):

- Payloads (observation, action, info, metadata, config, hook values) are encoded to compact
  JSON in Rust, never through ``json.dumps``: Python scalars, str, list, tuple, dict, numpy
  arrays and scalars, and objects with ``tolist()``. JSON has no NaN or infinity: such
  values inside a payload are written as ``null``. A non-finite *reward* is a ``ValueError``
  (the daemon would reject the record).
- Bad arguments raise ``TypeError`` / ``ValueError`` naming the argument. Delivery problems
  (daemon down, queue full) never raise in a record call; they show in ``stats()`` and in the
  ``"gym_telemetry"`` logger. Calls on a closed ``Telemetry`` raise ``TelemetryError``.
- ``flush()`` / ``close()`` release the GIL while they wait and return a report dict.
- Hooks (``register_on_step`` / ``register_on_episode_end``) get a dict view of each record and
  may return a dict of changes; an error in a hook is logged and counted, never raised.
- Every ``Telemetry`` still open at interpreter exit is closed (flushed) by an ``atexit``
  handler, bounded by ``GYM_TELEMETRY_EXIT_FLUSH_SECONDS`` (default 5).
"""

from __future__ import annotations

import atexit as _atexit
import os as _os
from typing import TYPE_CHECKING, Any

from ._native import (
    EpisodeRecorder,
    FrameCapture,
    Json,
    Telemetry,
    TelemetryError,
    __version__,
    _close_all,
    encode_json,
    from_env,
    normalize_control_mode,
)

from .tensorboard import SummaryWriter

if TYPE_CHECKING:  # pragma: no cover
    from .wrappers import TelemetryVectorWrapper, TelemetryWrapper

__all__ = [
    "EpisodeRecorder",
    "FrameCapture",
    "Json",
    "SummaryWriter",
    "Telemetry",
    "TelemetryError",
    "TelemetryVectorWrapper",
    "TelemetryWrapper",
    "__version__",
    "encode_json",
    "from_env",
    "normalize_control_mode",
]


def __getattr__(name: str) -> Any:
    # The wrappers import gymnasium; workers that do not use them do not need it installed.
    if name in ("TelemetryWrapper", "TelemetryVectorWrapper"):
        from . import wrappers

        return getattr(wrappers, name)
    raise AttributeError(f"module 'gym_telemetry' has no attribute {name!r}")


def _exit_flush() -> None:
    try:
        timeout = float(_os.environ.get("GYM_TELEMETRY_EXIT_FLUSH_SECONDS", "5"))
    except ValueError:
        timeout = 5.0
    _close_all(max(timeout, 0.0))


_atexit.register(_exit_flush)
