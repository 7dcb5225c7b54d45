//! The store's typed errors.
//!
//! A daemon that cannot open its store must say exactly why (wrong file, corrupt file,
//! read-only directory, a newer build's store) and must not "repair" a file it does not
//! understand. Every open-time error names the file; SQLite's own errors are classified into
//! these variants where the distinction matters to the caller (`Busy` is retried, `ReadOnly`
//! and `Corrupt` need an operator) and passed through as [`StoreError::Sqlite`] otherwise.

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not an SQLite database. It was not modified.
    #[error("{path} is not an SQLite database (the file was left untouched)")]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is an SQLite database of some other application (for example the
    /// predecessor's `telemetry.sqlite`). It was not modified.
    #[error(
        "{path} is an SQLite database but not a gym-telemetry store (tables: {tables}); \
         the file was left untouched (a predecessor telemetry.sqlite is imported with \
         legacy_import, not opened)"
    )]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
        /// Its table names, comma separated.
        tables: String,
    },
    /// SQLite reports the file as malformed.
    #[error("telemetry store {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },
    /// The store was written by a newer gym-telemetry. It was not modified.
    #[error(
        "telemetry store {path} has schema version {found}, newer than version {supported} \
         supported by this build; upgrade gym-telemetry (the file was left untouched)"
    )]
    NewerVersion {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`crate::SCHEMA_VERSION`].
        supported: i64,
    },
    /// A reader found a store that the writer has not migrated yet.
    #[error(
        "telemetry store {path} has schema version {found}, older than version {supported}; \
         open it once with the writer (the daemon) to migrate it"
    )]
    OutdatedVersion {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`crate::SCHEMA_VERSION`].
        supported: i64,
    },
    /// The file or its directory cannot be written.
    #[error(
        "telemetry store {path} cannot be written: {detail} (the writer needs write access to \
         the file and to its directory, for the -wal and -shm files)"
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A reader was asked to open a store that does not exist.
    #[error("telemetry store {path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// Another connection held the database lock through `busy_timeout`. Nothing of the
    /// failed call was stored; it is worth another try ([`StoreError::is_retryable`]).
    #[error("the telemetry store is busy: another connection held its lock through busy_timeout")]
    Busy,
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A legacy file that cannot be imported (see [`crate::legacy_import`]).
    #[error("{path} is not a usable legacy telemetry file: {detail}")]
    LegacyFormat {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Writing an export (dump) to its output failed.
    #[error("writing the output failed: {0}")]
    Output(#[source] std::io::Error),
    /// A stored row could not be turned back into a record.
    #[error("cannot decode stored {what} at seq {seq}: {detail}")]
    Decode {
        /// Which kind of row.
        what: &'static str,
        /// Its seq.
        seq: u64,
        /// Why.
        detail: String,
    },
    /// A record of an append had no payload (an empty `oneof`); the batch was rolled back.
    #[error("record {index} of the batch has no payload")]
    EmptyRecord {
        /// Its index in the batch.
        index: usize,
    },
    /// Any other SQLite error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// An error of a database-server backend (PostgreSQL): the connection, the server or a
    /// statement. `retryable` when the same call may succeed unchanged (a lost connection, a
    /// serialization failure or deadlock, the server starting up or shutting down).
    #[error("{engine} store error{}: {detail}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Server {
        /// The engine (`"postgres"`).
        engine: &'static str,
        /// Its error code (SQLSTATE for PostgreSQL), when the server sent one.
        code: Option<String>,
        /// Whether another attempt may succeed.
        retryable: bool,
        /// What failed (never a password).
        detail: String,
    },
}

impl StoreError {
    /// Whether the same call may succeed if made again unchanged (a lock held by someone
    /// else); every other error needs the data, the disk or an operator to change first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Busy
                | StoreError::Server {
                    retryable: true,
                    ..
                }
        )
    }
}

/// True for errors that mean "someone else holds the lock, try again later".
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Maps an SQLite error on the store at `path` to the variant a caller can act on.
pub(crate) fn classify(path: &Path, e: rusqlite::Error) -> StoreError {
    let detail = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotADatabase {
            path: path.to_owned(),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            StoreError::ReadOnly {
                path: path.to_owned(),
                detail,
            }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
        _ => StoreError::Sqlite(e),
    }
}

/// Maps a file-system error on `path`, telling permission problems apart.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => StoreError::ReadOnly {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => StoreError::Io {
            path: path.to_owned(),
            source: e,
        },
    }
}
