//! WAL hygiene: a reader holding an old snapshot makes the WAL grow and checkpoints report
//! it; once the reader lets go, a checkpoint truncates the WAL to nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use telemetry_store::CheckpointMode;

fn wal_len(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn a_long_lived_reader_grows_the_wal_until_it_lets_go() {
    let mut ts = TempStore::with(|cfg| {
        // Only explicit checkpoints, so the test sees exactly what each one does.
        cfg.wal_autocheckpoint_pages = 0;
        cfg.checkpoint_warn_after = 3;
    });
    let path = ts.path();
    let mut batch = steps("r", "a", 100);
    ts.store.append(&mut batch, &[]).unwrap();
    let first = ts.store.checkpoint().unwrap();
    assert_eq!(first.mode, CheckpointMode::Truncate);
    assert_eq!((first.busy, first.log_frames), (0, 0));
    assert_eq!(wal_len(&path), 0);

    // A reader opens a read transaction and keeps it.
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 100);

    // The writer keeps writing and checkpointing: nothing can be copied back past the
    // reader's snapshot, so the WAL only grows.
    let mut sizes = Vec::new();
    for round in 1..=6u64 {
        let mut batch = steps("r", "a", 200);
        ts.store.append(&mut batch, &[]).unwrap();
        let stats = ts.store.checkpoint().unwrap();
        assert_eq!(stats.mode, CheckpointMode::Passive);
        assert!(stats.checkpointed_frames < stats.log_frames, "{stats:?}");
        assert_eq!(stats.consecutive_blocked, round);
        assert_eq!(stats.warned, round % 3 == 0, "{stats:?}");
        sizes.push(wal_len(&path));
    }
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    // The reader still sees its snapshot and nothing newer.
    let still: i64 = reader
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still, 100);

    // The reader lets go: one checkpoint copies everything back and truncates the WAL.
    reader.execute_batch("COMMIT").unwrap();
    let stats = ts.store.checkpoint().unwrap();
    assert_eq!(stats.mode, CheckpointMode::Truncate, "{stats:?}");
    assert_eq!(stats.busy, 0);
    assert_eq!(stats.consecutive_blocked, 0);
    assert_eq!(wal_len(&path), 0);
    let total: i64 = reader
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 1300);
}

#[test]
fn a_reader_on_a_fully_copied_wal_blocks_only_the_truncation() {
    let busy_timeout = std::time::Duration::from_secs(30);
    let mut ts = TempStore::with(|cfg| {
        cfg.wal_autocheckpoint_pages = 0;
        cfg.busy_timeout = busy_timeout;
    });
    let path = ts.path();
    let mut batch = steps("r", "a", 50);
    ts.store.append(&mut batch, &[]).unwrap();
    // A reader whose snapshot includes the WAL frames.
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
        .unwrap();
    let started = std::time::Instant::now();
    let stats = ts.store.checkpoint().unwrap();
    // Everything was copied back, but the WAL cannot be reset under the reader; the writer
    // did not sit in the busy handler waiting for it (that would take the whole timeout).
    assert_eq!(stats.mode, CheckpointMode::Passive);
    assert_eq!(stats.checkpointed_frames, stats.log_frames);
    assert_eq!(stats.busy, 1);
    assert_eq!(stats.consecutive_blocked, 1);
    assert!(started.elapsed() < busy_timeout);
    assert!(wal_len(&path) > 0);
    reader.execute_batch("COMMIT").unwrap();
    let stats = ts.store.checkpoint().unwrap();
    assert_eq!(stats.mode, CheckpointMode::Truncate);
    assert_eq!(wal_len(&path), 0);
}

#[test]
fn a_separate_checkpointer_keeps_the_wal_bounded_off_the_writers_path() {
    let mut ts = TempStore::with(|cfg| cfg.wal_autocheckpoint_pages = 0);
    let path = ts.path();
    let mut checkpointer = telemetry_store::Checkpointer::open(ts.store.config()).unwrap();
    let mut peak = 0;
    for _ in 0..5 {
        let mut batch = steps("r", "a", 500);
        ts.store.append(&mut batch, &[]).unwrap();
        let grown = wal_len(&path);
        assert!(
            grown > 0,
            "without autocheckpoint the writer's commits only append"
        );
        peak = peak.max(grown);
        let stats = checkpointer.checkpoint().unwrap();
        assert_eq!(stats.mode, CheckpointMode::Truncate, "{stats:?}");
        assert_eq!(
            wal_len(&path),
            0,
            "the checkpointer's connection truncated it"
        );
    }
    // The writer is unaffected: its rows are all there.
    let reader = ts.store.reader().unwrap();
    assert_eq!(reader.last_seqs().unwrap().steps, 2500);
    assert!(peak > 0);
    // A checkpointer needs an existing store.
    let missing = telemetry_store::StoreConfig::new(path.with_file_name("missing.sqlite"));
    assert!(matches!(
        telemetry_store::Checkpointer::open(&missing),
        Err(telemetry_store::StoreError::NotFound { .. })
    ));
}
