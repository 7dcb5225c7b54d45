//! PostgreSQL and pool errors as [`StoreError`]s.
//!
//! The one distinction a caller acts on is whether the same call may succeed unchanged: a lost
//! or refused connection, a serialization failure or deadlock (`40001`, `40P01`), a lock or
//! statement timeout, the server starting up or shutting down, too many connections. Those are
//! retryable; constraint violations, bad data and schema problems are not.

use deadpool_postgres::PoolError;
use telemetry_store::StoreError;
use tokio_postgres::error::SqlState;

/// SQLSTATE classes and codes worth another attempt.
fn retryable_code(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") // connection exception
        || c.starts_with("40") // transaction rollback: serialization failure, deadlock
        || c.starts_with("53") // insufficient resources (too many connections, disk full)
        || c.starts_with("57P") // admin/crash shutdown, cannot connect now
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
}

/// Maps a tokio-postgres error to a [`StoreError::Server`], telling retryable ones apart.
pub fn classify(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let mut detail = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            detail.push_str(&format!(" ({d})"));
        }
        return StoreError::Server {
            engine: "postgres",
            code: Some(db.code().code().to_owned()),
            retryable: retryable_code(db.code()),
            detail,
        };
    }
    // No server error: the connection (closed, I/O, timeout) or the client side (a value that
    // does not convert, which is a bug or bad data, not worth a retry).
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let retryable = e.is_closed() || io || e.to_string().contains("timed out");
    // The cause (a TLS or I/O error) says what to fix: keep the chain.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        source = s.source();
    }
    StoreError::Server {
        engine: "postgres",
        code: e.code().map(|c| c.code().to_owned()),
        retryable,
        detail,
    }
}

/// Maps a pool error (no connection within the timeout, or the connect failed).
pub(crate) fn pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => classify(e),
        PoolError::Timeout(kind) => StoreError::Server {
            engine: "postgres",
            code: None,
            retryable: true,
            detail: format!("no database connection in time ({kind:?})"),
        },
        other => StoreError::Server {
            engine: "postgres",
            code: None,
            retryable: false,
            detail: format!("connection pool: {other}"),
        },
    }
}

/// A stored row that does not decode.
pub(crate) fn decode(what: &'static str, seq: u64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Decode {
        what,
        seq,
        detail: e.to_string(),
    }
}
