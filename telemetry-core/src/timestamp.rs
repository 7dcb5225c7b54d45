//! Conversions between protobuf `Timestamp`s, Unix nanoseconds and RFC 3339 text.
//!
//! Legacy workers write time two ways (`ts_unix_ns` integers, ISO-8601 `ts` strings); the store
//! keeps nanoseconds; viewers print RFC 3339. One place does all the conversions.

use prost_types::Timestamp;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Text that is not an RFC 3339 / ISO-8601 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {value:?}: {reason}")]
pub struct TimestampError {
    /// The text as given.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Nanoseconds since the Unix epoch of a timestamp (saturating at the i64 range).
pub fn to_unix_nanos(ts: &Timestamp) -> i64 {
    (ts.seconds)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nanos))
}

/// A timestamp from nanoseconds since the Unix epoch.
pub fn from_unix_nanos(nanos: i64) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        // rem_euclid of 1e9 always fits in i32.
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// The current time.
pub fn now() -> Timestamp {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    from_unix_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

/// Parses RFC 3339 text such as `2025-10-17T14:03:00.000Z`.
pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
    let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| TimestampError {
        value: text.to_owned(),
        reason: e.to_string(),
    })?;
    let nanos = i64::try_from(dt.unix_timestamp_nanos()).map_err(|_| TimestampError {
        value: text.to_owned(),
        reason: "out of range".to_owned(),
    })?;
    Ok(from_unix_nanos(nanos))
}

/// Formats a timestamp as RFC 3339 in UTC with millisecond precision when it has no finer part,
/// nanoseconds otherwise.
pub fn format_rfc3339(ts: &Timestamp) -> String {
    let nanos = to_unix_nanos(ts);
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) {
        Ok(dt) => {
            let (ms_only, sub) = (
                nanos.rem_euclid(1_000_000) == 0,
                nanos.rem_euclid(1_000_000_000),
            );
            let base = dt
                .format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second]"
                ))
                .unwrap_or_default();
            if ms_only {
                format!("{base}.{:03}Z", sub / 1_000_000)
            } else {
                format!("{base}.{sub:09}Z")
            }
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_milliseconds() {
        let ts = parse_rfc3339("2025-10-17T14:03:01.037Z").expect("valid");
        assert_eq!(format_rfc3339(&ts), "2025-10-17T14:03:01.037Z");
        assert_eq!(ts.nanos, 37_000_000);
    }

    #[test]
    fn unix_nanos_round_trip_including_negative() {
        for n in [0_i64, 1, 1_795_914_168_088_378_923, -1, -1_500_000_000] {
            assert_eq!(to_unix_nanos(&from_unix_nanos(n)), n);
        }
        let ts = from_unix_nanos(1_795_914_168_088_378_923);
        assert_eq!(
            to_unix_nanos(&parse_rfc3339(&format_rfc3339(&ts)).expect("valid")),
            1_795_914_168_088_378_923
        );
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let err = parse_rfc3339("yesterday").expect_err("not a time");
        assert_eq!(err.value, "yesterday");
    }
}
