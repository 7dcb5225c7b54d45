//! A small identity cache of encoded dict keys.
//!
//! Split from the encoder (`encode.rs`) because it is a performance device with its own
//! safety argument (each slot keeps its key alive), not part of what JSON is written.

use pyo3::{prelude::*, types::PyString};
use std::sync::Mutex;

/// Encoded dict keys, by identity. The same few key objects (interned literals such as
/// `"prob"`) come back at every step, and under the stable ABI of Python 3.9 reading a str's
/// UTF-8 costs an allocation; a small direct-mapped cache skips that. Each slot holds a strong
/// reference, so an address cannot be reused by another object while it is cached.
pub(super) struct KeyCache {
    slots: Mutex<Vec<Option<CachedKey>>>,
}

/// A key object and its JSON text.
type CachedKey = (Py<PyString>, Box<[u8]>);

/// Keys longer than this are not cached.
const KEY_CACHE_MAX_LEN: usize = 64;
const KEY_CACHE_SLOTS: usize = 256;

pub(super) static KEYS: KeyCache = KeyCache {
    slots: Mutex::new(Vec::new()),
};

impl KeyCache {
    fn slot(s: &Bound<'_, PyString>) -> usize {
        (s.as_ptr() as usize >> 4) % KEY_CACHE_SLOTS
    }

    /// Appends the cached JSON of `s` to `out`; false if it is not cached.
    pub(super) fn write(&self, s: &Bound<'_, PyString>, out: &mut Vec<u8>) -> bool {
        let Ok(slots) = self.slots.lock() else {
            return false;
        };
        match slots.get(Self::slot(s)) {
            Some(Some((k, json))) if k.as_ptr() == s.as_ptr() => {
                out.extend_from_slice(json);
                true
            }
            _ => false,
        }
    }

    pub(super) fn put(&self, s: &Bound<'_, PyString>, json: &[u8]) {
        if json.len() > KEY_CACHE_MAX_LEN + 2 {
            return;
        }
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        if slots.is_empty() {
            slots.resize_with(KEY_CACHE_SLOTS, || None);
        }
        // The evicted key is released with the GIL held (we are called with it).
        if let Some(slot) = slots.get_mut(Self::slot(s)) {
            *slot = Some((s.clone().unbind(), json.into()));
        }
    }
}
