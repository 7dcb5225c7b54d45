"""Gymnasium wrappers (1.x, and 0.29.x as CleanRL pins it) that record every step and episode
through a ``Telemetry``.

``TelemetryWrapper(env, telemetry)`` records one step per ``env.step`` and one episode when an
episode terminates or truncates (its return and length), with an ANSI render hint on each step
of text-rendered grid environments (FrozenLake, Taxi, CliffWalking, or any env made with
``render_mode="ansi"``) in the convention
``render_hint_json = {"ansi": "<text with ANSI SGR escapes>", "rows": R, "cols": C}``, where
R x C is the grid in cells when the environment has one (FrozenLake's nrow x ncol, Taxi's 5 x 5,
CliffWalking's 4 x 12), else the text's lines and widest line.

``TelemetryVectorWrapper(envs, telemetry)`` does the same for each sub-environment of a vector
env, with agent ids ``f"{agent_id}-{i}"``, honouring the env's autoreset mode:

- ``NEXT_STEP`` (the default): the step after an episode's end is the sub-environment's reset,
  not a real step, and is not recorded;
- ``SAME_STEP``: the final step is recorded with the final observation and info
  (``info["final_obs"]`` / ``info["final_info"]``), not the reset observation that replaced it;
- ``DISABLED``: the caller resets sub-environments with ``reset(options={"reset_mask": m})``;
  each reset starts a new episode for the masked sub-environments.

Gymnasium 0.29.x vector envs (``gymnasium.vector.VectorEnvWrapper`` era) always reset in the
same step and report the final observation and info in ``infos["final_observation"]`` /
``infos["final_info"]`` (one dict per sub-environment, where ``RecordEpisodeStatistics`` puts
``episode``): they are recorded as ``SAME_STEP`` above.

Episode scalars. With ``episode_scalars=True`` (the default) each finished episode also records
the run-wide scalars ``charts/episodic_return`` and ``charts/episodic_length`` (CleanRL's tags)
at the run's global step (``telemetry.global_step``: env steps recorded, every agent's; for a
vector env, the global step after the whole ``envs.step`` call, as a CleanRL loop counts it).
The values are ``info["episode"]["r"]`` / ``["l"]`` when ``RecordEpisodeStatistics`` put them in
the episode's final info (what a CleanRL script logs, before any reward wrapper outside it),
else the recorded episode's return and length. ``gym_telemetry.SummaryWriter`` then skips its
own ``add_scalar`` of exactly those two tags on the same ``Telemetry``, so each episode is stored
once. Pass ``episode_scalars=False`` for an env whose episodes are not the training curve (an
evaluation env).

Frames. With ``capture_frames=gym_telemetry.FrameCapture(every_k_steps=..., episode_trigger=...)``
(the env made with ``render_mode="rgb_array"``) the wrapper captures ``env.render()`` after the
chosen steps: every step of the episodes ``episode_trigger(episode_index)`` chooses (default:
Gymnasium ``RecordVideo``'s capped cubic schedule, episodes 0, 1, 8, 27, ..., 729, then every
1000th), and every ``every_k_steps``-th step (0, k, 2k, ...) of any episode. One frame per
recorded step: the step's record carries its ``frame_ref``. The pixels are copied in Rust and
compressed and sent by the shim's frame sender on its own thread (its own byte budget, never
blocking the loop); the fps of an exported clip is the env's ``metadata["render_fps"]``.
Without ``capture_frames`` the step path is unchanged. In a vector env each sub-environment of
a ``SyncVectorEnv`` (``env.envs``) is rendered; other vector envs cannot be captured.

A ``reset()`` in the middle of an episode abandons it: its steps stay recorded, no episode
record is written for it, and the next steps belong to the next episode index. The recorded
observation of a step is the one ``env.step`` returned. Failures of telemetry calls never break
the environment loop: they are logged (bounded) to the ``"gym_telemetry"`` logger and counted in
``wrapper.telemetry_errors``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

import enum
import gymnasium as gym
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import iterate

try:
    from gymnasium.vector import VectorWrapper

    _GYM_029 = False
except ImportError:  # gymnasium 0.29.x: VectorEnvWrapper, same-step autoreset only
    from gymnasium.vector import VectorEnvWrapper as VectorWrapper

    _GYM_029 = True

try:
    from gymnasium.vector import AutoresetMode
except ImportError:
    try:  # gymnasium 1.0 exports it from vector_env only
        from gymnasium.vector.vector_env import AutoresetMode
    except ImportError:  # gymnasium 0.29.x has none: its vector envs reset in the same step

        class AutoresetMode(enum.Enum):  # type: ignore[no-redef]
            """Gymnasium 1.x's autoreset modes, for gymnasium 0.29.x (which has only SAME_STEP)."""

            NEXT_STEP = "NextStep"
            SAME_STEP = "SameStep"
            DISABLED = "Disabled"

from ._native import EpisodeRecorder, FrameCapture, Json, Telemetry, normalize_control_mode

__all__ = ["TelemetryWrapper", "TelemetryVectorWrapper"]

_log = logging.getLogger("gym_telemetry")
_SGR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Render hints kept per wrapper (toy-text grids have at most a few thousand (state, action) keys).
_RENDER_CACHE_MAX = 4096


class _ErrorLog:
    """Counts telemetry failures in a wrapper and logs the first ones, then every 1000th."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, what: str, err: BaseException) -> None:
        self.count += 1
        if self.count <= 10 or self.count % 1000 == 0:
            _log.warning("telemetry %s failed (%d so far): %s", what, self.count, err)


def _text_shape(text: str) -> tuple[int, int]:
    lines = [line for line in _SGR.sub("", text).splitlines() if line.strip()]
    return len(lines), max((len(line) for line in lines), default=0)


def _grid_shape(u: Any, text: str) -> tuple[int, int]:
    if hasattr(u, "nrow") and hasattr(u, "ncol"):  # FrozenLake
        return int(u.nrow), int(u.ncol)
    shape = getattr(u, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:  # CliffWalking
        return int(shape[0]), int(shape[1])
    desc = getattr(u, "desc", None)
    if desc is not None and hasattr(u, "locs") and len(getattr(desc, "shape", ())) == 2:  # Taxi
        return int(desc.shape[0]) - 2, (int(desc.shape[1]) - 1) // 2
    return _text_shape(text)


def _hint(text: str, rows: int, cols: int) -> Json:
    # Encoded once: a cached hint is copied into each step's record without re-encoding.
    return Json({"ansi": text, "rows": rows, "cols": cols})


class _AnsiHints:
    """Render hints of an env made with render_mode="ansi" (rendered at every step)."""

    def __init__(self, env: gym.Env) -> None:
        self._env = env

    def __call__(self) -> Optional[Json]:
        text = self._env.render()
        if not isinstance(text, str):
            return None
        return _hint(text, *_grid_shape(self._env.unwrapped, text))


def _setup_render_hints(rec: EpisodeRecorder, env: gym.Env, render_hint: bool) -> None:
    if not render_hint:
        return
    u = env.unwrapped
    # Gymnasium's own toy-text grids render from (s, lastaction) only: the recorder renders
    # each (state, last action) once and reuses it. Other envs' text may depend on anything,
    # so an env made with render_mode="ansi" is rendered at every step.
    if type(u).__module__.startswith("gymnasium.envs.toy_text") and hasattr(u, "_render_text"):
        rec.set_toy_text_render(u, *_grid_shape(u, ""))
    elif getattr(env, "render_mode", None) == "ansi":
        rec.set_render(_AnsiHints(env))


def _setup_capture(rec: EpisodeRecorder, env: Any, capture: Optional[FrameCapture]) -> None:
    if capture is None:
        return
    if not isinstance(capture, FrameCapture):
        raise TypeError(f"capture_frames must be a gym_telemetry.FrameCapture, not {type(capture).__name__}")
    mode = getattr(env, "render_mode", None)
    if mode != "rgb_array":
        raise ValueError(f'capture_frames needs an env made with render_mode="rgb_array" (it has {mode!r})')
    metadata = getattr(env, "metadata", None) or {}
    fps = metadata.get("render_fps") or 0
    rec.set_frame_capture(capture, env, float(fps))


def _episode_metadata(env: Any, seed: Optional[int]) -> Optional[Json]:
    meta: dict = {}
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        meta["game_id"] = spec.id
    if seed is not None:
        meta["seed"] = int(seed)
    return Json(meta) if meta else None


class TelemetryWrapper(gym.Wrapper):
    """Records every step and finished episode of ``env`` through ``telemetry``.

    Args:
        env: the environment.
        telemetry: a ``gym_telemetry.Telemetry``.
        agent_id: the agent id of the records (None: the Telemetry's own).
        control_mode: who acts: "agent" (default), "human", "hybrid", ...
        render_hint: attach ANSI render hints of text-rendered grids (default True).
        record_info: send each step's ``info`` dict as the step's ``info_json`` (default True).
        episode_scalars: record ``charts/episodic_return`` / ``charts/episodic_length`` at
            each episode's end (default True; see the module docs).
        capture_frames: a ``gym_telemetry.FrameCapture`` choosing the frames of
            ``env.render()`` to capture (default None: no frames; see the module docs).
    """

    def __init__(
        self,
        env: gym.Env,
        telemetry: Telemetry,
        agent_id: Optional[str] = None,
        control_mode: str = "agent",
        render_hint: bool = True,
        record_info: bool = True,
        *,
        episode_scalars: bool = True,
        capture_frames: Optional[FrameCapture] = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(telemetry, Telemetry):
            raise TypeError(f"telemetry must be a gym_telemetry.Telemetry, not {type(telemetry).__name__}")
        self.telemetry = telemetry
        # Numbering, returns, render hints and the record calls happen in Rust: the whole
        # per-step path is one native call around env.step.
        self._rec = EpisodeRecorder(
            telemetry, agent_id, normalize_control_mode(control_mode), bool(record_info),
            episode_scalars=bool(episode_scalars),
        )
        _setup_render_hints(self._rec, env, render_hint)
        _setup_capture(self._rec, env, capture_frames)
        self._errors = _ErrorLog()
        self._meta = _episode_metadata(env, None)  # resets without a seed reuse it (encoded once)
        # The per-step path without a Python frame of ours: this instance's ``step`` is the
        # recorder's native call around the inner env's ``step`` (the class method below does
        # the same, for callers that look it up on the class).
        self._rec.bind(env)
        self.step = self._rec.step_bound

    @property
    def telemetry_errors(self) -> int:
        """Telemetry calls of this wrapper that failed (logged, never raised)."""
        return self._errors.count + self._rec.errors

    @property
    def episode_index(self) -> int:
        """The index of the current (or last) episode; -1 before the first reset."""
        return self._rec.episode_index

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        result = self.env.reset(seed=seed, options=options)
        try:
            self._rec.begin(self._meta if seed is None else _episode_metadata(self.env, seed))
        except Exception as e:  # telemetry must not break the environment loop
            self._errors.report("reset", e)
        return result

    def step(self, action):
        # env.step's errors propagate; telemetry's are counted and logged, never raised.
        return self._rec.step(self.env, action)


_FINAL_KEYS = ("final_obs", "final_info", "final_observation")
_VECTOR_ATTRS = (
    "num_envs", "observation_space", "action_space", "single_observation_space",
    "single_action_space", "metadata", "spec", "render_mode", "is_vector_env",
)


def _sub_info(infos: dict, i: int) -> dict:
    """Sub-environment i's part of a vector env's info dict (``_key`` masks honoured)."""
    out = {}
    for k, v in infos.items():
        if k.startswith("_") or k in _FINAL_KEYS:
            continue
        mask = infos.get("_" + k)
        if mask is not None and not mask[i]:
            continue
        out[k] = _sub_info(v, i) if isinstance(v, dict) else v[i]
    return out


class TelemetryVectorWrapper(VectorWrapper):
    """Records every real step and finished episode of each sub-environment of ``env``.

    Args:
        env: a Gymnasium vector env (``SyncVectorEnv``, ``AsyncVectorEnv``, ...), 1.x or 0.29.x.
        telemetry: a ``gym_telemetry.Telemetry``.
        agent_id: sub-environment ``i`` records as agent ``f"{agent_id}-{i}"``.
        control_mode: who acts (default "agent").
        record_info: send each sub-environment's part of the info dict (default True).
        episode_scalars: record ``charts/episodic_return`` / ``charts/episodic_length`` at
            each episode's end (default True; see the module docs).
        capture_frames: a ``gym_telemetry.FrameCapture`` (each sub-env of a ``SyncVectorEnv``
            rendered on its own; default None).
    """

    def __init__(
        self,
        env: VectorEnv,
        telemetry: Telemetry,
        agent_id: str = "agent",
        control_mode: str = "agent",
        record_info: bool = True,
        *,
        episode_scalars: bool = True,
        capture_frames: Optional[FrameCapture] = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(telemetry, Telemetry):
            raise TypeError(f"telemetry must be a gym_telemetry.Telemetry, not {type(telemetry).__name__}")
        self.telemetry = telemetry
        if _GYM_029:
            # 0.29's VectorEnvWrapper forwards attributes with a deprecation warning on every
            # access: the ones a training loop reads are copied (they do not change).
            for name in _VECTOR_ATTRS:
                if hasattr(env, name):
                    setattr(self, name, getattr(env, name))
            self._autoreset = AutoresetMode.SAME_STEP
            self._final_obs, self._final_info = "final_observation", "final_info"
        else:
            mode = env.metadata.get("autoreset_mode", getattr(env, "autoreset_mode", AutoresetMode.NEXT_STEP))
            self._autoreset = mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)
            self._final_obs, self._final_info = "final_obs", "final_info"
        control_mode = normalize_control_mode(control_mode)
        self._record_info = bool(record_info)
        self._episode_scalars = bool(episode_scalars)
        n = env.num_envs
        self._agent_ids = [f"{agent_id}-{i}" for i in range(n)]
        self._recs = [
            EpisodeRecorder(telemetry, a, control_mode, self._record_info, episode_scalars=self._episode_scalars)
            for a in self._agent_ids
        ]
        if capture_frames is not None:
            subs = getattr(env, "envs", None)
            if subs is None or len(subs) != n:
                raise ValueError("capture_frames needs a SyncVectorEnv (its sub-envs, env.envs, are rendered)")
            for rec, sub in zip(self._recs, subs):
                _setup_capture(rec, sub, capture_frames)
        self._skip = [False] * n  # NEXT_STEP: this sub-env's next entry is its reset
        self._meta: list[Optional[Json]] = [_episode_metadata(env, None)] * n
        self._errors = _ErrorLog()

    @property
    def telemetry_errors(self) -> int:
        """Telemetry calls of this wrapper that failed (logged, never raised)."""
        return self._errors.count

    @property
    def agent_ids(self) -> list[str]:
        """The agent id of each sub-environment."""
        return list(self._agent_ids)

    def _begin(self, i: int) -> None:
        self._skip[i] = False
        try:
            self._recs[i].begin(self._meta[i])
        except Exception as e:
            self._errors.report("reset", e)

    def reset(self, *, seed=None, options: Optional[dict] = None):
        # Read the mask first: SyncVectorEnv.reset pops it from the caller's options dict.
        mask = None if options is None else options.get("reset_mask")
        if mask is not None:
            mask = [bool(m) for m in mask]
        obs, infos = self.env.reset(seed=seed, options=options)
        for i in range(self.num_envs):
            if mask is None or mask[i]:
                if seed is not None:
                    sub_seed = seed + i if isinstance(seed, int) else seed[i]
                    self._meta[i] = _episode_metadata(self.env, sub_seed)
                self._begin(i)
        return obs, infos

    def step(self, actions):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        try:
            self._record(obs, actions, rewards, terminations, truncations, infos)
        except Exception as e:  # telemetry must not break the environment loop
            self._errors.report("vector step", e)
        return obs, rewards, terminations, truncations, infos

    def _final_sub_info(self, infos: dict, i: int) -> dict:
        final_info = infos[self._final_info]
        if _GYM_029:  # an object array with one info dict (or None) per sub-env
            return dict(final_info[i] or {})
        return _sub_info(final_info, i)

    def _record(self, obs, actions, rewards, terminations, truncations, infos) -> None:
        next_step = self._autoreset == AutoresetMode.NEXT_STEP
        same_step = self._autoreset == AutoresetMode.SAME_STEP
        observations = list(iterate(self.env.observation_space, obs))
        acts = list(iterate(self.env.action_space, actions))
        final_mask = infos.get("_" + self._final_obs) if same_step else None
        # The episode scalars of this call go at the global step after all of its steps (a
        # CleanRL loop's global_step), whichever sub-env ended.
        scalar_step = None
        if self._episode_scalars:
            real = sum(1 for i in range(self.num_envs) if not (next_step and self._skip[i]))
            scalar_step = self.telemetry.global_step + real
        for i, rec in enumerate(self._recs):
            if next_step and self._skip[i]:
                self._begin(i)  # the sub-env reset during this call: not a step
                continue
            final = final_mask is not None and bool(final_mask[i])
            observation = infos[self._final_obs][i] if final else observations[i]
            ends = bool(terminations[i] or truncations[i])
            info = None
            if self._record_info or (ends and self._episode_scalars):
                info = self._final_sub_info(infos, i) if final else _sub_info(infos, i)
            try:
                ended = rec.record(
                    observation, acts[i], rewards[i], terminations[i], truncations[i],
                    info if self._record_info else None,
                    episode_info=info if ends else None, scalar_step=scalar_step,
                )
            except Exception as e:
                self._errors.report("step", e)
                ended = bool(terminations[i] or truncations[i])
            self._skip[i] = ended and next_step
