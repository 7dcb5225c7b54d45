//! numpy as the encoder sees it: how each element type is written, and numpy's scalar types,
//! looked up only once some other code has imported numpy.
//!
//! Split from the encoder's walk (`encode.rs`) because it is the only part that knows numpy's
//! type zoo.

use pyo3::{intern, prelude::*, sync::PyOnceLock, types::PyType};

/// A numpy element written as JSON.
pub(super) trait Elem: Copy {
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! elem_via_serde {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            fn write(self, out: &mut Vec<u8>) {
                // Writing a number into a Vec cannot fail; NaN and infinities become `null`.
                let _ = serde_json::to_writer(&mut *out, &self);
            }
        }
    )*};
}
elem_via_serde!(f64, f32, i64, i32, i16, i8, u64, u32, u16, u8);

impl Elem for bool {
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self { b"true" } else { b"false" });
    }
}

impl<T: Elem> Elem for &T {
    fn write(self, out: &mut Vec<u8>) {
        (*self).write(out);
    }
}

/// How a numpy scalar type is written.
#[derive(Clone, Copy)]
pub(super) enum Scalar {
    Bool,
    Int,
    Float32,
    Float,
}

/// numpy's scalar types, looked up once numpy is imported.
pub(super) struct NumpyTypes {
    pub(super) generic: Py<PyType>,
    pub(super) scalars: Vec<(Py<PyType>, Scalar)>,
}

/// numpy's types once numpy has been imported by someone; `None` while it has not (we never
/// import numpy ourselves: a worker without numpy pays nothing for it).
pub(super) fn numpy_types(py: Python<'_>) -> PyResult<Option<&NumpyTypes>> {
    static TYPES: PyOnceLock<NumpyTypes> = PyOnceLock::new();
    if let Some(t) = TYPES.get(py) {
        return Ok(Some(t));
    }
    let modules = py
        .import(intern!(py, "sys"))?
        .getattr(intern!(py, "modules"))?;
    if !modules.contains(intern!(py, "numpy"))? {
        return Ok(None);
    }
    let t = TYPES.get_or_try_init(py, || -> PyResult<NumpyTypes> {
        let np = py.import(intern!(py, "numpy"))?;
        let ty = |name: &str| -> PyResult<Py<PyType>> {
            Ok(np.getattr(name)?.cast_into::<PyType>()?.unbind())
        };
        let mut scalars = vec![
            (ty("bool_")?, Scalar::Bool),
            (ty("float32")?, Scalar::Float32),
        ];
        scalars.push((ty("float16")?, Scalar::Float));
        for name in [
            "int64",
            "int32",
            "uint8",
            "int8",
            "int16",
            "uint16",
            "uint32",
            "uint64",
            "intc",
            "uintc",
            "longlong",
            "ulonglong",
            "intp",
            "uintp",
        ] {
            // Aliases of one another on most platforms, distinct types on some.
            if let Ok(t) = ty(name) {
                scalars.push((t, Scalar::Int));
            }
        }
        Ok(NumpyTypes {
            generic: ty("generic")?,
            scalars,
        })
    })?;
    Ok(Some(t))
}
