//! What a record must satisfy before it is stored, and the typed errors when it does not.
//!
//! The daemon validates every record it ingests and rejects bad ones one by one (the valid
//! records of the same batch are still stored); the shim runs the same checks in dry-run mode so
//! a worker author sees the error before any daemon exists. Rules:
//!
//! - `run_id` obeys [`ids::check_id`] (non-empty, at most [`ids::MAX_ID_LEN`] bytes, no
//!   control characters); `agent_id` and `producer_id` obey the same length and character rule
//!   ([`ids::check_id_chars`]: they may be empty).
//! - Every `*_json` field is empty or parses as JSON.
//! - The encoded record is at most [`Limits::max_record_bytes`] (default 1 MiB).
//! - Rewards are finite: NaN and infinities are rejected, never stored (a NaN would poison every
//!   sum a viewer draws). The policy is the same on every path.
//! - Frames travel by reference: `frame_ref` is a short reference (at most
//!   [`Limits::max_frame_ref_len`] bytes, not a `data:` URI) and `render_hint_json` is at most
//!   [`Limits::max_render_hint_bytes`].
//! - A scalar's `tag` is non-empty, at most [`MAX_TAG_LEN`] bytes, without control characters;
//!   its `step` is not negative. Its `value` may be anything, NaN and infinities included: a
//!   diverging loss is data, unlike a reward that feeds sums.
//! - `control_mode` is empty or a known mode (legacy spellings included); [`normalize`] rewrites it
//!   to the canonical spelling.

use crate::{
    ids::{self, IdError},
    pb::{record::Kind, Record},
    ControlMode, ControlModeError,
};
use prost::Message;

/// The longest scalar tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;

/// Size limits applied to records. The defaults suit RL telemetry; all are configurable. (The
/// id length is not: it is [`ids::MAX_ID_LEN`] everywhere.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded record (protobuf bytes).
    pub max_record_bytes: usize,
    /// Longest `frame_ref`.
    pub max_frame_ref_len: usize,
    /// Largest `render_hint_json`.
    pub max_render_hint_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 1024 * 1024,
            max_frame_ref_len: 4096,
            max_render_hint_bytes: 256 * 1024,
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// The record has no payload.
    #[error("record has no payload")]
    EmptyRecord,
    /// An id breaks the [`ids`] rules (empty `run_id`, too long, control characters).
    #[error(transparent)]
    Id(#[from] IdError),
    /// A JSON field does not parse.
    #[error("{field} is not valid JSON: {reason}")]
    InvalidJson {
        /// Which field.
        field: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The encoded record is too large.
    #[error("record is {size} bytes encoded, the limit is {max}")]
    RecordTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A reward is NaN or infinite.
    #[error("{field} is not finite ({value})")]
    NonFiniteReward {
        /// Which field.
        field: &'static str,
        /// The value.
        value: f64,
    },
    /// Frame data was sent inline instead of by reference.
    #[error("{field} carries frame data inline ({len} bytes); send frames by frame_ref")]
    InlineFrame {
        /// Which field.
        field: &'static str,
        /// Its size.
        len: usize,
    },
    /// `control_mode` is not a known mode.
    #[error(transparent)]
    ControlMode(#[from] ControlModeError),
    /// A scalar's tag is empty, too long or has control characters.
    #[error("scalar tag {tag:?} is invalid: {reason}")]
    InvalidTag {
        /// The tag (cut to [`MAX_TAG_LEN`] bytes).
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An index that must not be negative is.
    #[error("{field} is negative ({value})")]
    NegativeIndex {
        /// Which field.
        field: &'static str,
        /// The value.
        value: i64,
    },
}

impl ValidationError {
    /// A short stable label for metrics (`rejected_records_total{reason=...}`).
    pub fn label(&self) -> &'static str {
        match self {
            ValidationError::EmptyRecord => "empty_record",
            ValidationError::Id(IdError::Empty { .. }) => "empty_run_id",
            ValidationError::Id(IdError::TooLong { .. }) => "id_too_long",
            ValidationError::Id(IdError::ControlChar { .. }) => "id_control_char",
            ValidationError::Id(IdError::NotPathSafe { .. }) => "id_not_path_safe",
            ValidationError::InvalidJson { .. } => "invalid_json",
            ValidationError::RecordTooLarge { .. } => "too_large",
            ValidationError::NonFiniteReward { .. } => "non_finite_reward",
            ValidationError::InlineFrame { .. } => "inline_frame",
            ValidationError::ControlMode(_) => "control_mode",
            ValidationError::InvalidTag { .. } => "invalid_tag",
            ValidationError::NegativeIndex { .. } => "negative_index",
        }
    }
}

fn check_json(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(value)
        .map(|_| ())
        .map_err(|e| ValidationError::InvalidJson {
            field,
            reason: e.to_string(),
        })
}

fn check_reward(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(ValidationError::NonFiniteReward { field, value })
    }
}

/// The tag rule of a [`Scalar`](crate::pb::Scalar) (see the module rules); the shim and every
/// importer call it before sending.
pub fn check_tag(tag: &str) -> Result<(), ValidationError> {
    let bad = |reason| {
        let mut cut = tag.len().min(MAX_TAG_LEN);
        while !tag.is_char_boundary(cut) {
            cut -= 1;
        }
        Err(ValidationError::InvalidTag {
            tag: tag[..cut].to_owned(),
            reason,
        })
    };
    if tag.is_empty() {
        return bad("empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return bad("longer than 256 bytes");
    }
    if tag.chars().any(char::is_control) {
        return bad("control character");
    }
    Ok(())
}

fn check_frame_ref(value: &str, limits: &Limits) -> Result<(), ValidationError> {
    if value.len() > limits.max_frame_ref_len || value.starts_with("data:") {
        return Err(ValidationError::InlineFrame {
            field: "frame_ref",
            len: value.len(),
        });
    }
    Ok(())
}

/// The encoded length of `record` once [`normalize`] has rewritten its `control_mode` (its
/// current length when the mode is invalid: the record is refused for that anyway).
fn normalized_len(record: &Record, kind: &Kind) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    // The control_mode field numbers of RunStep, RunEpisode and RunStarted.
    let (tag, mode, inner) = match kind {
        Kind::Step(s) => (17, &s.control_mode, s.encoded_len()),
        Kind::Episode(e) => (11, &e.control_mode, e.encoded_len()),
        Kind::RunStarted(r) => (5, &r.control_mode, r.encoded_len()),
        Kind::RunCompleted(_) | Kind::Artifact(_) | Kind::Scalar(_) => return record.encoded_len(),
    };
    let Ok(canonical) = ControlMode::from_wire(mode).map(ControlMode::as_str) else {
        return record.encoded_len();
    };
    // proto3 leaves an empty string out.
    let field = |len: usize| {
        if len == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(len as u64) + len
        }
    };
    let new_inner = inner - field(mode.len()) + field(canonical.len());
    // The payload is the record's one field: its oneof message, length-prefixed.
    record.encoded_len() - encoded_len_varint(inner as u64) - inner
        + encoded_len_varint(new_inner as u64)
        + new_inner
}

/// Checks a record against `limits` (the size limit as the record will be stored, normalized).
/// Does not modify it.
pub fn validate(record: &Record, limits: &Limits) -> Result<(), ValidationError> {
    let kind = record.kind.as_ref().ok_or(ValidationError::EmptyRecord)?;
    ids::check_id("run_id", record.run_id())?;
    ids::check_id_chars("producer_id", record.producer().0)?;
    // The record is stored normalized, so the limit applies to its normalized size (a
    // canonical `control_mode` can be longer than the one sent: "" -> "unknown").
    let size = normalized_len(record, kind);
    if size > limits.max_record_bytes {
        return Err(ValidationError::RecordTooLarge {
            size,
            max: limits.max_record_bytes,
        });
    }
    match kind {
        Kind::Step(s) => {
            ids::check_id_chars("agent_id", &s.agent_id)?;
            check_reward("reward", s.reward)?;
            check_json("action_json", &s.action_json)?;
            check_json("observation_json", &s.observation_json)?;
            check_json("info_json", &s.info_json)?;
            if s.render_hint_json.len() > limits.max_render_hint_bytes {
                return Err(ValidationError::InlineFrame {
                    field: "render_hint_json",
                    len: s.render_hint_json.len(),
                });
            }
            check_json("render_hint_json", &s.render_hint_json)?;
            check_frame_ref(&s.frame_ref, limits)?;
            ControlMode::from_wire(&s.control_mode)?;
        }
        Kind::Episode(e) => {
            ids::check_id_chars("agent_id", &e.agent_id)?;
            check_reward("total_reward", e.total_reward)?;
            check_json("metadata_json", &e.metadata_json)?;
            ControlMode::from_wire(&e.control_mode)?;
        }
        Kind::RunStarted(r) => {
            ids::check_id_chars("agent_id", &r.agent_id)?;
            check_json("config_json", &r.config_json)?;
            ControlMode::from_wire(&r.control_mode)?;
        }
        Kind::RunCompleted(r) => check_json("info_json", &r.info_json)?,
        Kind::Artifact(a) => check_json("info_json", &a.info_json)?,
        Kind::Scalar(s) => {
            ids::check_id_chars("agent_id", &s.agent_id)?;
            check_tag(&s.tag)?;
            if s.step < 0 {
                return Err(ValidationError::NegativeIndex {
                    field: "step",
                    value: s.step,
                });
            }
        }
    }
    Ok(())
}

/// Validates a record and rewrites its `control_mode` to the canonical spelling
/// (`agent_only` -> `agent`, empty -> `unknown`).
pub fn normalize(record: &mut Record, limits: &Limits) -> Result<(), ValidationError> {
    validate(record, limits)?;
    let mode = match &mut record.kind {
        Some(Kind::Step(s)) => Some(&mut s.control_mode),
        Some(Kind::Episode(e)) => Some(&mut e.control_mode),
        Some(Kind::RunStarted(r)) => Some(&mut r.control_mode),
        _ => None,
    };
    if let Some(mode) = mode {
        let canonical = ControlMode::from_wire(mode)?.as_str();
        if mode != canonical {
            canonical.clone_into(mode);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{RunEpisode, RunStep, Scalar};

    #[test]
    fn scalars_keep_nan_and_infinities() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1e300] {
            let r: Record = Scalar {
                run_id: "r".into(),
                tag: "losses/value_loss".into(),
                value,
                step: 3,
                ..Default::default()
            }
            .into();
            validate(&r, &Limits::default()).expect("any value is valid");
        }
        let long = "é".repeat(MAX_TAG_LEN);
        match check_tag(&long) {
            Err(ValidationError::InvalidTag { tag, .. }) => assert!(tag.len() <= MAX_TAG_LEN),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn step() -> RunStep {
        RunStep {
            run_id: "run-1".into(),
            action_json: "1".into(),
            observation_json: r#"{"x":[1,2]}"#.into(),
            reward: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_step_is_valid_and_normalized() {
        let mut r: Record = RunStep {
            control_mode: "agent_only".into(),
            ..step()
        }
        .into();
        normalize(&mut r, &Limits::default()).expect("valid");
        match r.kind {
            Some(Kind::Step(s)) => assert_eq!(s.control_mode, "agent"),
            other => panic!("unexpected {other:?}"),
        }
        let mut empty: Record = step().into();
        normalize(&mut empty, &Limits::default()).expect("valid");
        match empty.kind {
            Some(Kind::Step(s)) => assert_eq!(s.control_mode, "unknown"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let l = Limits::default();
        let cases: Vec<(Record, &str)> = vec![
            (Record::default(), "empty_record"),
            (
                RunStep {
                    run_id: String::new(),
                    ..step()
                }
                .into(),
                "empty_run_id",
            ),
            (
                RunStep {
                    run_id: "x".repeat(ids::MAX_ID_LEN + 1),
                    ..step()
                }
                .into(),
                "id_too_long",
            ),
            (
                RunStep {
                    producer_id: "p".repeat(ids::MAX_ID_LEN + 1),
                    ..step()
                }
                .into(),
                "id_too_long",
            ),
            (
                RunStep {
                    agent_id: "a\nb".into(),
                    ..step()
                }
                .into(),
                "id_control_char",
            ),
            (
                RunStep {
                    action_json: "{oops".into(),
                    ..step()
                }
                .into(),
                "invalid_json",
            ),
            (
                RunStep {
                    reward: f64::NAN,
                    ..step()
                }
                .into(),
                "non_finite_reward",
            ),
            (
                RunStep {
                    reward: f64::INFINITY,
                    ..step()
                }
                .into(),
                "non_finite_reward",
            ),
            (
                RunStep {
                    frame_ref: "data:image/png;base64,AAAA".into(),
                    ..step()
                }
                .into(),
                "inline_frame",
            ),
            (
                RunStep {
                    control_mode: "telepathy".into(),
                    ..step()
                }
                .into(),
                "control_mode",
            ),
            (
                RunStep {
                    observation_json: format!("\"{}\"", "x".repeat(2 << 20)),
                    ..step()
                }
                .into(),
                "too_large",
            ),
            (
                RunEpisode {
                    run_id: "r".into(),
                    total_reward: f64::NEG_INFINITY,
                    ..Default::default()
                }
                .into(),
                "non_finite_reward",
            ),
            (
                RunEpisode {
                    run_id: "r".into(),
                    metadata_json: "[1,".into(),
                    ..Default::default()
                }
                .into(),
                "invalid_json",
            ),
            (
                Scalar {
                    run_id: "r".into(),
                    tag: String::new(),
                    ..Default::default()
                }
                .into(),
                "invalid_tag",
            ),
            (
                Scalar {
                    run_id: "r".into(),
                    tag: "t".repeat(MAX_TAG_LEN + 1),
                    ..Default::default()
                }
                .into(),
                "invalid_tag",
            ),
            (
                Scalar {
                    run_id: "r".into(),
                    tag: "losses/\u{7}".into(),
                    ..Default::default()
                }
                .into(),
                "invalid_tag",
            ),
            (
                Scalar {
                    run_id: "r".into(),
                    tag: "loss".into(),
                    step: -1,
                    ..Default::default()
                }
                .into(),
                "negative_index",
            ),
        ];
        for (record, label) in cases {
            let err = validate(&record, &l).expect_err(label);
            assert_eq!(err.label(), label, "{err}");
        }
    }

    /// Found by the `ingest_batch` fuzz target: a record at the size limit with an empty
    /// `control_mode` passed, was stored with "unknown" (9 bytes more) and then failed its own
    /// validation (a re-import or dump would refuse what the daemon had accepted).
    #[test]
    fn the_size_limit_applies_to_the_normalized_record() {
        for (mode, kind) in [
            ("", "step"),
            (" AGENT-ONLY ", "step"),
            ("", "episode"),
            ("", "run_started"),
        ] {
            let canonical = ControlMode::from_wire(mode).expect("a mode").as_str();
            let record = |pad: usize, mode: &str| -> Record {
                let text = format!("\"{}\"", "x".repeat(pad));
                match kind {
                    "step" => RunStep {
                        control_mode: mode.into(),
                        info_json: text,
                        ..step()
                    }
                    .into(),
                    "episode" => RunEpisode {
                        run_id: "r".into(),
                        control_mode: mode.into(),
                        metadata_json: text,
                        ..Default::default()
                    }
                    .into(),
                    _ => crate::pb::RunStarted {
                        run_id: "r".into(),
                        control_mode: mode.into(),
                        config_json: text,
                        ..Default::default()
                    }
                    .into(),
                }
            };
            // Around 128 bytes the length prefixes grow from one byte to two.
            for limit in [100, 127, 128, 129, 200, 16_384] {
                let limits = Limits {
                    max_record_bytes: limit,
                    ..Limits::default()
                };
                for pad in limit.saturating_sub(60)..limit {
                    let mut r = record(pad, mode);
                    let stored_len = record(pad, canonical).encoded_len();
                    let accepted = normalize(&mut r, &limits).is_ok();
                    assert_eq!(
                        accepted,
                        stored_len <= limit,
                        "{kind} mode {mode:?} limit {limit} pad {pad}: {stored_len} bytes normalized"
                    );
                    if accepted {
                        validate(&r, &limits).expect("a stored record passes again");
                    }
                }
            }
        }
    }

    #[test]
    fn limits_are_configurable() {
        let small = Limits {
            max_record_bytes: 16,
            ..Limits::default()
        };
        let r: Record = step().into();
        assert!(matches!(
            validate(&r, &small),
            Err(ValidationError::RecordTooLarge { max: 16, .. })
        ));
        assert!(validate(&r, &Limits::default()).is_ok());
    }
}
