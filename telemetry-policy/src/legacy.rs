//! The predecessor's checkpoint format and its loader.
//!
//! The BDI worker saved `{"format": "q_table/v1", "metadata": {...}, "q_table": [[...], ...]}`
//! (indented), with metadata keys such as run_id, env_id, agent_id, episodes and strategy. Its
//! loader refused any other `format`; so does this one. The selection dialog took the first path
//! component under the policies root as the environment, and `payload.agent_id` (else the file
//! stem) as the agent: [`derive`] keeps both rules.

use serde_json::{Map, Value};

/// The one format the predecessor's loader accepts.
pub const LEGACY_FORMAT: &str = "q_table/v1";
/// Largest predecessor file read, in bytes (a 1000×20 table in indented JSON is ~1 MiB).
pub const MAX_LEGACY_BYTES: u64 = 16 * 1024 * 1024;

/// Why a predecessor file cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// `format` is missing or not `q_table/v1`.
    #[error("format {0:?} is not {LEGACY_FORMAT:?} (the only format the legacy loader reads)")]
    UnknownFormat(String),
    /// The table or metadata is malformed.
    #[error("{0}")]
    BadPayload(String),
}

/// A loaded Q-table.
#[derive(Debug, Clone, PartialEq)]
pub struct QTable {
    /// The file's `metadata` object (empty when absent).
    pub metadata: Map<String, Value>,
    /// `payload.agent_id`, else `metadata.agent_id`, when present.
    pub agent_id: Option<String>,
    /// Rows: states; columns: actions.
    pub q: Vec<Vec<f64>>,
}

impl QTable {
    /// `(states, actions)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.q.len(), self.q.first().map_or(0, Vec::len))
    }
}

/// Parses a predecessor file's bytes.
pub fn load_q_table(bytes: &[u8]) -> Result<QTable, LegacyError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| LegacyError::NotJson(e.to_string()))?;
    let Value::Object(mut doc) = doc else {
        return Err(LegacyError::NotJson(
            "the top level is not an object".into(),
        ));
    };
    match doc.get("format") {
        Some(Value::String(f)) if f == LEGACY_FORMAT => {}
        Some(Value::String(f)) => return Err(LegacyError::UnknownFormat(f.clone())),
        Some(other) => return Err(LegacyError::UnknownFormat(other.to_string())),
        None => return Err(LegacyError::UnknownFormat(String::new())),
    }
    let metadata = match doc.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(LegacyError::BadPayload("metadata is not an object".into())),
    };
    let rows = match doc.get("q_table") {
        Some(Value::Array(rows)) if !rows.is_empty() => rows,
        _ => {
            return Err(LegacyError::BadPayload(
                "q_table must be a non-empty array of rows".into(),
            ))
        }
    };
    let mut q = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Value::Array(cells) = row else {
            return Err(LegacyError::BadPayload(format!(
                "q_table row {i} is not an array"
            )));
        };
        let row: Option<Vec<f64>> = cells.iter().map(Value::as_f64).collect();
        let row = row.ok_or_else(|| {
            LegacyError::BadPayload(format!("q_table row {i} holds a non-number"))
        })?;
        if row.is_empty() || q.first().is_some_and(|r: &Vec<f64>| r.len() != row.len()) {
            return Err(LegacyError::BadPayload(format!(
                "q_table row {i} has {} entries; every row needs the same non-zero count",
                row.len()
            )));
        }
        q.push(row);
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let agent_id = text(doc.get("agent_id")).or_else(|| text(metadata.get("agent_id")));
    Ok(QTable {
        metadata,
        agent_id,
        q,
    })
}

/// What a predecessor file says of itself, for its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The first path component under the root.
    pub env_id: String,
    /// `payload.agent_id`, else the file stem.
    pub agent_id: String,
    /// `Discrete(states)`.
    pub observation_space: String,
    /// `Discrete(actions)`.
    pub action_space: String,
    /// `metadata.run_id`, else empty.
    pub source_run_id: String,
    /// `metadata.control_mode`, else `agent`.
    pub control_mode: String,
}

/// The manifest fields of a loaded table at `rel` (its path under the root, `/`-separated).
pub fn derive(rel: &str, table: &QTable) -> Derived {
    let mut parts = rel.split('/');
    let first = parts.next().unwrap_or_default();
    let stem = rel
        .rsplit('/')
        .next()
        .unwrap_or(rel)
        .trim_end_matches(".json")
        .to_owned();
    // A file directly under the root has no env directory: fall back on its metadata.
    let env_id = if parts.next().is_some() {
        first.to_owned()
    } else {
        table
            .metadata
            .get("env_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (states, actions) = table.shape();
    let meta = |k: &str| table.metadata.get(k).and_then(Value::as_str);
    Derived {
        env_id,
        agent_id: table.agent_id.clone().unwrap_or(stem),
        observation_space: format!("Discrete({states})"),
        action_space: format!("Discrete({actions})"),
        source_run_id: meta("run_id").unwrap_or_default().to_owned(),
        control_mode: meta("control_mode").unwrap_or("agent").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_bdi_layout_and_refuses_other_formats() {
        let t = load_q_table(
            br#"{"format": "q_table/v1", "metadata": {"run_id": "r", "agent_id": "bdi"},
                 "q_table": [[0.0, 1.0], [2.0, 3.5]]}"#,
        )
        .expect("load");
        assert_eq!(t.shape(), (2, 2));
        assert_eq!(t.agent_id.as_deref(), Some("bdi"));
        let d = derive("FrozenLake-v1/x.json", &t);
        assert_eq!(d.env_id, "FrozenLake-v1");
        assert_eq!(d.agent_id, "bdi");
        assert_eq!(d.observation_space, "Discrete(2)");
        assert_eq!(d.source_run_id, "r");
        assert!(matches!(
            load_q_table(br#"{"format": "q_table/v2", "q_table": [[1]]}"#),
            Err(LegacyError::UnknownFormat(f)) if f == "q_table/v2"
        ));
        assert!(matches!(
            load_q_table(br#"{"env_id": "x", "q": [[1]]}"#),
            Err(LegacyError::UnknownFormat(_))
        ));
        assert!(matches!(
            load_q_table(br#"{"format": "q_table/v1", "q_table": [[1, 2], [3]]}"#),
            Err(LegacyError::BadPayload(_))
        ));
        assert!(matches!(
            load_q_table(b"{nope"),
            Err(LegacyError::NotJson(_))
        ));
    }
}
