//! Typed errors of the JSONL contract.
//!
//! A long-running proxy must never stop on one bad line, and it must count and report what it
//! rejected. Every variant (except I/O) names the 1-based line it came from, and
//! [`JsonlError::label`] gives a stable, low-cardinality name for metrics.

/// Why one JSONL line did not become a record.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// Reading the underlying stream failed. The reader stops after this error.
    #[error("reading JSONL input failed: {source}")]
    Io {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The line is longer than the reader's limit; it was skipped without being buffered.
    #[error("line {line}: {len} bytes, the limit is {max}")]
    TooLong {
        /// 1-based line number.
        line: u64,
        /// Length of the line in bytes (without its line ending).
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The line is not UTF-8.
    #[error("line {line}: not valid UTF-8")]
    InvalidUtf8 {
        /// 1-based line number.
        line: u64,
    },
    /// The line is not a JSON object at all (for example a `print()` from the worker). A proxy
    /// passes `text` through to its own stdout.
    #[error("line {line}: not a JSON object")]
    NotJson {
        /// 1-based line number.
        line: u64,
        /// The line as it was (without its line ending).
        text: String,
    },
    /// The line starts like a JSON object but does not parse.
    #[error("line {line}: malformed JSON: {reason}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// The JSON parser's message.
        reason: String,
    },
    /// The `type` is not one we know.
    #[error("line {line}: unknown record type {type_name:?}")]
    UnknownType {
        /// 1-based line number.
        line: u64,
        /// The type as given.
        type_name: String,
    },
    /// A required key is absent (or null).
    #[error("line {line}: missing field {field:?}")]
    MissingField {
        /// 1-based line number.
        line: u64,
        /// The key (the canonical name when it has aliases).
        field: &'static str,
    },
    /// A number is `NaN`, `Infinity` or `-Infinity` (what Python's `json.dumps` writes for
    /// non-finite floats). JSON has no such numbers, and non-finite rewards are rejected on
    /// every path ([`crate::validate`]), so the line is refused, naming the field.
    #[error("line {line}: {field} is {token}: non-finite numbers are not accepted")]
    NonFinite {
        /// 1-based line number.
        line: u64,
        /// The key holding it, dotted when nested (`observation.0` for an array element).
        field: String,
        /// The token as written (`NaN`, `Infinity`, `-Infinity`).
        token: &'static str,
    },
    /// A key holds a value of the wrong type or out of range.
    #[error("line {line}: invalid field {field:?}: {reason}")]
    InvalidField {
        /// 1-based line number.
        line: u64,
        /// The key, dotted when nested (`metadata.control_mode`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl JsonlError {
    /// The 1-based line number the error belongs to (`None` for I/O errors).
    pub fn line(&self) -> Option<u64> {
        match self {
            JsonlError::Io { .. } => None,
            JsonlError::TooLong { line, .. }
            | JsonlError::InvalidUtf8 { line }
            | JsonlError::NotJson { line, .. }
            | JsonlError::Malformed { line, .. }
            | JsonlError::UnknownType { line, .. }
            | JsonlError::MissingField { line, .. }
            | JsonlError::NonFinite { line, .. }
            | JsonlError::InvalidField { line, .. } => Some(*line),
        }
    }

    /// A short stable label for metrics (`rejected_lines_total{reason=...}`).
    pub fn label(&self) -> &'static str {
        match self {
            JsonlError::Io { .. } => "io",
            JsonlError::TooLong { .. } => "too_long",
            JsonlError::InvalidUtf8 { .. } => "invalid_utf8",
            JsonlError::NotJson { .. } => "not_json",
            JsonlError::Malformed { .. } => "malformed",
            JsonlError::UnknownType { .. } => "unknown_type",
            JsonlError::MissingField { .. } => "missing_field",
            JsonlError::NonFinite { .. } => "non_finite",
            JsonlError::InvalidField { .. } => "invalid_field",
        }
    }
}
