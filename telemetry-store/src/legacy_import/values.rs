//! Reading one legacy column value whatever SQLite holds in it (see the field rules in
//! [`crate::legacy_import`]): JSON text, plain text, integers, finite numbers, flags and
//! timestamps, each noting in `p` what had to be repaired.

use rusqlite::types::ValueRef;
use serde_json::Value;
use telemetry_core::timestamp::{from_unix_nanos, parse_rfc3339};

/// JSON text of a column (see the module docs).
pub(super) fn json_text(v: ValueRef<'_>, field: &str, p: &mut Vec<String>) -> String {
    let bytes = match v {
        ValueRef::Null => return String::new(),
        ValueRef::Integer(i) => return i.to_string(),
        ValueRef::Real(f) => {
            return match serde_json::Number::from_f64(f) {
                Some(n) => n.to_string(),
                None => {
                    p.push(format!(
                        "{field} is {f}, not representable in JSON; dropped"
                    ));
                    String::new()
                }
            }
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => b,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        p.push(format!(
            "{field} is binary ({} bytes, not UTF-8); dropped",
            bytes.len()
        ));
        return String::new();
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return trimmed.to_owned();
    }
    p.push(format!("{field} is not JSON; kept as a JSON string"));
    Value::String(text.to_owned()).to_string()
}

/// A column as plain text (numbers are spelled out; binary is not text).
pub(super) fn plain_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => std::str::from_utf8(b).ok().map(str::to_owned),
    }
}

pub(super) fn int(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
        ValueRef::Text(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn unsigned(v: ValueRef<'_>, field: &str, p: &mut Vec<String>) -> u64 {
    match (v, int(v)) {
        (ValueRef::Null, _) => 0,
        (_, Some(i)) if i >= 0 => i as u64,
        _ => {
            p.push(format!("{field} is not a non-negative integer; stored 0"));
            0
        }
    }
}

pub(super) fn finite(v: ValueRef<'_>, field: &str, p: &mut Vec<String>) -> f64 {
    let value = match v {
        ValueRef::Integer(i) => Some(i as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    };
    match value {
        Some(f) if f.is_finite() => f,
        Some(f) => {
            p.push(format!("{field} is {f}; stored 0"));
            0.0
        }
        None => {
            p.push(format!("{field} is missing or not a number; stored 0"));
            0.0
        }
    }
}

pub(super) fn flag(v: ValueRef<'_>) -> bool {
    match v {
        ValueRef::Text(b) => matches!(
            std::str::from_utf8(b)
                .map(|t| t.trim().to_ascii_lowercase())
                .as_deref(),
            Ok("1" | "true" | "yes")
        ),
        other => int(other).is_some_and(|i| i != 0),
    }
}

/// A Unix time number whose unit is told by its magnitude (s, ms, µs or ns).
fn epoch(value: f64) -> Option<prost_types::Timestamp> {
    if !value.is_finite() {
        return None;
    }
    let scale = match value.abs() {
        a if a < 1e11 => 1e9,
        a if a < 1e14 => 1e6,
        a if a < 1e17 => 1e3,
        _ => 1.0,
    };
    let nanos = (value * scale).round();
    (nanos.abs() < 9.2e18).then(|| from_unix_nanos(nanos as i64))
}

fn epoch_int(i: i64) -> prost_types::Timestamp {
    let a = i.unsigned_abs();
    let nanos = if a < 100_000_000_000 {
        i.saturating_mul(1_000_000_000)
    } else if a < 100_000_000_000_000 {
        i.saturating_mul(1_000_000)
    } else if a < 100_000_000_000_000_000 {
        i.saturating_mul(1_000)
    } else {
        i
    };
    from_unix_nanos(nanos)
}

pub(super) fn timestamp(v: ValueRef<'_>, p: &mut Vec<String>) -> Option<prost_types::Timestamp> {
    let text = match v {
        ValueRef::Null => return None,
        ValueRef::Integer(i) => return Some(epoch_int(i)),
        ValueRef::Real(f) => return epoch(f),
        ValueRef::Text(b) | ValueRef::Blob(b) => String::from_utf8_lossy(b).trim().to_owned(),
    };
    if text.is_empty() {
        return None;
    }
    if let Some(ts) = parse_timestamp_text(&text) {
        return Some(ts);
    }
    p.push(format!("timestamp {text:?} is not a time; dropped"));
    None
}

fn parse_timestamp_text(text: &str) -> Option<prost_types::Timestamp> {
    if let Ok(ts) = parse_rfc3339(text) {
        return Some(ts);
    }
    if let Ok(i) = text.parse::<i64>() {
        return Some(epoch_int(i));
    }
    if let Ok(f) = text.parse::<f64>() {
        return epoch(f);
    }
    let mut fixed = text.to_owned();
    if fixed.len() > 10 && fixed.as_bytes()[10] == b' ' {
        fixed.replace_range(10..11, "T");
    }
    let has_zone = fixed
        .get(11..)
        .is_some_and(|time| time.contains(['Z', 'z', '+', '-']));
    if !has_zone {
        fixed.push('Z');
    }
    parse_rfc3339(&fixed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_time_spellings_parse() {
        let want = parse_rfc3339("2025-10-17T14:03:01.037Z").expect("valid");
        for text in [
            "2025-10-17T14:03:01.037Z",
            "2025-10-17T14:03:01.037000+00:00",
            "2025-10-17T14:03:01.037000",
            "2025-10-17 14:03:01.037",
        ] {
            assert_eq!(parse_timestamp_text(text), Some(want), "{text}");
        }
        let secs = 1_760_709_781_i64;
        let ts = from_unix_nanos(secs * 1_000_000_000);
        assert_eq!(epoch_int(secs), ts);
        assert_eq!(epoch_int(secs * 1_000), ts);
        assert_eq!(epoch_int(secs * 1_000_000), ts);
        assert_eq!(epoch_int(secs * 1_000_000_000), ts);
        assert_eq!(epoch(secs as f64), Some(ts));
        assert_eq!(parse_timestamp_text("yesterday"), None);
    }

    #[test]
    fn blobs_become_json_text() {
        let mut p = Vec::new();
        assert_eq!(
            json_text(ValueRef::Blob(br#"{"a": 1}"#), "x", &mut p),
            r#"{"a": 1}"#
        );
        assert_eq!(json_text(ValueRef::Integer(3), "x", &mut p), "3");
        assert_eq!(json_text(ValueRef::Null, "x", &mut p), "");
        assert!(p.is_empty());
        assert_eq!(json_text(ValueRef::Text(b"left"), "x", &mut p), "\"left\"");
        assert_eq!(
            json_text(ValueRef::Blob(&[0xff, 0x00, 0x9c]), "x", &mut p),
            ""
        );
        assert_eq!(p.len(), 2);
    }
}
