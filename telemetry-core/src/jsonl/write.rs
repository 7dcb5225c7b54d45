//! Records to canonical JSONL lines.
//!
//! The canonical shape (documented in [`jsonl`](super)) uses the protobuf field names, carries
//! `*_json` payloads as the exact strings of the record, time as integer nanoseconds and the
//! `schema` marker that makes the parser read the line back verbatim.

use super::parse::{SCHEMA, SCHEMA_KEY};
use crate::{
    pb::{record::Kind, CompletionStatus, Record},
    timestamp,
};
use prost_types::Timestamp;
use serde_json::{Map, Value};

/// A JSON object under construction, leaving out fields at their default value.
struct Obj(Map<String, Value>);

impl Obj {
    fn new(type_name: &str) -> Self {
        let mut m = Map::new();
        m.insert("type".to_owned(), type_name.into());
        m.insert(SCHEMA_KEY.to_owned(), SCHEMA.into());
        Obj(m)
    }

    fn put(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.put(key, value);
        }
        self
    }

    fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        if value != 0 {
            self.put(key, value);
        }
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.put(key, value);
        }
        self
    }

    /// Left out only for +0.0, so -0.0 survives. Non-finite values (invalid records) become
    /// `null`, which reads back as 0.
    fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        if value.to_bits() != 0 {
            self.put(key, value);
        }
        self
    }

    fn opt_i32(&mut self, key: &str, value: Option<i32>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }

    fn ts(&mut self, value: Option<&Timestamp>) -> &mut Self {
        if let Some(ts) = value {
            self.put("ts_unix_ns", timestamp::to_unix_nanos(ts));
        }
        self
    }

    fn finish(&mut self) -> String {
        Value::Object(std::mem::take(&mut self.0)).to_string()
    }
}

/// A record as one canonical JSON object, without a newline. An empty record (no kind) has no
/// line form and is written as `{}`, which the parser rejects as missing its `type`.
///
/// ```
/// use telemetry_core::{jsonl::{parse_line, to_line}, pb::{Record, RunStep}};
///
/// let step: Record = RunStep {
///     run_id: "r".into(),
///     step_index: 3,
///     action_json: "1".into(),
///     reward: 0.5,
///     control_mode: "agent".into(),
///     ..Default::default()
/// }
/// .into();
/// let line = to_line(&step);
/// assert_eq!(
///     line,
///     r#"{"type":"step","schema":"gym_telemetry.v1","run_id":"r","episode_index":0,"step_index":3,"action_json":"1","reward":0.5,"control_mode":"agent"}"#
/// );
/// assert_eq!(parse_line(line.as_bytes(), 1)?, step);
/// # Ok::<(), telemetry_core::jsonl::JsonlError>(())
/// ```
pub fn to_line(record: &Record) -> String {
    let Some(kind) = &record.kind else {
        return "{}".to_owned();
    };
    match kind {
        Kind::Step(s) => Obj::new("step")
            .put("run_id", s.run_id.as_str())
            .put("episode_index", s.episode_index)
            .put("step_index", s.step_index)
            .str("action_json", &s.action_json)
            .str("observation_json", &s.observation_json)
            .f64("reward", s.reward)
            .bool("terminated", s.terminated)
            .bool("truncated", s.truncated)
            .ts(s.timestamp.as_ref())
            .str("policy_label", &s.policy_label)
            .str("backend", &s.backend)
            .u64("seq_id", s.seq_id)
            .str("agent_id", &s.agent_id)
            .str("render_hint_json", &s.render_hint_json)
            .str("frame_ref", &s.frame_ref)
            .u64("payload_version", u64::from(s.payload_version))
            .str("control_mode", &s.control_mode)
            .str("producer_id", &s.producer_id)
            .u64("producer_seq", s.producer_seq)
            .str("info_json", &s.info_json)
            .str("policy_id", &s.policy_id)
            .str("policy_digest", &s.policy_digest)
            .finish(),
        Kind::Episode(e) => Obj::new("episode")
            .put("run_id", e.run_id.as_str())
            .put("episode_index", e.episode_index)
            .f64("total_reward", e.total_reward)
            .u64("steps", e.steps)
            .bool("terminated", e.terminated)
            .bool("truncated", e.truncated)
            .str("metadata_json", &e.metadata_json)
            .ts(e.timestamp.as_ref())
            .u64("seq_id", e.seq_id)
            .str("agent_id", &e.agent_id)
            .str("control_mode", &e.control_mode)
            .str("producer_id", &e.producer_id)
            .u64("producer_seq", e.producer_seq)
            .str("policy_id", &e.policy_id)
            .str("policy_digest", &e.policy_digest)
            .finish(),
        Kind::RunStarted(r) => Obj::new("run_started")
            .put("run_id", r.run_id.as_str())
            .ts(r.timestamp.as_ref())
            .str("config_json", &r.config_json)
            .str("agent_id", &r.agent_id)
            .str("control_mode", &r.control_mode)
            .str("producer_id", &r.producer_id)
            .u64("producer_seq", r.producer_seq)
            .u64("seq_id", r.seq_id)
            .finish(),
        Kind::RunCompleted(r) => {
            let mut o = Obj::new("run_completed");
            o.put("run_id", r.run_id.as_str()).ts(r.timestamp.as_ref());
            match CompletionStatus::wire_str(r.status) {
                Some(text) => o.put("status", text),
                None => o.put("status", r.status),
            };
            o.opt_i32("exit_code", r.exit_code)
                .str("error", &r.error)
                .str("reason", &r.reason)
                .opt_i32("signal", r.signal)
                .str("producer_id", &r.producer_id)
                .u64("producer_seq", r.producer_seq)
                .u64("seq_id", r.seq_id)
                .str("info_json", &r.info_json)
                .finish()
        }
        Kind::Artifact(a) => Obj::new("artifact")
            .put("run_id", a.run_id.as_str())
            .ts(a.timestamp.as_ref())
            .str("kind", &a.kind)
            .put("path", a.path.as_str())
            .str("producer_id", &a.producer_id)
            .u64("producer_seq", a.producer_seq)
            .u64("seq_id", a.seq_id)
            .str("info_json", &a.info_json)
            .finish(),
        Kind::Scalar(v) => {
            let mut o = Obj::new("scalar");
            o.put("run_id", v.run_id.as_str())
                .str("agent_id", &v.agent_id)
                .put("tag", v.tag.as_str());
            if v.value.is_finite() {
                o.put("value", v.value);
            } else {
                o.put("value", non_finite_text(v.value));
            }
            o.put("step", v.step)
                .ts(v.timestamp.as_ref())
                .str("producer_id", &v.producer_id)
                .u64("producer_seq", v.producer_seq)
                .u64("seq_id", v.seq_id)
                .finish()
        }
    }
}

/// How a NaN or an infinity is spelled in a line (JSON has no literal for them).
fn non_finite_text(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

/// Writes [`to_line`] followed by `\n`.
pub fn write_record<W: std::io::Write>(w: &mut W, record: &Record) -> std::io::Result<()> {
    let mut line = to_line(record);
    line.push('\n');
    w.write_all(line.as_bytes())
}
