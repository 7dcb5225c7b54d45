//! The schema, as numbered migrations recorded in `schema_version`.
//!
//! Never edit a released migration: add one. Each runs in the transaction that records it,
//! under a database-wide advisory lock, so two daemons starting at once migrate once and a
//! failed migration leaves the previous version intact. A schema at a version newer than this
//! build's is refused untouched.
//!
//! Conventions (the SQLite store's): `u64` as `bigint` with the same bits, timestamps as Unix
//! nanoseconds (`bigint`, NULL when absent), floats as `double precision` (NaN stored as NaN),
//! control modes in their canonical spelling, ids in the `"C"` collation (byte order, as in
//! SQLite). Each stream's rows are keyed by `seq`, taken from its `stream_seqs` row (see the
//! writer).

use std::path::PathBuf;

use deadpool_postgres::Object;
use telemetry_store::StoreError;

use crate::{error::classify, PgConfig};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 5;

/// The advisory lock key of migrations ("GyTsMigr").
const MIGRATION_LOCK: i64 = 0x4779_5473_4d69_6772;

const V1: &str = r#"
CREATE TABLE stream_seqs (
    stream text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);
INSERT INTO stream_seqs (stream, last_seq)
    VALUES ('episodes', 0), ('events', 0), ('scalars', 0), ('steps', 0);
CREATE TABLE steps (
    seq bigint PRIMARY KEY,
    run_id text COLLATE "C" NOT NULL,
    episode_index bigint NOT NULL,
    step_index bigint NOT NULL,
    action_json text NOT NULL,
    observation_json text NOT NULL,
    reward double precision NOT NULL,
    terminated boolean NOT NULL,
    truncated boolean NOT NULL,
    ts_ns bigint,
    policy_label text NOT NULL,
    backend text NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    render_hint_json text NOT NULL,
    frame_ref text NOT NULL,
    payload_version bigint NOT NULL,
    control_mode text COLLATE "C" NOT NULL,
    producer_id text COLLATE "C" NOT NULL,
    producer_seq bigint NOT NULL,
    info_json text NOT NULL
);
CREATE INDEX steps_run_seq ON steps (run_id, seq);
CREATE INDEX steps_run_agent_seq ON steps (run_id, agent_id, seq);
CREATE INDEX steps_mode_seq ON steps (control_mode, seq);
CREATE INDEX steps_human_or_unknown ON steps (seq) WHERE control_mode IN ('human', 'unknown');
CREATE INDEX steps_episode ON steps (run_id, agent_id, episode_index, step_index);
CREATE TABLE episodes (
    seq bigint PRIMARY KEY,
    run_id text COLLATE "C" NOT NULL,
    episode_index bigint NOT NULL,
    total_reward double precision NOT NULL,
    steps bigint NOT NULL,
    terminated boolean NOT NULL,
    truncated boolean NOT NULL,
    metadata_json text NOT NULL,
    ts_ns bigint,
    agent_id text COLLATE "C" NOT NULL,
    control_mode text COLLATE "C" NOT NULL,
    producer_id text COLLATE "C" NOT NULL,
    producer_seq bigint NOT NULL
);
CREATE INDEX episodes_run_seq ON episodes (run_id, seq);
CREATE INDEX episodes_run_agent_seq ON episodes (run_id, agent_id, seq);
CREATE INDEX episodes_mode_seq ON episodes (control_mode, seq);
CREATE INDEX episodes_human_or_unknown ON episodes (seq)
    WHERE control_mode IN ('human', 'unknown');
CREATE TABLE events (
    seq bigint PRIMARY KEY,
    kind text COLLATE "C" NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    ts_ns bigint,
    producer_id text COLLATE "C" NOT NULL,
    producer_seq bigint NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX events_run_seq ON events (run_id, seq);
CREATE INDEX events_kind_run_seq ON events (kind, run_id, seq);
CREATE TABLE scalars (
    seq bigint PRIMARY KEY,
    run_id text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    step bigint NOT NULL,
    value double precision NOT NULL,
    ts_ns bigint,
    producer_id text COLLATE "C" NOT NULL,
    producer_seq bigint NOT NULL
);
CREATE INDEX scalars_run_seq ON scalars (run_id, seq);
CREATE INDEX scalars_run_agent_seq ON scalars (run_id, agent_id, seq);
CREATE INDEX scalars_series ON scalars (run_id, tag, agent_id, step, seq) INCLUDE (value);
CREATE TABLE producers (
    producer_id text COLLATE "C" PRIMARY KEY,
    durable_seq bigint
);
CREATE TABLE runs (
    run_id text COLLATE "C" PRIMARY KEY,
    state integer NOT NULL,
    updated_ns bigint,
    info bytea NOT NULL
);
CREATE TABLE run_stats (
    run_id text COLLATE "C" PRIMARY KEY,
    step_count bigint NOT NULL DEFAULT 0,
    episode_count bigint NOT NULL DEFAULT 0,
    first_ts_ns bigint,
    last_ts_ns bigint,
    last_step_seq bigint NOT NULL DEFAULT 0,
    last_episode_seq bigint NOT NULL DEFAULT 0,
    last_event_seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE run_agents (
    run_id text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    control_mode text COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, agent_id, control_mode)
);
CREATE TABLE scalar_tags (
    run_id text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    agent_id text COLLATE "C" NOT NULL,
    points bigint NOT NULL,
    first_step bigint NOT NULL,
    last_step bigint NOT NULL,
    last_value double precision NOT NULL,
    last_ts_ns bigint,
    last_seq bigint NOT NULL,
    PRIMARY KEY (run_id, tag, agent_id)
);
"#;

/// v2: policy provenance on steps and episodes (the SQLite store's v5): the equipped policy's
/// id and SHA-256, empty on older rows and for agents without a policy.
const V2: &str = r#"
ALTER TABLE steps ADD COLUMN IF NOT EXISTS policy_id text NOT NULL DEFAULT '';
ALTER TABLE steps ADD COLUMN IF NOT EXISTS policy_digest text NOT NULL DEFAULT '';
ALTER TABLE episodes ADD COLUMN IF NOT EXISTS policy_id text NOT NULL DEFAULT '';
ALTER TABLE episodes ADD COLUMN IF NOT EXISTS policy_digest text NOT NULL DEFAULT '';
"#;

/// v3: owner leases of the shared run registry (`leases.rs`). Each run row's owner as a column
/// (the fence of run writes and what a take-over selects on; filled from the rows' `info` by
/// [`backfill_owners`]), and one lease row per daemon, its expiry on the database's clock.
/// Lease rows are never deleted: a run's owner without one is a daemon of a build before
/// leases.
const V3: &str = r#"
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner text COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS runs_active_owner ON runs (owner) WHERE state IN (1, 2);
CREATE TABLE IF NOT EXISTS daemon_leases (
    owner text COLLATE "C" PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL
);
"#;

/// v4: `scalars_series` carries each point's wall time too (the buckets of the downsampled read
/// have a time), still an index-only scan.
const V4: &str = r#"
DROP INDEX IF EXISTS scalars_series;
CREATE INDEX IF NOT EXISTS scalars_series ON scalars (run_id, tag, agent_id, step, seq) INCLUDE (value, ts_ns);
"#;

/// v5: signs of life of runs received by daemons that do not own them (a worker's `Heartbeat`
/// sent to another daemon of the store), on the database's clock, for the owner's heartbeat
/// timeout (`leases.rs`). One row per run at most, removed with its run.
const V5: &str = r#"
CREATE TABLE IF NOT EXISTS run_beats (
    run_id text COLLATE "C" PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
    beat_at timestamptz NOT NULL
);
"#;

/// Migration `i` brings a schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1, V2, V3, V4, V5];

/// Part of v3: each run row's `owner` column from the owner inside its encoded `info`.
async fn backfill_owners(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    use prost::Message;
    let rows = tx
        .query("SELECT run_id, info FROM runs", &[])
        .await
        .map_err(classify)?;
    for row in rows {
        let run_id: &str = row.try_get(0).map_err(classify)?;
        let body: &[u8] = row.try_get(1).map_err(classify)?;
        // A row that does not decode keeps no owner (it is not ours to take over, and the
        // reader reports it).
        let Ok(info) = telemetry_core::pb::RunInfo::decode(body) else {
            continue;
        };
        if !info.owner.is_empty() {
            tx.execute(
                "UPDATE runs SET owner = $2 WHERE run_id = $1",
                &[&run_id, &info.owner],
            )
            .await
            .map_err(classify)?;
        }
    }
    Ok(())
}

fn place(cfg: &PgConfig) -> PathBuf {
    PathBuf::from(cfg.describe())
}

/// The recorded version (0: no `schema_version` table in the schema).
async fn version(client: &Object, cfg: &PgConfig) -> Result<i32, StoreError> {
    let exists = client
        .query_one(
            "SELECT to_regclass(format('%I.schema_version', $1::text)) IS NOT NULL",
            &[&cfg.schema()],
        )
        .await
        .map_err(classify)?;
    if !exists.try_get::<_, bool>(0).map_err(classify)? {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(classify)?;
    row.try_get(0).map_err(classify)
}

/// Creates the schema if needed and applies the missing migrations; returns the version.
pub(crate) async fn migrate(client: &mut Object, cfg: &PgConfig) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(classify)?;
    // The schema name was checked to be a plain identifier (PgConfig::new).
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{s}\"; \
         CREATE TABLE IF NOT EXISTS \"{s}\".schema_version (\
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        s = cfg.schema()
    ))
    .await
    .map_err(classify)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(classify)?
        .try_get(0)
        .map_err(classify)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerVersion {
            path: place(cfg),
            found: i64::from(found),
            supported: i64::from(SCHEMA_VERSION),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let to = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(classify)?;
        if to == 3 {
            backfill_owners(&tx).await?;
        }
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
            .await
            .map_err(classify)?;
        tracing::info!(store = %cfg.describe(), version = to, "postgres store migrated");
    }
    tx.commit().await.map_err(classify)?;
    Ok(SCHEMA_VERSION)
}

/// Checks that the schema exists at this build's version (for a reader that does not migrate).
pub(crate) async fn check(client: &Object, cfg: &PgConfig) -> Result<(), StoreError> {
    match version(client, cfg).await? {
        0 => Err(StoreError::NotFound { path: place(cfg) }),
        v if v < SCHEMA_VERSION => Err(StoreError::OutdatedVersion {
            path: place(cfg),
            found: i64::from(v),
            supported: i64::from(SCHEMA_VERSION),
        }),
        v if v > SCHEMA_VERSION => Err(StoreError::NewerVersion {
            path: place(cfg),
            found: i64::from(v),
            supported: i64::from(SCHEMA_VERSION),
        }),
        _ => Ok(()),
    }
}
