//! Opening the file: refuse what we must not touch, then configure the connection.
//!
//! The daemon may be pointed at the wrong file (the predecessor's `telemetry.sqlite`, a log
//! file, a store written by a newer build). Before anything is written, an existing file is
//! inspected through a read-only connection: only a store of ours (or an empty database) goes
//! on to the read-write open, the WAL switch and the migrations. Everything else is a typed
//! error and the file's bytes are left exactly as they were.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, OpenFlags};

use crate::{
    error::{classify, io_error},
    identity::{check_writable_identity, identity},
    migrate,
    schema::SCHEMA_VERSION,
    Durability, StoreConfig, StoreError,
};

fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|e| classify(path, e))?;
    Ok(conn)
}

/// Opens the writer's connection: checks an existing file read-only first, creates the
/// directory when needed, switches to WAL, applies the pragmas and migrates.
pub(crate) fn open_writer(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let path = cfg.path.as_path();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::other("is a directory, not a store file"),
            })
        }
        Ok(_) => {
            let probe = open_read_only(path, cfg.busy_timeout)?;
            check_writable_identity(path, &identity(&probe, path)?)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
            }
        }
        Err(e) => return Err(io_error(path, e)),
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    configure_writer(&conn, cfg).map_err(|e| classify(path, e))?;
    migrate::migrate(&mut conn, path)?;
    Ok(conn)
}

/// The writer's pragmas (also used by the benchmark's plain baseline, which must match).
pub(crate) fn configure_writer(conn: &Connection, cfg: &StoreConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(cfg.busy_timeout)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "cannot switch to WAL mode (journal_mode is {mode})"
            )),
        ));
    }
    let sync = match cfg.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "wal_autocheckpoint", cfg.wal_autocheckpoint_pages)?;
    let limit = i64::try_from(cfg.journal_size_limit).unwrap_or(i64::MAX);
    conn.pragma_update(None, "journal_size_limit", limit)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Opens a reader's connection on an existing store at the current schema version.
pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::other("is a directory, not a store file"),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(io_error(path, e)),
    }
    let conn = open_read_only(path, busy_timeout)?;
    let id = identity(&conn, path)?;
    check_writable_identity(path, &id)?;
    if id.version < SCHEMA_VERSION {
        return Err(StoreError::OutdatedVersion {
            path: path.to_owned(),
            found: id.version,
            supported: SCHEMA_VERSION,
        });
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::APPLICATION_ID;

    fn pragma(conn: &Connection, name: &str) -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .expect("pragma")
    }

    #[test]
    fn the_writer_runs_in_wal_with_the_configured_durability() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (durability, synchronous) in [(Durability::Normal, "1"), (Durability::Full, "2")] {
            let mut cfg = StoreConfig::new(dir.path().join("s.sqlite"));
            cfg.durability = durability;
            cfg.wal_autocheckpoint_pages = 123;
            let conn = open_writer(&cfg).expect("open");
            assert_eq!(pragma(&conn, "journal_mode"), "wal");
            assert_eq!(pragma(&conn, "synchronous"), synchronous);
            assert_eq!(pragma(&conn, "wal_autocheckpoint"), "123");
            assert_eq!(pragma(&conn, "application_id"), APPLICATION_ID.to_string());
            assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION.to_string());
        }
    }
}
