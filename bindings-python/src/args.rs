//! Argument conversion with messages that name the argument.
//!
//! PyO3 reports a failed extraction with a note ("while processing 'reward'") that Python 3.9
//! and 3.10 do not show, so the record calls take loosely typed arguments and convert them here:
//! a wrong type is a `TypeError`, a wrong value a `ValueError`, and both say which argument.

use crate::encode::type_name;
use pyo3::{
    exceptions::{PyTypeError, PyValueError},
    prelude::*,
    types::{PyInt, PyString},
};
use std::{path::PathBuf, time::Duration};
use telemetry_core::{ids, ControlMode};

/// A number (int, float, numpy scalar).
pub fn float(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    obj.extract::<f64>().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be a number, not {}", type_name(obj)))
    })
}

/// A finite number.
pub fn finite(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
    let v = float(obj, name)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(PyValueError::new_err(format!(
            "{name} must be finite, got {v}"
        )))
    }
}

/// A bool (`numpy.bool_` included).
pub fn boolean(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    obj.extract::<bool>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a bool, not {}", type_name(obj))))
}

/// An optional bool.
pub fn opt_bool(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<bool>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => boolean(o, name).map(Some),
    }
}

/// An optional non-negative integer (Python or numpy int).
pub fn opt_index(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<u64>> {
    let Some(o) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if o.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, not bool"
        )));
    }
    if let Ok(v) = o.extract::<u64>() {
        return Ok(Some(v));
    }
    match o.extract::<i64>() {
        Ok(v) => Err(PyValueError::new_err(format!(
            "{name} must be >= 0, got {v}"
        ))),
        Err(_) if o.is_instance_of::<PyInt>() => Err(PyValueError::new_err(format!(
            "{name} is out of range (must fit in 64 bits)"
        ))),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{name} must be an int, not {}",
            type_name(o)
        ))),
    }
}

/// An optional string.
pub fn opt_str(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<String>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => match o.cast::<PyString>() {
            Ok(s) => Ok(Some(s.to_cow()?.into_owned())),
            Err(_) => Err(PyTypeError::new_err(format!(
                "{name} must be a str or None, not {}",
                type_name(o)
            ))),
        },
    }
}

/// An optional path (`str` or `os.PathLike`).
pub fn opt_path(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<PathBuf>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => o.extract::<PathBuf>().map(Some).map_err(|_| {
            PyTypeError::new_err(format!(
                "{name} must be a str or os.PathLike, not {}",
                type_name(o)
            ))
        }),
    }
}

/// An id: [`ids::check_id`], the daemon's rule (non-empty, at most [`ids::MAX_ID_LEN`] bytes,
/// no control characters). A refusal is a `ValueError` naming the argument.
pub fn id(value: String, name: &'static str) -> PyResult<String> {
    ids::check_id(name, &value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(value)
}

/// An optional id.
pub fn opt_id(obj: Option<&Bound<'_, PyAny>>, name: &'static str) -> PyResult<Option<String>> {
    opt_str(obj, name)?.map(|v| id(v, name)).transpose()
}

/// A control mode in any accepted spelling, returned canonical.
pub fn control_mode(value: &str, name: &str) -> PyResult<ControlMode> {
    // The canonical spellings (what wrappers pass at every step) without allocating.
    if let Some(m) = ControlMode::ALL.into_iter().find(|m| m.as_str() == value) {
        return Ok(m);
    }
    value
        .parse::<ControlMode>()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// An optional control mode.
pub fn opt_control_mode(
    obj: Option<&Bound<'_, PyAny>>,
    name: &str,
) -> PyResult<Option<ControlMode>> {
    opt_str(obj, name)?
        .map(|v| control_mode(&v, name))
        .transpose()
}

/// Seconds as a `Duration`: finite and >= 0.
pub fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    if !value.is_finite() || value < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a finite number of seconds >= 0, got {value}"
        )));
    }
    Duration::try_from_secs_f64(value).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// Optional seconds.
pub fn opt_seconds(obj: Option<&Bound<'_, PyAny>>, name: &str) -> PyResult<Option<Duration>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => seconds(float(o, name)?, name).map(Some),
    }
}
