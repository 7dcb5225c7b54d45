//! The predecessor's run configuration (`TrainRunConfig`), as its GUI sends it in
//! `SubmitRunRequest.config_json`: validation, normalisation, digest and derived run id.
//!
//! A JSON object with exactly these top-level keys (the last two optional):
//!
//! | key | shape |
//! |---|---|
//! | `run_name` | string, 1–120 characters |
//! | `entry_point` | non-empty string (`"python"`) |
//! | `arguments` | list of strings |
//! | `environment` | object of string → string |
//! | `resources` | `{cpus: int ≥ 1, memory_mb: int ≥ 256, gpus: {requested: int 0–8, mandatory: bool = false}}` |
//! | `artifacts` | `{output_prefix: non-empty string, persist_logs: bool = true, keep_checkpoints: bool = true}` |
//! | `metadata` | object (default `{}`); `metadata.worker` describes the worker, see [`WorkerSpec`] |
//! | `schedule` | `{max_duration_seconds: int ≥ 1, max_steps: int ≥ 1}`, each optional |
//!
//! Nested objects of `resources`, `artifacts` and `schedule` accept no other keys. Errors name
//! the JSON path (`$.resources.gpus.requested`).
//!
//! The *normalised* config is the object with defaults filled in (`mandatory`, `persist_logs`,
//! `keep_checkpoints`, `metadata`) and `schedule` kept only when given, with only its two keys
//! (a `null` value counts as absent). Its digest is the hex SHA-256 of its canonical JSON:
//! sorted keys, compact separators, non-ASCII as `\uXXXX` escapes — byte for byte what Python's
//! `json.dumps(obj, sort_keys=True, separators=(",", ":"))` writes. A run submitted without a run
//! id gets the hex SHA-1 of `"{run_name}::{submitted_at}::{digest}"`, `submitted_at` in Python's
//! `datetime.isoformat()` form (`2025-10-17T14:03:00.123456+00:00`).

use std::{collections::BTreeMap, fmt::Write as _};

use prost_types::Timestamp;
use serde_json::{Map, Value};

/// `run_name`'s longest length, in characters.
pub const MAX_RUN_NAME_CHARS: usize = 120;
/// The most GPUs a run may request.
pub const MAX_GPUS: i64 = 8;
/// The smallest `resources.memory_mb`.
pub const MIN_MEMORY_MB: i64 = 256;

/// A config that breaks a rule: the JSON path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where (`$.resources.cpus`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config_json {}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// `metadata.worker`: what the dispatcher runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSpec {
    /// Run as `<entry_point> -m <module>`.
    pub module: Option<String>,
    /// Run as `<entry_point> <script>` (when no module is given).
    pub script: Option<String>,
    /// Extra argv after the module or script.
    pub arguments: Vec<String>,
    /// Written to a file passed as `--config <path>` and `TRAINER_WORKER_CONFIG_PATH`.
    pub config: Option<Value>,
    /// `agent_id`, else `config.agent_id`, else empty.
    pub agent_id: String,
    /// The worker publishes over gRPC itself (passed on as `TRAINER_WORKER_USE_GRPC=1`).
    pub use_grpc: bool,
    /// Where such a worker publishes (passed on as `TRAINER_WORKER_GRPC_TARGET`).
    pub grpc_target: Option<String>,
}

/// A validated, normalised `TrainRunConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRunConfig {
    /// The normalised object (keys sorted).
    pub normalised: Value,
    /// `run_name`.
    pub run_name: String,
    /// `entry_point`.
    pub entry_point: String,
    /// `environment`, merged into the worker's environment.
    pub environment: BTreeMap<String, String>,
    /// `resources.gpus.requested`.
    pub gpus_requested: u32,
    /// `resources.gpus.mandatory`.
    pub gpus_mandatory: bool,
    /// `schedule.max_duration_seconds`.
    pub max_duration_seconds: Option<u64>,
    /// `schedule.max_steps` (recorded in the digest; the worker is expected to honour it).
    pub max_steps: Option<u64>,
    /// `metadata.worker`.
    pub worker: WorkerSpec,
}

impl TrainRunConfig {
    /// The canonical JSON of the normalised config.
    pub fn canonical(&self) -> String {
        canonical_json(&self.normalised)
    }

    /// The hex SHA-256 of the canonical JSON.
    pub fn digest(&self) -> String {
        sha256_hex(self.canonical().as_bytes())
    }
}

/// Does this config look like a `TrainRunConfig` rather than the `argv`/`command` form?
pub fn is_train_run_config(obj: &Map<String, Value>) -> bool {
    !(obj.contains_key("argv") || obj.contains_key("command"))
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object().ok_or_else(|| err(path, "must be an object"))
}

fn only_keys(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), ConfigError> {
    let mut extra: Vec<&String> = obj
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    extra.sort();
    match extra.first() {
        Some(k) => Err(err(
            &format!("{path}.{k}"),
            format!("unknown key (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, ConfigError> {
    match obj.get(key) {
        Some(v) if !v.is_null() => Ok(v),
        _ => Err(err(&format!("{path}.{key}"), "is required")),
    }
}

fn int(v: &Value, path: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64(),
        _ => None,
    };
    let describe = if max == i64::MAX {
        format!("must be an integer ≥ {min}")
    } else {
        format!("must be an integer {min}–{max}")
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err(path, describe)),
    }
}

fn boolean(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(err(&format!("{path}.{key}"), "must be true or false")),
    }
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    let a = v
        .as_array()
        .ok_or_else(|| err(path, "must be a list of strings"))?;
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(&format!("{path}[{i}]"), "must be a string"))
        })
        .collect()
}

fn opt_string(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err(&format!("{path}.{key}"), "must be a string")),
    }
}

const TOP_KEYS: &[&str] = &[
    "run_name",
    "entry_point",
    "arguments",
    "environment",
    "resources",
    "artifacts",
    "metadata",
    "schedule",
];

/// Validates and normalises a `TrainRunConfig`.
pub fn parse_train_run_config(v: &Value) -> Result<TrainRunConfig, ConfigError> {
    let top = object(v, "$")?;
    only_keys(top, "$", TOP_KEYS)?;

    let run_name = required(top, "$", "run_name")?
        .as_str()
        .ok_or_else(|| err("$.run_name", "must be a string"))?
        .to_owned();
    let chars = run_name.chars().count();
    if chars == 0 || chars > MAX_RUN_NAME_CHARS {
        return Err(err(
            "$.run_name",
            format!("must be 1–{MAX_RUN_NAME_CHARS} characters (is {chars})"),
        ));
    }
    let entry_point = required(top, "$", "entry_point")?
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("$.entry_point", "must be a non-empty string"))?
        .to_owned();
    let arguments = string_list(required(top, "$", "arguments")?, "$.arguments")?;
    let env_obj = object(required(top, "$", "environment")?, "$.environment")?;
    let mut environment = BTreeMap::new();
    for (k, val) in env_obj {
        let s = val
            .as_str()
            .ok_or_else(|| err(&format!("$.environment.{k}"), "must be a string"))?;
        if k.is_empty() || k.contains('=') || k.contains('\0') || s.contains('\0') {
            return Err(err(
                &format!("$.environment.{k}"),
                "is not a valid environment variable",
            ));
        }
        environment.insert(k.clone(), s.to_owned());
    }

    let res = object(required(top, "$", "resources")?, "$.resources")?;
    only_keys(res, "$.resources", &["cpus", "memory_mb", "gpus"])?;
    let cpus = int(
        required(res, "$.resources", "cpus")?,
        "$.resources.cpus",
        1,
        i64::MAX,
    )?;
    let memory_mb = int(
        required(res, "$.resources", "memory_mb")?,
        "$.resources.memory_mb",
        MIN_MEMORY_MB,
        i64::MAX,
    )?;
    let gpus = object(required(res, "$.resources", "gpus")?, "$.resources.gpus")?;
    only_keys(gpus, "$.resources.gpus", &["requested", "mandatory"])?;
    let requested = int(
        required(gpus, "$.resources.gpus", "requested")?,
        "$.resources.gpus.requested",
        0,
        MAX_GPUS,
    )?;
    let mandatory = boolean(gpus, "$.resources.gpus", "mandatory", false)?;

    let art = object(required(top, "$", "artifacts")?, "$.artifacts")?;
    only_keys(
        art,
        "$.artifacts",
        &["output_prefix", "persist_logs", "keep_checkpoints"],
    )?;
    let output_prefix = required(art, "$.artifacts", "output_prefix")?
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err("$.artifacts.output_prefix", "must be a non-empty string"))?
        .to_owned();
    let persist_logs = boolean(art, "$.artifacts", "persist_logs", true)?;
    let keep_checkpoints = boolean(art, "$.artifacts", "keep_checkpoints", true)?;

    let metadata = match top.get("metadata") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(m) => Value::Object(object(m, "$.metadata")?.clone()),
    };
    let worker = parse_worker(&metadata)?;

    let mut schedule = Map::new();
    let (mut max_duration_seconds, mut max_steps) = (None, None);
    if let Some(s) = top.get("schedule").filter(|s| !s.is_null()) {
        let s = object(s, "$.schedule")?;
        only_keys(s, "$.schedule", &["max_duration_seconds", "max_steps"])?;
        for (key, slot) in [
            ("max_duration_seconds", &mut max_duration_seconds),
            ("max_steps", &mut max_steps),
        ] {
            if let Some(v) = s.get(key).filter(|v| !v.is_null()) {
                let n = int(v, &format!("$.schedule.{key}"), 1, i64::MAX)?;
                schedule.insert(key.to_owned(), Value::from(n));
                *slot = u64::try_from(n).ok();
            }
        }
    }

    let mut norm = Map::new();
    norm.insert("run_name".into(), Value::from(run_name.clone()));
    norm.insert("entry_point".into(), Value::from(entry_point.clone()));
    norm.insert("arguments".into(), Value::from(arguments));
    norm.insert(
        "environment".into(),
        Value::Object(
            environment
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect(),
        ),
    );
    norm.insert(
        "resources".into(),
        serde_json::json!({
            "cpus": cpus,
            "memory_mb": memory_mb,
            "gpus": {"requested": requested, "mandatory": mandatory},
        }),
    );
    norm.insert(
        "artifacts".into(),
        serde_json::json!({
            "output_prefix": output_prefix,
            "persist_logs": persist_logs,
            "keep_checkpoints": keep_checkpoints,
        }),
    );
    norm.insert("metadata".into(), metadata);
    if top.get("schedule").is_some_and(|s| !s.is_null()) {
        norm.insert("schedule".into(), Value::Object(schedule));
    }

    Ok(TrainRunConfig {
        normalised: sorted(&Value::Object(norm)),
        run_name,
        entry_point,
        environment,
        gpus_requested: u32::try_from(requested).unwrap_or(0),
        gpus_mandatory: mandatory,
        max_duration_seconds,
        max_steps,
        worker,
    })
}

fn parse_worker(metadata: &Value) -> Result<WorkerSpec, ConfigError> {
    let Some(w) = metadata.get("worker").filter(|w| !w.is_null()) else {
        return Ok(WorkerSpec::default());
    };
    let p = "$.metadata.worker";
    let w = object(w, p)?;
    let config = match w.get("config") {
        None | Some(Value::Null) => None,
        Some(c) => Some(Value::Object(
            object(c, "$.metadata.worker.config")?.clone(),
        )),
    };
    let arguments = match w.get("arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(a) => string_list(a, "$.metadata.worker.arguments")?,
    };
    let agent_id = match opt_string(w, p, "agent_id")? {
        Some(a) => a,
        None => config
            .as_ref()
            .and_then(|c| c.get("agent_id"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    };
    Ok(WorkerSpec {
        module: opt_string(w, p, "module")?,
        script: opt_string(w, p, "script")?,
        arguments,
        config,
        agent_id,
        use_grpc: boolean(w, p, "use_grpc", false)?,
        grpc_target: opt_string(w, p, "grpc_target")?,
    })
}

/// A copy of `v` with every object's keys in sorted order (serde_json keeps insertion order in
/// this workspace).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Python's `json.dumps(v, sort_keys=True, separators=(",", ":"))`: sorted keys, no spaces,
/// everything outside printable ASCII as `\uXXXX` (surrogate pairs beyond the BMP), floats in
/// Python's `repr` form.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                out.push_str(&python_float(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it (`1.0`, `0.0001`, `1e-05`, `1e+16`).
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let e = usize::try_from(exp).unwrap_or(0);
            let mut int_part: String = digits.chars().take(e + 1).collect();
            while int_part.len() < e + 1 {
                int_part.push('0');
            }
            let frac: String = digits.chars().skip(e + 1).collect();
            let frac = if frac.is_empty() {
                "0".to_owned()
            } else {
                frac
            };
            format!("{sign}{int_part}.{frac}")
        } else {
            let zeros = "0".repeat(usize::try_from(-exp - 1).unwrap_or(0));
            format!("{sign}0.{zeros}{digits}")
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let m = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// Lowercase hex of bytes.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// The run id of a submission without one: the hex SHA-1 of
/// `"{run_name}::{submitted_at}::{digest}"`.
pub fn derived_run_id(run_name: &str, submitted_at: &str, digest: &str) -> String {
    let text = format!("{run_name}::{submitted_at}::{digest}");
    hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes()).as_ref())
}

/// A timestamp as Python's `datetime.isoformat()` of an aware UTC datetime writes it:
/// `2025-10-17T14:03:00.123456+00:00` (microseconds left out when zero).
pub fn iso8601(ts: &Timestamp) -> String {
    let secs = ts.seconds;
    let micros = ts.nanos.clamp(0, 999_999_999) / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if micros == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00")
    }
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// A config as the predecessor's GUI builds it.
    fn base() -> Value {
        json!({
            "run_name": "frozen-lake",
            "entry_point": "python",
            "arguments": ["-m", "spadeBDI_RL_refactored.worker"],
            "environment": {"PYTHONUNBUFFERED": "1"},
            "resources": {"cpus": 2, "memory_mb": 2048, "gpus": {"requested": 0}},
            "artifacts": {"output_prefix": "runs/fl"},
        })
    }

    fn with(path: &[&str], v: Value) -> Value {
        let mut cfg = base();
        let mut cur = &mut cfg;
        for k in &path[..path.len() - 1] {
            cur = cur.get_mut(*k).unwrap();
        }
        let last = path[path.len() - 1];
        if v.is_null() {
            cur.as_object_mut().unwrap().remove(last);
        } else {
            cur[last] = v;
        }
        cfg
    }

    fn error_path(cfg: &Value) -> String {
        parse_train_run_config(cfg).unwrap_err().path
    }

    #[test]
    fn each_rule_is_enforced_and_names_its_path() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "$"),
            (with(&["run_name"], Value::Null), "$.run_name"),
            (with(&["run_name"], json!("")), "$.run_name"),
            (with(&["run_name"], json!("x".repeat(121))), "$.run_name"),
            (with(&["run_name"], json!(5)), "$.run_name"),
            (with(&["entry_point"], json!("")), "$.entry_point"),
            (with(&["arguments"], json!("-m x")), "$.arguments"),
            (with(&["arguments"], json!(["-m", 3])), "$.arguments[1]"),
            (with(&["environment"], json!({"A": 1})), "$.environment.A"),
            (
                with(&["environment"], json!({"A=B": "1"})),
                "$.environment.A=B",
            ),
            (with(&["environment"], Value::Null), "$.environment"),
            (with(&["resources", "cpus"], json!(0)), "$.resources.cpus"),
            (with(&["resources", "cpus"], json!(1.5)), "$.resources.cpus"),
            (
                with(&["resources", "cpus"], json!(true)),
                "$.resources.cpus",
            ),
            (
                with(&["resources", "memory_mb"], json!(255)),
                "$.resources.memory_mb",
            ),
            (with(&["resources", "disk"], json!(1)), "$.resources.disk"),
            (
                with(&["resources", "gpus"], Value::Null),
                "$.resources.gpus",
            ),
            (
                with(&["resources", "gpus", "requested"], json!(9)),
                "$.resources.gpus.requested",
            ),
            (
                with(&["resources", "gpus", "requested"], json!(-1)),
                "$.resources.gpus.requested",
            ),
            (
                with(&["resources", "gpus", "mandatory"], json!("yes")),
                "$.resources.gpus.mandatory",
            ),
            (
                with(&["resources", "gpus", "kind"], json!("a100")),
                "$.resources.gpus.kind",
            ),
            (
                with(&["artifacts", "output_prefix"], json!("")),
                "$.artifacts.output_prefix",
            ),
            (
                with(&["artifacts", "persist_logs"], json!(1)),
                "$.artifacts.persist_logs",
            ),
            (with(&["artifacts", "extra"], json!(1)), "$.artifacts.extra"),
            (with(&["metadata"], json!([])), "$.metadata"),
            (
                with(&["metadata"], json!({"worker": {"arguments": [1]}})),
                "$.metadata.worker.arguments[0]",
            ),
            (
                with(&["metadata"], json!({"worker": {"config": 3}})),
                "$.metadata.worker.config",
            ),
            (
                with(&["schedule"], json!({"max_duration_seconds": 0})),
                "$.schedule.max_duration_seconds",
            ),
            (
                with(&["schedule"], json!({"max_steps": 0})),
                "$.schedule.max_steps",
            ),
            (with(&["schedule"], json!({"every": 1})), "$.schedule.every"),
            (with(&["argv_extra"], json!(1)), "$.argv_extra"),
        ];
        for (cfg, path) in cases {
            assert_eq!(error_path(&cfg), path, "{cfg}");
        }
        let e = parse_train_run_config(&with(&["resources", "cpus"], json!(0))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config_json $.resources.cpus: must be an integer ≥ 1"
        );
        // The limits themselves are allowed.
        let ok = with(&["run_name"], json!("é".repeat(120)));
        assert!(parse_train_run_config(&ok).is_ok());
        let ok = with(
            &["resources"],
            json!({"cpus": 1, "memory_mb": 256, "gpus": {"requested": 8}}),
        );
        assert!(parse_train_run_config(&ok).is_ok());
    }

    #[test]
    fn normalisation_fills_defaults_and_keeps_schedule_keys_only() {
        let cfg = parse_train_run_config(&base()).unwrap();
        assert_eq!(
            cfg.canonical(),
            r#"{"arguments":["-m","spadeBDI_RL_refactored.worker"],"artifacts":{"keep_checkpoints":true,"output_prefix":"runs/fl","persist_logs":true},"entry_point":"python","environment":{"PYTHONUNBUFFERED":"1"},"metadata":{},"resources":{"cpus":2,"gpus":{"mandatory":false,"requested":0},"memory_mb":2048},"run_name":"frozen-lake"}"#
        );
        assert_eq!(cfg.max_duration_seconds, None);
        let cfg = parse_train_run_config(&with(
            &["schedule"],
            json!({"max_duration_seconds": 30, "max_steps": null}),
        ))
        .unwrap();
        assert!(cfg
            .canonical()
            .ends_with(r#""schedule":{"max_duration_seconds":30}}"#));
        assert_eq!(cfg.max_duration_seconds, Some(30));
        // The same config written in another key order has the same digest.
        let reordered: Value = serde_json::from_str(
            r#"{"artifacts":{"output_prefix":"runs/fl"},"resources":{"gpus":{"requested":0},"memory_mb":2048,"cpus":2},"environment":{"PYTHONUNBUFFERED":"1"},"arguments":["-m","spadeBDI_RL_refactored.worker"],"entry_point":"python","run_name":"frozen-lake"}"#,
        )
        .unwrap();
        assert_eq!(
            parse_train_run_config(&reordered).unwrap().digest(),
            parse_train_run_config(&base()).unwrap().digest()
        );
    }

    #[test]
    fn digest_and_run_id_match_python() {
        // Digests computed with Python 3:
        //   s = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
        //   hashlib.sha256(s.encode()).hexdigest()
        //   hashlib.sha1(f"{run_name}::{submitted_at}::{digest}".encode()).hexdigest()
        let raw = r#"{
            "schedule": {"max_steps": 1000, "max_duration_seconds": 60},
            "run_name": "frozen-lake ü 🚀",
            "entry_point": "python",
            "arguments": ["-m", "spadeBDI_RL_refactored.worker"],
            "environment": {"B": "2", "A": "1\n\"q\""},
            "resources": {"memory_mb": 2048, "cpus": 2, "gpus": {"requested": 0, "mandatory": false}},
            "artifacts": {"output_prefix": "runs/fl", "persist_logs": true, "keep_checkpoints": false},
            "metadata": {"worker": {"module": "w", "config": {"seed": 123, "epsilon": 0.1, "tiny": 1e-05, "big": 1e16, "one": 1.0, "neg": -2.5, "ctl": "\u0001\u007f"}}}
        }"#;
        let cfg = parse_train_run_config(&serde_json::from_str(raw).unwrap()).unwrap();
        assert_eq!(
            cfg.canonical(),
            r#"{"arguments":["-m","spadeBDI_RL_refactored.worker"],"artifacts":{"keep_checkpoints":false,"output_prefix":"runs/fl","persist_logs":true},"entry_point":"python","environment":{"A":"1\n\"q\"","B":"2"},"metadata":{"worker":{"config":{"big":1e+16,"ctl":"\u0001\u007f","epsilon":0.1,"neg":-2.5,"one":1.0,"seed":123,"tiny":1e-05},"module":"w"}},"resources":{"cpus":2,"gpus":{"mandatory":false,"requested":0},"memory_mb":2048},"run_name":"frozen-lake \u00fc \ud83d\ude80","schedule":{"max_duration_seconds":60,"max_steps":1000}}"#
        );
        let digest = cfg.digest();
        assert_eq!(
            digest,
            "2e2a0975ed8780c05be8ad90b15d695f113a7a9f6ccb762380e59383b311caf3"
        );
        let at = iso8601(&Timestamp {
            seconds: 1_760_709_780,
            nanos: 123_456_000,
        });
        assert_eq!(at, "2025-10-17T14:03:00.123456+00:00");
        assert_eq!(
            iso8601(&Timestamp {
                seconds: 1_760_709_780,
                nanos: 0
            }),
            "2025-10-17T14:03:00+00:00"
        );
        assert_eq!(
            derived_run_id(&cfg.run_name, &at, &digest),
            "978f4d77a5847ebfd29532751eeb2cc4cea4e108"
        );
        assert!(telemetry_core::check_run_id(&derived_run_id("a", &at, &digest)).is_ok());
    }

    #[test]
    fn worker_spec_and_agent_id_fallback() {
        let cfg = parse_train_run_config(&with(
            &["metadata"],
            json!({"worker": {"script": "w.py", "arguments": ["--x"], "config": {"agent_id": "from-config"}, "use_grpc": true, "grpc_target": "127.0.0.1:1"}}),
        ))
        .unwrap();
        let w = &cfg.worker;
        assert_eq!(
            (w.module.as_deref(), w.script.as_deref()),
            (None, Some("w.py"))
        );
        assert_eq!(w.arguments, vec!["--x".to_owned()]);
        assert_eq!(w.agent_id, "from-config");
        assert!(w.use_grpc);
        assert_eq!(w.grpc_target.as_deref(), Some("127.0.0.1:1"));
        let cfg = parse_train_run_config(&with(
            &["metadata"],
            json!({"worker": {"agent_id": "own", "config": {"agent_id": "from-config"}}}),
        ))
        .unwrap();
        assert_eq!(cfg.worker.agent_id, "own");
    }

    #[test]
    fn floats_are_written_like_python_repr() {
        for (f, py) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (100.0, "100.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123_456_789.125, "123456789.125"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(f), py, "{f}");
        }
    }
}
