//! `EpisodeRecorder`: one agent's episode bookkeeping for the Gymnasium wrappers, in Rust.
//!
//! A wrapper's `step` runs once per environment step, so the Python it executes is most of
//! what telemetry costs a training loop. The recorder keeps that to one call: it numbers the
//! steps and episodes (with the shim's `tracker::EpisodeCounter`, the numbering rules shared
//! with `Telemetry.step`), sums the return, records the step, and records the episode when the
//! step ends it. Semantics (the wrappers' documented ones):
//!
//! - `begin(metadata)` (on `reset`) starts the next episode if the current one has steps (or
//!   none was started yet); an episode cut short by a reset gets no episode record;
//! - `record(...)` after an episode's last step starts the next episode first;
//! - an episode record carries the return, the length, the end flags and `metadata`.
//!
//! `step(env, action)` is the whole per-step path of `TelemetryWrapper`: it calls
//! `env.step(action)` (whose errors propagate), records the result with the step's render hint,
//! and returns the result untouched. Telemetry failures never escape it: they are counted
//! (`errors`) and logged at a bounded rate.
//!
//! Render hints of Gymnasium's toy-text grids (`set_toy_text_render`) are rendered by the env's
//! `_render_text()` once per (state, last action) and reused: that text depends on nothing else.

use crate::{
    args, encode, logbridge,
    telemetry::{render_hint, Telemetry},
};
use pyo3::{gc::PyVisit, intern, prelude::*, types::PyTuple, PyTraverseError};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, MutexGuard,
    },
};
use telemetry_core::{
    pb::{RunEpisode, RunStep},
    ControlMode,
};
use telemetry_shim::tracker::{EpisodeCounter, StepInput};

#[derive(Default)]
struct State {
    /// Episode and step numbering, the shim's rules (`telemetry_shim::tracker`).
    counter: EpisodeCounter,
    /// The JSON object for the current episode's record.
    metadata_json: String,
}

/// Most cached toy-text render hints per recorder (a grid has states x actions keys).
const RENDER_CACHE_MAX: usize = 4096;

/// Where a step's render hint comes from.
enum Render {
    None,
    /// `env._render_text()` of a toy-text grid, cached by `(env.s, env.lastaction)`.
    ToyText {
        env: Py<PyAny>,
        rows: u64,
        cols: u64,
        cache: Mutex<HashMap<(i64, i64), String>>,
    },
    /// A callable returning the hint (a `Json`, a dict, JSON text, or None).
    Call(Py<PyAny>),
}

/// Records one agent's steps and episodes through a Telemetry, numbering them itself.
///
/// EpisodeRecorder(telemetry, agent_id=None, control_mode=None, record_info=True, *,
/// episode_scalars=False)
///
/// With `episode_scalars`, each finished episode also records the run-wide scalars
/// `charts/episodic_return` and `charts/episodic_length` at the run's global step (see
/// `record`), and the Telemetry's `episode_scalars` becomes True.
#[pyclass(frozen, module = "gym_telemetry._native")]
pub struct EpisodeRecorder {
    telemetry: Py<Telemetry>,
    agent_id: String,
    control_mode: &'static str,
    record_info: bool,
    episode_scalars: bool,
    state: Mutex<State>,
    render: Mutex<std::sync::Arc<Render>>,
    /// `env.step` of the env given to `bind`.
    env_step: Mutex<Option<Py<PyAny>>>,
    errors: AtomicU64,
    limit: logbridge::RateLimit,
    /// Frame capture (`set_frame_capture`); the flag keeps the step path without capture to
    /// one atomic load.
    capture_on: std::sync::atomic::AtomicBool,
    capture: Mutex<Option<std::sync::Arc<crate::frames::Capture>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EpisodeRecorder {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Counts and logs (bounded) a telemetry failure of `step`.
    fn failed(&self, py: Python<'_>, what: &str, err: &PyErr) {
        let n = self.errors.fetch_add(1, Relaxed) + 1;
        if let Some(held) = self.limit.allow() {
            logbridge::warn(
                py,
                &format!("telemetry {what} failed ({n} so far, {held} not logged): {err}"),
                None,
            );
        }
    }

    /// The step's render hint as JSON text ("" for none).
    fn hint(&self, py: Python<'_>, max: usize) -> PyResult<String> {
        let render = std::sync::Arc::clone(&lock(&self.render));
        match &*render {
            Render::None => Ok(String::new()),
            Render::Call(f) => render_hint(Some(&f.bind(py).call0()?), max),
            Render::ToyText {
                env,
                rows,
                cols,
                cache,
            } => {
                let env = env.bind(py);
                let key = (|| -> PyResult<(i64, i64)> {
                    let s: i64 = env.getattr(intern!(py, "s"))?.extract()?;
                    let a = env.getattr(intern!(py, "lastaction"))?;
                    Ok((s, if a.is_none() { -1 } else { a.extract()? }))
                })();
                if let Ok(k) = &key {
                    if let Some(h) = lock(cache).get(k) {
                        return Ok(h.clone());
                    }
                }
                let text: String = env.call_method0(intern!(py, "_render_text"))?.extract()?;
                let hint =
                    serde_json::json!({"ansi": text, "rows": rows, "cols": cols}).to_string();
                if let Ok(k) = key {
                    let mut c = lock(cache);
                    if c.len() >= RENDER_CACHE_MAX {
                        c.clear();
                    }
                    c.insert(k, hint.clone());
                }
                Ok(hint)
            }
        }
    }

    /// Records an `env.step` result; returns it untouched.
    fn after_step<'py>(
        &self,
        py: Python<'py>,
        result: Bound<'py, PyAny>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let recorded = (|| -> PyResult<()> {
            let t = result.cast::<PyTuple>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("env.step did not return a tuple")
            })?;
            if t.len() != 5 {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "env.step returned {} values, expected 5",
                    t.len()
                )));
            }
            let tel = self.telemetry.get();
            let hint = if tel.is_enabled() {
                self.hint(py, tel.max_record_bytes()).unwrap_or_else(|e| {
                    self.failed(py, "render hint", &e);
                    String::new()
                })
            } else {
                String::new()
            };
            let full_info = t.get_item(4)?;
            let info = (self.record_info && !full_info.is_none()).then_some(&full_info);
            let r = self.record_inner(
                py,
                tel,
                &t.get_item(0)?,
                action,
                &t.get_item(1)?,
                &t.get_item(2)?,
                &t.get_item(3)?,
                info,
                hint,
                Some(&full_info),
                None,
            );
            tel.count(py, r).map(|_| ())
        })();
        if let Err(e) = recorded {
            self.failed(py, "step", &e);
        }
        Ok(result)
    }

    /// Records one step, and its episode when the step ends it. Returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn record_inner(
        &self,
        py: Python<'_>,
        tel: &Telemetry,
        observation: &Bound<'_, PyAny>,
        action: &Bound<'_, PyAny>,
        reward: &Bound<'_, PyAny>,
        terminated: &Bound<'_, PyAny>,
        truncated: &Bound<'_, PyAny>,
        info: Option<&Bound<'_, PyAny>>,
        hint: String,
        stats_info: Option<&Bound<'_, PyAny>>,
        scalar_step: Option<u64>,
    ) -> PyResult<bool> {
        let reward = args::finite(reward, "reward")?;
        let terminated = args::boolean(terminated, "terminated")?;
        let truncated = args::boolean(truncated, "truncated")?;
        let ended = terminated || truncated;
        if !tel.is_enabled() {
            return Ok(ended);
        }
        let mut step: RunStep = tel.payloads(observation, action, info)?;
        step.render_hint_json = hint;
        let (episode_index, step_index, episode) = {
            let mut st = self.state();
            let (episode_index, step_index) = st.counter.step(&StepInput {
                episode_index: None,
                step_index: None,
                reward,
                terminated,
                truncated,
            });
            let episode = ended.then(|| {
                let tracked = st.counter.summary();
                RunEpisode {
                    episode_index,
                    total_reward: tracked.total_reward,
                    steps: tracked.length,
                    terminated,
                    truncated,
                    metadata_json: st.metadata_json.clone(),
                    agent_id: self.agent_id.clone(),
                    control_mode: self.control_mode.to_owned(),
                    ..RunEpisode::default()
                }
            });
            (episode_index, step_index, episode)
        };
        step.episode_index = episode_index;
        step.step_index = step_index;
        step.reward = reward;
        step.terminated = terminated;
        step.truncated = truncated;
        step.agent_id.clone_from(&self.agent_id);
        self.control_mode.clone_into(&mut step.control_mode);
        if self.capture_on.load(Relaxed) {
            let capture = lock(&self.capture).clone();
            if let Some(c) = capture {
                match c.maybe_capture(py, episode_index, step_index) {
                    Ok(Some(r)) => step.frame_ref = r,
                    Ok(None) => {}
                    Err(e) => self.failed(py, "frame capture", &e),
                }
            }
        }
        tel.send(py, step.into())?;
        tel.count_env_step();
        if let Some(e) = episode {
            let (ret, len) = (e.total_reward, e.steps);
            tel.send(py, e.into())?;
            if self.episode_scalars {
                let (ret, len) = stats_info
                    .and_then(episode_statistics)
                    .unwrap_or((ret, len as f64));
                let step = scalar_step.unwrap_or_else(|| tel.steps_recorded());
                tel.send_scalar(py, EPISODIC_RETURN, ret, step)?;
                tel.send_scalar(py, EPISODIC_LENGTH, len, step)?;
            }
        }
        Ok(ended)
    }
}

/// The episode scalars' tags (CleanRL's names).
const EPISODIC_RETURN: &str = "charts/episodic_return";
const EPISODIC_LENGTH: &str = "charts/episodic_length";

/// `info["episode"]["r"]` and `["l"]` as Gymnasium's `RecordEpisodeStatistics` leaves them
/// at an episode's end (numbers, or one-element arrays), if there.
fn episode_statistics(info: &Bound<'_, PyAny>) -> Option<(f64, f64)> {
    let ep = info.get_item("episode").ok()?;
    let r = crate::telemetry::scalar_value(&ep.get_item("r").ok()?, EPISODIC_RETURN).ok()?;
    let l = crate::telemetry::scalar_value(&ep.get_item("l").ok()?, EPISODIC_LENGTH).ok()?;
    Some((r, l))
}

#[pymethods]
impl EpisodeRecorder {
    #[new]
    #[pyo3(signature = (telemetry, agent_id=None, control_mode=None, record_info=true, *,
        episode_scalars=false))]
    fn new(
        telemetry: Py<Telemetry>,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
        record_info: bool,
        episode_scalars: bool,
    ) -> PyResult<Self> {
        if episode_scalars {
            telemetry.get().attach_episode_scalars();
        }
        Ok(EpisodeRecorder {
            telemetry,
            episode_scalars,
            agent_id: args::opt_id(agent_id, "agent_id")?.unwrap_or_default(),
            control_mode: args::opt_control_mode(control_mode, "control_mode")?
                .map(ControlMode::as_str)
                .unwrap_or(""),
            record_info,
            state: Mutex::new(State::default()),
            render: Mutex::new(std::sync::Arc::new(Render::None)),
            env_step: Mutex::new(None),
            errors: AtomicU64::new(0),
            limit: logbridge::RateLimit::default(),
            capture_on: std::sync::atomic::AtomicBool::new(false),
            capture: Mutex::new(None),
        })
    }

    /// Captures frames of `env` (`env.render()`, `rgb_array`) as `capture` chooses, at
    /// `render_fps` (the env's `metadata["render_fps"]`; 0: unknown). None turns capture off.
    /// Returns whether frames will be sent (False when the Telemetry is not live).
    #[pyo3(signature = (capture, env=None, render_fps=0.0))]
    fn set_frame_capture(
        &self,
        py: Python<'_>,
        capture: Option<Py<crate::frames::FrameCapture>>,
        env: Option<Py<PyAny>>,
        render_fps: f64,
    ) -> PyResult<bool> {
        let (Some(capture), Some(env)) = (capture, env) else {
            self.capture_on.store(false, Relaxed);
            *lock(&self.capture) = None;
            return Ok(false);
        };
        let Some(sender) = self.telemetry.get().frame_sender(py) else {
            self.capture_on.store(false, Relaxed);
            return Ok(false);
        };
        let fps = if render_fps.is_finite() && render_fps > 0.0 {
            render_fps
        } else {
            0.0
        };
        *lock(&self.capture) = Some(std::sync::Arc::new(crate::frames::Capture::new(
            capture,
            env,
            fps,
            sender,
            (!self.agent_id.is_empty()).then(|| self.agent_id.clone()),
        )));
        self.capture_on.store(true, Relaxed);
        Ok(true)
    }

    /// Telemetry failures of `step` so far (counted and logged, never raised).
    #[getter]
    fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// Render hints from a Gymnasium toy-text env (`env.unwrapped`): its `_render_text()` as
    /// `{"ansi": text, "rows": rows, "cols": cols}`, cached per (state, last action).
    fn set_toy_text_render(&self, env: Py<PyAny>, rows: u64, cols: u64) {
        *lock(&self.render) = std::sync::Arc::new(Render::ToyText {
            env,
            rows,
            cols,
            cache: Mutex::new(HashMap::new()),
        });
    }

    /// Render hints from `hint()` (a `Json`, dict, JSON text or None) at every step; None
    /// turns render hints off.
    fn set_render(&self, hint: Option<Py<PyAny>>) {
        *lock(&self.render) = std::sync::Arc::new(match hint {
            Some(f) => Render::Call(f),
            None => Render::None,
        });
    }

    /// `env.step(action)`, recorded: returns the env's result untouched. Errors of the env
    /// propagate; telemetry errors are counted in `errors` and logged.
    fn step<'py>(
        &self,
        py: Python<'py>,
        env: &Bound<'py, PyAny>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let result = env.call_method1(intern!(py, "step"), (action,))?;
        self.after_step(py, result, action)
    }

    /// Remembers `env.step` for [`Self::step_bound`].
    fn bind(&self, env: &Bound<'_, PyAny>) -> PyResult<()> {
        *lock(&self.env_step) = Some(env.getattr(intern!(env.py(), "step"))?.unbind());
        Ok(())
    }

    /// Like `step(env, action)` for the env given to `bind` (the wrappers install it as their
    /// instance's `step`, so an env step costs no Python frame of ours).
    fn step_bound<'py>(
        &self,
        py: Python<'py>,
        action: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let step = lock(&self.env_step)
            .as_ref()
            .map(|s| s.clone_ref(py))
            .ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err(
                    "EpisodeRecorder.bind(env) was not called",
                )
            })?;
        let result = step.bind(py).call1((action,))?;
        self.after_step(py, result, action)
    }

    /// The current episode's index (-1 before the first).
    #[getter]
    fn episode_index(&self) -> i64 {
        self.state()
            .counter
            .current()
            .map_or(-1, |e| i64::try_from(e).unwrap_or(i64::MAX))
    }

    /// Steps recorded in the current episode.
    #[getter]
    fn steps(&self) -> u64 {
        self.state().counter.summary().length
    }

    /// Starts the next episode (see the module docs); `metadata` (a dict, or a `Json` of one)
    /// goes into its episode record.
    #[pyo3(signature = (metadata=None))]
    fn begin(&self, metadata: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let tel = self.telemetry.get();
        let metadata_json = match metadata {
            Some(m) => match m.cast_exact::<encode::Json>() {
                Ok(j) => j.get().text().to_owned(),
                Err(_) => encode::object_to_json(m, "metadata", tel.max_record_bytes())?,
            },
            None => String::new(),
        };
        let mut st = self.state();
        st.counter.begin();
        st.metadata_json = metadata_json;
        Ok(())
    }

    /// Records one step, and the episode when this step ends it. Returns whether it did.
    ///
    /// With `episode_scalars`, an episode's end also records `charts/episodic_return` and
    /// `charts/episodic_length`: `episode_info["episode"]["r"]` / `["l"]` (or `info`'s) when
    /// Gymnasium's `RecordEpisodeStatistics` put them there, else the recorded return and
    /// length; at `scalar_step`, or (None) the global step including this step.
    #[pyo3(signature = (observation, action, reward, terminated, truncated, info=None,
        render_hint=None, *, episode_info=None, scalar_step=None))]
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        py: Python<'_>,
        observation: &Bound<'_, PyAny>,
        action: &Bound<'_, PyAny>,
        reward: &Bound<'_, PyAny>,
        terminated: &Bound<'_, PyAny>,
        truncated: &Bound<'_, PyAny>,
        info: Option<&Bound<'_, PyAny>>,
        render_hint: Option<&Bound<'_, PyAny>>,
        episode_info: Option<&Bound<'_, PyAny>>,
        scalar_step: Option<u64>,
    ) -> PyResult<bool> {
        let tel = self.telemetry.get();
        let stats_info = episode_info.filter(|i| !i.is_none()).or(info);
        let r =
            crate::telemetry::render_hint(render_hint, tel.max_record_bytes()).and_then(|hint| {
                self.record_inner(
                    py,
                    tel,
                    observation,
                    action,
                    reward,
                    terminated,
                    truncated,
                    info,
                    hint,
                    stats_info,
                    scalar_step,
                )
            });
        tel.count(py, r)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.telemetry)?;
        if let Ok(s) = self.env_step.try_lock() {
            visit.call(&*s)?;
        }
        if let Ok(c) = self.capture.try_lock() {
            if let Some(c) = &*c {
                c.visit(&visit)?;
            }
        }
        if let Ok(r) = self.render.try_lock() {
            match &**r {
                Render::ToyText { env, .. } => visit.call(env)?,
                Render::Call(f) => visit.call(f)?,
                Render::None => {}
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        *lock(&self.env_step) = None;
        *lock(&self.render) = std::sync::Arc::new(Render::None);
        self.capture_on.store(false, Relaxed);
        *lock(&self.capture) = None;
    }
}
