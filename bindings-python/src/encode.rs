//! Python objects to compact JSON text, in Rust, without `json.dumps`.
//!
//! Every step carries an observation, an action and often an info dict; encoding them is most
//! of the per-step cost a worker pays. Walking the object here avoids the `json` module's
//! Python-level machinery, reads numpy arrays straight from their buffers, and lets us bound the
//! work: a payload that would not fit in one record stops being encoded as soon as it is too big.
//!
//! What is accepted, and how it is written:
//!
//! | Python | JSON |
//! |---|---|
//! | `None` | `null` |
//! | `bool`, `numpy.bool_` | `true` / `false` |
//! | `int` (any size, `IntEnum` too), numpy integers | a number |
//! | `float`, numpy floats | a number, or `null` for NaN and ±inf (JSON has neither) |
//! | `str` (and subclasses) | a string |
//! | `list`, `tuple` | an array |
//! | `dict` | an object; keys `str`, or `int` / `float` / `bool` / `None` written as text as `json.dumps` does |
//! | `numpy.ndarray` of bool / int / uint / float32 / float64 | nested arrays, read from the buffer |
//! | other numpy arrays and scalars, objects with `tolist()` (torch, jax) | what `tolist()` / `item()` returns |
//!
//! Anything else is a `TypeError` naming the argument and the path to the bad value
//! (`observation['pos'][2]: cannot encode an object of type 'Foo' as JSON`). Nesting deeper than
//! [`MAX_DEPTH`] or output longer than the record limit is a `ValueError`.
//!
//! numpy's element and scalar types are in `encode/np_types.rs`, the dict-key cache in
//! `encode/key_cache.rs`.

use numpy::{
    ndarray::{ArrayViewD, Axis},
    prelude::*,
    PyArrayDyn, PyUntypedArray,
};
use pyo3::{
    exceptions::{PyTypeError, PyValueError},
    intern,
    prelude::*,
    types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple},
};
use std::fmt::Write as _;

mod key_cache;
mod np_types;

use key_cache::KEYS;
use np_types::{numpy_types, Elem, Scalar};

/// Deepest nesting accepted (a cycle hits it too).
pub const MAX_DEPTH: usize = 64;

/// Where in the value an error happened, innermost last once reversed.
enum Seg {
    Index(usize),
    Key(String),
}

enum Fail {
    Type(String),
    Value(String),
    Py(PyErr),
}

/// An encoding failure with the path to the offending value (outermost segment last).
struct Error {
    path: Vec<Seg>,
    fail: Fail,
}

impl Error {
    fn new(fail: Fail) -> Self {
        Error {
            path: Vec::new(),
            fail,
        }
    }

    fn at(mut self, seg: Seg) -> Self {
        self.path.push(seg);
        self
    }

    fn into_pyerr(self, what: &str) -> PyErr {
        let mut place = what.to_owned();
        for seg in self.path.iter().rev() {
            match seg {
                Seg::Index(i) => {
                    let _ = write!(place, "[{i}]");
                }
                Seg::Key(k) => {
                    let _ = write!(place, "[{k:?}]");
                }
            }
        }
        match self.fail {
            Fail::Type(m) => PyTypeError::new_err(format!("{place}: {m}")),
            Fail::Value(m) => PyValueError::new_err(format!("{place}: {m}")),
            Fail::Py(e) => e,
        }
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::new(Fail::Py(e))
    }
}

type Res = Result<(), Error>;

/// Encodes `obj` as compact JSON text. `what` names the argument in errors; the output may not
/// exceed `max_bytes`.
pub fn to_json(obj: &Bound<'_, PyAny>, what: &str, max_bytes: usize) -> PyResult<String> {
    let mut enc = Encoder {
        out: Vec::with_capacity(64),
        max: max_bytes,
    };
    enc.value(obj, 0).map_err(|e| e.into_pyerr(what))?;
    enc.finish(what)
}

/// Encodes a dict (or `None` -> `""`) as a JSON object: the `info` / `metadata` / `config`
/// arguments, whose JSON document must be an object so that extra keys can be merged into it.
pub fn object_to_json(obj: &Bound<'_, PyAny>, what: &str, max_bytes: usize) -> PyResult<String> {
    if obj.is_none() {
        return Ok(String::new());
    }
    if !obj.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a dict or None, not {}",
            type_name(obj)
        )));
    }
    to_json(obj, what, max_bytes)
}

/// The name of an object's type, for error messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

struct Encoder {
    out: Vec<u8>,
    max: usize,
}

impl Encoder {
    fn finish(self, what: &str) -> PyResult<String> {
        String::from_utf8(self.out)
            .map_err(|e| PyValueError::new_err(format!("{what}: produced invalid UTF-8: {e}")))
    }

    fn check_size(&self) -> Res {
        if self.out.len() > self.max {
            return Err(Error::new(Fail::Value(format!(
                "encodes to more than {} bytes (max_record_bytes); send large payloads by frame_ref",
                self.max
            ))));
        }
        Ok(())
    }

    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn json<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> Res {
        // Numbers and strings into a Vec cannot fail; NaN and infinities become `null`.
        serde_json::to_writer(&mut self.out, v).map_err(|e| Error::new(Fail::Value(e.to_string())))
    }

    fn value(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Res {
        if depth > MAX_DEPTH {
            return Err(Error::new(Fail::Value(format!(
                "nested deeper than {MAX_DEPTH} levels (is there a reference cycle?)"
            ))));
        }
        if obj.is_none() {
            self.raw("null");
        } else if let Ok(b) = obj.cast_exact::<PyBool>() {
            self.raw(if b.is_true() { "true" } else { "false" });
        } else if let Ok(i) = obj.cast::<PyInt>() {
            self.int(i)?;
        } else if let Ok(f) = obj.cast::<PyFloat>() {
            self.json(&f.value())?;
        } else if let Ok(s) = obj.cast::<PyString>() {
            self.string(s)?;
        } else if let Ok(l) = obj.cast::<PyList>() {
            self.out.push(b'[');
            for (i, item) in l.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.value(&item, depth + 1)
                    .map_err(|e| e.at(Seg::Index(i)))?;
                self.check_size()?;
            }
            self.out.push(b']');
        } else if let Ok(t) = obj.cast::<PyTuple>() {
            self.out.push(b'[');
            for (i, item) in t.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.value(&item, depth + 1)
                    .map_err(|e| e.at(Seg::Index(i)))?;
                self.check_size()?;
            }
            self.out.push(b']');
        } else if let Ok(d) = obj.cast::<PyDict>() {
            self.out.push(b'{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                self.key(&k)?;
                self.out.push(b':');
                self.value(&v, depth + 1)
                    .map_err(|e| e.at(Seg::Key(key_label(&k))))?;
                self.check_size()?;
            }
            self.out.push(b'}');
        } else {
            self.other(obj, depth)?;
        }
        Ok(())
    }

    fn int(&mut self, i: &Bound<'_, PyInt>) -> Res {
        if let Ok(v) = i.extract::<i64>() {
            self.json(&v)
        } else if let Ok(v) = i.extract::<u64>() {
            self.json(&v)
        } else {
            // Beyond 64 bits: Python's own decimal digits are a valid JSON number.
            let digits = i.str()?;
            self.raw(&digits.to_cow()?);
            self.check_size()
        }
    }

    fn string(&mut self, s: &Bound<'_, PyString>) -> Res {
        match s.to_cow() {
            Ok(text) => self.json(text.as_ref())?,
            // Lone surrogates cannot be UTF-8: keep the text, replace what cannot be encoded.
            Err(_) => self.json(s.to_string_lossy().as_ref())?,
        }
        self.check_size()
    }

    fn key(&mut self, k: &Bound<'_, PyAny>) -> Res {
        if let Ok(s) = k.cast::<PyString>() {
            if KEYS.write(s, &mut self.out) {
                return Ok(());
            }
            let start = self.out.len();
            self.string(s)?;
            KEYS.put(s, &self.out[start..]);
            return Ok(());
        }
        let text = if k.is_none() {
            "null".to_owned()
        } else if let Ok(b) = k.cast_exact::<PyBool>() {
            if b.is_true() { "true" } else { "false" }.to_owned()
        } else if k.is_instance_of::<PyInt>() || k.is_instance_of::<PyFloat>() {
            // The text form the number itself would have (as `json.dumps` does for keys).
            let mut sub = Encoder {
                out: Vec::new(),
                max: self.max,
            };
            sub.value(k, 0)?;
            String::from_utf8_lossy(&sub.out).into_owned()
        } else {
            return Err(Error::new(Fail::Type(format!(
                "dict keys must be str, int, float, bool or None, not {}",
                type_name(k)
            ))));
        };
        self.json(text.as_str())
    }

    /// Pre-encoded [`Json`], numpy arrays and scalars, and objects that convert themselves
    /// with `tolist()`.
    fn other(&mut self, obj: &Bound<'_, PyAny>, depth: usize) -> Res {
        let py = obj.py();
        if let Ok(j) = obj.cast_exact::<Json>() {
            self.raw(&j.get().text);
            return self.check_size();
        }
        if let Some(np) = numpy_types(py)? {
            let ty = obj.get_type();
            if let Some((_, kind)) = np.scalars.iter().find(|(t, _)| ty.is(t)) {
                return self.numpy_scalar(obj, *kind);
            }
            if let Ok(arr) = obj.cast::<PyUntypedArray>() {
                return self.array(arr, depth);
            }
            if obj.is_instance(np.generic.bind(py))? {
                // Other numpy scalars (longdouble, complex, datetime, str_...): numpy converts.
                let item = obj.call_method0(intern!(py, "item"))?;
                return self.value(&item, depth + 1);
            }
        }
        if obj.hasattr(intern!(py, "tolist"))? {
            let list = obj.call_method0(intern!(py, "tolist"))?;
            return self.value(&list, depth + 1);
        }
        Err(Error::new(Fail::Type(format!(
            "cannot encode an object of type '{}' as JSON",
            type_name(obj)
        ))))
    }

    /// A numpy scalar of a known type, without calling back into Python.
    fn numpy_scalar(&mut self, obj: &Bound<'_, PyAny>, kind: Scalar) -> Res {
        match kind {
            Scalar::Bool => {
                let b: bool = obj.extract()?;
                self.raw(if b { "true" } else { "false" });
            }
            Scalar::Int => match obj.extract::<i64>() {
                Ok(v) => self.json(&v)?,
                Err(_) => self.json(&obj.extract::<u64>()?)?,
            },
            Scalar::Float32 => {
                let v: f64 = obj.extract()?;
                // Exact (the value was an f32), and written at f32 precision as in arrays.
                #[allow(clippy::cast_possible_truncation)]
                (v as f32).write(&mut self.out);
            }
            Scalar::Float => self.json(&obj.extract::<f64>()?)?,
        }
        Ok(())
    }

    fn array(&mut self, arr: &Bound<'_, PyUntypedArray>, depth: usize) -> Res {
        if depth + arr.ndim() > MAX_DEPTH {
            return Err(Error::new(Fail::Value(format!(
                "nested deeper than {MAX_DEPTH} levels"
            ))));
        }
        let elements: usize = arr.shape().iter().product();
        // Every element takes at least one byte plus a separator.
        if elements.saturating_mul(2) > self.max.saturating_add(2) {
            return Err(Error::new(Fail::Value(format!(
                "an array of {elements} elements does not fit in one record ({} bytes, \
                 max_record_bytes); send large payloads by frame_ref",
                self.max
            ))));
        }
        let dtype = arr.dtype();
        let native = dtype.is_native_byteorder().unwrap_or(true);
        let done = match (dtype.kind(), dtype.itemsize(), native) {
            (b'b', 1, _) => self.typed::<bool>(arr)?,
            (b'f', 8, true) => self.typed::<f64>(arr)?,
            (b'f', 4, true) => self.typed::<f32>(arr)?,
            (b'i', 8, true) => self.typed::<i64>(arr)?,
            (b'i', 4, true) => self.typed::<i32>(arr)?,
            (b'i', 2, true) => self.typed::<i16>(arr)?,
            (b'i', 1, _) => self.typed::<i8>(arr)?,
            (b'u', 8, true) => self.typed::<u64>(arr)?,
            (b'u', 4, true) => self.typed::<u32>(arr)?,
            (b'u', 2, true) => self.typed::<u16>(arr)?,
            (b'u', 1, _) => self.typed::<u8>(arr)?,
            _ => false,
        };
        if done {
            return Ok(());
        }
        // float16, complex, strings, objects, datetimes, foreign byte order: numpy converts.
        let list = arr.call_method0(intern!(arr.py(), "tolist"))?;
        self.value(&list, depth + 1)
    }

    /// Writes a numpy array of element type `T`; `false` when it cannot be read as such (then
    /// the caller falls back to `tolist()`).
    fn typed<T: Elem + numpy::Element>(
        &mut self,
        arr: &Bound<'_, PyUntypedArray>,
    ) -> Result<bool, Error> {
        let Ok(typed) = arr.cast::<PyArrayDyn<T>>() else {
            return Ok(false);
        };
        let Ok(ro) = typed.try_readonly() else {
            return Ok(false);
        };
        self.nd(ro.as_array())?;
        Ok(true)
    }

    fn nd<T: Elem>(&mut self, view: ArrayViewD<'_, T>) -> Res {
        match view.ndim() {
            0 => {
                if let Some(x) = view.iter().next() {
                    x.write(&mut self.out);
                }
            }
            1 => {
                self.out.push(b'[');
                for (i, x) in view.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    x.write(&mut self.out);
                }
                self.out.push(b']');
                self.check_size()?;
            }
            _ => {
                self.out.push(b'[');
                for (i, sub) in view.axis_iter(Axis(0)).enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.nd(sub)?;
                }
                self.out.push(b']');
            }
        }
        Ok(())
    }
}

fn key_label(k: &Bound<'_, PyAny>) -> String {
    k.str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A payload encoded once, reused as is: pass it wherever a payload goes (observation, action,
/// info values, render_hint...) and it is copied without being walked or checked again.
/// ``Json(value)`` encodes ``value`` like every payload; ``str(j)`` is the JSON text.
#[pyclass(frozen, module = "gym_telemetry._native")]
pub struct Json {
    text: String,
}

impl Json {
    /// The JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[pymethods]
impl Json {
    #[new]
    #[pyo3(signature = (value, *, max_bytes=1048576))]
    fn py_new(value: &Bound<'_, PyAny>, max_bytes: usize) -> PyResult<Self> {
        Ok(Json {
            text: to_json(value, "value", max_bytes)?,
        })
    }

    fn __str__(&self) -> &str {
        &self.text
    }

    fn __repr__(&self) -> String {
        format!("Json({:?})", self.text)
    }
}
