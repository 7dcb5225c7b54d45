//! Records to rows and back.
//!
//! The writer binds and the readers decode the same column lists ([`crate::schema`]); keeping
//! both directions side by side is what makes "a record read back equals the record written"
//! checkable by eye. Conventions: `u64` is stored as the `i64` with the same bits (so values
//! above `i64::MAX` round-trip, though SQL orders them as negative), a NaN reward becomes SQL
//! NULL and comes back as NaN, timestamps are Unix nanoseconds (NULL when absent).

use prost::Message;
use rusqlite::{types::ValueRef, Row, Statement};
use telemetry_core::{
    pb::{record::Kind, Record, RunEpisode, RunStep, Scalar},
    timestamp::{from_unix_nanos, to_unix_nanos},
    ControlMode,
};

pub(crate) use crate::schema::{u64_from_sql, u64_to_sql};
use crate::{pages::RowView, StoreError};

/// SQL that inserts one step (parameters in [`crate::schema::STEP_COLUMNS`] order).
pub(crate) const INSERT_STEP: &str = "INSERT INTO steps (run_id, episode_index, step_index, \
     action_json, observation_json, reward, terminated, truncated, ts_ns, policy_label, backend, \
     agent_id, render_hint_json, frame_ref, payload_version, control_mode, producer_id, \
     producer_seq, info_json, policy_id, policy_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
     ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)";

/// SQL that inserts one episode.
pub(crate) const INSERT_EPISODE: &str = "INSERT INTO episodes (run_id, episode_index, \
     total_reward, steps, terminated, truncated, metadata_json, ts_ns, agent_id, control_mode, \
     producer_id, producer_seq, policy_id, policy_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
     ?9, ?10, ?11, ?12, ?13, ?14)";

/// SQL that inserts one lifecycle event.
pub(crate) const INSERT_EVENT: &str = "INSERT INTO events (kind, run_id, ts_ns, producer_id, \
     producer_seq, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// SQL that inserts one scalar (parameters in [`crate::schema::SCALAR_COLUMNS`] order).
pub(crate) const INSERT_SCALAR: &str = "INSERT INTO scalars (run_id, agent_id, tag, step, value, \
     ts_ns, producer_id, producer_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The canonical spelling of a control mode (`""` and legacy spellings are rewritten). A value
/// that is not a known mode (the caller did not validate) is kept as given rather than lost.
pub(crate) fn canonical_mode(mode: &str) -> &str {
    if ControlMode::ALL.iter().any(|m| m.as_str() == mode) {
        return mode;
    }
    match ControlMode::from_wire(mode) {
        Ok(m) => m.as_str(),
        Err(_) => mode,
    }
}

fn ts_ns(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(to_unix_nanos)
}

/// Binds and runs the step insert.
pub(crate) fn insert_step(stmt: &mut Statement<'_>, s: &RunStep) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, s.run_id.as_str())?;
    stmt.raw_bind_parameter(2, u64_to_sql(s.episode_index))?;
    stmt.raw_bind_parameter(3, u64_to_sql(s.step_index))?;
    stmt.raw_bind_parameter(4, s.action_json.as_str())?;
    stmt.raw_bind_parameter(5, s.observation_json.as_str())?;
    stmt.raw_bind_parameter(6, s.reward)?;
    stmt.raw_bind_parameter(7, s.terminated)?;
    stmt.raw_bind_parameter(8, s.truncated)?;
    stmt.raw_bind_parameter(9, ts_ns(s.timestamp.as_ref()))?;
    stmt.raw_bind_parameter(10, s.policy_label.as_str())?;
    stmt.raw_bind_parameter(11, s.backend.as_str())?;
    stmt.raw_bind_parameter(12, s.agent_id.as_str())?;
    stmt.raw_bind_parameter(13, s.render_hint_json.as_str())?;
    stmt.raw_bind_parameter(14, s.frame_ref.as_str())?;
    stmt.raw_bind_parameter(15, s.payload_version)?;
    stmt.raw_bind_parameter(16, canonical_mode(&s.control_mode))?;
    stmt.raw_bind_parameter(17, s.producer_id.as_str())?;
    stmt.raw_bind_parameter(18, u64_to_sql(s.producer_seq))?;
    stmt.raw_bind_parameter(19, s.info_json.as_str())?;
    stmt.raw_bind_parameter(20, s.policy_id.as_str())?;
    stmt.raw_bind_parameter(21, s.policy_digest.as_str())?;
    stmt.raw_execute().map(drop)
}

/// Binds and runs the scalar insert (a NaN value binds as NULL).
pub(crate) fn insert_scalar(stmt: &mut Statement<'_>, s: &Scalar) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, s.run_id.as_str())?;
    stmt.raw_bind_parameter(2, s.agent_id.as_str())?;
    stmt.raw_bind_parameter(3, s.tag.as_str())?;
    stmt.raw_bind_parameter(4, s.step)?;
    stmt.raw_bind_parameter(5, (!s.value.is_nan()).then_some(s.value))?;
    stmt.raw_bind_parameter(6, ts_ns(s.timestamp.as_ref()))?;
    stmt.raw_bind_parameter(7, s.producer_id.as_str())?;
    stmt.raw_bind_parameter(8, u64_to_sql(s.producer_seq))?;
    stmt.raw_execute().map(drop)
}

/// Binds and runs the episode insert.
pub(crate) fn insert_episode(stmt: &mut Statement<'_>, e: &RunEpisode) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, e.run_id.as_str())?;
    stmt.raw_bind_parameter(2, u64_to_sql(e.episode_index))?;
    stmt.raw_bind_parameter(3, e.total_reward)?;
    stmt.raw_bind_parameter(4, u64_to_sql(e.steps))?;
    stmt.raw_bind_parameter(5, e.terminated)?;
    stmt.raw_bind_parameter(6, e.truncated)?;
    stmt.raw_bind_parameter(7, e.metadata_json.as_str())?;
    stmt.raw_bind_parameter(8, ts_ns(e.timestamp.as_ref()))?;
    stmt.raw_bind_parameter(9, e.agent_id.as_str())?;
    stmt.raw_bind_parameter(10, canonical_mode(&e.control_mode))?;
    stmt.raw_bind_parameter(11, e.producer_id.as_str())?;
    stmt.raw_bind_parameter(12, u64_to_sql(e.producer_seq))?;
    stmt.raw_bind_parameter(13, e.policy_id.as_str())?;
    stmt.raw_bind_parameter(14, e.policy_digest.as_str())?;
    stmt.raw_execute().map(drop)
}

/// The stream-independent facts of a lifecycle record, for its indexed columns.
pub(crate) fn event_columns(record: &Record) -> Option<(&'static str, Option<i64>)> {
    let (kind, ts) = match record.kind.as_ref()? {
        Kind::RunStarted(r) => ("run_started", r.timestamp.as_ref()),
        Kind::RunCompleted(r) => ("run_completed", r.timestamp.as_ref()),
        Kind::Artifact(r) => ("artifact", r.timestamp.as_ref()),
        Kind::Step(_) | Kind::Episode(_) | Kind::Scalar(_) => return None,
    };
    Some((kind, ts_ns(ts)))
}

/// Binds and runs the event insert; the body is the encoded record.
pub(crate) fn insert_event(
    stmt: &mut Statement<'_>,
    record: &Record,
    kind: &str,
    ts: Option<i64>,
    body: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    body.clear();
    // Encoding into a Vec cannot run out of room.
    let _ = record.encode(body);
    let (producer_id, producer_seq) = record.producer();
    stmt.raw_bind_parameter(1, kind)?;
    stmt.raw_bind_parameter(2, record.run_id())?;
    stmt.raw_bind_parameter(3, ts)?;
    stmt.raw_bind_parameter(4, producer_id)?;
    stmt.raw_bind_parameter(5, u64_to_sql(producer_seq))?;
    stmt.raw_bind_parameter(6, body.as_slice())?;
    stmt.raw_execute().map(drop)
}

/// A step from a copied row of `SELECT seq, <STEP_COLUMNS>`.
pub(crate) fn step_from(row: &RowView<'_>) -> Result<RunStep, StoreError> {
    const W: &str = "step";
    let payload_version = row.int(15, W)?;
    Ok(RunStep {
        seq_id: row.seq(),
        run_id: row.text(1),
        episode_index: u64_from_sql(row.int(2, W)?),
        step_index: u64_from_sql(row.int(3, W)?),
        action_json: row.text(4),
        observation_json: row.text(5),
        reward: row.real(6, W)?,
        terminated: row.int(7, W)? != 0,
        truncated: row.int(8, W)? != 0,
        timestamp: row.opt_int(9, W)?.map(from_unix_nanos),
        policy_label: row.text(10),
        backend: row.text(11),
        agent_id: row.text(12),
        render_hint_json: row.text(13),
        frame_ref: row.text(14),
        payload_version: u32::try_from(payload_version).map_err(|_| StoreError::Decode {
            what: W,
            seq: row.seq(),
            detail: format!("payload_version {payload_version} out of range"),
        })?,
        control_mode: row.text(16),
        producer_id: row.text(17),
        producer_seq: u64_from_sql(row.int(18, W)?),
        info_json: row.text(19),
        policy_id: row.text(20),
        policy_digest: row.text(21),
    })
}

/// An episode from a copied row of `SELECT seq, <EPISODE_COLUMNS>`.
pub(crate) fn episode_from(row: &RowView<'_>) -> Result<RunEpisode, StoreError> {
    const W: &str = "episode";
    Ok(RunEpisode {
        seq_id: row.seq(),
        run_id: row.text(1),
        episode_index: u64_from_sql(row.int(2, W)?),
        total_reward: row.real(3, W)?,
        steps: u64_from_sql(row.int(4, W)?),
        terminated: row.int(5, W)? != 0,
        truncated: row.int(6, W)? != 0,
        metadata_json: row.text(7),
        timestamp: row.opt_int(8, W)?.map(from_unix_nanos),
        agent_id: row.text(9),
        control_mode: row.text(10),
        producer_id: row.text(11),
        producer_seq: u64_from_sql(row.int(12, W)?),
        policy_id: row.text(13),
        policy_digest: row.text(14),
    })
}

/// A scalar from a copied row of `SELECT seq, <SCALAR_COLUMNS>`.
pub(crate) fn scalar_from(row: &RowView<'_>) -> Result<Scalar, StoreError> {
    const W: &str = "scalar";
    Ok(Scalar {
        seq_id: row.seq(),
        run_id: row.text(1),
        agent_id: row.text(2),
        tag: row.text(3),
        step: row.int(4, W)?,
        value: row.real(5, W)?,
        timestamp: row.opt_int(6, W)?.map(from_unix_nanos),
        producer_id: row.text(7),
        producer_seq: u64_from_sql(row.int(8, W)?),
    })
}

fn decode_error(what: &'static str, row: &Row<'_>, e: rusqlite::Error) -> StoreError {
    StoreError::Decode {
        what,
        seq: row.get::<_, i64>(0).map(u64_from_sql).unwrap_or(0),
        detail: e.to_string(),
    }
}

/// A lifecycle record from a row of `SELECT seq, body`.
pub(crate) fn event_from_row(row: &Row<'_>) -> Result<Record, StoreError> {
    let seq = row
        .get::<_, i64>(0)
        .map(u64_from_sql)
        .map_err(|e| decode_error("event", row, e))?;
    let body = match row.get_ref(1) {
        Ok(ValueRef::Blob(b)) => b,
        Ok(_) => &[][..],
        Err(e) => return Err(decode_error("event", row, e)),
    };
    let mut record = Record::decode(body).map_err(|e| StoreError::Decode {
        what: "event",
        seq,
        detail: e.to_string(),
    })?;
    if record.kind.is_none() {
        return Err(StoreError::Decode {
            what: "event",
            seq,
            detail: "empty record body".into(),
        });
    }
    record.set_seq_id(seq);
    Ok(record)
}
