//! For tests (this crate's and the server's): the test database, and a fresh store in it.
//!
//! Tests read the URL of a throwaway cluster from `GYM_TELEMETRY_TEST_PG` (start one with
//! `scripts/pg-test-cluster.sh start`). Unset outside CI, a test prints `SKIPPED` and the reason
//! and passes; unset in CI (`CI=true`) it fails, so a CI that lost its database cannot go
//! green by skipping.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{PgBackend, PgConfig};

/// The variable holding the test database's URL.
pub const TEST_URL_VAR: &str = "GYM_TELEMETRY_TEST_PG";

/// The test database's URL; `None` (after printing why) when the test should skip.
///
/// # Panics
///
/// When the variable is unset in CI (`CI=true`).
pub fn test_url(test: &str) -> Option<String> {
    match std::env::var(TEST_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{TEST_URL_VAR} is unset in CI: .ci/run must start the test cluster \
             (scripts/pg-test-cluster.sh start) and export its URL"
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: {TEST_URL_VAR} is unset (export \
                 {TEST_URL_VAR}=\"$(scripts/pg-test-cluster.sh start)\" to run it)"
            );
            None
        }
    }
}

/// A schema name no other test (of this or another process) uses.
pub fn unique_schema(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test database's config on a new, empty schema (created by the first writer).
///
/// # Panics
///
/// When the URL does not parse (a broken test set-up).
pub fn fresh_config(url: &str, prefix: &str) -> PgConfig {
    let mut pg: tokio_postgres::Config = match PgConfig::from_url(url) {
        Ok(cfg) => cfg.pg,
        Err(e) => panic!("{TEST_URL_VAR} does not parse: {e}"),
    };
    // from_url added our search_path to the options; start again from the plain URL's.
    pg.options("");
    match PgConfig::new(pg, &unique_schema(prefix)) {
        Ok(cfg) => cfg,
        Err(e) => panic!("test schema: {e}"),
    }
}

/// A backend on a new, empty schema of the test database, or `None` when tests skip.
///
/// # Panics
///
/// As [`test_url`] and [`fresh_config`].
pub fn fresh_backend(test: &str) -> Option<PgBackend> {
    let url = test_url(test)?;
    match PgBackend::new(fresh_config(&url, "t")) {
        Ok(b) => Some(b),
        Err(e) => panic!("backend: {e}"),
    }
}

/// Ends every session that is `LISTEN`ing on `schema`'s channel (the change feeds of the
/// backends on it), as a network cut or a server restart would; returns how many. The feeds
/// must reconnect and catch up.
///
/// # Panics
///
/// When the test database cannot be reached.
pub fn terminate_listeners(url: &str, schema: &str) -> u64 {
    let url = url.to_owned();
    let listen = format!("LISTEN {schema}");
    let run = async move {
        let (client, conn) = match url.parse::<tokio_postgres::Config>() {
            Ok(c) => match c.connect(tokio_postgres::NoTls).await {
                Ok(x) => x,
                Err(e) => panic!("connect: {e}"),
            },
            Err(e) => panic!("url: {e}"),
        };
        let driver = tokio::spawn(conn);
        let rows = match client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1 \
                 AND pid <> pg_backend_pid()",
                &[&listen],
            )
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("terminate: {e}"),
        };
        drop(client);
        let _ = driver.await;
        rows.len() as u64
    };
    // A test may call this from inside its own runtime: run ours on a thread of its own.
    // (made and dropped on that thread).
    let on_thread = || match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run),
        Err(e) => panic!("runtime: {e}"),
    };
    std::thread::scope(|s| match s.spawn(on_thread).join() {
        Ok(n) => n,
        Err(p) => std::panic::resume_unwind(p),
    })
}
