//! The SQL of every schema version, in one place.
//!
//! A store file outlives the binary that made it, so the schema only moves forward through
//! numbered migrations (`PRAGMA user_version`); an old file is brought up to date on open and a
//! newer one is refused. Each migration is written to be idempotent (`IF NOT EXISTS`,
//! recomputing backfills) so running one twice is harmless. Never edit a released migration:
//! add a new one.
//!
//! Layout: one table per stream (`steps`, `episodes`, `events`, `scalars`), each keyed by its `seq`
//! (`INTEGER PRIMARY KEY`, i.e. the rowid: strictly increasing in commit order because there is
//! a single writer and rows are never deleted); every record field in its own column, except
//! lifecycle events which keep the encoded protobuf beside a few indexed columns. `u64` fields
//! are stored as the `i64` with the same bits. Timestamps are Unix nanoseconds (NULL when
//! absent). `control_mode` is stored in its canonical spelling.

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 6;

/// `PRAGMA application_id` of a gym-telemetry store ("GyTs"), which tells our files apart
/// from other SQLite databases (such as the predecessor's).
pub(crate) const APPLICATION_ID: i64 = 0x4779_5473;

/// v1: steps, episodes, producer watermarks, the run registry.
const V1: &str = "
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    episode_index INTEGER NOT NULL,
    step_index INTEGER NOT NULL,
    action_json TEXT NOT NULL,
    observation_json TEXT NOT NULL,
    reward REAL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    ts_ns INTEGER,
    policy_label TEXT NOT NULL,
    backend TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    render_hint_json TEXT NOT NULL,
    frame_ref TEXT NOT NULL,
    payload_version INTEGER NOT NULL,
    control_mode TEXT NOT NULL,
    producer_id TEXT NOT NULL,
    producer_seq INTEGER NOT NULL,
    info_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_run_seq ON steps (run_id, seq);
CREATE INDEX IF NOT EXISTS steps_run_agent_seq ON steps (run_id, agent_id, seq);
CREATE TABLE IF NOT EXISTS episodes (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    episode_index INTEGER NOT NULL,
    total_reward REAL,
    steps INTEGER NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    metadata_json TEXT NOT NULL,
    ts_ns INTEGER,
    agent_id TEXT NOT NULL,
    control_mode TEXT NOT NULL,
    producer_id TEXT NOT NULL,
    producer_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_run_seq ON episodes (run_id, seq);
CREATE INDEX IF NOT EXISTS episodes_run_agent_seq ON episodes (run_id, agent_id, seq);
CREATE TABLE IF NOT EXISTS producers (
    producer_id TEXT PRIMARY KEY,
    durable_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    updated_ns INTEGER,
    info BLOB NOT NULL
) WITHOUT ROWID;
";

/// v2: lifecycle events; canonical control modes on old rows; the control-mode indexes (one
/// partial index serves the \"human or unknown\" view without a sort); the replay index.
const V2: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    run_id TEXT NOT NULL,
    ts_ns INTEGER,
    producer_id TEXT NOT NULL,
    producer_seq INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run_seq ON events (run_id, seq);
UPDATE steps SET control_mode = 'unknown' WHERE control_mode = '';
UPDATE episodes SET control_mode = 'unknown' WHERE control_mode = '';
CREATE INDEX IF NOT EXISTS steps_mode_seq ON steps (control_mode, seq);
CREATE INDEX IF NOT EXISTS steps_human_or_unknown ON steps (seq)
    WHERE control_mode IN ('human', 'unknown');
CREATE INDEX IF NOT EXISTS steps_episode ON steps (run_id, agent_id, episode_index, step_index);
CREATE INDEX IF NOT EXISTS episodes_mode_seq ON episodes (control_mode, seq);
CREATE INDEX IF NOT EXISTS episodes_human_or_unknown ON episodes (seq)
    WHERE control_mode IN ('human', 'unknown');
";

/// v3: per-run summaries kept by every append (so listing runs never scans the streams),
/// backfilled from the rows already stored.
const V3: &str = "
CREATE TABLE IF NOT EXISTS run_stats (
    run_id TEXT PRIMARY KEY,
    step_count INTEGER NOT NULL DEFAULT 0,
    episode_count INTEGER NOT NULL DEFAULT 0,
    first_ts_ns INTEGER,
    last_ts_ns INTEGER,
    last_step_seq INTEGER NOT NULL DEFAULT 0,
    last_episode_seq INTEGER NOT NULL DEFAULT 0,
    last_event_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_agents (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    control_mode TEXT NOT NULL,
    PRIMARY KEY (run_id, agent_id, control_mode)
) WITHOUT ROWID;
INSERT OR REPLACE INTO run_stats (run_id, step_count, episode_count, first_ts_ns, last_ts_ns,
                                  last_step_seq, last_episode_seq, last_event_seq)
SELECT run_id, sum(sc), sum(ec), min(mn), max(mx), max(ls), max(le), max(lv) FROM (
    SELECT run_id, count(*) AS sc, 0 AS ec, min(ts_ns) AS mn, max(ts_ns) AS mx,
           max(seq) AS ls, 0 AS le, 0 AS lv FROM steps GROUP BY run_id
    UNION ALL
    SELECT run_id, 0, count(*), min(ts_ns), max(ts_ns), 0, max(seq), 0 FROM episodes GROUP BY run_id
    UNION ALL
    SELECT run_id, 0, 0, min(ts_ns), max(ts_ns), 0, 0, max(seq) FROM events GROUP BY run_id
) GROUP BY run_id;
INSERT OR IGNORE INTO run_agents (run_id, agent_id, control_mode)
    SELECT DISTINCT run_id, agent_id, control_mode FROM steps
    UNION SELECT DISTINCT run_id, agent_id, control_mode FROM episodes;
";

/// v4: training scalars (their own seq stream) and a per-series summary kept by every append
/// (so listing a run's tags and sizing a downsampled read never scan the points). A NaN value
/// is stored as NULL and read back as NaN. `scalars_series` covers the downsampled read: one
/// range scan per series, in step order, without touching the table.
const V4: &str = "
CREATE TABLE IF NOT EXISTS scalars (
    seq INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    ts_ns INTEGER,
    producer_id TEXT NOT NULL,
    producer_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scalars_run_seq ON scalars (run_id, seq);
CREATE INDEX IF NOT EXISTS scalars_run_agent_seq ON scalars (run_id, agent_id, seq);
CREATE INDEX IF NOT EXISTS scalars_series ON scalars (run_id, tag, agent_id, step, value);
CREATE TABLE IF NOT EXISTS scalar_tags (
    run_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    points INTEGER NOT NULL,
    first_step INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    last_value REAL,
    last_ts_ns INTEGER,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, tag, agent_id)
) WITHOUT ROWID;
";

/// v5: policy provenance on steps and episodes: the equipped policy's id and SHA-256 (empty on
/// rows stored before, and for agents without a policy). `ADD COLUMN` is not idempotent on its
/// own, but a migration runs once, in the transaction that bumps `user_version`.
const V5: &str = "
ALTER TABLE steps ADD COLUMN policy_id TEXT NOT NULL DEFAULT '';
ALTER TABLE steps ADD COLUMN policy_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE episodes ADD COLUMN policy_id TEXT NOT NULL DEFAULT '';
ALTER TABLE episodes ADD COLUMN policy_digest TEXT NOT NULL DEFAULT '';
";

/// v6: `scalars_series` covers each point's wall time too, so the downsampled read gives every
/// bucket its time (relative and wall-time axes) still without touching the table.
const V6: &str = "
DROP INDEX IF EXISTS scalars_series;
CREATE INDEX IF NOT EXISTS scalars_series ON scalars (run_id, tag, agent_id, step, value, ts_ns);
";

/// Migration `i` brings a store from version `i` to version `i + 1`.
pub(crate) const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [V1, V2, V3, V4, V5, V6];

/// Columns of `scalars` after `seq`.
pub(crate) const SCALAR_COLUMNS: &str =
    "run_id, agent_id, tag, step, value, ts_ns, producer_id, producer_seq";

/// Columns of `steps` after `seq`, in the order [`crate::rows`] binds and reads them.
pub(crate) const STEP_COLUMNS: &str = "run_id, episode_index, step_index, action_json, \
     observation_json, reward, terminated, truncated, ts_ns, policy_label, backend, agent_id, \
     render_hint_json, frame_ref, payload_version, control_mode, producer_id, producer_seq, \
     info_json, policy_id, policy_digest";

/// Columns of `episodes` after `seq`.
pub(crate) const EPISODE_COLUMNS: &str = "run_id, episode_index, total_reward, steps, \
     terminated, truncated, metadata_json, ts_ns, agent_id, control_mode, producer_id, \
     producer_seq, policy_id, policy_digest";

/// The `i64` stored for a `u64` (same bits).
#[inline]
pub(crate) fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

/// The `u64` a stored `i64` stands for (same bits).
#[inline]
pub(crate) fn u64_from_sql(v: i64) -> u64 {
    v as u64
}
