//! The record calls' conversion: Python arguments to a `RunStep` / `RunEpisode` (indices
//! from the [`Tracker`](telemetry_shim::Tracker) when not given), render hints and status
//! words.
//!
//! Split from `telemetry.rs` (the class, its lifetime and its Python methods) because this is
//! where a record's fields get their values and their argument errors.

use super::{lock, Telemetry};
use crate::{args, encode};
use pyo3::{
    exceptions::{PyTypeError, PyValueError},
    prelude::*,
    types::{PyDict, PyString},
};
use telemetry_core::pb::{CompletionStatus, RunEpisode};
use telemetry_shim::tracker::StepInput;

/// A completion-status word, parsed by the core's one parser (the words legacy JSONL accepts).
pub(super) fn status(text: &str) -> PyResult<CompletionStatus> {
    text.parse::<CompletionStatus>()
        .map_err(|e| PyValueError::new_err(format!("status must be a completion status: {e}")))
}

/// `render_hint`: JSON text, a `Json`, or a dict to encode ("" for none).
pub(crate) fn render_hint(obj: Option<&Bound<'_, PyAny>>, max: usize) -> PyResult<String> {
    let Some(h) = obj.filter(|h| !h.is_none()) else {
        return Ok(String::new());
    };
    if let Ok(s) = h.cast::<PyString>() {
        let text = s.to_cow()?.into_owned();
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
            PyValueError::new_err(format!("render_hint is not valid JSON text: {e}"))
        })?;
        return Ok(text);
    }
    if let Ok(j) = h.cast_exact::<encode::Json>() {
        return Ok(j.get().text().to_owned());
    }
    if h.is_instance_of::<PyDict>() {
        return encode::to_json(h, "render_hint", max);
    }
    Err(PyTypeError::new_err(format!(
        "render_hint must be a dict, JSON text, a Json or None, not {}",
        encode::type_name(h)
    )))
}

impl Telemetry {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step_inner(
        &self,
        py: Python<'_>,
        observation: &Bound<'_, PyAny>,
        action: &Bound<'_, PyAny>,
        reward: &Bound<'_, PyAny>,
        terminated: Option<&Bound<'_, PyAny>>,
        truncated: Option<&Bound<'_, PyAny>>,
        info: Option<&Bound<'_, PyAny>>,
        episode_index: Option<&Bound<'_, PyAny>>,
        step_index: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
        hint: Option<&Bound<'_, PyAny>>,
        frame_ref: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let reward = args::finite(reward, "reward")?;
        let terminated = args::opt_bool(terminated, "terminated")?.unwrap_or(false);
        let truncated = args::opt_bool(truncated, "truncated")?.unwrap_or(false);
        let episode_index = args::opt_index(episode_index, "episode_index")?;
        let step_index = args::opt_index(step_index, "step_index")?;
        let agent = args::opt_id(agent_id, "agent_id")?;
        let mode = args::opt_control_mode(control_mode, "control_mode")?;
        let mut step = self.payloads(observation, action, info)?;
        step.render_hint_json = render_hint(hint, self.max_record_bytes)?;
        step.frame_ref = args::opt_str(frame_ref, "frame_ref")?.unwrap_or_default();
        let shim = self.live()?;
        let (episode_index, step_index) = lock(&self.tracker).step(
            agent.as_deref().unwrap_or(""),
            &StepInput {
                episode_index,
                step_index,
                reward,
                terminated,
                truncated,
            },
        );
        step.episode_index = episode_index;
        step.step_index = step_index;
        step.reward = reward;
        step.terminated = terminated;
        step.truncated = truncated;
        step.agent_id = agent.unwrap_or_default();
        step.control_mode = mode.map(|m| m.as_str().to_owned()).unwrap_or_default();
        self.submit(py, shim, step.into())?;
        self.count_env_step();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn episode_inner(
        &self,
        py: Python<'_>,
        total_reward: Option<&Bound<'_, PyAny>>,
        length: Option<&Bound<'_, PyAny>>,
        terminated: Option<&Bound<'_, PyAny>>,
        truncated: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        episode_index: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let total = match total_reward.filter(|t| !t.is_none()) {
            Some(t) => Some(args::finite(t, "total_reward")?),
            None => None,
        };
        let length = args::opt_index(length, "length")?;
        let terminated = args::opt_bool(terminated, "terminated")?;
        let truncated = args::opt_bool(truncated, "truncated")?;
        let metadata_json = match metadata {
            Some(m) => encode::object_to_json(m, "metadata", self.max_record_bytes)?,
            None => String::new(),
        };
        let index = args::opt_index(episode_index, "episode_index")?;
        let agent = args::opt_id(agent_id, "agent_id")?;
        let mode = args::opt_control_mode(control_mode, "control_mode")?;
        let shim = self.live()?;
        let tracked = lock(&self.tracker).episode_end(agent.as_deref().unwrap_or(""), index);
        let episode = RunEpisode {
            episode_index: tracked.index,
            total_reward: total.unwrap_or(tracked.total_reward),
            steps: length.unwrap_or(tracked.length),
            terminated: terminated.unwrap_or(tracked.terminated),
            truncated: truncated.unwrap_or(tracked.truncated),
            metadata_json,
            agent_id: agent.unwrap_or_default(),
            control_mode: mode.map(|m| m.as_str().to_owned()).unwrap_or_default(),
            ..RunEpisode::default()
        };
        self.submit(py, shim, episode.into())
    }
}
