//! A `Telemetry`'s shim over its lifetime: closing it (explicitly, at garbage collection, or
//! at interpreter exit for every one still open) and the report Python gets from a flush or
//! close.
//!
//! Split from `telemetry.rs` because closing has its own rules (flush first, keep the final
//! counters, never hold the GIL) that the record calls do not share.

use super::lock;
use crate::{args, logbridge};
use pyo3::{prelude::*, types::PyDict};
use std::{
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};
use telemetry_shim::{FlushOutcome, FlushReport, ShimError, ShimStats};

/// The shim and what remains of it after `close`. Shared with the exit handler.
pub(super) struct Core {
    pub(super) shim: Mutex<Option<Arc<telemetry_shim::Telemetry>>>,
    pub(super) final_stats: Mutex<Option<ShimStats>>,
}

/// What a flush or close achieved, or why it did not.
pub(super) type Outcome = Result<FlushReport, ShimError>;

impl Core {
    pub(super) fn shim(&self) -> Option<Arc<telemetry_shim::Telemetry>> {
        lock(&self.shim).clone()
    }

    /// Flushes, keeps the counters, stops the shim. `None` if it was already closed. Call it
    /// without the GIL.
    pub(super) fn close(&self, timeout: Duration) -> Option<Outcome> {
        let shim = lock(&self.shim).take()?;
        let started = Instant::now();
        let flushed = shim.flush(timeout);
        *lock(&self.final_stats) = Some(shim.stats());
        match Arc::try_unwrap(shim) {
            Ok(shim) => {
                // Everything is flushed (or cannot be): closing only stops the sender.
                let rest = timeout.saturating_sub(started.elapsed());
                let closed = shim.close(rest);
                Some(match (&flushed, closed) {
                    (Err(_), Ok(_)) => flushed,
                    (_, closed) => closed,
                })
            }
            // A record call on another thread holds it for a moment; the last holder's drop
            // stops it (what it still has to send was just flushed).
            Err(_) => Some(flushed),
        }
    }
}

/// Every live `Telemetry`, for the interpreter-exit flush.
pub(super) static LIVE: Mutex<Vec<Weak<Core>>> = Mutex::new(Vec::new());

/// Closes every `Telemetry` still open (registered with `atexit` by `gym_telemetry`).
#[pyfunction]
#[pyo3(signature = (timeout=5.0))]
pub fn _close_all(py: Python<'_>, timeout: f64) -> PyResult<usize> {
    let t = args::seconds(timeout, "timeout")?;
    let cores: Vec<Arc<Core>> = lock(&LIVE).drain(..).filter_map(|w| w.upgrade()).collect();
    let closed = py.detach(|| cores.iter().filter_map(|c| c.close(t)).count());
    logbridge::drain(py);
    Ok(closed)
}

fn outcome_name(o: FlushOutcome) -> &'static str {
    match o {
        FlushOutcome::Acked => "acked",
        FlushOutcome::OnDisk => "on_disk",
        FlushOutcome::Written => "written",
        FlushOutcome::Disabled => "disabled",
    }
}

/// A flush/close result as the dict Python gets.
pub(super) fn report<'py>(py: Python<'py>, res: Option<&Outcome>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (outcome, accepted, acked, pending, error): (&str, u64, u64, u64, Option<String>) =
        match res {
            None => ("closed", 0, 0, 0, None),
            Some(Ok(r)) => (
                outcome_name(r.outcome),
                r.accepted_through,
                r.acked_through,
                r.pending_records,
                None,
            ),
            Some(Err(e @ ShimError::FlushTimeout { pending })) => {
                ("timeout", 0, 0, *pending, Some(e.to_string()))
            }
            Some(Err(e @ ShimError::NotDelivered { pending, .. })) => {
                ("not_delivered", 0, 0, *pending, Some(e.to_string()))
            }
            Some(Err(e)) => ("error", 0, 0, 0, Some(e.to_string())),
        };
    d.set_item("outcome", outcome)?;
    d.set_item("accepted_through", accepted)?;
    d.set_item("acked_through", acked)?;
    d.set_item("pending_records", pending)?;
    d.set_item("error", error)?;
    Ok(d)
}
