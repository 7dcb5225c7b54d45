//! Training scalars (`log_scalar`, `log`): Python values to `telemetry_core::pb::Scalar`.
//!
//! A scalar's value may come from anything a training loop holds: a float or int, a bool, a
//! numpy scalar or 0-d / one-element array, or a framework tensor (torch, jax) through its
//! `.item()`, which this crate calls without importing the framework. NaN and infinities are
//! values (losses diverge). A list, a string or a multi-element array is a `TypeError` naming
//! the tag; a bad tag or a negative step is a `ValueError`. The step defaults to the run's
//! global step: the env steps this `Telemetry` recorded (every agent's).

use super::Telemetry;
use crate::{args, encode::type_name};
use prost_types::Timestamp;
use pyo3::{
    exceptions::{PyTypeError, PyValueError},
    intern,
    prelude::*,
    types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString},
};
use telemetry_core::pb::Scalar;

/// A number from a plain Python object (float, int, bool, or anything with `__float__`
/// that is not a container): `None` when `obj` is not one.
fn plain_number(obj: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Some(f.value());
    }
    if obj.is_instance_of::<PyBool>() {
        return Some(if obj.is_truthy().unwrap_or(false) {
            1.0
        } else {
            0.0
        });
    }
    if obj.is_instance_of::<PyInt>() {
        return obj.extract::<f64>().ok();
    }
    None
}

/// The value of the scalar `tag`: see the module docs for what is accepted.
pub(crate) fn value(obj: &Bound<'_, PyAny>, tag: &str) -> PyResult<f64> {
    if let Some(v) = plain_number(obj) {
        return Ok(v);
    }
    let not_scalar = |what: String| {
        PyTypeError::new_err(format!(
            "scalar {tag:?}: the value must be a number (float, int, bool, a numpy scalar, a \
             0-d or one-element array, or a tensor with .item()), not {what}"
        ))
    };
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<PyBytes>() || obj.is_none() {
        return Err(not_scalar(type_name(obj)));
    }
    let py = obj.py();
    // numpy scalars and arrays, torch and jax tensors: `.item()` gives a Python number, and
    // fails for more than one element.
    if let Ok(item) = obj.getattr(intern!(py, "item")) {
        if item.is_callable() {
            let v = item.call0().map_err(|e| {
                not_scalar(format!(
                    "{} ({})",
                    type_name(obj),
                    e.value(py).str().map(|s| s.to_string()).unwrap_or_default()
                ))
            })?;
            return plain_number(&v)
                .ok_or_else(|| not_scalar(format!("{} of {}", type_name(obj), type_name(&v))));
        }
    }
    // Other numbers (fractions.Fraction, decimal.Decimal): anything with __float__ that is
    // not a sequence.
    if obj.hasattr(intern!(py, "__float__"))? && !obj.hasattr(intern!(py, "__len__"))? {
        if let Ok(v) = obj.extract::<f64>() {
            return Ok(v);
        }
    }
    Err(not_scalar(type_name(obj)))
}

/// A scalar's step: an int >= 0, or `global` when None.
pub(crate) fn step(obj: Option<&Bound<'_, PyAny>>, global: u64) -> PyResult<i64> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(i64::try_from(global).unwrap_or(i64::MAX));
    };
    if o.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err("step must be an int, not bool"));
    }
    match o.extract::<i64>() {
        Ok(v) if v < 0 => Err(PyValueError::new_err(format!("step must be >= 0, got {v}"))),
        Ok(v) => Ok(v),
        Err(_) if o.is_instance_of::<PyInt>() => Err(PyValueError::new_err(
            "step is out of range (must fit in 63 bits)",
        )),
        Err(_) => Err(PyTypeError::new_err(format!(
            "step must be an int or None, not {}",
            type_name(o)
        ))),
    }
}

/// `walltime` (seconds since the Unix epoch, as `time.time()` gives) as a timestamp; None:
/// now (stamped by the shim).
pub(crate) fn walltime(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Timestamp>> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let secs = args::float(o, "walltime")?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "walltime must be finite seconds since the epoch, got {secs}"
        )));
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).round().min(999_999_999.0);
    // In range: checked finite and >= 0, and f64 seconds beyond i64 are not a walltime.
    Ok(Some(Timestamp {
        seconds: whole as i64,
        nanos: nanos as i32,
    }))
}

/// A tag, checked by the core's rule (the shim checks it again; this names it).
pub(crate) fn tag(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("tag must be a str, not {}", type_name(obj))))?;
    let tag = s.to_cow()?.into_owned();
    telemetry_core::validate::check_tag(&tag)
        .map_err(|e| PyValueError::new_err(format!("tag {tag:?}: {e}")))?;
    Ok(tag)
}

impl Telemetry {
    /// Builds the scalars of one `log_scalar` / `log` call; nothing is sent when any is bad.
    pub(super) fn scalars_of(
        &self,
        values: &[(Bound<'_, PyAny>, Bound<'_, PyAny>)],
        step_obj: Option<&Bound<'_, PyAny>>,
        agent_id: Option<&Bound<'_, PyAny>>,
        walltime_obj: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Scalar>> {
        let step = step(step_obj, self.steps_recorded())?;
        let agent = args::opt_id(agent_id, "agent_id")?.unwrap_or_default();
        let timestamp = walltime(walltime_obj)?;
        values
            .iter()
            .map(|(t, v)| {
                let tag = tag(t)?;
                let value = value(v, &tag)?;
                Ok(Scalar {
                    agent_id: agent.clone(),
                    tag,
                    value,
                    step,
                    timestamp,
                    ..Scalar::default()
                })
            })
            .collect()
    }

    /// `log`'s mapping as (tag, value) pairs.
    pub(super) fn pairs<'py>(
        values: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        if let Ok(d) = values.cast::<PyDict>() {
            return Ok(d.iter().collect());
        }
        let py = values.py();
        let items = values
            .getattr(intern!(py, "items"))
            .and_then(|f| f.call0())
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "values must be a mapping of tag to value, not {}",
                    type_name(values)
                ))
            })?;
        items
            .try_iter()?
            .map(|kv| {
                let kv = kv?;
                Ok((kv.get_item(0)?, kv.get_item(1)?))
            })
            .collect()
    }

    /// Hands scalars to the shim (which checks each tag and step again).
    pub(super) fn send_scalars(&self, py: Python<'_>, scalars: Vec<Scalar>) -> PyResult<()> {
        let shim = self.live()?;
        for s in scalars {
            let shim = std::sync::Arc::clone(&shim);
            self.submit_with(py, move || shim.scalar(s))?;
        }
        Ok(())
    }
}
