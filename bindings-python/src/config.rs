//! `Telemetry(...)` / `from_env(...)` keyword arguments onto a [`ShimConfig`].
//!
//! The shim owns every setting and its validation; this module only maps Python arguments onto
//! it (turning seconds into durations, policy names into [`FullPolicy`]) and turns the shim's
//! [`ConfigError`] into a `ValueError` that names the setting.

use crate::args;
use pyo3::{exceptions::PyValueError, prelude::*};
use std::time::Duration;
use telemetry_shim::{ConfigError, DryRunTarget, FullPolicy, Mode, ShimConfig};

/// The settings a Python caller may give; `None` keeps the base configuration's value.
#[derive(Default)]
pub struct Overrides<'a, 'py> {
    pub endpoint: Option<&'a Bound<'py, PyAny>>,
    pub run_id: Option<&'a Bound<'py, PyAny>>,
    pub agent_id: Option<&'a Bound<'py, PyAny>>,
    pub control_mode: Option<&'a Bound<'py, PyAny>>,
    pub queue_dir: Option<&'a Bound<'py, PyAny>>,
    pub auth_token: Option<&'a Bound<'py, PyAny>>,
    pub dry_run: Option<&'a Bound<'py, PyAny>>,
    /// `Some(false)` disables; `Some(true)` re-enables a configuration the environment disabled.
    pub enabled: Option<bool>,
    pub full_policy: Option<&'a Bound<'py, PyAny>>,
    pub block_timeout: Option<&'a Bound<'py, PyAny>>,
    pub queue_max_bytes: Option<&'a Bound<'py, PyAny>>,
    pub max_record_bytes: Option<&'a Bound<'py, PyAny>>,
    pub batch_linger: Option<&'a Bound<'py, PyAny>>,
    pub reconnect_max: Option<&'a Bound<'py, PyAny>>,
    pub drop_flush_timeout: Option<&'a Bound<'py, PyAny>>,
}

/// Turns a shim configuration error into a `ValueError` naming the setting.
pub fn config_error(e: ConfigError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn size(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    match args::opt_index(obj, name)? {
        Some(0) => Err(PyValueError::new_err(format!("{name} must be at least 1"))),
        other => Ok(other),
    }
}

impl Overrides<'_, '_> {
    /// Applies the overrides to `c`, then validates it.
    pub fn apply(&self, c: &mut ShimConfig) -> PyResult<()> {
        if let Some(e) = args::opt_str(self.endpoint, "endpoint")? {
            c.endpoint = e;
        }
        if let Some(r) = args::opt_id(self.run_id, "run_id")? {
            c.run_id = Some(r);
        }
        if let Some(a) = args::opt_id(self.agent_id, "agent_id")? {
            c.agent_id = Some(a);
        }
        if let Some(m) = args::opt_control_mode(self.control_mode, "control_mode")? {
            c.control_mode = Some(m);
        }
        if let Some(q) = args::opt_path(self.queue_dir, "queue_dir")? {
            c.queue_dir = Some(q);
        }
        if let Some(t) = args::opt_str(self.auth_token, "auth_token")? {
            c.auth_token = Some(t);
        }
        if let Some(p) = args::opt_path(self.dry_run, "dry_run")? {
            c.mode = Mode::DryRun(if p.as_os_str() == "-" {
                DryRunTarget::Stdout
            } else {
                DryRunTarget::File(p)
            });
        }
        match self.enabled {
            Some(false) => c.mode = Mode::Disabled,
            Some(true) if c.mode == Mode::Disabled => c.mode = Mode::Live,
            _ => {}
        }
        let block_timeout = args::opt_seconds(self.block_timeout, "block_timeout")?;
        if let Some(p) = args::opt_str(self.full_policy, "full_policy")? {
            c.full_policy = match p.to_ascii_lowercase().replace('-', "_").as_str() {
                "block" => FullPolicy::Block {
                    timeout: block_timeout.unwrap_or(Duration::from_secs(1)),
                },
                "drop_oldest" => FullPolicy::DropOldest,
                "drop_newest" => FullPolicy::DropNewest,
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "full_policy must be 'drop_oldest', 'drop_newest' or 'block', got {p:?}"
                    )))
                }
            };
        } else if let (Some(t), FullPolicy::Block { .. }) = (block_timeout, c.full_policy) {
            c.full_policy = FullPolicy::Block { timeout: t };
        }
        if let Some(q) = size(self.queue_max_bytes, "queue_max_bytes")? {
            c.queue_max_bytes = q;
            c.memory_queue_max_bytes = c.memory_queue_max_bytes.min(q);
            // A queue holds at least four segments (the shim's rule).
            c.segment_max_bytes = c.segment_max_bytes.min(q / 4);
        }
        if let Some(m) = size(self.max_record_bytes, "max_record_bytes")? {
            c.max_record_bytes = usize::try_from(m)
                .map_err(|_| PyValueError::new_err("max_record_bytes is out of range"))?;
        }
        if let Some(d) = args::opt_seconds(self.batch_linger, "batch_linger")? {
            c.batch_linger = d;
        }
        if let Some(d) = args::opt_seconds(self.reconnect_max, "reconnect_max")? {
            if d.is_zero() {
                return Err(PyValueError::new_err("reconnect_max must be > 0"));
            }
            c.reconnect_max = d;
            c.reconnect_initial = c.reconnect_initial.min(d);
        }
        if let Some(d) = args::opt_seconds(self.drop_flush_timeout, "drop_flush_timeout")? {
            c.drop_flush_timeout = d;
        }
        c.validate().map_err(config_error)
    }
}
