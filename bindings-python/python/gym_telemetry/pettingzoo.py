"""PettingZoo wrappers (Parallel API and AEC API) that record every agent's steps and episodes
through a ``Telemetry``.

PettingZoo is Gymnasium's multi-agent counterpart, and the predecessor's ``multi_agent`` mode
needs a unique ``agent_id`` per agent. This module is imported only when asked for
(``import gym_telemetry.pettingzoo``), so PettingZoo stays an optional dependency.

``TelemetryParallelWrapper(env, tel)`` and ``TelemetryAECWrapper(env, tel)`` record:

- **One step record per agent per step,** under the agent's own ``agent_id`` (PettingZoo's agent
  name), with control mode ``multi_agent`` unless ``control_modes={agent: mode}`` names
  another for that agent (a human-driven agent: ``"human"``). The numbering, the return sums,
  the payload encoding and the record calls are the Gymnasium wrappers' own
  (``EpisodeRecorder``, in Rust), one recorder per agent.

  - Parallel: each agent in the ``rewards`` dict of an ``env.step`` gets a step (its action is
    ``actions[agent]``; an agent that joined during that step had none and records ``null``),
    so an agent's recorded return is the sum of the rewards the env gave it.
  - AEC: each action an agent takes (``env.step(action)`` while it is alive) is one step
    record, closed at the agent's next turn (or its dead step) with what PettingZoo gives it
    then: the reward accumulated since it acted (``last()``'s cumulative reward), the
    observation it sees and its termination/truncation. The dead step (``step(None)``) is not a
    step of its own. Rewards an agent got before its first action count in its first step.

- **Episodes per agent.** An agent's episode ends at its termination or truncation (it leaves
  ``env.agents``); an agent added after ``reset`` starts its first episode when it first
  appears. Each ends with an episode record (return, length, flags, ``{"game_id", "seed"}``).
- **A run-level episode** when the env's episode is over (``env.agents`` is empty): an
  episode record under the ``Telemetry``'s own agent id, control mode ``multi_agent``
  (``hybrid`` when an agent's mode is ``human`` or ``hybrid``), whose return is the sum of the
  agents' returns, whose length is the env's steps (Parallel: ``step`` calls; AEC: actions
  taken), and whose metadata holds each agent's ``return``, ``length``, ``episode_index``,
  ``terminated`` and ``truncated`` under ``"agents"``.
- **Per-agent scalars** ``agents/<agent_id>/episodic_return`` and
  ``agents/<agent_id>/episodic_length`` at each agent's episode end (``episode_scalars=True``,
  the default), recorded under the agent's id at the wrapper's env step count, so the curves
  of every agent sit side by side.
- **Render hints** from ``env.render()`` when the env was made with ``render_mode="ansi"``:
  rendered once per env step (Parallel) or turn (AEC) and attached to each step recorded then.

A ``reset()`` in the middle of an episode abandons it (as in ``TelemetryWrapper``): the steps
stay recorded, no episode record is written. Telemetry failures never break the env loop: they
are logged (bounded) and counted in ``wrapper.telemetry_errors``. At most ``MAX_AGENTS``
recorders are kept (or one more than the most agents the env holds at once, if that is more):
when a new agent needs one past that, the recorders of agents no longer in ``env.agents`` are
forgotten (``wrapper.agents_evicted`` counts them; such an agent, if it returns, numbers its
episodes from 0 again).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from pettingzoo.utils.env import AECEnv, ParallelEnv
from pettingzoo.utils.wrappers import BaseParallelWrapper, BaseWrapper

from ._native import EpisodeRecorder, Json, Telemetry, normalize_control_mode
from .wrappers import _ErrorLog, _text_shape

__all__ = ["MAX_AGENTS", "TelemetryAECWrapper", "TelemetryParallelWrapper"]

#: Agents tracked at once per wrapper (the shim's tracker has the same limit).
MAX_AGENTS = 4096

_HUMAN_MODES = ("human", "hybrid")


class _Agents:
    """The per-agent recorders of one wrapper and the run-level episode in progress."""

    def __init__(
        self,
        env: Any,
        telemetry: Telemetry,
        control_mode: str,
        control_modes: Optional[Mapping[str, str]],
        record_info: bool,
        episode_scalars: bool,
        render_hint: bool,
    ) -> None:
        if not isinstance(telemetry, Telemetry):
            raise TypeError(f"telemetry must be a gym_telemetry.Telemetry, not {type(telemetry).__name__}")
        self.env = env
        self.telemetry = telemetry
        self.mode = normalize_control_mode(control_mode)
        self.modes = {str(a): normalize_control_mode(m) for a, m in (control_modes or {}).items()}
        self.run_mode = (
            "hybrid" if any(m in _HUMAN_MODES for m in (self.mode, *self.modes.values())) else "multi_agent"
        )
        self.record_info = bool(record_info)
        self.episode_scalars = bool(episode_scalars)
        self.ansi = bool(render_hint) and getattr(env, "render_mode", None) == "ansi"
        self.recs: Dict[str, EpisodeRecorder] = {}
        self.errors = _ErrorLog()
        self.evicted = 0
        self.env_steps = 0  # over the wrapper's life: the x axis of the per-agent scalars
        self.meta: Optional[Json] = None
        self.run_episode = -1
        self.episode_steps = 0  # env steps of the run-level episode in progress
        self.ended: Dict[str, dict] = {}  # agents whose episode ended in this run-level episode

    def game_meta(self, seed: Optional[int]) -> Optional[Json]:
        meta: dict = {}
        name = (getattr(self.env, "metadata", None) or {}).get("name")
        if name:
            meta["game_id"] = str(name)
        if seed is not None:
            meta["seed"] = int(seed)
        return Json(meta) if meta else None

    def rec(self, agent: Any) -> EpisodeRecorder:
        """The agent's recorder; an agent seen for the first time starts its first episode."""
        key = str(agent)
        rec = self.recs.get(key)
        if rec is None:
            if len(self.recs) >= MAX_AGENTS:
                self.evict()
            rec = EpisodeRecorder(
                self.telemetry, key, self.modes.get(key, self.mode), self.record_info,
                episode_scalars=self.episode_scalars, scalar_prefix=f"agents/{key}/",
            )
            rec.begin(self.meta)
            self.recs[key] = rec
        return rec

    def evict(self) -> None:
        live = {str(a) for a in getattr(self.env, "agents", ())}
        for key in [k for k in self.recs if k not in live]:
            del self.recs[key]
            self.evicted += 1

    def reset(self, seed: Optional[int]) -> None:
        if seed is not None or self.meta is None:
            self.meta = self.game_meta(seed)
        if self.run_episode < 0 or self.episode_steps > 0:
            self.run_episode += 1
        self.episode_steps = 0
        self.ended = {}
        for rec in self.recs.values():
            rec.begin(self.meta)
        for agent in getattr(self.env, "agents", ()):
            self.rec(agent)

    def hint(self) -> Optional[Json]:
        if not self.ansi:
            return None
        try:
            text = self.env.render()
        except Exception as e:  # a render failure costs the hint, not the step
            self.errors.report("render", e)
            return None
        if not isinstance(text, str):
            return None
        rows, cols = _text_shape(text)
        return Json({"ansi": text, "rows": rows, "cols": cols})

    def record(self, agent: Any, obs, action, reward, terminated, truncated, info, hint) -> None:
        rec = self.rec(agent)
        try:
            ended = rec.record(
                obs, action, reward, terminated, truncated,
                info if self.record_info else None, hint, scalar_step=self.env_steps,
            )
        except Exception as e:
            self.errors.report("step", e)
            return
        if ended:
            self.ended[str(agent)] = {
                "episode_index": rec.episode_index,
                "return": rec.episode_return,
                "length": rec.steps,
                "terminated": bool(terminated),
                "truncated": bool(truncated),
            }

    def env_step_done(self) -> None:
        """After an env step: the run-level episode record once no agent is left."""
        if getattr(self.env, "agents", None) or self.episode_steps == 0 or not self.ended:
            return
        agents = dict(sorted(self.ended.items()))
        truncated = any(a["truncated"] for a in agents.values())
        meta = {"agents": agents}
        if self.meta is not None:
            meta.update(_json_dict(self.meta))
        try:
            self.telemetry.episode_end(
                sum(a["return"] for a in agents.values()), self.episode_steps,
                not truncated, truncated, meta,
                episode_index=self.run_episode, control_mode=self.run_mode,
            )
        except Exception as e:
            self.errors.report("episode", e)
        # The next steps (without a reset) belong to the next run-level episode.
        self.ended = {}
        self.episode_steps = 0
        self.run_episode += 1

    @property
    def telemetry_errors(self) -> int:
        return self.errors.count + sum(r.errors for r in self.recs.values())


def _json_dict(j: Json) -> dict:
    import json

    return json.loads(str(j))


class TelemetryParallelWrapper(BaseParallelWrapper):
    """Records every agent's steps and episodes of a PettingZoo ``ParallelEnv``.

    Args:
        env: the Parallel env.
        telemetry: a ``gym_telemetry.Telemetry``.
        control_mode: every agent's control mode (default ``"multi_agent"``).
        control_modes: per-agent modes that override it (``{"player_1": "human"}``).
        render_hint: attach ``env.render()`` as an ANSI hint when ``render_mode == "ansi"``.
        record_info: send each agent's info dict with its step (default True).
        episode_scalars: record ``agents/<id>/episodic_return`` / ``episodic_length``.
    """

    def __init__(
        self,
        env: ParallelEnv,
        telemetry: Telemetry,
        control_mode: str = "multi_agent",
        control_modes: Optional[Mapping[str, str]] = None,
        render_hint: bool = True,
        record_info: bool = True,
        *,
        episode_scalars: bool = True,
    ) -> None:
        super().__init__(env)
        self.telemetry = telemetry
        self._tel = _Agents(env, telemetry, control_mode, control_modes, record_info, episode_scalars, render_hint)

    @property
    def telemetry_errors(self) -> int:
        """Telemetry calls of this wrapper that failed (logged, never raised)."""
        return self._tel.telemetry_errors

    @property
    def agents_evicted(self) -> int:
        """Recorders of departed agents forgotten to stay within ``MAX_AGENTS``."""
        return self._tel.evicted

    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None):
        result = self.env.reset(seed=seed, options=options)
        try:
            self._tel.reset(seed)
        except Exception as e:
            self._tel.errors.report("reset", e)
        return result

    def step(self, actions):
        result = self.env.step(actions)
        try:
            self._record(actions, result)
        except Exception as e:  # telemetry must not break the environment loop
            self._tel.errors.report("step", e)
        return result

    def _record(self, actions, result) -> None:
        obs, rewards, terminations, truncations, infos = result
        t = self._tel
        t.env_steps += 1
        t.episode_steps += 1
        hint = t.hint()
        for agent, reward in rewards.items():
            t.record(
                agent, obs.get(agent), actions.get(agent), reward,
                terminations.get(agent, False), truncations.get(agent, False),
                infos.get(agent), hint,
            )
        t.env_step_done()


class TelemetryAECWrapper(BaseWrapper):
    """Records every agent's steps and episodes of a PettingZoo ``AECEnv``.

    Args: as ``TelemetryParallelWrapper``'s.
    """

    def __init__(
        self,
        env: AECEnv,
        telemetry: Telemetry,
        control_mode: str = "multi_agent",
        control_modes: Optional[Mapping[str, str]] = None,
        render_hint: bool = True,
        record_info: bool = True,
        *,
        episode_scalars: bool = True,
    ) -> None:
        super().__init__(env)
        self.telemetry = telemetry
        self._tel = _Agents(env, telemetry, control_mode, control_modes, record_info, episode_scalars, render_hint)
        # Per agent: the action it took and has not been closed yet, with its render hint.
        self._pending: Dict[str, tuple] = {}
        # Per agent: reward accumulated before its first action (counted in its first step).
        self._carry: Dict[str, float] = {}
        self._last: Optional[tuple] = None  # (agent, observation) of the last last()

    @property
    def telemetry_errors(self) -> int:
        """Telemetry calls of this wrapper that failed (logged, never raised)."""
        return self._tel.telemetry_errors

    @property
    def agents_evicted(self) -> int:
        """Recorders of departed agents forgotten to stay within ``MAX_AGENTS``."""
        return self._tel.evicted

    def reset(self, seed: Optional[int] = None, options: Optional[dict] = None) -> None:
        try:
            self._abandon()
        except Exception as e:
            self._tel.errors.report("reset", e)
        self.env.reset(seed=seed, options=options)
        try:
            self._tel.reset(seed)
        except Exception as e:
            self._tel.errors.report("reset", e)

    def last(self, observe: bool = True):
        result = self.env.last(observe)
        if observe:
            self._last = (self.env.agent_selection, result[0])
        return result

    def step(self, action) -> None:
        acted = None
        try:
            acted = self._before_step()
        except Exception as e:  # telemetry must not break the environment loop
            self._tel.errors.report("step", e)
        self.env.step(action)
        try:
            if acted is not None:
                # Closed at the agent's next turn; the hint shows the board after its action.
                self._pending[acted] = (action, self._tel.hint())
            self._tel.env_step_done()
        except Exception as e:
            self._tel.errors.report("episode", e)

    def _abandon(self) -> None:
        """A reset cut the episode short: pending actions are recorded as they stand."""
        for agent in list(self._pending):
            self._close(agent, terminated=False, truncated=False)
        self._carry = {}
        self._last = None

    def _observation(self, agent: Any):
        if self._last is not None and self._last[0] == agent:
            return self._last[1]
        return self.env.observe(agent)

    def _close(self, agent: Any, terminated: bool, truncated: bool) -> None:
        action, hint = self._pending.pop(str(agent))
        env = self.env
        reward = env._cumulative_rewards.get(agent, 0.0) + self._carry.pop(str(agent), 0.0)
        info = env.infos.get(agent) if self._tel.record_info else None
        self._tel.record(agent, self._observation(agent), action, reward, terminated, truncated, info, hint)

    def _before_step(self) -> Optional[str]:
        """Closes the selected agent's pending step; returns its key if it is alive (acting)."""
        env = self.env
        agent = env.agent_selection
        key = str(agent)
        terminated = bool(env.terminations.get(agent, False))
        truncated = bool(env.truncations.get(agent, False))
        if key in self._pending:
            self._close(agent, terminated, truncated)
        elif not (terminated or truncated):
            self._tel.rec(agent)  # an agent seen for the first time starts its episode
            self._carry[key] = self._carry.get(key, 0.0) + float(env._cumulative_rewards.get(agent, 0.0))
        self._last = None
        if terminated or truncated:
            self._carry.pop(key, None)
            return None
        self._tel.env_steps += 1
        self._tel.episode_steps += 1
        return key
