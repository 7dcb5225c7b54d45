"""Drop-ins for the predecessor's worker-side telemetry.

The predecessor's workers (the SPADE-BDI worker among them) print JSONL through a
``TelemetryEmitter`` they create, and ``gym-telemetry-proxy`` parses their stdout. Changing one
import moves such a worker off stdout parsing::

    # from spadeBDI_RL_refactored.core.telemetry import TelemetryEmitter
    from gym_telemetry.compat import TelemetryEmitter

    emitter = TelemetryEmitter()
    emitter.run_started(run_id, config)
    emitter.step(run_id, episode, step_index, action=2, reward=0.0, observation={...})
    emitter.episode(run_id, episode, reward=1.0, steps=3, metadata={...})
    emitter.artifact(run_id, "policy", path)
    emitter.run_completed(run_id, "completed")

Each call builds the very line the predecessor printed (``{"type": ..., "ts": ..., **fields}``)
and hands it to the shim, which maps it exactly as the proxy maps a printed line (the same
parser, the same run context). Records are delivered in the background (batched, queued,
retried); ``close()`` (also run at interpreter exit) flushes them.

Where records go: ``stream=None`` (the default) sends them through a ``Telemetry`` made by
``gym_telemetry.from_env()`` (the ``GYM_TELEMETRY_*`` settings the daemon gives the workers it
starts; pass ``telemetry=`` to use your own). Given a ``stream``, the emitter writes the JSONL
lines to it instead, exactly as the predecessor did. When ``run_id=`` is given, or
``GYM_TELEMETRY_RUN_ID`` is set (the daemon set it), every record takes that run id, as the
proxy's ``--run-id`` does; otherwise each call's ``run_id`` is kept.
"""

from __future__ import annotations

import datetime as _dt
import json as _json
import os as _os
import threading as _threading
from typing import IO, Any, Dict, Mapping, Optional

__all__ = ["TelemetryEmitter"]


def _utc_timestamp() -> str:
    """The predecessor's timestamps: ISO 8601 UTC with milliseconds and a ``Z``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _default(obj: Any) -> Any:
    # numpy arrays and scalars, and anything else with tolist()/item().
    for attr in ("tolist", "item"):
        f = getattr(obj, attr, None)
        if callable(f):
            return f()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class TelemetryEmitter:
    """The predecessor's ``TelemetryEmitter``, delivering through gym-telemetry's shim.

    TelemetryEmitter(stream=None, *, telemetry=None, run_id=None)
    """

    def __init__(
        self,
        stream: Optional[IO[str]] = None,
        *,
        telemetry: Any = None,
        run_id: Optional[str] = None,
    ) -> None:
        self._stream = stream
        self._telemetry = telemetry
        self._owns_telemetry = False
        self._run_id = run_id or _os.environ.get("GYM_TELEMETRY_RUN_ID") or None
        self._lock = _threading.Lock()

    @property
    def telemetry(self) -> Any:
        """The ``gym_telemetry.Telemetry`` records go through (``None`` when writing a stream)."""
        if self._stream is not None:
            return None
        with self._lock:
            if self._telemetry is None:
                from . import from_env

                self._telemetry = from_env()
                self._owns_telemetry = True
            return self._telemetry

    def emit(self, event_type: str, **fields: Any) -> None:
        """One event: ``{"type": event_type, "ts": <now>, **fields}``."""
        payload: Dict[str, Any] = {"type": event_type, "ts": _utc_timestamp(), **fields}
        line = _json.dumps(payload, separators=(",", ":"), default=_default)
        if self._stream is not None:
            self._stream.write(line)
            self._stream.write("\n")
            self._stream.flush()
            return
        self.telemetry.record_jsonl(line, run_id=self._run_id)

    def run_started(self, run_id: str, config: Mapping[str, Any]) -> None:
        """The run began with this configuration."""
        self.emit("run_started", run_id=run_id, config=dict(config))

    def run_completed(self, run_id: str, status: str, **fields: Any) -> None:
        """The run ended (``status``: ``completed``, ``failed``, ``cancelled``...)."""
        self.emit("run_completed", run_id=run_id, status=status, **fields)

    def step(self, run_id: str, episode: int, step_index: int, **fields: Any) -> None:
        """One environment step (``action``, ``reward``, ``observation``... in ``fields``)."""
        self.emit("step", run_id=run_id, episode=episode, step=step_index, **fields)

    def episode(self, run_id: str, episode: int, **fields: Any) -> None:
        """One finished episode (``reward``, ``steps``, ``metadata``... in ``fields``)."""
        self.emit("episode", run_id=run_id, episode=episode, **fields)

    def artifact(self, run_id: str, kind: str, path: str, **fields: Any) -> None:
        """A file the run produced."""
        self.emit("artifact", run_id=run_id, kind=kind, path=path, **fields)

    def flush(self, timeout: float = 5.0) -> Optional[Dict[str, Any]]:
        """Waits until what was emitted is delivered (or queued on disk); the shim's report."""
        if self._stream is not None:
            self._stream.flush()
            return None
        return self.telemetry.flush(timeout)

    def close(self, timeout: float = 5.0) -> Optional[Dict[str, Any]]:
        """Flushes; closes the ``Telemetry`` if this emitter made it."""
        if self._stream is not None:
            self._stream.flush()
            return None
        with self._lock:
            tel, owned = self._telemetry, self._owns_telemetry
        if tel is None:
            return None
        return tel.close(timeout) if owned else tel.flush(timeout)

    def __enter__(self) -> "TelemetryEmitter":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


