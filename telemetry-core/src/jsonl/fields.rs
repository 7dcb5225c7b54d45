//! Typed extraction of keys from one parsed JSON object.
//!
//! Legacy workers spell the same field several ways (`episode` / `episode_index`, `ts` /
//! `ts_unix_ns`, `action` / `action_json`). [`Fields`] takes the first spelling present, checks
//! its type, and leaves every key it did not take for the caller to keep as an extra key, so
//! nothing the worker sent is silently dropped.

use super::JsonlError;
use crate::timestamp;
use prost_types::Timestamp;
use serde_json::{Map, Value};

/// The keys of one line that are still unclaimed, and the line they came from.
pub(super) struct Fields {
    map: Map<String, Value>,
    line: u64,
}

/// The JSON type of a value, for error messages.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Fields {
    pub(super) fn new(map: Map<String, Value>, line: u64) -> Self {
        Fields { map, line }
    }

    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// Whether `key` holds exactly `value` (without taking it).
    pub(super) fn holds(&self, key: &str, value: &str) -> bool {
        self.map.get(key).and_then(Value::as_str) == Some(value)
    }

    /// Takes the first of `keys` that holds a non-null value. Nulls among `keys` before it are
    /// taken too (a null known field means "not given"); later aliases stay as extra keys.
    pub(super) fn take(&mut self, keys: &[&'static str]) -> Option<(&'static str, Value)> {
        for &k in keys {
            match self.map.get(k) {
                None => {}
                Some(Value::Null) => {
                    self.map.shift_remove(k);
                }
                Some(_) => return self.map.shift_remove(k).map(|v| (k, v)),
            }
        }
        None
    }

    /// The keys nobody took, in the order the worker wrote them.
    pub(super) fn into_extras(self) -> Map<String, Value> {
        self.map
    }

    pub(super) fn invalid(&self, field: &str, reason: impl Into<String>) -> JsonlError {
        invalid(self.line, field, reason)
    }

    pub(super) fn missing(&self, field: &'static str) -> JsonlError {
        JsonlError::MissingField {
            line: self.line,
            field,
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, got: &Value) -> JsonlError {
        self.invalid(key, format!("expected {expected}, got {}", type_name(got)))
    }

    pub(super) fn string(&mut self, keys: &[&'static str]) -> Result<Option<String>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((_, Value::String(s))) => Ok(Some(s)),
            Some((k, v)) => Err(self.wrong_type(k, "a string", &v)),
        }
    }

    pub(super) fn req_string(
        &mut self,
        field: &'static str,
        keys: &[&'static str],
    ) -> Result<String, JsonlError> {
        self.string(keys)?.ok_or_else(|| self.missing(field))
    }

    pub(super) fn u64(&mut self, keys: &[&'static str]) -> Result<Option<u64>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => as_u64(&v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "a non-negative integer", &v)),
        }
    }

    pub(super) fn req_u64(
        &mut self,
        field: &'static str,
        keys: &[&'static str],
    ) -> Result<u64, JsonlError> {
        self.u64(keys)?.ok_or_else(|| self.missing(field))
    }

    pub(super) fn u32(&mut self, keys: &[&'static str]) -> Result<Option<u32>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => as_u64(&v)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "an integer in 0..=4294967295", &v)),
        }
    }

    pub(super) fn i32(&mut self, keys: &[&'static str]) -> Result<Option<i32>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => as_i64(&v)
                .and_then(|n| i32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "a 32-bit integer", &v)),
        }
    }

    pub(super) fn f64(&mut self, keys: &[&'static str]) -> Result<Option<f64>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "a number", &v)),
        }
    }

    pub(super) fn i64(&mut self, keys: &[&'static str]) -> Result<Option<i64>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => as_i64(&v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "a 64-bit integer", &v)),
        }
    }

    /// A number, or one of the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (JSON has no
    /// literal for them; this is how [`to_line`](super::to_line) writes them).
    pub(super) fn f64_or_non_finite(
        &mut self,
        keys: &[&'static str],
    ) -> Result<Option<f64>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, v)) => v
                .as_f64()
                .or_else(|| match v.as_str()? {
                    "NaN" | "nan" => Some(f64::NAN),
                    "Infinity" | "inf" => Some(f64::INFINITY),
                    "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
                    _ => None,
                })
                .map(Some)
                .ok_or_else(|| self.wrong_type(k, "a number, \"NaN\" or \"Infinity\"", &v)),
        }
    }

    pub(super) fn bool(&mut self, keys: &[&'static str]) -> Result<Option<bool>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((_, Value::Bool(b))) => Ok(Some(b)),
            Some((k, v)) => Err(self.wrong_type(k, "a boolean", &v)),
        }
    }

    /// A JSON payload stored as text. A string under a `*_json` key is JSON text already: it is
    /// checked and kept byte for byte (the empty string means "not given", as in protobuf). Any
    /// other value (`action: 2`, `observation: {...}`) is serialised compactly.
    pub(super) fn json_text(
        &mut self,
        keys: &[&'static str],
    ) -> Result<Option<String>, JsonlError> {
        match self.take(keys) {
            None => Ok(None),
            Some((k, Value::String(s))) if k.ends_with("_json") && s.is_empty() => Ok(None),
            Some((k, Value::String(s))) if k.ends_with("_json") => {
                check_json_text(&s).map_err(|reason| self.invalid(k, reason))?;
                Ok(Some(s))
            }
            Some((_, v)) => Ok(Some(v.to_string())),
        }
    }

    /// A JSON document (metadata, config, info), as text or as an inline value ("" = absent).
    pub(super) fn doc(&mut self, keys: &[&'static str]) -> Result<JsonDoc, JsonlError> {
        match self.take(keys) {
            None => Ok(JsonDoc::default()),
            Some((k, Value::String(s))) if k.ends_with("_json") && s.is_empty() => {
                Ok(JsonDoc::default())
            }
            Some((k, Value::String(s))) if k.ends_with("_json") => {
                let value: Value =
                    serde_json::from_str(&s).map_err(|e| self.invalid(k, e.to_string()))?;
                Ok(JsonDoc {
                    key: k,
                    text: Some(s),
                    value: Some(value),
                    dirty: false,
                })
            }
            Some((k, v)) => Ok(JsonDoc {
                key: k,
                text: None,
                value: Some(v),
                dirty: false,
            }),
        }
    }

    /// The record time: the first of `ts_unix_ns` (integer nanoseconds), `ts` and `timestamp`
    /// (RFC 3339 text, or a number of Unix seconds). The others stay as extra keys.
    pub(super) fn timestamp(&mut self) -> Result<Option<Timestamp>, JsonlError> {
        let Some((k, v)) = self.take(&["ts_unix_ns", "ts", "timestamp"]) else {
            return Ok(None);
        };
        let ts = match (k, &v) {
            ("ts_unix_ns", v) => as_i64(v)
                .map(timestamp::from_unix_nanos)
                .ok_or_else(|| self.wrong_type(k, "an integer of nanoseconds", v))?,
            (_, Value::String(s)) => {
                timestamp::parse_rfc3339(s.trim()).map_err(|e| self.invalid(k, e.to_string()))?
            }
            (_, Value::Number(n)) => n
                .as_f64()
                .map(|secs| (secs * 1e9).round())
                .filter(|ns| ns.abs() < 9.2e18)
                // In range by the filter above.
                .map(|ns| timestamp::from_unix_nanos(ns as i64))
                .ok_or_else(|| self.invalid(k, "Unix seconds out of range"))?,
            (_, v) => return Err(self.wrong_type(k, "RFC 3339 text or Unix seconds", v)),
        };
        Ok(Some(ts))
    }
}

pub(super) fn invalid(line: u64, field: &str, reason: impl Into<String>) -> JsonlError {
    JsonlError::InvalidField {
        line,
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that `text` is one JSON value.
pub(super) fn check_json_text(text: &str) -> Result<(), String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Integers, and floats with no fractional part (`3.0`, as Python may print), in u64 range.
fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        // 2^64 is exactly representable; the cast is exact below it.
        (f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f)).then_some(f as u64)
    })
}

/// Integers, and floats with no fractional part, in i64 range.
fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        (f.fract() == 0.0
            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f))
        .then_some(f as i64)
    })
}

/// A JSON document field (`metadata_json`, `config_json`, `info_json`): the text the worker sent,
/// kept byte for byte unless keys have to be added, in which case it is re-serialised compactly.
#[derive(Debug, Default)]
pub(super) struct JsonDoc {
    /// The key it came from ("" when absent).
    key: &'static str,
    /// The worker's text, when it sent text.
    text: Option<String>,
    /// The parsed value (`None`: the worker sent no document).
    value: Option<Value>,
    /// Keys were added: `text` is stale.
    dirty: bool,
}

/// Where keys that clash with a document's own keys are kept.
pub(super) const CLASH_KEY: &str = "_jsonl_extra";

impl JsonDoc {
    /// The document as an object, when it is one.
    pub(super) fn object(&self) -> Option<&Map<String, Value>> {
        self.value.as_ref().and_then(Value::as_object)
    }

    /// The document as an object to add keys to (an absent document becomes `{}`).
    pub(super) fn object_mut(
        &mut self,
        field: &str,
        line: u64,
    ) -> Result<&mut Map<String, Value>, JsonlError> {
        let key = if self.key.is_empty() { field } else { self.key };
        let value = self.value.get_or_insert_with(|| Value::Object(Map::new()));
        let got = type_name(value);
        match value {
            Value::Object(map) => {
                self.dirty = true;
                Ok(map)
            }
            _ => Err(invalid(
                line,
                key,
                format!("is {got}, not an object, so it cannot hold the line's extra keys"),
            )),
        }
    }

    /// Adds the line's extra keys. A key the document already has with a different value is
    /// kept under [`CLASH_KEY`] instead of overwriting it; an equal value is not repeated.
    pub(super) fn merge_extras(
        &mut self,
        extras: Map<String, Value>,
        field: &str,
        line: u64,
    ) -> Result<(), JsonlError> {
        if extras.is_empty() {
            return Ok(());
        }
        let obj = self.object_mut(field, line)?;
        let mut clashes = Map::new();
        for (k, v) in extras {
            match obj.get(&k) {
                None => {
                    obj.insert(k, v);
                }
                Some(existing) if *existing == v => {}
                Some(_) => {
                    clashes.insert(k, v);
                }
            }
        }
        if !clashes.is_empty() {
            match obj
                .entry(CLASH_KEY)
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(held) => held.extend(clashes),
                _ => {
                    return Err(invalid(
                        line,
                        &format!("{field}.{CLASH_KEY}"),
                        "is not an object, so clashing extra keys cannot be kept",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The field's final text ("" when there was no document).
    pub(super) fn into_string(self) -> String {
        match (self.dirty, self.text, self.value) {
            (false, Some(text), _) => text,
            (_, _, Some(value)) => value.to_string(),
            _ => String::new(),
        }
    }
}
