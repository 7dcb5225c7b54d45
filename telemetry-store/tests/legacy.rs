//! Importing the predecessor's telemetry.sqlite: field mapping, old layouts, odd rows,
//! idempotence.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::{params, Connection};
use telemetry_core::{pb::RunStep, timestamp::parse_rfc3339};
use telemetry_store::{
    legacy_import::{import_legacy, import_legacy_with, ImportOptions, MAX_FIELD_BYTES},
    Filter, StoreError,
};

const FULL_SCHEMA: &str = "
CREATE TABLE steps (episode_id TEXT, step_index INTEGER, action INTEGER, observation BLOB,
    reward REAL, terminated INTEGER, truncated INTEGER, info BLOB, render_payload BLOB,
    timestamp TEXT, agent_id TEXT, render_hint BLOB, frame_ref TEXT,
    payload_version INTEGER DEFAULT 0);
CREATE TABLE episodes (episode_id TEXT PRIMARY KEY, total_reward REAL, steps INTEGER,
    terminated INTEGER, truncated INTEGER, metadata BLOB, timestamp TEXT, agent_id TEXT);
";

/// The layout before agent_id, render_hint, frame_ref and payload_version were added.
const OLD_SCHEMA: &str = "
CREATE TABLE steps (episode_id TEXT, step_index INTEGER, action INTEGER, observation BLOB,
    reward REAL, terminated INTEGER, truncated INTEGER, info BLOB, render_payload BLOB,
    timestamp TEXT);
CREATE TABLE episodes (episode_id TEXT PRIMARY KEY, total_reward REAL, steps INTEGER,
    terminated INTEGER, truncated INTEGER, metadata BLOB, timestamp TEXT);
";

fn legacy_file(dir: &Path, name: &str, schema: &str) -> (PathBuf, Connection) {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(schema).unwrap();
    (path, conn)
}

fn metadata(run: &str, mode: &str, seed: u64) -> Vec<u8> {
    format!(r#"{{"seed": {seed}, "game_id": "DemoEnv-v0", "control_mode": "{mode}", "run_id": "{run}"}}"#)
        .into_bytes()
}

/// A well-formed legacy file: run RUN123, 2 episodes x 3 steps, human demos.
fn fill_full(conn: &Connection) {
    for ep in 0..2u64 {
        let id = format!("RUN123-ep{ep:04}");
        for i in 0..3u64 {
            conn.execute(
                "INSERT INTO steps VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?12, 3)",
                params![
                    id,
                    i,
                    i % 2,
                    format!(r#"{{"position": [{i}, 0.5]}}"#).into_bytes(),
                    0.5 * i as f64,
                    i == 2,
                    br#"{"policy_label": "demo_policy", "backend": "demo", "epsilon": 0.1}"#.to_vec(),
                    vec![0u8; 64],
                    format!("2025-10-17T14:03:0{i}.037000+00:00"),
                    "agent_RUN123",
                    br#"{"w": 84}"#.to_vec(),
                    format!("frames/{ep}/{i}.png"),
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO episodes VALUES (?1, ?2, 3, 1, 0, ?3, ?4, 'agent_RUN123')",
            params![
                id,
                1.5,
                metadata("RUN123", "human", 42 + ep),
                "2025-10-17T14:03:05.000000"
            ],
        )
        .unwrap();
    }
}

#[test]
fn a_full_legacy_file_maps_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, conn) = legacy_file(dir.path(), "telemetry.sqlite", FULL_SCHEMA);
    fill_full(&conn);
    drop(conn);
    let before = file_bytes(&legacy);
    let mut ts = TempStore::new();
    let report = import_legacy(&mut ts.store, &legacy).unwrap();
    assert_eq!((report.steps.read, report.steps.stored), (6, 6));
    assert_eq!((report.episodes.read, report.episodes.stored), (2, 2));
    assert_eq!(
        (report.rows_repaired, report.rows_skipped),
        (0, 0),
        "{:?}",
        report.issues
    );
    assert_eq!(report.render_payloads_dropped, 6);
    assert!(
        report.missing_columns.is_empty(),
        "{:?}",
        report.missing_columns
    );
    assert!(report.steps_producer_id.starts_with("legacy-import:"));
    assert_eq!(
        file_bytes(&legacy),
        before,
        "the legacy file is never modified"
    );

    let reader = ts.store.reader().unwrap();
    let steps: Vec<RunStep> = reader
        .stream_steps_since(0, &Filter::default())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(steps.len(), 6);
    let s = &steps[4];
    assert_eq!(
        (s.run_id.as_str(), s.episode_index, s.step_index),
        ("RUN123", 1, 1)
    );
    assert_eq!(s.action_json, "1");
    assert_eq!(s.observation_json, r#"{"position": [1, 0.5]}"#);
    assert_eq!(s.reward, 0.5);
    assert_eq!(s.policy_label, "demo_policy");
    assert_eq!(s.backend, "demo");
    assert_eq!(s.info_json, r#"{"epsilon":0.1}"#);
    assert_eq!(s.agent_id, "agent_RUN123");
    assert_eq!(s.render_hint_json, r#"{"w": 84}"#);
    assert_eq!(s.frame_ref, "frames/1/1.png");
    assert_eq!(s.payload_version, 3);
    // Steps take the control mode of their episode's metadata.
    assert_eq!(s.control_mode, "human");
    assert_eq!(
        s.timestamp,
        Some(parse_rfc3339("2025-10-17T14:03:01.037Z").unwrap())
    );
    assert_eq!(s.producer_seq, 5, "producer_seq is the legacy rowid");
    assert!(steps[2].terminated);

    let episodes = reader
        .read_episodes_page(0, &Filter::default(), 10)
        .unwrap();
    assert_eq!(episodes.len(), 2);
    let e = &episodes[1];
    assert_eq!((e.run_id.as_str(), e.episode_index), ("RUN123", 1));
    assert_eq!((e.total_reward, e.steps, e.terminated), (1.5, 3, true));
    assert_eq!(e.control_mode, "human");
    assert_eq!(e.agent_id, "agent_RUN123");
    assert!(e.metadata_json.contains("\"seed\": 43"));
    // A naive isoformat() time is UTC.
    assert_eq!(
        e.timestamp,
        Some(parse_rfc3339("2025-10-17T14:03:05Z").unwrap())
    );
    assert_eq!(reader.human_replay_episodes(0, 10).unwrap().len(), 2);
    let runs = reader.list_runs().unwrap();
    assert_eq!((runs[0].step_count, runs[0].episode_count), (6, 2));
}

#[test]
fn importing_twice_stores_nothing_new_and_a_grown_file_adds_only_its_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, conn) = legacy_file(dir.path(), "telemetry.sqlite", FULL_SCHEMA);
    fill_full(&conn);
    let mut ts = TempStore::new();
    let opts = ImportOptions {
        batch_size: 4,
        ..ImportOptions::default()
    };
    let first = import_legacy_with(&mut ts.store, &legacy, &opts).unwrap();
    assert_eq!(first.steps.stored, 6);
    let second = import_legacy_with(&mut ts.store, &legacy, &opts).unwrap();
    assert_eq!((second.steps.read, second.steps.stored), (0, 0));
    assert_eq!(second.steps.already_imported, 6);
    assert_eq!(second.episodes.already_imported, 2);
    assert_eq!(ts.store.reader().unwrap().last_seqs().unwrap().steps, 6);

    // The old daemon kept writing: only the new rows come in.
    conn.execute(
        "INSERT INTO steps (episode_id, step_index, action, observation, reward, terminated, \
         truncated, info, timestamp) VALUES ('RUN123-ep0002', 0, 1, '[1]', 1.0, 0, 0, '{}', \
         '2025-10-17T14:04:00Z')",
        [],
    )
    .unwrap();
    let third = import_legacy_with(&mut ts.store, &legacy, &opts).unwrap();
    assert_eq!((third.steps.read, third.steps.stored), (1, 1));
    assert_eq!(third.steps.already_imported, 6);
    let last = ts
        .store
        .reader()
        .unwrap()
        .read_steps_page(6, &Filter::default(), 5)
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(
        (last[0].episode_index, last[0].control_mode.as_str()),
        (2, "unknown")
    );

    // The same source under an explicit id is a different producer (a moved file).
    let moved = import_legacy_with(
        &mut ts.store,
        &legacy,
        &ImportOptions {
            source_id: Some("archive-2025".into()),
            ..opts
        },
    )
    .unwrap();
    assert_eq!(moved.steps_producer_id, "legacy-import:archive-2025:steps");
    assert_eq!(moved.steps.stored, 7);
}

#[test]
fn an_old_layout_without_the_later_columns_imports() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, conn) = legacy_file(dir.path(), "old.sqlite", OLD_SCHEMA);
    conn.execute(
        "INSERT INTO episodes VALUES ('OLDRUN-ep0000', 2.0, 1, 1, 0, ?1, '2024-01-02T03:04:05Z')",
        params![br#"{"agent_id": "bot", "config": {"control_mode": "agent_only"}}"#.to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO steps VALUES ('OLDRUN-ep0000', 0, 2, '{\"o\": 1}', 2.0, 1, 0, \
         '{\"policy_label\": \"p\"}', NULL, '2024-01-02 03:04:04')",
        [],
    )
    .unwrap();
    drop(conn);
    let mut ts = TempStore::new();
    let report = import_legacy(&mut ts.store, &legacy).unwrap();
    assert_eq!(
        report.missing_columns,
        [
            "steps.agent_id",
            "steps.render_hint",
            "steps.frame_ref",
            "steps.payload_version",
            "episodes.agent_id"
        ]
    );
    assert_eq!((report.steps.stored, report.episodes.stored), (1, 1));
    assert_eq!(report.rows_repaired, 0, "{:?}", report.issues);
    let reader = ts.store.reader().unwrap();
    let s = &reader.read_steps_page(0, &Filter::default(), 5).unwrap()[0];
    // Agent and (legacy-spelled, nested) mode come from the episode metadata.
    assert_eq!(
        (s.agent_id.as_str(), s.control_mode.as_str()),
        ("bot", "agent")
    );
    assert_eq!((s.payload_version, s.frame_ref.as_str()), (0, ""));
    assert_eq!(
        s.timestamp,
        Some(parse_rfc3339("2024-01-02T03:04:04Z").unwrap())
    );
    let e = &reader.read_episodes_page(0, &Filter::default(), 5).unwrap()[0];
    assert_eq!(
        (e.agent_id.as_str(), e.control_mode.as_str()),
        ("bot", "agent")
    );
}

#[test]
fn odd_rows_are_repaired_or_skipped_and_counted_without_stopping_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let (legacy, conn) = legacy_file(dir.path(), "odd.sqlite", FULL_SCHEMA);
    // An episode whose id does not follow the pattern, with its run in the metadata, and
    // an unknown control mode.
    conn.execute(
        "INSERT INTO episodes VALUES ('weird-episode', NULL, 'many', 1, 0, ?1, 'yesterday', NULL)",
        params![metadata("RUN9", "telepathy", 1)],
    )
    .unwrap();
    // Metadata that is not JSON at all.
    conn.execute(
        "INSERT INTO episodes VALUES ('RUN9-ep0001', 1.0, 1, 1, 0, ?1, NULL, NULL)",
        params![vec![0x80u8, 0x81, 0x82]],
    )
    .unwrap();
    let insert_step = |episode_id: Option<&str>,
                       observation: rusqlite::types::Value,
                       reward: rusqlite::types::Value,
                       frame_ref: &str| {
        conn.execute(
            "INSERT INTO steps (episode_id, step_index, action, observation, reward, terminated, \
             truncated, info, timestamp, frame_ref) VALUES (?1, 0, 1, ?2, ?3, 0, 0, 'not json', \
             NULL, ?4)",
            params![episode_id, observation, reward, frame_ref],
        )
        .unwrap();
    };
    use rusqlite::types::Value;
    // 1: no episode id at all -> skipped.
    insert_step(None, Value::Text("{}".into()), Value::Real(1.0), "");
    // 2: episode id off-pattern -> run from that episode's metadata; non-JSON text kept as
    //    a JSON string; NULL reward -> 0; info not JSON.
    insert_step(
        Some("weird-episode"),
        Value::Text("left".into()),
        Value::Null,
        "",
    );
    // 3: binary observation dropped; infinite reward -> 0; inline frame dropped.
    insert_step(
        Some("RUN9-ep0001"),
        Value::Blob(vec![0xff, 0xfe, 0x00]),
        Value::Text("inf".into()),
        "data:image/png;base64,AAAA",
    );
    // 4: an observation over the field limit -> skipped without being loaded.
    insert_step(
        Some("RUN9-ep0001"),
        Value::Text("x".repeat(MAX_FIELD_BYTES + 1)),
        Value::Real(1.0),
        "",
    );
    // 5: a clean row after all that.
    insert_step(
        Some("RUN9-ep0001"),
        Value::Text("[1]".into()),
        Value::Real(1.0),
        "",
    );
    drop(conn);

    let mut ts = TempStore::new();
    let report = import_legacy_with(
        &mut ts.store,
        &legacy,
        &ImportOptions {
            max_issues: 6,
            ..ImportOptions::default()
        },
    )
    .unwrap();
    assert_eq!((report.episodes.read, report.episodes.stored), (2, 2));
    assert_eq!((report.steps.read, report.steps.stored), (5, 3));
    assert_eq!(report.rows_skipped, 2);
    // Both episodes, steps 2, 3 and 5 (its info is not JSON).
    assert_eq!(report.rows_repaired, 5);
    assert_eq!(report.issues.len(), 6);
    assert!(report.issues_not_listed > 0);
    assert!(report
        .issues
        .iter()
        .any(|i| i.table == "episodes" && i.rowid == 1 && i.problem.contains("telepathy")));
    // Skipped rows still advanced the watermark: a second import reads nothing.
    assert_eq!(ts.store.watermark(&report.steps_producer_id).unwrap(), 5);
    let again = import_legacy(&mut ts.store, &legacy).unwrap();
    assert_eq!((again.steps.read, again.rows_skipped), (0, 0));

    let reader = ts.store.reader().unwrap();
    let episodes = reader
        .read_episodes_page(0, &Filter::default(), 10)
        .unwrap();
    let weird = &episodes[0];
    assert_eq!(
        (weird.run_id.as_str(), weird.control_mode.as_str()),
        ("RUN9", "unknown")
    );
    assert_eq!(
        (weird.total_reward, weird.steps, weird.timestamp),
        (0.0, 0, None)
    );
    assert_eq!(episodes[1].metadata_json, "");
    let steps = reader.read_steps_page(0, &Filter::default(), 10).unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0].run_id, "RUN9");
    assert_eq!(steps[0].observation_json, "\"left\"");
    assert_eq!(steps[0].reward, 0.0);
    assert_eq!(steps[0].info_json, r#"{"info":"not json"}"#);
    assert_eq!(steps[1].observation_json, "");
    assert_eq!(steps[1].frame_ref, "");
    assert_eq!(steps[2].observation_json, "[1]");
}

#[test]
fn files_that_cannot_be_imported_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut ts = TempStore::new();
    let err = import_legacy(&mut ts.store, &dir.path().join("missing.sqlite")).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let junk = dir.path().join("junk.sqlite");
    std::fs::write(&junk, b"not sqlite at all, just some text that is long enough..........................................................").unwrap();
    let err = import_legacy(&mut ts.store, &junk).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    let (other, conn) = legacy_file(dir.path(), "other.sqlite", "CREATE TABLE notes (x TEXT);");
    drop(conn);
    let err = import_legacy(&mut ts.store, &other).unwrap_err();
    assert!(matches!(err, StoreError::LegacyFormat { .. }), "{err}");
    assert_eq!(ts.store.reader().unwrap().last_seqs().unwrap().steps, 0);
}
