//! Legacy rows to records, field by field, never trusting a column's declared type.
//!
//! SQLite does not enforce column types and the predecessor wrote Python values as they came,
//! so every column is read as whatever it holds; the rules are listed in the parent module.

use rusqlite::{Connection, OptionalExtension, Row};
use serde_json::{Map, Value};
use telemetry_core::{
    ids::IdError,
    pb::{record::Kind, Record, RunEpisode, RunStep},
    validate::{normalize, Limits, ValidationError},
    ControlMode,
};

use super::{
    values::{finite, flag, int, json_text, plain_text, timestamp, unsigned},
    ImportIssue,
};
use crate::StoreError;

/// Largest legacy field read (bytes); a row with a larger one is skipped.
pub const MAX_FIELD_BYTES: usize = 1024 * 1024;

/// The two legacy tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Steps,
    Episodes,
}

const STEP_COLUMNS: [&str; 13] = [
    "episode_id",
    "step_index",
    "action",
    "observation",
    "reward",
    "terminated",
    "truncated",
    "info",
    "timestamp",
    "agent_id",
    "render_hint",
    "frame_ref",
    "payload_version",
];

const EPISODE_COLUMNS: [&str; 8] = [
    "episode_id",
    "total_reward",
    "steps",
    "terminated",
    "truncated",
    "metadata",
    "timestamp",
    "agent_id",
];

impl Table {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Steps => "steps",
            Table::Episodes => "episodes",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Steps => &STEP_COLUMNS,
            Table::Episodes => &EPISODE_COLUMNS,
        }
    }
}

/// Which legacy tables and columns a file has.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    pub steps: Option<Vec<String>>,
    pub episodes: Option<Vec<String>>,
    pub missing: Vec<String>,
}

fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Option<Vec<String>>> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let cols = stmt
        .query_map([], |r| r.get::<_, String>(1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(cols))
}

impl Layout {
    pub(crate) fn read(conn: &Connection) -> rusqlite::Result<Layout> {
        let mut layout = Layout {
            steps: table_columns(conn, "steps")?,
            episodes: table_columns(conn, "episodes")?,
            missing: Vec::new(),
        };
        for table in [Table::Steps, Table::Episodes] {
            match layout.present(table) {
                None => layout.missing.push(format!("{} (table)", table.name())),
                Some(cols) => {
                    let absent: Vec<String> = table
                        .columns()
                        .iter()
                        .filter(|c| !cols.iter().any(|have| have.eq_ignore_ascii_case(c)))
                        .map(|c| format!("{}.{c}", table.name()))
                        .collect();
                    layout.missing.extend(absent);
                }
            }
        }
        Ok(layout)
    }

    fn present(&self, table: Table) -> Option<&Vec<String>> {
        match table {
            Table::Steps => self.steps.as_ref(),
            Table::Episodes => self.episodes.as_ref(),
        }
    }

    pub(crate) fn has(&self, table: Table) -> bool {
        self.present(table).is_some()
    }

    fn has_column(&self, table: Table, column: &str) -> bool {
        self.present(table)
            .is_some_and(|cols| cols.iter().any(|c| c.eq_ignore_ascii_case(column)))
    }

    /// `SELECT rowid, <columns capped at MAX_FIELD_BYTES or NULL when absent>, <oversized>,
    /// <render_payload present> FROM <table> WHERE rowid > ?1 ORDER BY rowid LIMIT ?2`.
    pub(crate) fn select_sql(&self, table: Table) -> String {
        let mut exprs = Vec::new();
        let mut oversized = Vec::new();
        for col in table.columns() {
            if self.has_column(table, col) {
                exprs.push(format!(
                    "CASE WHEN octet_length(\"{col}\") > {MAX_FIELD_BYTES} THEN NULL ELSE \"{col}\" END"
                ));
                oversized.push(format!(
                    "coalesce(octet_length(\"{col}\") > {MAX_FIELD_BYTES}, 0)"
                ));
            } else {
                exprs.push("NULL".into());
            }
        }
        if oversized.is_empty() {
            oversized.push("0".into());
        }
        let render = if table == Table::Steps && self.has_column(table, "render_payload") {
            "coalesce(octet_length(render_payload) > 0, 0)"
        } else {
            "0"
        };
        format!(
            "SELECT rowid, {}, {}, {render} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            exprs.join(", "),
            oversized.join(" + "),
            table.name()
        )
    }
}

/// Counters and the listed problems, kept across the whole import.
#[derive(Debug, Default)]
pub(crate) struct Issues {
    pub rows_repaired: u64,
    pub rows_skipped: u64,
    pub render_payloads_dropped: u64,
    pub issues: Vec<ImportIssue>,
    pub issues_not_listed: u64,
}

/// Conversion state: the legacy connection (for episode metadata lookups), the layout and
/// the problems found so far.
pub(crate) struct Context<'c> {
    conn: &'c Connection,
    pub layout: &'c Layout,
    max_issues: usize,
    pub report: Issues,
    /// The last episode looked up for steps: its id and its metadata object.
    episode_cache: Option<(String, Option<Map<String, Value>>)>,
}

impl<'c> Context<'c> {
    pub(crate) fn new(conn: &'c Connection, layout: &'c Layout, max_issues: usize) -> Self {
        Context {
            conn,
            layout,
            max_issues,
            report: Issues::default(),
            episode_cache: None,
        }
    }

    pub(crate) fn note(&mut self, table: Table, rowid: i64, problem: String) {
        if self.report.issues.len() < self.max_issues {
            self.report.issues.push(ImportIssue {
                table: table.name(),
                rowid,
                problem,
            });
        } else {
            self.report.issues_not_listed += 1;
        }
    }

    fn skip(&mut self, table: Table, rowid: i64, problems: Vec<String>) -> Option<Record> {
        self.report.rows_skipped += 1;
        for p in problems {
            self.note(table, rowid, p);
        }
        None
    }

    /// The metadata object of a legacy episode (for the steps of that episode).
    fn episode_meta(&mut self, episode_id: &str) -> rusqlite::Result<Option<Map<String, Value>>> {
        if let Some((id, meta)) = &self.episode_cache {
            if id == episode_id {
                return Ok(meta.clone());
            }
        }
        let meta = if episode_id.is_empty()
            || !self.layout.has_column(Table::Episodes, "episode_id")
            || !self.layout.has_column(Table::Episodes, "metadata")
        {
            None
        } else {
            let sql = format!(
                "SELECT CASE WHEN octet_length(metadata) > {MAX_FIELD_BYTES} THEN NULL \
                 ELSE metadata END FROM episodes WHERE episode_id = ?1 LIMIT 1"
            );
            let mut stmt = self.conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([episode_id])?;
            match rows.next()? {
                Some(row) => object(&json_text(row.get_ref(0)?, "metadata", &mut Vec::new())),
                None => None,
            }
        };
        self.episode_cache = Some((episode_id.to_owned(), meta.clone()));
        Ok(meta)
    }

    /// A step from a row of [`Layout::select_sql`]`(Steps)`; `None` when skipped.
    pub(crate) fn step(&mut self, row: &Row<'_>, rowid: i64) -> Result<Option<Record>, StoreError> {
        let mut p = Vec::new();
        if row.get::<_, i64>(15)? != 0 {
            self.report.render_payloads_dropped += 1;
        }
        if row.get::<_, i64>(14)? > 0 {
            let problem = format!("a field is larger than {MAX_FIELD_BYTES} bytes; row skipped");
            return Ok(self.skip(Table::Steps, rowid, vec![problem]));
        }
        let episode_id = plain_text(row.get_ref(1)?).unwrap_or_default();
        let meta = self.episode_meta(&episode_id)?;
        let Some((run_id, episode_index)) = run_and_episode(&episode_id, meta.as_ref(), &mut p)
        else {
            return Ok(self.skip(Table::Steps, rowid, p));
        };
        let info = json_text(row.get_ref(8)?, "info", &mut p);
        let info = split_info(&info);
        let agent_id = plain_text(row.get_ref(10)?)
            .filter(|a| !a.is_empty())
            .or(info.agent_id)
            .or_else(|| meta.as_ref().and_then(|m| meta_str(m, "agent_id")))
            .unwrap_or_default();
        let mode = meta
            .as_ref()
            .and_then(|m| meta_str(m, "control_mode"))
            .or(info.control_mode);
        let payload_version = match int(row.get_ref(13)?) {
            None => 0,
            Some(v) => u32::try_from(v).unwrap_or_else(|_| {
                p.push(format!("payload_version {v} out of range; stored 0"));
                0
            }),
        };
        let step = RunStep {
            run_id,
            episode_index,
            step_index: unsigned(row.get_ref(2)?, "step_index", &mut p),
            action_json: json_text(row.get_ref(3)?, "action", &mut p),
            observation_json: json_text(row.get_ref(4)?, "observation", &mut p),
            reward: finite(row.get_ref(5)?, "reward", &mut p),
            terminated: flag(row.get_ref(6)?),
            truncated: flag(row.get_ref(7)?),
            timestamp: timestamp(row.get_ref(9)?, &mut p),
            policy_label: info.policy_label,
            backend: info.backend,
            agent_id,
            render_hint_json: json_text(row.get_ref(11)?, "render_hint", &mut p),
            frame_ref: plain_text(row.get_ref(12)?).unwrap_or_default(),
            payload_version,
            control_mode: control_mode(mode, &mut p),
            info_json: info.rest,
            ..RunStep::default()
        };
        Ok(self.finish(Table::Steps, rowid, step.into(), p))
    }

    /// An episode from a row of [`Layout::select_sql`]`(Episodes)`; `None` when skipped.
    pub(crate) fn episode(
        &mut self,
        row: &Row<'_>,
        rowid: i64,
    ) -> Result<Option<Record>, StoreError> {
        let mut p = Vec::new();
        if row.get::<_, i64>(9)? > 0 {
            let problem = format!("a field is larger than {MAX_FIELD_BYTES} bytes; row skipped");
            return Ok(self.skip(Table::Episodes, rowid, vec![problem]));
        }
        let episode_id = plain_text(row.get_ref(1)?).unwrap_or_default();
        let metadata = json_text(row.get_ref(6)?, "metadata", &mut p);
        let meta = object(&metadata);
        let metadata_json = match (&meta, metadata.is_empty()) {
            (Some(_), _) | (None, true) => metadata,
            (None, false) => {
                p.push("metadata is not a JSON object; kept under \"legacy_metadata\"".into());
                let value: Value = serde_json::from_str(&metadata).unwrap_or(Value::Null);
                serde_json::json!({ "legacy_metadata": value }).to_string()
            }
        };
        let Some((run_id, episode_index)) = run_and_episode(&episode_id, meta.as_ref(), &mut p)
        else {
            return Ok(self.skip(Table::Episodes, rowid, p));
        };
        let agent_id = plain_text(row.get_ref(8)?)
            .filter(|a| !a.is_empty())
            .or_else(|| meta.as_ref().and_then(|m| meta_str(m, "agent_id")))
            .unwrap_or_default();
        let mode = meta.as_ref().and_then(|m| meta_str(m, "control_mode"));
        let episode = RunEpisode {
            run_id,
            episode_index,
            total_reward: finite(row.get_ref(2)?, "total_reward", &mut p),
            steps: unsigned(row.get_ref(3)?, "steps", &mut p),
            terminated: flag(row.get_ref(4)?),
            truncated: flag(row.get_ref(5)?),
            metadata_json,
            timestamp: timestamp(row.get_ref(7)?, &mut p),
            agent_id,
            control_mode: control_mode(mode, &mut p),
            ..RunEpisode::default()
        };
        Ok(self.finish(Table::Episodes, rowid, episode.into(), p))
    }

    /// Validates (repairing what can be repaired) and counts the row.
    fn finish(
        &mut self,
        table: Table,
        rowid: i64,
        mut record: Record,
        mut p: Vec<String>,
    ) -> Option<Record> {
        let limits = Limits::default();
        for _ in 0..4 {
            match normalize(&mut record, &limits) {
                Ok(()) => {
                    if !p.is_empty() {
                        self.report.rows_repaired += 1;
                        for problem in p {
                            self.note(table, rowid, problem);
                        }
                    }
                    return Some(record);
                }
                Err(e) => {
                    if !repair(&mut record, &e, &mut p) {
                        p.push(format!("{e}; row skipped"));
                        return self.skip(table, rowid, p);
                    }
                }
            }
        }
        p.push("still invalid after repairs; row skipped".into());
        self.skip(table, rowid, p)
    }
}

/// Fixes what validation refused, when a field can be dropped without losing the row.
fn repair(record: &mut Record, e: &ValidationError, p: &mut Vec<String>) -> bool {
    let Some(kind) = record.kind.as_mut() else {
        return false;
    };
    match (kind, e) {
        (Kind::Step(s), ValidationError::InlineFrame { field, .. }) => {
            p.push(format!("{field} carried an inline frame; dropped"));
            s.frame_ref.clear();
            s.render_hint_json.clear();
            true
        }
        (
            Kind::Step(s),
            ValidationError::Id(
                IdError::TooLong {
                    kind: "agent_id", ..
                }
                | IdError::ControlChar { kind: "agent_id" },
            ),
        ) => {
            p.push(format!("{e}; agent_id dropped"));
            s.agent_id.clear();
            true
        }
        (
            Kind::Episode(ep),
            ValidationError::Id(
                IdError::TooLong {
                    kind: "agent_id", ..
                }
                | IdError::ControlChar { kind: "agent_id" },
            ),
        ) => {
            p.push(format!("{e}; agent_id dropped"));
            ep.agent_id.clear();
            true
        }
        _ => false,
    }
}

/// `"{run_id}-ep{index}"` split in two.
pub(crate) fn split_episode_id(episode_id: &str) -> Option<(&str, u64)> {
    let at = episode_id.rfind("-ep")?;
    let (run, index) = (&episode_id[..at], &episode_id[at + 3..]);
    if run.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((run, index.parse().ok()?))
}

fn run_and_episode(
    episode_id: &str,
    meta: Option<&Map<String, Value>>,
    p: &mut Vec<String>,
) -> Option<(String, u64)> {
    if let Some((run, index)) = split_episode_id(episode_id) {
        return Some((run.to_owned(), index));
    }
    let meta_run = meta.and_then(|m| meta_str(m, "run_id"));
    let meta_index = meta
        .and_then(|m| find(m, "episode_index"))
        .and_then(Value::as_u64);
    match (meta_run, episode_id.is_empty()) {
        (Some(run), _) => {
            p.push(format!(
                "episode_id {episode_id:?} does not match \"<run>-ep<index>\"; run from metadata"
            ));
            Some((run, meta_index.unwrap_or(0)))
        }
        (None, false) => {
            p.push(format!(
                "episode_id {episode_id:?} does not match \"<run>-ep<index>\"; used as the run id"
            ));
            Some((episode_id.to_owned(), meta_index.unwrap_or(0)))
        }
        (None, true) => {
            p.push("no episode_id and no run_id in metadata; row skipped".into());
            None
        }
    }
}

/// Policy label, backend, agent and mode out of a step's `info`, the rest kept as JSON.
struct Info {
    policy_label: String,
    backend: String,
    agent_id: Option<String>,
    control_mode: Option<String>,
    rest: String,
}

fn split_info(info: &str) -> Info {
    let mut out = Info {
        policy_label: String::new(),
        backend: String::new(),
        agent_id: None,
        control_mode: None,
        rest: String::new(),
    };
    if info.is_empty() {
        return out;
    }
    let value: Value = match serde_json::from_str(info) {
        Ok(v) => v,
        Err(_) => return out,
    };
    let Value::Object(mut obj) = value else {
        out.rest = serde_json::json!({ "info": value }).to_string();
        return out;
    };
    let mut take = |key: &str| match obj.get(key) {
        Some(Value::String(_)) => match obj.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    };
    out.policy_label = take("policy_label").unwrap_or_default();
    out.backend = take("backend").unwrap_or_default();
    out.agent_id = take("agent_id").filter(|a| !a.is_empty());
    out.control_mode = take("control_mode");
    if !obj.is_empty() {
        out.rest = Value::Object(obj).to_string();
    }
    out
}

fn control_mode(mode: Option<String>, p: &mut Vec<String>) -> String {
    match mode.as_deref().map(ControlMode::from_wire) {
        None => ControlMode::Unknown.as_str().to_owned(),
        Some(Ok(m)) => m.as_str().to_owned(),
        Some(Err(e)) => {
            p.push(format!("{e}; stored unknown"));
            ControlMode::Unknown.as_str().to_owned()
        }
    }
}

fn find<'m>(m: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    m.get(key)
        .filter(|v| !v.is_null())
        .or_else(|| match m.get("config") {
            Some(Value::Object(c)) => c.get(key).filter(|v| !v.is_null()),
            _ => None,
        })
}

fn meta_str(m: &Map<String, Value>, key: &str) -> Option<String> {
    match find(m, key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn object(json: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(json) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_ids_split_at_the_last_marker() {
        assert_eq!(split_episode_id("RUN123-ep0007"), Some(("RUN123", 7)));
        assert_eq!(split_episode_id("run-ep-x-ep0012"), Some(("run-ep-x", 12)));
        assert_eq!(split_episode_id("RUN123-ep"), None);
        assert_eq!(split_episode_id("-ep0001"), None);
        assert_eq!(split_episode_id("episode-1"), None);
        assert_eq!(split_episode_id("RUN-ep12a"), None);
    }

    #[test]
    fn info_fields_move_out_and_the_rest_stays() {
        let info = split_info(r#"{"policy_label":"ppo","backend":"torch","epsilon":0.1}"#);
        assert_eq!(info.policy_label, "ppo");
        assert_eq!(info.backend, "torch");
        assert_eq!(info.rest, r#"{"epsilon":0.1}"#);
        let list = split_info("[1,2]");
        assert_eq!(list.rest, r#"{"info":[1,2]}"#);
    }
}
