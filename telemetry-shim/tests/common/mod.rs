//! Helpers shared by the shim's integration tests: record builders, a fast-retrying
//! configuration, and the fixture paths. The fake daemon itself is
//! `telemetry_shim::fake_ingest` (feature `fake-ingest`), reusable by other crates.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use telemetry_shim::{
    pb::{Record, RunStep},
    ShimConfig,
};

/// Upper bound of every wait in these tests (they normally finish in milliseconds).
pub const WAIT: Duration = Duration::from_secs(20);

/// A small step with a fixed timestamp (so every step encodes to the same size).
pub fn step(i: u64) -> RunStep {
    RunStep {
        run_id: "run-test".into(),
        episode_index: 0,
        step_index: 1000 + (i % 1000),
        action_json: "1".into(),
        observation_json: r#"{"x":[0.25,0.5]}"#.into(),
        reward: 0.5,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_795_914_168,
            nanos: 88_378_923,
        }),
        ..Default::default()
    }
}

/// A configuration that retries fast and lingers little, pointing at `endpoint`.
pub fn config(endpoint: &str, queue_dir: Option<&Path>) -> ShimConfig {
    ShimConfig {
        endpoint: endpoint.to_owned(),
        queue_dir: queue_dir.map(Path::to_path_buf),
        batch_linger: Duration::from_millis(5),
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        drop_flush_timeout: Duration::from_secs(2),
        ..ShimConfig::default()
    }
}

/// The producer seqs of records, in order.
pub fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.producer().1).collect()
}

/// `/work/shared/fixtures` (the `shared/` folder beside the repository).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// A temporary directory on tmpfs when the machine has one (`/dev/shm`): tests of queue *logic*
/// then do not wait for the disk's fsyncs. Falls back to the default temporary directory.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("gym-telemetry-test-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// Flushes until the daemon has acknowledged everything, within `WAIT`. One flush keeps
/// reconnecting until its timeout, so one normally suffices; the loop only bounds the test.
pub fn flush_until_acked(shim: &telemetry_shim::Telemetry) -> telemetry_shim::FlushReport {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let report = shim.flush(WAIT).expect("flush");
        if report.outcome == telemetry_shim::FlushOutcome::Acked
            || std::time::Instant::now() >= deadline
        {
            return report;
        }
    }
}
