//! `gym_telemetry.Telemetry`: the Python face of one [`telemetry_shim::Telemetry`].
//!
//! Everything here is argument handling: Python values become the protobuf records of
//! `telemetry_core::pb` (observations and actions encoded to JSON by [`crate::encode`]), episode
//! and step indices come from [`telemetry_shim::Tracker`] when not given, and the shim does the rest.
//! Its promises carry over: a record call never waits for the network (it releases the GIL when
//! the `block` full-policy may make it wait), `flush` and `close` wait at most their timeout with
//! the GIL released, and failures of the background sender never raise in a record call: they
//! are counted in `stats()` and logged to the `"gym_telemetry"` logger. Bad arguments raise
//! `TypeError` / `ValueError` naming the argument; a call on a closed `Telemetry` raises
//! `TelemetryError`.
//!
//! The record calls' argument conversion is in `telemetry/records.rs`, closing and the flush
//! report in `telemetry/lifecycle.rs`; this file holds the class and its Python methods.

use crate::{
    args,
    config::{config_error, Overrides},
    encode,
    hooks::{Hooks, Kind},
    logbridge,
};
use pyo3::{
    create_exception,
    exceptions::{PyException, PyTypeError, PyValueError},
    gc::PyVisit,
    prelude::*,
    types::PyDict,
    PyTraverseError,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};
use telemetry_core::{
    pb::{Artifact, RunCompleted, RunStarted, RunStep},
    ControlMode,
};
use telemetry_shim::{FlushOutcome, FullPolicy, Metadata, Mode, ShimConfig, ShimError, Tracker};

create_exception!(
    gym_telemetry,
    TelemetryError,
    PyException,
    "A telemetry operation that cannot be done: the Telemetry is closed, or its queue directory \
     cannot be opened."
);

mod lifecycle;
mod records;
mod scalars;

pub use lifecycle::_close_all;
use lifecycle::{report, Core, Outcome, LIVE};
pub(crate) use records::render_hint;
use records::status;
pub(crate) use scalars::value as scalar_value;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of the binding itself (the shim counts the rest).
#[derive(Default)]
struct Counters {
    /// Record calls that raised `TypeError` / `ValueError`.
    invalid_calls: AtomicU64,
    /// Record calls whose record the shim could not take for another reason (logged).
    call_errors: AtomicU64,
}

/// Sends RL telemetry (steps, episodes, run lifecycle) to the gym-telemetry daemon.
///
/// Telemetry(endpoint=None, run_id=None, agent_id=None, control_mode=None, queue_dir=None,
/// auth_token=None, dry_run=None, enabled=True, *, full_policy=None, block_timeout=None,
/// queue_max_bytes=None, max_record_bytes=None, batch_linger=None, reconnect_max=None,
/// drop_flush_timeout=None)
///
/// Settings not given take the shim's defaults (the environment is not read: use
/// `gym_telemetry.from_env()` for that). `dry_run` is a path (or "-" for stdout) to write
/// validated JSONL to instead of sending; `enabled=False` makes every call a no-op. Without a
/// `run_id` one is generated (see the `run_id` property).
#[pyclass(frozen, weakref, module = "gym_telemetry._native")]
pub struct Telemetry {
    core: Arc<Core>,
    enabled: bool,
    mode: &'static str,
    run_id: String,
    producer_id: String,
    /// The full policy may make a record call wait: release the GIL around it.
    may_block: bool,
    max_record_bytes: usize,
    drop_flush_timeout: Duration,
    metadata: Mutex<Metadata>,
    tracker: Mutex<Tracker>,
    hooks: Arc<Hooks>,
    counters: Counters,
    limit: logbridge::RateLimit,
    /// What `record_jsonl` learnt from each run's `run_started` (as the JSONL proxy does).
    jsonl_context: Mutex<telemetry_core::jsonl::RunContext>,
    /// Env steps recorded (every agent's): the run's global step, the default step of a
    /// scalar.
    env_steps: AtomicU64,
    /// Whether a wrapper records the episode scalars (`charts/episodic_return`,
    /// `charts/episodic_length`) into this Telemetry.
    episode_scalars: AtomicBool,
    /// The configuration the frame sender is started from, on first capture.
    frame_config: ShimConfig,
    /// The frame sender (`telemetry_shim::frames`), started by the first wrapper that
    /// captures frames; `None` inside when disabled or not live.
    frames: std::sync::OnceLock<Option<Arc<telemetry_shim::FrameSender>>>,
    /// The policy equipped to this agent, as JSON (`tel.policy`), kept past close().
    policy_json: Option<String>,
}

/// `tel.policy` as JSON: the equipped policy of the agent, with its verified path, manifest and,
/// for an evaluation run, the evaluation plan.
fn policy_json(shim: &telemetry_shim::Telemetry) -> Option<String> {
    let p = shim.policy(None)?;
    let v = serde_json::json!({
        "policy_id": p.policy_id,
        "agent_id": p.agent_id,
        "sha256": p.sha256,
        "path": p.path.display().to_string(),
        "manifest": serde_json::to_value(&p.manifest).unwrap_or_default(),
        "evaluation": shim.evaluation().map(|e| serde_json::to_value(e).unwrap_or_default()),
    });
    Some(v.to_string())
}

fn closed_error() -> PyErr {
    TelemetryError::new_err("this Telemetry is closed")
}

impl Telemetry {
    fn start(py: Python<'_>, mut config: ShimConfig) -> PyResult<Self> {
        let run_id = match config.run_id.clone() {
            Some(r) => args::id(r, "run_id")?,
            None => format!("py-{}", uuid::Uuid::new_v4().simple()),
        };
        config.run_id = Some(run_id.clone());
        let mode = match config.mode {
            Mode::Live => "live",
            Mode::DryRun(_) => "dry_run",
            Mode::Disabled => "disabled",
        };
        let may_block = matches!(config.full_policy, FullPolicy::Block { .. });
        let max_record_bytes = config.max_record_bytes;
        let drop_flush_timeout = config.drop_flush_timeout;
        let frame_config = config.clone();
        // Opening a queue directory reads and checks what a previous process left.
        let shim = py
            .detach(move || telemetry_shim::Telemetry::new(config))
            .map_err(|e| match e {
                ShimError::Config(c) => config_error(c),
                other => TelemetryError::new_err(other.to_string()),
            })?;
        logbridge::drain(py);
        let producer_id = shim.producer_id().to_owned();
        let enabled = shim.is_enabled();
        let policy_json = policy_json(&shim);
        let core = Arc::new(Core {
            shim: Mutex::new(Some(Arc::new(shim))),
            final_stats: Mutex::new(None),
        });
        if enabled {
            let mut live = lock(&LIVE);
            live.retain(|w| w.strong_count() > 0);
            live.push(Arc::downgrade(&core));
        }
        Ok(Telemetry {
            core,
            enabled,
            mode,
            run_id,
            producer_id,
            may_block,
            max_record_bytes,
            drop_flush_timeout,
            metadata: Mutex::new(Metadata::default()),
            tracker: Mutex::new(Tracker::default()),
            hooks: Arc::new(Hooks::new(max_record_bytes)),
            counters: Counters::default(),
            limit: logbridge::RateLimit::default(),
            jsonl_context: Mutex::new(telemetry_core::jsonl::RunContext::new()),
            env_steps: AtomicU64::new(0),
            episode_scalars: AtomicBool::new(false),
            frame_config,
            frames: std::sync::OnceLock::new(),
            policy_json,
        })
    }

    /// The frame sender, started on first use (`None` when telemetry is not live or the sender
    /// could not start, which is logged once).
    pub(crate) fn frame_sender(&self, py: Python<'_>) -> Option<Arc<telemetry_shim::FrameSender>> {
        self.frames
            .get_or_init(|| {
                if !self.enabled || self.core.shim().is_none() {
                    return None;
                }
                let cfg = &self.frame_config;
                match telemetry_shim::FrameSender::new(
                    cfg,
                    telemetry_shim::FrameOptions::for_config(cfg),
                ) {
                    Ok(s) if s.is_enabled() => Some(Arc::new(s)),
                    Ok(_) => None,
                    Err(e) => {
                        logbridge::warn(py, &format!("frame capture is off: {e}"), None);
                        None
                    }
                }
            })
            .clone()
    }

    fn live(&self) -> PyResult<Arc<telemetry_shim::Telemetry>> {
        self.core.shim().ok_or_else(closed_error)
    }

    /// Counts argument errors of a record call.
    fn counted<T>(&self, py: Python<'_>, r: PyResult<T>) -> PyResult<T> {
        if let Err(e) = &r {
            if e.is_instance_of::<PyTypeError>(py) || e.is_instance_of::<PyValueError>(py) {
                self.counters.invalid_calls.fetch_add(1, Relaxed);
            }
        }
        r
    }

    /// Hands a record to the shim. Only a bad record raises; what the shim could not take
    /// for any other reason is counted (by the shim when its queue is full, here otherwise)
    /// and logged.
    fn submit(
        &self,
        py: Python<'_>,
        shim: Arc<telemetry_shim::Telemetry>,
        record: telemetry_core::pb::Record,
    ) -> PyResult<()> {
        self.submit_with(py, move || shim.record(record))
    }

    /// Runs one shim record call (`shim.record(r)`, `shim.scalar(s)`) with [`Self::submit`]'s
    /// error handling, without the GIL when the full policy may make it wait.
    fn submit_with(
        &self,
        py: Python<'_>,
        call: impl FnOnce() -> Result<(), ShimError> + Send,
    ) -> PyResult<()> {
        let res = if self.may_block {
            py.detach(call)
        } else {
            call()
        };
        match res {
            Ok(()) | Err(ShimError::QueueFull { .. }) => Ok(()),
            Err(e @ (ShimError::RecordTooLarge { .. } | ShimError::Invalid(_))) => {
                Err(PyValueError::new_err(e.to_string()))
            }
            Err(ShimError::Closed) => Err(closed_error()),
            Err(e) => {
                self.counters.call_errors.fetch_add(1, Relaxed);
                if let Some(held) = self.limit.allow() {
                    logbridge::warn(
                        py,
                        &format!("telemetry record not taken: {e} ({held} similar not logged)"),
                        None,
                    );
                }
                Ok(())
            }
        }
    }

    fn log_outcome(&self, py: Python<'_>, what: &str, res: Option<&Outcome>) {
        match res {
            Some(Ok(r)) if r.outcome == FlushOutcome::OnDisk => logbridge::log(
                py,
                20,
                &format!(
                    "{what}: the daemon has not acked every record; {} are kept in the queue \
                     directory and will be sent later",
                    r.pending_records
                ),
                None,
            ),
            Some(Err(e)) => logbridge::warn(py, &format!("{what}: {e}"), None),
            _ => {}
        }
    }

    /// A step with its payloads encoded (observation, action, info); the caller fills in the
    /// rest.
    pub(crate) fn payloads(
        &self,
        observation: &Bound<'_, PyAny>,
        action: &Bound<'_, PyAny>,
        info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RunStep> {
        let max = self.max_record_bytes;
        Ok(RunStep {
            observation_json: encode::to_json(observation, "observation", max)?,
            action_json: encode::to_json(action, "action", max)?,
            info_json: match info {
                Some(i) => encode::object_to_json(i, "info", max)?,
                None => String::new(),
            },
            ..RunStep::default()
        })
    }

    /// Hands a finished record to the shim (see [`Self::submit`]).
    pub(crate) fn send(&self, py: Python<'_>, record: telemetry_core::pb::Record) -> PyResult<()> {
        let shim = self.live()?;
        self.submit(py, shim, record)
    }

    /// The largest payload accepted.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Whether records go anywhere.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The run's global step: env steps recorded so far (every agent's).
    pub(crate) fn steps_recorded(&self) -> u64 {
        self.env_steps.load(Relaxed)
    }

    /// Counts one recorded env step (the global step).
    pub(crate) fn count_env_step(&self) {
        self.env_steps.fetch_add(1, Relaxed);
    }

    /// Notes that a wrapper records the episode scalars into this Telemetry.
    pub(crate) fn attach_episode_scalars(&self) {
        self.episode_scalars.store(true, Relaxed);
    }

    /// Records one run-wide scalar made by the binding itself (the wrappers' episode
    /// scalars), with `log_scalar`'s checks.
    pub(crate) fn send_scalar(
        &self,
        py: Python<'_>,
        tag: &str,
        value: f64,
        step: u64,
    ) -> PyResult<()> {
        let s = telemetry_core::pb::Scalar {
            tag: tag.to_owned(),
            value,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            ..Default::default()
        };
        self.send_scalars(py, vec![s])
    }

    /// Counts an argument error of a record call made through a recorder.
    pub(crate) fn count<T>(&self, py: Python<'_>, r: PyResult<T>) -> PyResult<T> {
        self.counted(py, r)
    }
}

#[pymethods]
impl Telemetry {
    #[new]
    #[pyo3(signature = (endpoint=None, run_id=None, agent_id=None, control_mode=None,
        queue_dir=None, auth_token=None, dry_run=None, enabled=true, *, full_policy=None,
        block_timeout=None, queue_max_bytes=None, max_record_bytes=None, batch_linger=None,
        reconnect_max=None, drop_flush_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: Option<&Bound<'_, PyAny>>,
        run_id: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
        queue_dir: Option<&Bound<'_, PyAny>>,
        auth_token: Option<&Bound<'_, PyAny>>,
        dry_run: Option<&Bound<'_, PyAny>>,
        enabled: bool,
        full_policy: Option<&Bound<'_, PyAny>>,
        block_timeout: Option<&Bound<'_, PyAny>>,
        queue_max_bytes: Option<&Bound<'_, PyAny>>,
        max_record_bytes: Option<&Bound<'_, PyAny>>,
        batch_linger: Option<&Bound<'_, PyAny>>,
        reconnect_max: Option<&Bound<'_, PyAny>>,
        drop_flush_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut config = ShimConfig::default();
        Overrides {
            endpoint,
            run_id,
            agent_id,
            control_mode,
            queue_dir,
            auth_token,
            dry_run,
            enabled: Some(enabled),
            full_policy,
            block_timeout,
            queue_max_bytes,
            max_record_bytes,
            batch_linger,
            reconnect_max,
            drop_flush_timeout,
        }
        .apply(&mut config)?;
        Telemetry::start(py, config)
    }

    /// The run every record belongs to (given, from GYM_TELEMETRY_RUN_ID, or generated).
    #[getter]
    fn run_id(&self) -> &str {
        &self.run_id
    }

    /// This process's producer id ("" when disabled); stable across restarts on one queue_dir.
    #[getter]
    fn producer_id(&self) -> &str {
        &self.producer_id
    }

    /// The policy the daemon equipped to this agent (from GYM_TELEMETRY_POLICIES_FILE, its
    /// file verified against its SHA-256 when this Telemetry started), or None: a dict with
    /// policy_id, agent_id, sha256, path (load the checkpoint from here), manifest (env_id,
    /// observation_space, action_space, format, payload_version, source_run_id, ...) and
    /// evaluation (None, or {"episodes": N, ...} for an evaluation run: play N episodes
    /// greedily). Every step and episode of this agent carries policy_id and its digest.
    #[getter]
    fn policy<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.policy_json {
            None => Ok(None),
            Some(s) => Ok(Some(
                py.import("json")?.call_method1("loads", (s.as_str(),))?,
            )),
        }
    }

    /// "live", "dry_run" or "disabled".
    #[getter]
    fn mode(&self) -> &str {
        self.mode
    }

    /// False when telemetry is disabled (every call is then a no-op).
    #[getter]
    fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether close() has been called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.core.shim).is_none()
    }

    /// Sets run facts applied to the records that follow: seed, game_id, control_mode,
    /// agent_id, policy_label, backend, and any other keyword (JSON-encodable) for episodes'
    /// metadata. Keys merge with earlier calls; a value of None removes a key.
    #[pyo3(signature = (**fields))]
    fn set_metadata(&self, py: Python<'_>, fields: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let Some(fields) = fields else {
            return Ok(());
        };
        let mut m = lock(&self.metadata).clone();
        let r = (|| -> PyResult<()> {
            for (k, v) in fields.iter() {
                let key: String = k.extract()?;
                let v = Some(&v);
                match key.as_str() {
                    "seed" => m.seed = args::opt_index(v, "seed")?,
                    "game_id" => m.game_id = args::opt_str(v, "game_id")?,
                    "control_mode" => m.control_mode = args::opt_control_mode(v, "control_mode")?,
                    "agent_id" => m.agent_id = args::opt_id(v, "agent_id")?,
                    "policy_label" => m.policy_label = args::opt_str(v, "policy_label")?,
                    "backend" => m.backend = args::opt_str(v, "backend")?,
                    _ => match v.filter(|v| !v.is_none()) {
                        None => {
                            m.extra.remove(&key);
                        }
                        Some(v) => {
                            let json = encode::to_json(v, &key, self.max_record_bytes)?;
                            let value = serde_json::from_str(&json)
                                .map_err(|e| PyValueError::new_err(format!("{key}: {e}")))?;
                            m.extra.insert(key, value);
                        }
                    },
                }
            }
            Ok(())
        })();
        self.counted(py, r)?;
        *lock(&self.metadata) = m.clone();
        if let Some(shim) = self.core.shim() {
            shim.set_metadata(m);
        }
        Ok(())
    }

    /// Records one environment step (never waits for the network). Episode and step indices
    /// are counted per agent when not given. observation, action and info are encoded to
    /// JSON (numpy arrays and scalars included; NaN and infinities become null).
    #[pyo3(signature = (observation, action, reward, terminated=None, truncated=None,
        info=None, *, episode_index=None, step_index=None, agent_id=None, control_mode=None,
        render_hint=None, frame_ref=None),
        text_signature = "(self, observation, action, reward, terminated=False, truncated=False, info=None, *, episode_index=None, step_index=None, agent_id=None, control_mode=None, render_hint=None, frame_ref=None)")]
    #[allow(clippy::too_many_arguments)]
    fn step(
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
        render_hint: Option<&Bound<'_, PyAny>>,
        frame_ref: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        logbridge::drain(py);
        let r = self.step_inner(
            py,
            observation,
            action,
            reward,
            terminated,
            truncated,
            info,
            episode_index,
            step_index,
            agent_id,
            control_mode,
            render_hint,
            frame_ref,
        );
        self.counted(py, r)
    }

    /// Records a finished episode. What is not given comes from the steps recorded for this
    /// agent's current episode (return, length, end flags, index); the agent then moves on to
    /// the next episode index.
    #[pyo3(signature = (total_reward=None, length=None, terminated=None, truncated=None,
        metadata=None, *, episode_index=None, agent_id=None, control_mode=None))]
    #[allow(clippy::too_many_arguments)]
    fn episode_end(
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
        if !self.enabled {
            return Ok(());
        }
        logbridge::drain(py);
        let r = self.episode_inner(
            py,
            total_reward,
            length,
            terminated,
            truncated,
            metadata,
            episode_index,
            agent_id,
            control_mode,
        );
        self.counted(py, r)
    }

    /// Records that the run started; `config` (a dict) is the worker's configuration.
    #[pyo3(signature = (config=None, *, agent_id=None, control_mode=None))]
    fn run_started(
        &self,
        py: Python<'_>,
        config: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = (|| {
            let config_json = match config {
                Some(c) => encode::object_to_json(c, "config", self.max_record_bytes)?,
                None => String::new(),
            };
            let agent = args::opt_id(agent_id, "agent_id")?;
            let mode = args::opt_control_mode(control_mode, "control_mode")?;
            let shim = self.live()?;
            let started = RunStarted {
                config_json,
                agent_id: agent.unwrap_or_default(),
                control_mode: mode.map(ControlMode::as_str).unwrap_or_default().to_owned(),
                ..RunStarted::default()
            };
            self.submit(py, shim, started.into())
        })();
        self.counted(py, r)
    }

    /// Records how the run ended: status is "succeeded", "failed", "cancelled" or "skipped"
    /// (any case; the synonyms a legacy JSONL worker may use, such as "completed" or "error",
    /// are accepted too).
    #[pyo3(signature = (status=None, error=None, *, exit_code=None, reason=None, info=None),
        text_signature = "(self, status='succeeded', error=None, *, exit_code=None, reason=None, info=None)")]
    fn run_completed(
        &self,
        py: Python<'_>,
        status: Option<&Bound<'_, PyAny>>,
        error: Option<&Bound<'_, PyAny>>,
        exit_code: Option<&Bound<'_, PyAny>>,
        reason: Option<&Bound<'_, PyAny>>,
        info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = (|| {
            let text = args::opt_str(status, "status")?.unwrap_or_else(|| "succeeded".to_owned());
            let status = self::status(&text)?;
            let exit_code = match exit_code.filter(|c| !c.is_none()) {
                None => None,
                Some(c) => Some(c.extract::<i32>().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "exit_code must be an int (32 bits) or None, not {}",
                        encode::type_name(c)
                    ))
                })?),
            };
            let info_json = match info {
                Some(i) => encode::object_to_json(i, "info", self.max_record_bytes)?,
                None => String::new(),
            };
            let completed = RunCompleted {
                status: status as i32,
                exit_code,
                error: args::opt_str(error, "error")?.unwrap_or_default(),
                reason: args::opt_str(reason, "reason")?.unwrap_or_default(),
                info_json,
                ..RunCompleted::default()
            };
            let shim = self.live()?;
            self.submit(py, shim, completed.into())
        })();
        self.counted(py, r)
    }

    /// Records a file the run produced (a policy, checkpoint, video...).
    #[pyo3(signature = (kind, path, *, info=None))]
    fn artifact(
        &self,
        py: Python<'_>,
        kind: &Bound<'_, PyAny>,
        path: &Bound<'_, PyAny>,
        info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = (|| {
            let kind = args::opt_str(Some(kind), "kind")?
                .ok_or_else(|| PyTypeError::new_err("kind must be a str, not None"))?;
            let path = args::opt_path(Some(path), "path")?
                .ok_or_else(|| PyTypeError::new_err("path must be a str or os.PathLike"))?;
            let path = path.to_string_lossy().into_owned();
            if path.is_empty() {
                return Err(PyValueError::new_err("path must not be empty"));
            }
            let info_json = match info {
                Some(i) => encode::object_to_json(i, "info", self.max_record_bytes)?,
                None => String::new(),
            };
            let shim = self.live()?;
            let artifact = Artifact {
                kind,
                path,
                info_json,
                ..Artifact::default()
            };
            self.submit(py, shim, artifact.into())
        })();
        self.counted(py, r)
    }

    /// Records one line of the worker JSONL contract (what a legacy worker prints and
    /// `gym-telemetry-proxy` reads), mapped exactly as the proxy maps it: the same parser, and
    /// each run's `run_started` filling the agent id / control mode / seed / game of its later
    /// steps and episodes. `run_id` replaces the line's run id (the proxy's `--run-id`). A line
    /// that breaks the contract is a `ValueError` naming the problem.
    #[pyo3(signature = (line, *, run_id=None))]
    fn record_jsonl(&self, py: Python<'_>, line: &str, run_id: Option<&str>) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = (|| {
            let mut record = telemetry_core::jsonl::parse_line(line.as_bytes(), 0)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            // The proxy's order: the context learns under the line's own run id, then the
            // run id is replaced.
            lock(&self.jsonl_context).apply(&mut record);
            if let Some(id) = run_id {
                record.set_run_id(id);
            }
            let is_step = matches!(record.kind, Some(telemetry_core::pb::record::Kind::Step(_)));
            let shim = self.live()?;
            self.submit(py, shim, record)?;
            if is_step {
                self.count_env_step();
            }
            Ok(())
        })();
        self.counted(py, r)
    }

    /// Records one training scalar (a loss, a learning rate, an episodic return) at `step`.
    ///
    /// `value`: a float, int or bool, a numpy scalar or 0-d / one-element array, or anything
    /// with `.item()` (torch and jax scalars, read without importing them); NaN and
    /// infinities are kept. Anything else (a list, a str, a multi-element array) is a
    /// TypeError naming the tag. `tag`: non-empty, at most 256 bytes, no control characters
    /// (`/` groups: "losses/td_loss"), else ValueError. `step`: an int >= 0 (ValueError if
    /// negative); None means the run's global step, `global_step`: the env steps this
    /// Telemetry has recorded (every agent's), so a loop that calls step() and then logs
    /// plots against env steps. `agent_id`: None for the run as a whole. `walltime`: seconds
    /// since the epoch (None: now). Never waits for the network.
    #[pyo3(signature = (tag, value, step=None, *, agent_id=None, walltime=None))]
    fn log_scalar(
        &self,
        py: Python<'_>,
        tag: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        step: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        walltime: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = self
            .scalars_of(&[(tag.clone(), value.clone())], step, agent_id, walltime)
            .and_then(|s| self.send_scalars(py, s));
        self.counted(py, r)
    }

    /// Records several scalars at one step: `values` maps tag to value (each as in
    /// log_scalar). Every tag and value is checked first: a bad one raises and none is sent.
    #[pyo3(signature = (values, step=None, *, agent_id=None, walltime=None))]
    fn log(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        step: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        walltime: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let r = Self::pairs(values)
            .and_then(|p| self.scalars_of(&p, step, agent_id, walltime))
            .and_then(|s| self.send_scalars(py, s));
        self.counted(py, r)
    }

    /// The run's global step: the env steps this Telemetry has recorded, of every agent
    /// (through step(), the wrappers, or record_jsonl). The default step of log_scalar / log.
    /// 0 when telemetry is disabled.
    #[getter]
    fn global_step(&self) -> u64 {
        self.steps_recorded()
    }

    /// True once a Gymnasium wrapper records `charts/episodic_return` and
    /// `charts/episodic_length` from its episodes into this Telemetry (then
    /// `gym_telemetry.SummaryWriter` skips those two tags instead of storing them twice).
    #[getter]
    fn episode_scalars(&self) -> bool {
        self.episode_scalars.load(Relaxed)
    }

    /// Calls hook(record_dict) for every step before it is queued; the hook may return a dict
    /// of changes. Returns the hook (usable as a decorator). See the package docs for the
    /// contract; a hook that raises is logged and counted, never fails the step.
    fn register_on_step<'py>(&self, hook: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.register(Kind::Step, hook)
    }

    /// Like register_on_step, for finished episodes.
    fn register_on_episode_end<'py>(&self, hook: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.register(Kind::Episode, hook)
    }

    /// Waits (at most timeout seconds, without the GIL) until every record so far is acked by
    /// the daemon, or else safe in the queue directory. Never raises for delivery problems:
    /// the returned dict's "outcome" says what happened ("acked", "on_disk", "written",
    /// "disabled", "timeout", "not_delivered", "error").
    #[pyo3(signature = (timeout=None), text_signature = "(self, timeout=5.0)")]
    fn flush<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = args::opt_seconds(timeout, "timeout")?.unwrap_or(Duration::from_secs(5));
        let shim = self.live()?;
        let res = py.detach(move || shim.flush(t));
        logbridge::drain(py);
        self.log_outcome(py, "flush", Some(&res));
        report(py, Some(&res))
    }

    /// Flushes (as flush) and stops the background sender. Idempotent: a second call returns
    /// {"outcome": "closed", ...}. Record calls afterwards raise TelemetryError.
    #[pyo3(signature = (timeout=None), text_signature = "(self, timeout=5.0)")]
    fn close<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let t = args::opt_seconds(timeout, "timeout")?.unwrap_or(Duration::from_secs(5));
        let core = Arc::clone(&self.core);
        let frames = self.frames.get().cloned().flatten();
        let res = py.detach(move || {
            if let Some(f) = frames {
                f.flush(t);
            }
            core.close(t)
        });
        logbridge::drain(py);
        self.log_outcome(py, "close", res.as_ref());
        report(py, res.as_ref())
    }

    /// The frame path's counters (captured, dropped, refused, encoded, encode_errors, sent,
    /// stored, duplicates, rejected, spilled, raw_bytes, pending_bytes, spill_bytes,
    /// reconnects, last_error); all 0 before a wrapper captured a frame.
    fn frame_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self
            .frames
            .get()
            .cloned()
            .flatten()
            .map(|f| f.stats())
            .unwrap_or_default();
        let d = PyDict::new(py);
        d.set_item("captured", s.captured)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("refused", s.refused)?;
        d.set_item("encoded", s.encoded)?;
        d.set_item("encode_errors", s.encode_errors)?;
        d.set_item("sent", s.sent)?;
        d.set_item("stored", s.stored)?;
        d.set_item("duplicates", s.duplicates)?;
        d.set_item("rejected", s.rejected)?;
        d.set_item("spilled", s.spilled)?;
        d.set_item("raw_bytes", s.raw_bytes)?;
        d.set_item("pending_bytes", s.pending_bytes)?;
        d.set_item("spill_bytes", s.spill_bytes)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("last_error", s.last_error)?;
        Ok(d)
    }

    /// Waits (at most timeout seconds, without the GIL) until every captured frame is acked by
    /// the daemon (or dropped and counted). Returns whether it got there.
    #[pyo3(signature = (timeout=None))]
    fn flush_frames(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let t = args::opt_seconds(timeout, "timeout")?.unwrap_or(Duration::from_secs(5));
        Ok(match self.frames.get().cloned().flatten() {
            Some(f) => py.detach(move || f.flush(t)),
            None => true,
        })
    }

    /// The shim's counters (accepted, sent, acked, spilled, dropped, rejected, duplicates,
    /// reconnects, queue_bytes, queue_records, buffered_records, corrupt_tails, refused_watermarks, last_error) and
    /// the binding's (hook_errors, invalid_calls, call_errors, trackers_evicted,
    /// log_events_dropped). Still available after close (as they were when it closed).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        logbridge::drain(py);
        let s = match self.core.shim() {
            Some(shim) => shim.stats(),
            None => lock(&self.core.final_stats).clone().unwrap_or_default(),
        };
        let d = PyDict::new(py);
        d.set_item("accepted", s.accepted)?;
        d.set_item("sent", s.sent)?;
        d.set_item("acked", s.acked)?;
        d.set_item("spilled", s.spilled)?;
        d.set_item("dropped", s.dropped)?;
        d.set_item("rejected", s.rejected)?;
        d.set_item("duplicates", s.duplicates)?;
        d.set_item("reconnects", s.reconnects)?;
        d.set_item("queue_bytes", s.queue_bytes)?;
        d.set_item("queue_records", s.queue_records)?;
        d.set_item("buffered_records", s.buffered_records)?;
        d.set_item("corrupt_tails", s.corrupt_tails)?;
        d.set_item("corrupt_lost_records", s.corrupt_lost_records)?;
        d.set_item("refused_watermarks", s.refused_watermarks)?;
        d.set_item("last_error", s.last_error)?;
        d.set_item("hook_errors", self.hooks.errors.load(Relaxed))?;
        d.set_item("invalid_calls", self.counters.invalid_calls.load(Relaxed))?;
        d.set_item("call_errors", self.counters.call_errors.load(Relaxed))?;
        d.set_item("trackers_evicted", lock(&self.tracker).evicted())?;
        d.set_item("log_events_dropped", logbridge::dropped_total())?;
        Ok(d)
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        let core = Arc::clone(&self.core);
        let t = self.drop_flush_timeout;
        let res = py.detach(move || core.close(t));
        logbridge::drain(py);
        self.log_outcome(py, "close", res.as_ref());
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "Telemetry(mode={:?}, run_id={:?}, closed={})",
            self.mode,
            self.run_id,
            if self.closed() { "True" } else { "False" }
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.hooks.traverse(&visit)
    }

    fn __clear__(&self) {
        self.hooks.clear();
    }
}

impl Telemetry {
    fn register<'py>(&self, kind: Kind, hook: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if !hook.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "hook must be callable, not {}",
                encode::type_name(&hook)
            )));
        }
        if !self.enabled {
            return Ok(hook);
        }
        let shim = self.live()?;
        self.hooks.add(kind, hook.clone().unbind());
        let hooks = Arc::clone(&self.hooks);
        match kind {
            Kind::Step => {
                if !self.hooks.step_installed.swap(true, Relaxed) {
                    shim.register_on_step(move |s| hooks.run_step(s));
                }
            }
            Kind::Episode => {
                if !self.hooks.episode_installed.swap(true, Relaxed) {
                    shim.register_on_episode_end(move |e| hooks.run_episode(e));
                }
            }
        }
        Ok(hook)
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if lock(&self.core.shim).is_none() {
            return;
        }
        // Garbage-collected without close(): flush without holding the GIL.
        let core = &self.core;
        let t = self.drop_flush_timeout;
        if Python::try_attach(|py| py.detach(|| core.close(t))).is_none() {
            core.close(t);
        }
    }
}

/// Like Telemetry(...), with settings read from GYM_TELEMETRY_* variables first (the
/// daemon and schedulers start workers this way); keyword arguments override them.
/// GYM_TELEMETRY_DISABLED=1 gives a Telemetry whose every call is a no-op.
#[pyfunction]
#[pyo3(signature = (endpoint=None, run_id=None, agent_id=None, control_mode=None,
    queue_dir=None, auth_token=None, dry_run=None, enabled=None, *, full_policy=None,
    block_timeout=None, queue_max_bytes=None, max_record_bytes=None, batch_linger=None,
    reconnect_max=None, drop_flush_timeout=None))]
#[allow(clippy::too_many_arguments)]
pub fn from_env(
    py: Python<'_>,
    endpoint: Option<&Bound<'_, PyAny>>,
    run_id: Option<&Bound<'_, PyAny>>,
    agent_id: Option<&Bound<'_, PyAny>>,
    control_mode: Option<&Bound<'_, PyAny>>,
    queue_dir: Option<&Bound<'_, PyAny>>,
    auth_token: Option<&Bound<'_, PyAny>>,
    dry_run: Option<&Bound<'_, PyAny>>,
    enabled: Option<bool>,
    full_policy: Option<&Bound<'_, PyAny>>,
    block_timeout: Option<&Bound<'_, PyAny>>,
    queue_max_bytes: Option<&Bound<'_, PyAny>>,
    max_record_bytes: Option<&Bound<'_, PyAny>>,
    batch_linger: Option<&Bound<'_, PyAny>>,
    reconnect_max: Option<&Bound<'_, PyAny>>,
    drop_flush_timeout: Option<&Bound<'_, PyAny>>,
) -> PyResult<Telemetry> {
    let mut config = ShimConfig::from_env().map_err(config_error)?;
    Overrides {
        endpoint,
        run_id,
        agent_id,
        control_mode,
        queue_dir,
        auth_token,
        dry_run,
        enabled,
        full_policy,
        block_timeout,
        queue_max_bytes,
        max_record_bytes,
        batch_linger,
        reconnect_max,
        drop_flush_timeout,
    }
    .apply(&mut config)?;
    Telemetry::start(py, config)
}
