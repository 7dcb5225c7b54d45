//! Bad input at open: each a clear typed error, and the file left exactly as it was.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use telemetry_store::{Store, StoreConfig, StoreError, StoreReader, SCHEMA_VERSION};

fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(StoreConfig::new(path))
}

fn siblings(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A store with some rows, closed (WAL checkpointed into the main file).
fn closed_store(dir: &Path) -> PathBuf {
    let path = dir.join("telemetry.sqlite");
    let mut store = open(&path).unwrap();
    let mut batch = steps("r", "a", 50);
    store.append(&mut batch, &[]).unwrap();
    drop(store);
    path
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.sqlite");
    let junk: Vec<u8> = b"{\"type\":\"step\"}\n".repeat(400);
    std::fs::write(&path, &junk).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    assert!(err.to_string().contains("telemetry.sqlite"), "{err}");
    assert_eq!(file_bytes(&path), junk);
    assert_eq!(siblings(&path), ["telemetry.sqlite"]);
    let err = StoreReader::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
}

#[test]
fn a_corrupt_store_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let mut bytes = file_bytes(&path);
    // Keep the 100-byte header, smash the schema b-tree page header behind it.
    for b in &mut bytes[100..140] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert_eq!(file_bytes(&path), bytes);
}

#[test]
fn a_newer_store_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let before = file_bytes(&path);
    let err = open(&path).unwrap_err();
    match &err {
        StoreError::NewerVersion {
            found, supported, ..
        } => assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
        other => panic!("expected NewerVersion, got {other}"),
    }
    assert!(err.to_string().contains("upgrade"), "{err}");
    let err = StoreReader::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NewerVersion { .. }), "{err}");
    assert_eq!(file_bytes(&path), before);
}

#[test]
fn a_foreign_database_such_as_the_predecessors_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE steps (episode_id TEXT, step_index INTEGER);
             INSERT INTO steps VALUES ('RUN-ep0000', 0);",
        )
        .unwrap();
    }
    let before = file_bytes(&path);
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err}");
    assert!(err.to_string().contains("legacy_import"), "{err}");
    assert_eq!(file_bytes(&path), before);
}

/// A directory this process cannot create files in. Root ignores permission bits, so then
/// use a directory of a read-only kernel file system instead.
fn unwritable_dir(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp.join("locked");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join("probe");
    if std::fs::write(&probe, b"x").is_err() {
        return dir;
    }
    std::fs::remove_file(&probe).unwrap();
    PathBuf::from("/sys")
}

#[test]
fn a_read_only_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = unwritable_dir(tmp.path());
    let path = dir.join("telemetry.sqlite");
    let err = Store::open(StoreConfig::new(&path)).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("cannot be written"), "{err}");
    assert!(!path.exists());
    // The same for a store directory that would have to be created inside it.
    let nested = dir.join("var").join("telemetry.sqlite");
    let err = Store::open(StoreConfig::new(&nested)).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
}

#[test]
fn readers_need_an_existing_migrated_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.sqlite");
    let err = StoreReader::open(&missing).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(!missing.exists(), "a reader never creates the file");
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    let err = StoreReader::open(&empty).unwrap_err();
    assert!(
        matches!(err, StoreError::OutdatedVersion { found: 0, .. }),
        "{err}"
    );
    let err = Store::open(StoreConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
}

#[test]
fn a_closed_store_reopens_for_reading_without_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_store(dir.path());
    let reader = StoreReader::open(&path).unwrap();
    assert_eq!(reader.last_seqs().unwrap().steps, 50);
    let store = open(&path).unwrap();
    assert!(store.quick_check().unwrap().is_empty());
}
