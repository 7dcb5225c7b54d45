//! The SQLite backend against the conformance suite every backend must pass.

use std::sync::Arc;

use telemetry_store::{Backend, SqliteBackend, StoreConfig};

/// A fresh store in its own temporary directory, kept for the life of the test process (the
/// directory is leaked on purpose: the backend only holds its path).
fn fresh() -> Arc<dyn Backend> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    Arc::new(SqliteBackend::new(StoreConfig::in_var_dir(&dir)))
}

telemetry_store::conformance_tests!(fresh);
