//! Bringing a store file up to [`SCHEMA_VERSION`].
//!
//! All pending migrations run in one `BEGIN IMMEDIATE` transaction together with the
//! `user_version` bump, so a crash mid-migration leaves the file at its old version, and a
//! second process opening the same file at the same time waits and then finds nothing to do.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::{
    error::classify,
    identity::{check_writable_identity, identity},
    schema::{APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION},
    StoreError,
};

/// Applies the migrations from the file's version up to [`SCHEMA_VERSION`].
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Applies the migrations up to `target` (tests build old versions with it).
pub(crate) fn migrate_to(
    conn: &mut Connection,
    path: &Path,
    target: i64,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(path, e))?;
    let id = identity(&tx, path)?;
    check_writable_identity(path, &id)?;
    if id.version >= target {
        return Ok(());
    }
    let run = || -> rusqlite::Result<()> {
        for (from, sql) in MIGRATIONS.iter().enumerate() {
            let from = from as i64;
            if from >= id.version && from < target {
                apply(&tx, sql)?;
                tracing::info!(path = %path.display(), from, to = from + 1, "migrated telemetry store");
            }
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", target)?;
        Ok(())
    };
    run().map_err(|e| classify(path, e))?;
    tx.commit().map_err(|e| classify(path, e))
}

/// Runs one migration's SQL. `ALTER TABLE … ADD COLUMN` has no `IF NOT EXISTS` in SQLite, so
/// a column that already exists is not an error: every migration stays idempotent.
pub(crate) fn apply(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    if !sql.contains("ADD COLUMN") {
        return conn.execute_batch(sql);
    }
    for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        match conn.execute_batch(stmt) {
            Err(rusqlite::Error::SqliteFailure(_, Some(msg)))
                if msg.starts_with("duplicate column name") => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Filter, Store, StoreConfig};
    use rusqlite::params;

    fn fresh(
        dir: &tempfile::TempDir,
        name: &str,
        version: i64,
    ) -> (std::path::PathBuf, Connection) {
        let path = dir.path().join(name);
        let mut conn = Connection::open(&path).expect("open");
        if version > 0 {
            migrate_to(&mut conn, &path, version).expect("migrate");
        }
        (path, conn)
    }

    /// Inserts one step and one episode using only the columns every version has.
    fn seed_rows(conn: &Connection, mode: &str) {
        conn.execute(
            "INSERT INTO steps (run_id, episode_index, step_index, action_json, observation_json, \
             reward, terminated, truncated, ts_ns, policy_label, backend, agent_id, \
             render_hint_json, frame_ref, payload_version, control_mode, producer_id, \
             producer_seq, info_json) VALUES ('run-a', 0, 0, '1', '{}', 0.5, 0, 0, 1000, 'p', \
             'b', 'agent-1', '', '', 0, ?1, 'prod', 1, '')",
            params![mode],
        )
        .expect("step");
        conn.execute(
            "INSERT INTO episodes (run_id, episode_index, total_reward, steps, terminated, \
             truncated, metadata_json, ts_ns, agent_id, control_mode, producer_id, producer_seq) \
             VALUES ('run-a', 0, 0.5, 1, 1, 0, '{}', 2000, 'agent-1', ?1, 'prod', 2)",
            params![mode],
        )
        .expect("episode");
        conn.execute(
            "INSERT INTO producers (producer_id, durable_seq) VALUES ('prod', 2)",
            [],
        )
        .expect("producer");
    }

    #[test]
    fn every_earlier_version_migrates_to_the_latest_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        // v0: an empty (zero-byte) file.
        let empty = dir.path().join("v0.sqlite");
        std::fs::write(&empty, b"").expect("write");
        let store = Store::open(StoreConfig::new(&empty)).expect("v0 opens");
        let reader = store.reader().expect("reader");
        assert_eq!(
            reader.last_seqs().expect("seqs"),
            crate::LastSeqs::default()
        );
        drop((reader, store));

        for version in 1..SCHEMA_VERSION {
            let (path, conn) = fresh(&dir, &format!("v{version}.sqlite"), version);
            // v1 writers could leave control_mode empty; v2 makes it canonical.
            seed_rows(&conn, if version == 1 { "" } else { "human" });
            drop(conn);
            let mut store = Store::open(StoreConfig::new(&path)).expect("migrates");
            let check = Connection::open(&path).expect("open");
            let v: i64 = check
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .expect("version");
            assert_eq!(v, SCHEMA_VERSION, "from v{version}");
            let reader = store.reader().expect("reader");
            let steps = reader
                .read_steps_page(0, &Filter::default(), 10)
                .expect("steps");
            assert_eq!(steps.len(), 1);
            let expected_mode = if version == 1 { "unknown" } else { "human" };
            assert_eq!(steps[0].control_mode, expected_mode, "from v{version}");
            // v5: rows stored before policy provenance existed have none.
            assert_eq!(steps[0].policy_id, "", "from v{version}");
            assert_eq!(store.watermark("prod").expect("wm"), 2);
            // The run summary (v3) is backfilled from the rows of older files (from v3 on,
            // appends keep it; the seeded rows bypassed them).
            let runs = reader.list_runs().expect("runs");
            if version < 3 {
                assert_eq!(runs.len(), 1, "from v{version}");
                assert_eq!(runs[0].step_count, 1);
                assert_eq!(runs[0].episode_count, 1);
                assert_eq!(runs[0].first_timestamp_ns, Some(1000));
                assert_eq!(runs[0].last_timestamp_ns, Some(2000));
                assert_eq!(runs[0].agent_ids, vec!["agent-1".to_string()]);
                assert_eq!(runs[0].control_modes, vec![expected_mode.to_string()]);
            }
            // v4 adds the scalars stream, empty after a migration.
            assert!(reader.list_tags("run-a", 10).expect("tags").is_empty());
            // Human-or-unknown finds the migrated rows through the new partial index.
            assert_eq!(reader.human_replay_episodes(0, 10).expect("hr").len(), 1);
            // And the store keeps appending after the old rows.
            let mut recs = vec![telemetry_core::pb::Record::from(
                telemetry_core::pb::RunStep {
                    run_id: "run-a".into(),
                    producer_id: "prod".into(),
                    producer_seq: 3,
                    policy_id: "FrozenLake-v1/q.json".into(),
                    policy_digest: "ab".repeat(32),
                    ..Default::default()
                },
            )];
            let report = store.append(&mut recs, &[]).expect("append");
            assert_eq!(
                report.outcomes,
                vec![crate::AppendOutcome::Stored { seq: 2 }]
            );
            let after = reader
                .read_steps_page(1, &Filter::default(), 10)
                .expect("steps");
            assert_eq!(
                after[0].policy_id, "FrozenLake-v1/q.json",
                "from v{version}"
            );
            assert_eq!(after[0].policy_digest, "ab".repeat(32));
            let expected = if version < 3 { 2 } else { 1 };
            assert_eq!(reader.list_runs().expect("runs")[0].step_count, expected);
        }
    }

    #[test]
    fn each_migration_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_path, conn) = fresh(&dir, "idem.sqlite", SCHEMA_VERSION);
        seed_rows(&conn, "agent");
        let stats_before: (i64, i64) = conn
            .query_row("SELECT step_count, episode_count FROM run_stats", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap_or((0, 0));
        for sql in MIGRATIONS {
            apply(&conn, sql).expect("re-run is harmless");
        }
        let stats_after: (i64, i64) = conn
            .query_row("SELECT step_count, episode_count FROM run_stats", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("stats");
        // The raw inserts above bypassed the writer; re-running v3 recomputes the summary
        // from the rows (and running it again gives the same answer).
        assert_eq!(stats_before, (0, 0));
        assert_eq!(stats_after, (1, 1));
        apply(&conn, MIGRATIONS[2]).expect("again");
        let again: (i64, i64) = conn
            .query_row("SELECT step_count, episode_count FROM run_stats", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("stats");
        assert_eq!(again, stats_after);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM run_agents", [], |r| r.get(0))
            .expect("agents");
        assert_eq!(n, 1);
    }
}
