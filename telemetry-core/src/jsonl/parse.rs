//! One line of JSONL to one [`Record`]: classification (not JSON / malformed / object), the
//! `type` dispatch and the per-kind field tables, legacy aliases included.
//!
//! A line carrying `"schema": "gym_telemetry.v1"` was written by [`to_line`](super::to_line) and
//! is read *verbatim* (no discovery, no control-mode rewriting) so that the round trip is
//! lossless. Any other line is a legacy line and gets the legacy treatment described in the
//! module documentation of [`jsonl`](super).

use super::{
    fields::{invalid, Fields, JsonDoc},
    meta, JsonlError,
};
use crate::{
    pb::{
        Artifact, CompletionStatus, Record, RunCompleted, RunEpisode, RunStarted, RunStep, Scalar,
    },
    ControlMode,
};
use serde_json::Value;

/// The key that marks a canonical line.
pub(super) const SCHEMA_KEY: &str = "schema";
/// Its value.
pub(super) const SCHEMA: &str = "gym_telemetry.v1";

/// A parsed line and whether it was in the canonical shape.
pub(super) struct Parsed {
    pub(super) record: Record,
    pub(super) canonical: bool,
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
pub(super) fn parse(line: &[u8], line_no: u64) -> Result<Parsed, JsonlError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| JsonlError::InvalidUtf8 { line: line_no })?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('{') {
        return Err(JsonlError::NotJson {
            line: line_no,
            text: text.to_owned(),
        });
    }
    let map = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(JsonlError::Malformed {
                line: line_no,
                reason: format!(
                    "expected an object, got {}",
                    super::fields::type_name(&other)
                ),
            })
        }
        Err(e) => {
            return Err(
                non_finite(trimmed, line_no).unwrap_or(JsonlError::Malformed {
                    line: line_no,
                    reason: e.to_string(),
                }),
            )
        }
    };
    let mut f = Fields::new(map, line_no);
    let type_name = f.string(&["type"])?.ok_or_else(|| f.missing("type"))?;
    let canonical = f.holds(SCHEMA_KEY, SCHEMA);
    if canonical {
        f.take(&[SCHEMA_KEY]);
    }
    let legacy = !canonical;
    let record = match type_name.as_str() {
        "step" => step(f, legacy)?.into(),
        "episode" => episode(f, legacy)?.into(),
        "run_started" => run_started(f, legacy)?.into(),
        "run_completed" => run_completed(f)?.into(),
        "artifact" => artifact(f)?.into(),
        "scalar" => scalar(f)?.into(),
        _ => {
            return Err(JsonlError::UnknownType {
                line: line_no,
                type_name,
            })
        }
    };
    Ok(Parsed { record, canonical })
}

/// Checks a control mode. Legacy lines get the canonical spelling (`agent_only` -> `agent`);
/// canonical lines keep theirs. Empty stays empty ("not said").
fn control_mode(raw: String, field: &str, line: u64, legacy: bool) -> Result<String, JsonlError> {
    if raw.trim().is_empty() {
        return Ok(if legacy { String::new() } else { raw });
    }
    match raw.parse::<ControlMode>() {
        Ok(mode) if legacy => Ok(mode.as_str().to_owned()),
        Ok(_) => Ok(raw),
        Err(e) => Err(invalid(line, field, e.to_string())),
    }
}

/// Fills an empty `control_mode` / `agent_id` from a document (legacy lines only).
fn fill_from_doc(
    doc: &JsonDoc,
    doc_field: &str,
    agent_id: &mut String,
    mode: &mut String,
    line: u64,
) -> Result<(), JsonlError> {
    let Some(obj) = doc.object() else {
        return Ok(());
    };
    if agent_id.is_empty() {
        if let Some(v) = meta::find_key(obj, "agent_id") {
            let s = v.as_str().ok_or_else(|| {
                invalid(line, &format!("{doc_field}.agent_id"), "expected a string")
            })?;
            s.clone_into(agent_id);
        }
    }
    if mode.is_empty() {
        if let Some(v) = meta::find_key(obj, "control_mode") {
            let field = format!("{doc_field}.control_mode");
            let s = v
                .as_str()
                .ok_or_else(|| invalid(line, &field, "expected a string"))?;
            *mode = control_mode(s.to_owned(), &field, line, true)?;
        }
    }
    Ok(())
}

fn step(mut f: Fields, legacy: bool) -> Result<RunStep, JsonlError> {
    let line = f.line();
    let mut s = RunStep {
        run_id: f.req_string("run_id", &["run_id"])?,
        episode_index: f.req_u64("episode_index", &["episode_index", "episode"])?,
        step_index: f.req_u64("step_index", &["step_index", "step"])?,
        action_json: f.json_text(&["action_json", "action"])?.unwrap_or_default(),
        observation_json: f
            .json_text(&["observation_json", "observation", "obs"])?
            .unwrap_or_default(),
        reward: f.f64(&["reward"])?.unwrap_or_default(),
        terminated: f.bool(&["terminated"])?.unwrap_or_default(),
        truncated: f.bool(&["truncated"])?.unwrap_or_default(),
        timestamp: f.timestamp()?,
        policy_label: f.string(&["policy_label"])?.unwrap_or_default(),
        backend: f.string(&["backend"])?.unwrap_or_default(),
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
        agent_id: f.string(&["agent_id"])?.unwrap_or_default(),
        render_hint_json: f
            .json_text(&["render_hint_json", "render_hint"])?
            .unwrap_or_default(),
        frame_ref: f.string(&["frame_ref"])?.unwrap_or_default(),
        payload_version: f.u32(&["payload_version"])?.unwrap_or_default(),
        control_mode: f.string(&["control_mode"])?.unwrap_or_default(),
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        info_json: String::new(),
        policy_id: f.string(&["policy_id"])?.unwrap_or_default(),
        policy_digest: f.string(&["policy_digest"])?.unwrap_or_default(),
    };
    s.control_mode = control_mode(
        std::mem::take(&mut s.control_mode),
        "control_mode",
        line,
        legacy,
    )?;
    let mut info = f.doc(&["info_json", "info"])?;
    info.merge_extras(f.into_extras(), "info_json", line)?;
    s.info_json = info.into_string();
    Ok(s)
}

fn episode(mut f: Fields, legacy: bool) -> Result<RunEpisode, JsonlError> {
    let line = f.line();
    let mut e = RunEpisode {
        run_id: f.req_string("run_id", &["run_id"])?,
        episode_index: f.req_u64("episode_index", &["episode_index", "episode"])?,
        // In an episode line a bare `reward` is the episode total.
        total_reward: f.f64(&["total_reward", "reward"])?.unwrap_or_default(),
        steps: f.u64(&["steps"])?.unwrap_or_default(),
        terminated: f.bool(&["terminated"])?.unwrap_or_default(),
        truncated: f.bool(&["truncated"])?.unwrap_or_default(),
        metadata_json: String::new(),
        timestamp: f.timestamp()?,
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
        agent_id: f.string(&["agent_id"])?.unwrap_or_default(),
        control_mode: f.string(&["control_mode"])?.unwrap_or_default(),
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        policy_id: f.string(&["policy_id"])?.unwrap_or_default(),
        policy_digest: f.string(&["policy_digest"])?.unwrap_or_default(),
    };
    e.control_mode = control_mode(
        std::mem::take(&mut e.control_mode),
        "control_mode",
        line,
        legacy,
    )?;
    let mut metadata = f.doc(&["metadata_json", "metadata"])?;
    metadata.merge_extras(f.into_extras(), "metadata_json", line)?;
    if legacy {
        fill_from_doc(
            &metadata,
            "metadata",
            &mut e.agent_id,
            &mut e.control_mode,
            line,
        )?;
        let adds = metadata
            .object()
            .map(meta::canonical_additions)
            .unwrap_or_default();
        if !adds.is_empty() {
            metadata.object_mut("metadata_json", line)?.extend(adds);
        }
    }
    e.metadata_json = metadata.into_string();
    Ok(e)
}

fn run_started(mut f: Fields, legacy: bool) -> Result<RunStarted, JsonlError> {
    let line = f.line();
    let mut r = RunStarted {
        run_id: f.req_string("run_id", &["run_id"])?,
        timestamp: f.timestamp()?,
        config_json: String::new(),
        agent_id: f.string(&["agent_id"])?.unwrap_or_default(),
        control_mode: f.string(&["control_mode"])?.unwrap_or_default(),
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
    };
    r.control_mode = control_mode(
        std::mem::take(&mut r.control_mode),
        "control_mode",
        line,
        legacy,
    )?;
    let mut config = f.doc(&["config_json", "config"])?;
    config.merge_extras(f.into_extras(), "config_json", line)?;
    if legacy {
        fill_from_doc(
            &config,
            "config",
            &mut r.agent_id,
            &mut r.control_mode,
            line,
        )?;
    }
    r.config_json = config.into_string();
    Ok(r)
}

fn run_completed(mut f: Fields) -> Result<RunCompleted, JsonlError> {
    let line = f.line();
    let status_value = f.take(&["status"]);
    let mut r = RunCompleted {
        run_id: f.req_string("run_id", &["run_id"])?,
        timestamp: f.timestamp()?,
        status: 0,
        exit_code: f.i32(&["exit_code", "returncode"])?,
        error: f.string(&["error"])?.unwrap_or_default(),
        reason: f.string(&["reason"])?.unwrap_or_default(),
        signal: f.i32(&["signal"])?,
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
        info_json: String::new(),
    };
    r.status = match status_value {
        // Legacy workers say `completed`; `succeeded`, `success`, `ok`, ... mean the same.
        Some((k, Value::String(s))) => {
            s.parse::<CompletionStatus>()
                .map_err(|e| invalid(line, k, e.to_string()))? as i32
        }
        Some((k, Value::Number(n))) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| invalid(line, k, "expected a status name or a 32-bit enum number"))?,
        Some((k, other)) => {
            return Err(invalid(
                line,
                k,
                format!(
                    "expected a status name, got {}",
                    super::fields::type_name(&other)
                ),
            ))
        }
        // No status: the exit code (or a signal) decides.
        None => match (r.exit_code, r.signal) {
            (Some(0), None) => CompletionStatus::Succeeded as i32,
            (Some(_), _) | (None, Some(_)) => CompletionStatus::Failed as i32,
            (None, None) => return Err(f.missing("status")),
        },
    };
    let mut info = f.doc(&["info_json", "info"])?;
    info.merge_extras(f.into_extras(), "info_json", line)?;
    r.info_json = info.into_string();
    Ok(r)
}

fn artifact(mut f: Fields) -> Result<Artifact, JsonlError> {
    let line = f.line();
    let mut a = Artifact {
        run_id: f.req_string("run_id", &["run_id"])?,
        timestamp: f.timestamp()?,
        kind: f.string(&["kind"])?.unwrap_or_default(),
        path: f.req_string("path", &["path", "uri", "url"])?,
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
        info_json: String::new(),
    };
    let mut info = f.doc(&["info_json", "info"])?;
    info.merge_extras(f.into_extras(), "info_json", line)?;
    a.info_json = info.into_string();
    Ok(a)
}

fn scalar(mut f: Fields) -> Result<Scalar, JsonlError> {
    let line = f.line();
    let s = Scalar {
        run_id: f.req_string("run_id", &["run_id"])?,
        agent_id: f.string(&["agent_id"])?.unwrap_or_default(),
        tag: f.req_string("tag", &["tag"])?,
        value: f
            .f64_or_non_finite(&["value"])?
            .ok_or_else(|| f.missing("value"))?,
        step: f.i64(&["step", "global_step"])?.unwrap_or_default(),
        timestamp: f.timestamp()?,
        producer_id: f.string(&["producer_id"])?.unwrap_or_default(),
        producer_seq: f.u64(&["producer_seq"])?.unwrap_or_default(),
        seq_id: f.u64(&["seq_id"])?.unwrap_or_default(),
    };
    if let Some((key, _)) = f.into_extras().into_iter().next() {
        return Err(invalid(line, &key, "unknown field of a scalar"));
    }
    Ok(s)
}

/// The tokens Python's `json.dumps` writes for non-finite floats, longest first.
const NON_FINITE: [&str; 3] = ["-Infinity", "Infinity", "NaN"];

/// Marks a non-finite token in [`non_finite`]'s rewritten text: a string value starting with a
/// Unicode noncharacter (allowed in JSON strings, never written by a worker on purpose).
const MARK: &str = "\u{fdd0}non-finite:";

/// Why a line that serde_json refused does not parse, when the reason is a bare `NaN`,
/// `Infinity` or `-Infinity`: the line with each such token (outside strings) rewritten as a
/// marked string parses, and the first marked value names the field. `None` otherwise (the
/// line is malformed for another reason).
fn non_finite(text: &str, line: u64) -> Option<JsonlError> {
    let mut out = String::with_capacity(text.len() + 32);
    let (mut in_string, mut escaped, mut found) = (false, false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(tok) = NON_FINITE.iter().find(|t| rest.starts_with(**t)) {
            out.push('"');
            out.push_str(MARK);
            out.push_str(tok);
            out.push('"');
            rest = &rest[tok.len()..];
            found = true;
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !found {
        return None;
    }
    let value: Value = serde_json::from_str(&out).ok()?;
    let (field, token) = find_mark(&value, String::new())?;
    Some(JsonlError::NonFinite { line, field, token })
}

/// The dotted path and token of the first marked string in `v`.
fn find_mark(v: &Value, path: String) -> Option<(String, &'static str)> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::String(s) => {
            let tok = s.strip_prefix(MARK)?;
            NON_FINITE
                .iter()
                .find(|t| **t == tok)
                .map(|t| (path.clone(), *t))
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| find_mark(x, join(&i.to_string()))),
        Value::Object(m) => m.iter().find_map(|(k, x)| find_mark(x, join(k))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> JsonlError {
        match parse(line.as_bytes(), 3) {
            Err(e) => e,
            Ok(_) => panic!("{line} parsed"),
        }
    }

    #[test]
    fn python_non_finite_tokens_name_their_field() {
        let cases = [
            (
                r#"{"type":"step","run_id":"r","episode":0,"step":1,"reward":NaN}"#,
                "reward",
                "NaN",
            ),
            (
                r#"{"type":"step","run_id":"r","episode":0,"step":1,"reward":Infinity}"#,
                "reward",
                "Infinity",
            ),
            (
                r#"{"type":"episode","run_id":"r","episode":0,"total_reward":-Infinity}"#,
                "total_reward",
                "-Infinity",
            ),
            (
                r#"{"type":"step","run_id":"r","episode":0,"step":1,"obs":[1.0, NaN]}"#,
                "obs.1",
                "NaN",
            ),
            (
                r#"{"type":"step","run_id":"r","episode":0,"step":1,"info":{"q":{"a":NaN}}}"#,
                "info.q.a",
                "NaN",
            ),
        ];
        for (line, field, token) in cases {
            match err(line) {
                JsonlError::NonFinite {
                    line: 3,
                    field: f,
                    token: t,
                } => {
                    assert_eq!((f.as_str(), t), (field, token), "{line}");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_tokens_inside_strings_or_with_other_faults_stay_what_they_are() {
        // Inside a string: an ordinary value (here a wrong type for the reward).
        assert!(matches!(
            err(r#"{"type":"step","run_id":"r","episode":0,"step":1,"reward":"NaN"}"#),
            JsonlError::InvalidField { .. }
        ));
        // A quoted key with an escaped quote before the token still finds it.
        assert!(matches!(
            err(r#"{"type":"step","run_id":"r\"x","episode":0,"step":1,"reward":NaN}"#),
            JsonlError::NonFinite { .. }
        ));
        // Broken for another reason as well: malformed.
        assert!(matches!(
            err(r#"{"type":"step","reward":NaN,"#),
            JsonlError::Malformed { .. }
        ));
        // A bare word that is not one of the tokens.
        assert!(matches!(
            err(r#"{"type":"step","reward":nan}"#),
            JsonlError::Malformed { .. }
        ));
    }

    #[test]
    fn an_out_of_range_number_is_malformed() {
        assert!(matches!(
            err(r#"{"type":"step","run_id":"r","episode":0,"step":1,"reward":1e400}"#),
            JsonlError::Malformed { .. }
        ));
    }
}
