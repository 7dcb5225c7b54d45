//! Python callables as the shim's step and episode hooks.
//!
//! The shim runs hooks on the calling thread after it has filled a record from the
//! configuration and metadata, so a hook sees the record as it will be sent. The contract a
//! Python hook gets:
//!
//! - it is called as `hook(record: dict)` with the record's fields under their protobuf names
//!   (`*_json` fields as JSON text), plus `"type"` (`"step"` / `"episode"`) and `"ts_unix_ns"`;
//! - it returns `None` (no change) or a dict of changes: a key naming a field sets it (a
//!   `*_json` field takes JSON text or any encodable value); any other key is added to the
//!   record's JSON document (`info_json` of a step, `metadata_json` of an episode), replacing a
//!   key of the same name; `type` and `ts_unix_ns` are read-only;
//! - if it raises, or returns something unusable, the record is sent as it was before that hook,
//!   the error is counted (`stats()["hook_errors"]`) and logged at a bounded rate. A hook never
//!   makes the call that recorded the step fail.
//!
//! Hooks run in registration order, each seeing the previous one's changes. The callables live
//! here (not inside the shim's closures) so that Python's garbage collector can see them.

use crate::{args, encode, logbridge};
use pyo3::{
    exceptions::{PyTypeError, PyValueError},
    gc::PyVisit,
    intern,
    prelude::*,
    types::{PyDict, PyString},
    PyTraverseError,
};
use serde_json::{Map, Value};
use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    Mutex,
};
use telemetry_core::{
    pb::{RunEpisode, RunStep},
    timestamp,
};

/// The registered hooks of one `Telemetry` and their error count.
pub struct Hooks {
    step: Mutex<Vec<Py<PyAny>>>,
    episode: Mutex<Vec<Py<PyAny>>>,
    /// Hook calls that raised or returned something unusable.
    pub errors: AtomicU64,
    /// Whether the shim-side step / episode closure is installed.
    pub step_installed: AtomicBool,
    pub episode_installed: AtomicBool,
    limit: logbridge::RateLimit,
    max_bytes: usize,
}

/// Which hooks.
#[derive(Clone, Copy)]
pub enum Kind {
    Step,
    Episode,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Step => "on_step",
            Kind::Episode => "on_episode_end",
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hooks {
    /// No hooks; JSON produced for hooks' values is bounded by `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Hooks {
            step: Mutex::new(Vec::new()),
            episode: Mutex::new(Vec::new()),
            errors: AtomicU64::new(0),
            step_installed: AtomicBool::new(false),
            episode_installed: AtomicBool::new(false),
            limit: logbridge::RateLimit::default(),
            max_bytes,
        }
    }

    fn list(&self, kind: Kind) -> &Mutex<Vec<Py<PyAny>>> {
        match kind {
            Kind::Step => &self.step,
            Kind::Episode => &self.episode,
        }
    }

    /// Adds a hook.
    pub fn add(&self, kind: Kind, hook: Py<PyAny>) {
        lock(self.list(kind)).push(hook);
    }

    /// For `__traverse__`: never blocks (a hook list being changed right now is skipped).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for list in [&self.step, &self.episode] {
            if let Ok(g) = list.try_lock() {
                for h in g.iter() {
                    visit.call(h)?;
                }
            }
        }
        Ok(())
    }

    /// For `__clear__`: drops every hook.
    pub fn clear(&self) {
        lock(&self.step).clear();
        lock(&self.episode).clear();
    }

    fn snapshot(&self, py: Python<'_>, kind: Kind) -> Vec<Py<PyAny>> {
        lock(self.list(kind))
            .iter()
            .map(|h| h.clone_ref(py))
            .collect()
    }

    fn failed(&self, py: Python<'_>, kind: Kind, hook: &Bound<'_, PyAny>, err: &PyErr) {
        self.errors.fetch_add(1, Relaxed);
        if let Some(held) = self.limit.allow() {
            let name = hook
                .getattr(intern!(py, "__qualname__"))
                .and_then(|n| n.str().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|_| encode::type_name(hook));
            let more = if held > 0 {
                format!(" ({held} similar errors not logged)")
            } else {
                String::new()
            };
            logbridge::warn(
                py,
                &format!(
                    "{} hook {name} failed; the record is sent without its changes: {err}{more}",
                    kind.name()
                ),
                Some(err),
            );
        }
    }

    /// Runs the step hooks on `s`.
    pub fn run_step(&self, s: &mut RunStep) {
        self.run(Kind::Step, s, step_dict, apply_step);
    }

    /// Runs the episode hooks on `e`.
    pub fn run_episode(&self, e: &mut RunEpisode) {
        self.run(Kind::Episode, e, episode_dict, apply_episode);
    }

    /// Runs the hooks of `kind` on `record`: each sees a dict view and may return changes,
    /// applied to a copy so a failing hook leaves the record as it was.
    fn run<R: Clone>(
        &self,
        kind: Kind,
        record: &mut R,
        to_dict: for<'py> fn(Python<'py>, &R) -> PyResult<Bound<'py, PyDict>>,
        apply: fn(&mut R, &Bound<'_, PyDict>, usize) -> PyResult<()>,
    ) {
        Python::attach(|py| {
            for hook in self.snapshot(py, kind) {
                let hook = hook.bind(py);
                let result = to_dict(py, record)
                    .and_then(|d| hook.call1((d,)))
                    .and_then(|r| changes(&r))
                    .and_then(|c| match c {
                        None => Ok(None),
                        Some(c) => {
                            let mut copy = record.clone();
                            apply(&mut copy, &c, self.max_bytes)?;
                            Ok(Some(copy))
                        }
                    });
                match result {
                    Ok(Some(copy)) => *record = copy,
                    Ok(None) => {}
                    Err(e) => self.failed(py, kind, hook, &e),
                }
            }
        });
    }
}

fn changes<'py>(r: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyDict>>> {
    if r.is_none() {
        return Ok(None);
    }
    r.cast::<PyDict>().map(|d| Some(d.clone())).map_err(|_| {
        PyTypeError::new_err(format!(
            "a hook must return a dict or None, not {}",
            encode::type_name(r)
        ))
    })
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(timestamp::to_unix_nanos)
}

fn step_dict<'py>(py: Python<'py>, s: &RunStep) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", "step")?;
    d.set_item("run_id", &s.run_id)?;
    d.set_item("agent_id", &s.agent_id)?;
    d.set_item("episode_index", s.episode_index)?;
    d.set_item("step_index", s.step_index)?;
    d.set_item("observation_json", &s.observation_json)?;
    d.set_item("action_json", &s.action_json)?;
    d.set_item("reward", s.reward)?;
    d.set_item("terminated", s.terminated)?;
    d.set_item("truncated", s.truncated)?;
    d.set_item("info_json", &s.info_json)?;
    d.set_item("render_hint_json", &s.render_hint_json)?;
    d.set_item("frame_ref", &s.frame_ref)?;
    d.set_item("policy_label", &s.policy_label)?;
    d.set_item("backend", &s.backend)?;
    d.set_item("control_mode", &s.control_mode)?;
    d.set_item("ts_unix_ns", ts(&s.timestamp))?;
    Ok(d)
}

fn episode_dict<'py>(py: Python<'py>, e: &RunEpisode) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("type", "episode")?;
    d.set_item("run_id", &e.run_id)?;
    d.set_item("agent_id", &e.agent_id)?;
    d.set_item("episode_index", e.episode_index)?;
    d.set_item("total_reward", e.total_reward)?;
    d.set_item("steps", e.steps)?;
    d.set_item("terminated", e.terminated)?;
    d.set_item("truncated", e.truncated)?;
    d.set_item("metadata_json", &e.metadata_json)?;
    d.set_item("control_mode", &e.control_mode)?;
    d.set_item("ts_unix_ns", ts(&e.timestamp))?;
    Ok(d)
}

/// A `*_json` field's new value: JSON text (checked) or a value to encode.
fn json_field(v: &Bound<'_, PyAny>, name: &str, max: usize) -> PyResult<String> {
    if let Ok(s) = v.cast::<PyString>() {
        let text = s.to_cow()?.into_owned();
        if !text.is_empty() {
            serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
                PyValueError::new_err(format!("{name} is not valid JSON text: {e}"))
            })?;
        }
        return Ok(text);
    }
    encode::to_json(v, name, max)
}

fn string(v: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    Ok(args::opt_str(Some(v), name)?.unwrap_or_default())
}

fn index(v: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    args::opt_index(Some(v), name)?
        .ok_or_else(|| PyTypeError::new_err(format!("{name} must be an int, not None")))
}

/// Adds `extras` to the JSON object `doc` (empty means `{}`), replacing keys of the same name.
fn merge(doc: &mut String, extras: Vec<(String, String)>, name: &str) -> PyResult<()> {
    if extras.is_empty() {
        return Ok(());
    }
    let mut obj = if doc.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(doc) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "cannot add keys to {name}: it is not a JSON object"
                )))
            }
        }
    };
    for (k, json) in extras {
        let v: Value = serde_json::from_str(&json)
            .map_err(|e| PyValueError::new_err(format!("{name}[{k:?}]: {e}")))?;
        obj.insert(k, v);
    }
    *doc = Value::Object(obj).to_string();
    Ok(())
}

fn key_of(k: &Bound<'_, PyAny>) -> PyResult<String> {
    k.cast::<PyString>()
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "hook result keys must be str, not {}",
                encode::type_name(k)
            ))
        })?
        .to_cow()
        .map(|c| c.into_owned())
}

fn read_only(key: &str) -> PyErr {
    PyValueError::new_err(format!("{key} is read-only in a hook"))
}

fn apply_step(s: &mut RunStep, c: &Bound<'_, PyDict>, max: usize) -> PyResult<()> {
    let mut extras = Vec::new();
    for (k, v) in c.iter() {
        let key = key_of(&k)?;
        match key.as_str() {
            "run_id" => s.run_id = args::id(string(&v, &key)?, "run_id")?,
            "agent_id" => s.agent_id = string(&v, &key)?,
            "episode_index" => s.episode_index = index(&v, &key)?,
            "step_index" => s.step_index = index(&v, &key)?,
            "reward" => s.reward = args::finite(&v, &key)?,
            "terminated" => s.terminated = args::boolean(&v, &key)?,
            "truncated" => s.truncated = args::boolean(&v, &key)?,
            "observation_json" => s.observation_json = json_field(&v, &key, max)?,
            "action_json" => s.action_json = json_field(&v, &key, max)?,
            "info_json" => s.info_json = json_field(&v, &key, max)?,
            "render_hint_json" => s.render_hint_json = json_field(&v, &key, max)?,
            "frame_ref" => s.frame_ref = string(&v, &key)?,
            "policy_label" => s.policy_label = string(&v, &key)?,
            "backend" => s.backend = string(&v, &key)?,
            "control_mode" => {
                s.control_mode = args::control_mode(&string(&v, &key)?, &key)?
                    .as_str()
                    .to_owned()
            }
            "type" | "ts_unix_ns" => return Err(read_only(&key)),
            _ => {
                let json = encode::to_json(&v, &key, max)?;
                extras.push((key, json));
            }
        }
    }
    merge(&mut s.info_json, extras, "info_json")
}

fn apply_episode(e: &mut RunEpisode, c: &Bound<'_, PyDict>, max: usize) -> PyResult<()> {
    let mut extras = Vec::new();
    for (k, v) in c.iter() {
        let key = key_of(&k)?;
        match key.as_str() {
            "run_id" => e.run_id = args::id(string(&v, &key)?, "run_id")?,
            "agent_id" => e.agent_id = string(&v, &key)?,
            "episode_index" => e.episode_index = index(&v, &key)?,
            "total_reward" => e.total_reward = args::finite(&v, &key)?,
            "steps" => e.steps = index(&v, &key)?,
            "terminated" => e.terminated = args::boolean(&v, &key)?,
            "truncated" => e.truncated = args::boolean(&v, &key)?,
            "metadata_json" => e.metadata_json = json_field(&v, &key, max)?,
            "control_mode" => {
                e.control_mode = args::control_mode(&string(&v, &key)?, &key)?
                    .as_str()
                    .to_owned()
            }
            "type" | "ts_unix_ns" => return Err(read_only(&key)),
            _ => {
                let json = encode::to_json(&v, &key, max)?;
                extras.push((key, json));
            }
        }
    }
    merge(&mut e.metadata_json, extras, "metadata_json")
}
