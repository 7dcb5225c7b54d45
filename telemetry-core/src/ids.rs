//! The rules for ids (`run_id`, `agent_id`, `producer_id`), stated once.
//!
//! Record validation, the Python binding's argument checks and the daemon's run submission all
//! check ids; they used to carry their own copies with different limits. Two rules:
//!
//! - [`check_id`], the general rule for any id a record carries: non-empty, at most
//!   [`MAX_ID_LEN`] bytes, no control characters;
//! - [`check_run_id`], the stricter rule for a run id that names a directory (the daemon makes
//!   `runs/<run_id>` and `queues/<run_id>`): at most [`MAX_ID_LEN`] bytes of
//!   `[A-Za-z0-9._-]`, not starting with `.`, so it is always one safe path component.

/// Longest id, in bytes (UTF-8). 128 bytes holds any generated id (`run-<secs>-<hex>`, UUIDs)
/// with room to spare, and keeps a run id short enough to be a directory name on every file
/// system we run on.
pub const MAX_ID_LEN: usize = 128;

/// Why an id was refused. Messages name the id (`kind`, e.g. `"run_id"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id.
        kind: &'static str,
    },
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("{kind} is {len} bytes, the limit is {max}")]
    TooLong {
        /// Which id.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The id holds a control character.
    #[error("{kind} must not contain control characters")]
    ControlChar {
        /// Which id.
        kind: &'static str,
    },
    /// A run id holds a character outside `[A-Za-z0-9._-]` or starts with `.`.
    #[error(
        "{kind} {value:?} may only hold letters, digits, '.', '_' and '-' (and not start with '.')"
    )]
    NotPathSafe {
        /// Which id.
        kind: &'static str,
        /// The id as given.
        value: String,
    },
}

impl IdError {
    /// Which id was refused.
    pub fn kind(&self) -> &'static str {
        match self {
            IdError::Empty { kind }
            | IdError::TooLong { kind, .. }
            | IdError::ControlChar { kind }
            | IdError::NotPathSafe { kind, .. } => kind,
        }
    }
}

/// The length and character part of [`check_id`], for ids that may be empty (a record's
/// `agent_id` and `producer_id`).
pub fn check_id_chars(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::ControlChar { kind });
    }
    Ok(())
}

/// The general id rule: non-empty, at most [`MAX_ID_LEN`] bytes, no control characters.
/// `kind` names the id in the error (`"run_id"`, `"agent_id"`, ...).
pub fn check_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    check_id_chars(kind, value)
}

/// The run-id rule for ids that name directories: 1 to [`MAX_ID_LEN`] bytes of
/// `[A-Za-z0-9._-]`, not starting with `.` (so never `.`, `..` or a hidden name).
pub fn check_run_id(id: &str) -> Result<(), IdError> {
    const KIND: &str = "run_id";
    if id.is_empty() {
        return Err(IdError::Empty { kind: KIND });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind: KIND,
            len: id.len(),
            max: MAX_ID_LEN,
        });
    }
    if id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(IdError::NotPathSafe {
            kind: KIND,
            value: id.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_safe_path_components() {
        // The daemon dispatcher's cases.
        assert!(check_run_id("run-1.a_b").is_ok());
        assert!(check_run_id("run-1764617000-0a1b2c3d").is_ok());
        for bad in ["", "../etc", "a/b", ".hidden", "sp ace", &"x".repeat(200)] {
            assert!(check_run_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_run_id(".").is_err());
        assert!(check_run_id("..").is_err());
        assert!(check_run_id("a\\b").is_err());
        assert!(check_run_id("caf\u{e9}").is_err());
    }

    #[test]
    fn run_id_length_limit_is_inclusive() {
        assert!(check_run_id(&"x".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(
            check_run_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong {
                kind: "run_id",
                len: MAX_ID_LEN + 1,
                max: MAX_ID_LEN
            })
        );
    }

    #[test]
    fn run_id_errors_say_what_is_wrong() {
        let err = check_run_id("a/b").expect_err("slash");
        assert_eq!(
            err.to_string(),
            "run_id \"a/b\" may only hold letters, digits, '.', '_' and '-' (and not start with '.')"
        );
        assert_eq!(
            check_run_id("").expect_err("empty").to_string(),
            "run_id must not be empty"
        );
    }

    #[test]
    fn general_ids_allow_any_printable_text() {
        assert!(check_id("agent_id", "agent 1/π").is_ok());
        assert!(check_id("agent_id", &"é".repeat(MAX_ID_LEN / 2)).is_ok());
        assert_eq!(
            check_id("agent_id", ""),
            Err(IdError::Empty { kind: "agent_id" })
        );
        let long = "é".repeat(MAX_ID_LEN / 2 + 1);
        let err = check_id("agent_id", &long).expect_err("too long");
        assert_eq!(err.to_string(), "agent_id is 130 bytes, the limit is 128");
        assert_eq!(err.kind(), "agent_id");
        let err = check_id("run_id", "a\tb").expect_err("control");
        assert_eq!(err, IdError::ControlChar { kind: "run_id" });
        assert_eq!(
            err.to_string(),
            "run_id must not contain control characters"
        );
    }

    #[test]
    fn optional_ids_may_be_empty_but_not_long() {
        assert!(check_id_chars("producer_id", "").is_ok());
        assert!(check_id_chars("producer_id", &"p".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(check_id_chars("producer_id", "p\u{7f}").is_err());
    }
}
