//! What an existing file is, read before anything is written to it.
//!
//! Both the open path (a read-only probe of an existing file) and the migration (inside its
//! write transaction) must refuse a foreign or newer file by the same rule, so the rule lives
//! here, below both of them: `open` and `migrate` import this module, never each other's
//! internals.

use std::path::Path;

use rusqlite::Connection;

use crate::{
    error::classify,
    schema::{APPLICATION_ID, SCHEMA_VERSION},
    StoreError,
};

/// What a read-only look at an existing file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `PRAGMA user_version`.
    pub version: i64,
    /// `PRAGMA application_id`.
    pub application_id: i64,
    /// Names of the user tables.
    pub tables: Vec<String>,
}

/// Reads the identity of the database behind `conn`.
pub(crate) fn identity(conn: &Connection, path: &Path) -> Result<Identity, StoreError> {
    let read = || -> rusqlite::Result<Identity> {
        let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let application_id = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name",
        )?;
        let tables = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(Identity {
            version,
            application_id,
            tables,
        })
    };
    read().map_err(|e| classify(path, e))
}

/// Refuses files that are not a store of ours at a version this build can open for writing.
pub(crate) fn check_writable_identity(path: &Path, id: &Identity) -> Result<(), StoreError> {
    if id.application_id != APPLICATION_ID && !(id.version == 0 && id.tables.is_empty()) {
        return Err(StoreError::ForeignDatabase {
            path: path.to_owned(),
            tables: id.tables.join(", "),
        });
    }
    if id.version > SCHEMA_VERSION {
        return Err(StoreError::NewerVersion {
            path: path.to_owned(),
            found: id.version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}
