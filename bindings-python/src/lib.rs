//! # gym_telemetry._native
//!
//! Most RL workers are Python (CleanRL, Gymnasium loops, BDI agents), so this is how most users
//! meet gym-telemetry. It is deliberately thin, in the style of rerun's and pydantic-core's
//! bindings: the Rust crates know nothing of Python, and this crate only converts.
//!
//! - [`telemetry`]: the `Telemetry` class over `telemetry_shim::Telemetry` (records, flush, close,
//!   stats), `from_env()`, and `TelemetryError`; indices the worker did not give come from
//!   `telemetry_shim::Tracker`.
//! - [`encode`]: Python values (numpy included) to compact JSON, walked in Rust.
//! - [`hooks`]: Python callables as the shim's step/episode hooks.
//! - [`recorder`]: the Gymnasium wrappers' per-agent episode bookkeeping (one call per step).
//! - [`logbridge`]: the shim's `tracing` events into Python `logging`.
//! - [`args`], [`config`]: argument conversion with errors that name the argument.
//!
//! The Python package around it (`bindings-python/python/gym_telemetry`) adds the Gymnasium
//! wrappers and the type stubs.

use pyo3::prelude::*;

mod args;
mod config;
mod encode;
mod frames;
mod hooks;
mod logbridge;
mod recorder;
mod telemetry;

/// Encodes a value to compact JSON text exactly as record payloads are encoded (numpy arrays
/// and scalars included; NaN and infinities become null). Raises TypeError / ValueError.
#[pyfunction]
#[pyo3(signature = (value, *, max_bytes=1048576))]
fn encode_json(value: &Bound<'_, PyAny>, max_bytes: usize) -> PyResult<String> {
    encode::to_json(value, "value", max_bytes)
}

/// The canonical spelling of a control mode ("agent_only" -> "agent"); ValueError if unknown.
#[pyfunction]
fn normalize_control_mode(value: &str) -> PyResult<&'static str> {
    args::control_mode(value, "control_mode").map(|m| m.as_str())
}

/// gym-telemetry's Python bindings (the compiled part of the `gym_telemetry` package).
#[pymodule(name = "_native")]
mod native {
    use super::*;

    #[pymodule_export]
    use super::encode_json;
    #[pymodule_export]
    use super::normalize_control_mode;
    #[pymodule_export]
    use crate::encode::Json;
    #[pymodule_export]
    use crate::frames::FrameCapture;
    #[pymodule_export]
    use crate::recorder::EpisodeRecorder;
    #[pymodule_export]
    use crate::telemetry::_close_all;
    #[pymodule_export]
    use crate::telemetry::from_env;
    #[pymodule_export]
    use crate::telemetry::Telemetry;
    #[pymodule_export]
    use crate::telemetry::TelemetryError;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        logbridge::install();
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
