//! Shared pieces of the benchmark binaries: the record they all write and the plain-SQLite
//! baseline (a prepared INSERT per row, one transaction per batch, into the store's own `steps`
//! table with the store's pragmas) that ingest figures are measured against in the same run.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rusqlite::{params, Connection, TransactionBehavior};

pub mod e2e;
use telemetry_core::{
    pb::RunStep,
    timestamp::{from_unix_nanos, to_unix_nanos},
};
use telemetry_store::{Store, StoreConfig};

/// The error of the bench binaries.
pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The result type of the bench binaries.
pub type AnyResult<T> = Result<T, AnyError>;

/// The baseline's INSERT, covering every column the store writes for a step.
pub const INSERT: &str = "INSERT INTO steps (run_id, episode_index, step_index, action_json, \
     observation_json, reward, terminated, truncated, ts_ns, policy_label, backend, agent_id, \
     render_hint_json, frame_ref, payload_version, control_mode, producer_id, producer_seq, \
     info_json, policy_id, policy_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
     ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)";

/// The step every benchmark writes (realistic field sizes; `i` varies the contents).
pub fn template(i: u64) -> RunStep {
    let x = (i % 97) as f64 / 97.0;
    RunStep {
        run_id: "bench-run".into(),
        episode_index: i / 500,
        step_index: i % 500,
        action_json: (i % 4).to_string(),
        observation_json: format!(
            "{{\"position\":[{:.4},{:.4}],\"velocity\":[{:.4},{:.4}]}}",
            x,
            1.0 - x,
            x * 0.5,
            -x
        ),
        reward: x,
        terminated: i % 500 == 499,
        truncated: false,
        timestamp: Some(from_unix_nanos(
            1_795_914_168_088_378_923 + 1_000 * i as i64,
        )),
        policy_label: "ppo".into(),
        backend: "torch".into(),
        seq_id: 0,
        agent_id: "agent-0".into(),
        render_hint_json: r#"{"w":84,"h":84}"#.into(),
        frame_ref: String::new(),
        payload_version: 1,
        control_mode: "agent".into(),
        producer_id: "bench-producer".into(),
        producer_seq: 0,
        info_json: r#"{"epsilon":0.05}"#.into(),
        // No equipped policy: the benchmarks' records keep their size.
        policy_id: String::new(),
        policy_digest: String::new(),
    }
}

/// A plain connection to a store file created (and migrated) by the store, with its pragmas.
pub fn writer_connection(path: &Path) -> AnyResult<Connection> {
    // Create the schema through the store, then write with a plain connection configured
    // with the store's pragmas.
    drop(Store::open(StoreConfig::new(path))?);
    let cfg = StoreConfig::new(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(cfg.busy_timeout)?;
    let _: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", cfg.wal_autocheckpoint_pages)?;
    conn.pragma_update(None, "journal_size_limit", cfg.journal_size_limit as i64)?;
    Ok(conn)
}

/// The baseline: a prepared INSERT per row, one transaction per `batch` rows.
pub fn ingest_plain(path: &Path, batch: usize, total: u64) -> AnyResult<Duration> {
    let mut conn = writer_connection(path)?;
    let templates: Vec<RunStep> = (0..batch as u64).map(template).collect();
    let mut seq = 0u64;
    let started = Instant::now();
    while seq < total {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(INSERT)?;
            for s in &templates {
                seq += 1;
                stmt.execute(params![
                    s.run_id,
                    (seq / 500) as i64,
                    (seq % 500) as i64,
                    s.action_json,
                    s.observation_json,
                    s.reward,
                    s.terminated,
                    s.truncated,
                    s.timestamp.as_ref().map(to_unix_nanos),
                    s.policy_label,
                    s.backend,
                    s.agent_id,
                    s.render_hint_json,
                    s.frame_ref,
                    s.payload_version,
                    s.control_mode,
                    s.producer_id,
                    seq as i64,
                    s.info_json,
                    s.policy_id,
                    s.policy_digest,
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

/// Records per second.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// A path in `dir` with no leftover database, WAL or shared-memory file.
pub fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    path
}
