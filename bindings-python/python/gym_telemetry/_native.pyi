"""Type stubs of the compiled module (checked against it by tests/test_stubs.py)."""

import os
from types import TracebackType
from typing import Any, Callable, Dict, Literal, Mapping, Optional, Type, TypeVar, Union

_PathLike = Union[str, "os.PathLike[str]"]
_Hook = TypeVar("_Hook", bound=Callable[[Dict[str, Any]], Optional[Mapping[str, Any]]])
_Outcome = Literal["acked", "on_disk", "written", "disabled", "timeout", "not_delivered", "error", "closed"]

__version__: str

class TelemetryError(Exception):
    """The Telemetry is closed, or its queue directory cannot be opened."""

class Json:
    """A payload encoded once and reused without re-encoding (``str(j)`` is the JSON text)."""

    def __init__(self, value: Any, *, max_bytes: int = 1048576) -> None: ...

class Telemetry:
    def __init__(
        self,
        endpoint: Optional[str] = None,
        run_id: Optional[str] = None,
        agent_id: Optional[str] = None,
        control_mode: Optional[str] = None,
        queue_dir: Optional[_PathLike] = None,
        auth_token: Optional[str] = None,
        dry_run: Optional[_PathLike] = None,
        enabled: bool = True,
        *,
        full_policy: Optional[Literal["drop_oldest", "drop_newest", "block"]] = None,
        block_timeout: Optional[float] = None,
        queue_max_bytes: Optional[int] = None,
        max_record_bytes: Optional[int] = None,
        batch_linger: Optional[float] = None,
        reconnect_max: Optional[float] = None,
        drop_flush_timeout: Optional[float] = None,
    ) -> None: ...
    @property
    def run_id(self) -> str: ...
    @property
    def producer_id(self) -> str: ...
    @property
    def policy(self) -> Optional[Dict[str, Any]]: ...
    @property
    def mode(self) -> Literal["live", "dry_run", "disabled"]: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def set_metadata(self, **fields: Any) -> None: ...
    def step(
        self,
        observation: Any,
        action: Any,
        reward: float,
        terminated: bool = False,
        truncated: bool = False,
        info: Optional[Mapping[str, Any]] = None,
        *,
        episode_index: Optional[int] = None,
        step_index: Optional[int] = None,
        agent_id: Optional[str] = None,
        control_mode: Optional[str] = None,
        render_hint: Union[Mapping[str, Any], str, Json, None] = None,
        frame_ref: Optional[str] = None,
    ) -> None: ...
    def episode_end(
        self,
        total_reward: Optional[float] = None,
        length: Optional[int] = None,
        terminated: Optional[bool] = None,
        truncated: Optional[bool] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        *,
        episode_index: Optional[int] = None,
        agent_id: Optional[str] = None,
        control_mode: Optional[str] = None,
    ) -> None: ...
    def run_started(
        self,
        config: Optional[Mapping[str, Any]] = None,
        *,
        agent_id: Optional[str] = None,
        control_mode: Optional[str] = None,
    ) -> None: ...
    def run_completed(
        self,
        status: str = "succeeded",
        error: Optional[str] = None,
        *,
        exit_code: Optional[int] = None,
        reason: Optional[str] = None,
        info: Optional[Mapping[str, Any]] = None,
    ) -> None: ...
    def artifact(self, kind: str, path: _PathLike, *, info: Optional[Mapping[str, Any]] = None) -> None: ...
    def record_jsonl(self, line: str, *, run_id: Optional[str] = None) -> None: ...
    def log_scalar(
        self,
        tag: str,
        value: Any,
        step: Optional[int] = None,
        *,
        agent_id: Optional[str] = None,
        walltime: Optional[float] = None,
    ) -> None: ...
    def log(
        self,
        values: Mapping[str, Any],
        step: Optional[int] = None,
        *,
        agent_id: Optional[str] = None,
        walltime: Optional[float] = None,
    ) -> None: ...
    @property
    def global_step(self) -> int: ...
    @property
    def episode_scalars(self) -> bool: ...
    def register_on_step(self, hook: _Hook) -> _Hook: ...
    def register_on_episode_end(self, hook: _Hook) -> _Hook: ...
    def flush(self, timeout: float = 5.0) -> Dict[str, Any]: ...
    def close(self, timeout: float = 5.0) -> Dict[str, Any]: ...
    def stats(self) -> Dict[str, Any]: ...
    def frame_stats(self) -> Dict[str, Any]: ...
    def flush_frames(self, timeout: Optional[float] = None) -> bool: ...
    def __enter__(self) -> "Telemetry": ...
    def __exit__(
        self,
        *_exc: Union[Optional[Type[BaseException]], Optional[BaseException], Optional[TracebackType]],
    ) -> bool: ...

class FrameCapture:
    """Which frames a wrapper captures from ``env.render()`` (``rgb_array``)."""

    def __init__(
        self,
        every_k_steps: Optional[int] = None,
        episode_trigger: Optional[Callable[[int], bool]] = None,
    ) -> None: ...
    @property
    def every_k_steps(self) -> Optional[int]: ...
    def triggers(self, episode_index: int) -> bool: ...

class EpisodeRecorder:
    """One agent's step/episode bookkeeping for the Gymnasium wrappers."""

    def __init__(
        self,
        telemetry: Telemetry,
        agent_id: Optional[str] = None,
        control_mode: Optional[str] = None,
        record_info: bool = True,
        *,
        episode_scalars: bool = False,
    ) -> None: ...
    @property
    def episode_index(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def errors(self) -> int: ...
    def set_toy_text_render(self, env: Any, rows: int, cols: int) -> None: ...
    def set_render(self, hint: Optional[Callable[[], Any]]) -> None: ...
    def set_frame_capture(
        self, capture: Optional[FrameCapture], env: Optional[Any] = None, render_fps: float = 0.0
    ) -> bool: ...
    def begin(self, metadata: Optional[Mapping[str, Any]] = None) -> None: ...
    def step(self, env: Any, action: Any) -> Any: ...
    def bind(self, env: Any) -> None: ...
    def step_bound(self, action: Any) -> Any: ...
    def record(
        self,
        observation: Any,
        action: Any,
        reward: float,
        terminated: bool,
        truncated: bool,
        info: Optional[Mapping[str, Any]] = None,
        render_hint: Union[Mapping[str, Any], str, Json, None] = None,
        *,
        episode_info: Optional[Mapping[str, Any]] = None,
        scalar_step: Optional[int] = None,
    ) -> bool: ...

def from_env(
    endpoint: Optional[str] = None,
    run_id: Optional[str] = None,
    agent_id: Optional[str] = None,
    control_mode: Optional[str] = None,
    queue_dir: Optional[_PathLike] = None,
    auth_token: Optional[str] = None,
    dry_run: Optional[_PathLike] = None,
    enabled: Optional[bool] = None,
    *,
    full_policy: Optional[Literal["drop_oldest", "drop_newest", "block"]] = None,
    block_timeout: Optional[float] = None,
    queue_max_bytes: Optional[int] = None,
    max_record_bytes: Optional[int] = None,
    batch_linger: Optional[float] = None,
    reconnect_max: Optional[float] = None,
    drop_flush_timeout: Optional[float] = None,
) -> Telemetry: ...
def encode_json(value: Any, *, max_bytes: int = 1048576) -> str: ...
def normalize_control_mode(value: str) -> str: ...
def _close_all(timeout: float = 5.0) -> int: ...
