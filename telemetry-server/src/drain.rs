//! Draining the disk queues of workers the server spawned, so no tail is stranded.
//!
//! Each spawned worker gets `<var-dir>/queues/<run>` as its shim's queue dir. A worker that dies,
//! or is stopped, can leave records there that its shim never delivered; nothing would read them
//! again. The server reads them itself, in-process, through the same shim code a worker uses
//! (a [`telemetry_shim::Telemetry`] opened on that queue dir, which resends everything after the
//! durable watermark: exactly once), with the run's worker credential:
//!
//! - after a worker exits, before its run's completion is stored (so the tail comes before the
//!   `RunCompleted` that ends the live views);
//! - at start-up, for every queue dir left by a previous server.
//!
//! A queue still locked by a live process is left alone. A drained queue dir is removed. Each
//! drain is bounded by [`DRAIN_TIMEOUT`]; what is not delivered in time stays for the next
//! start-up. Counted in `gym_telemetry_queue_records_drained_total`.

use std::{path::Path, time::Duration};

use telemetry_shim::{FlushOutcome, ShimConfig, Telemetry};

use crate::{dispatch::DispatchConfig, metrics::Metrics};

/// Longest one queue's drain may take (a drain still running when the server stops holds the
/// shutdown at most this long: its shim waits out the timeout while reconnecting).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue dir of a spawned run.
pub fn queue_dir(var_dir: &Path, run_id: &str) -> std::path::PathBuf {
    var_dir.join("queues").join(run_id)
}

/// Drains one run's queue dir, if there is one. Returns the records delivered.
pub async fn drain_run(
    cfg: &DispatchConfig,
    var_dir: &Path,
    run_id: &str,
    metrics: &Metrics,
) -> u64 {
    let dir = queue_dir(var_dir, run_id);
    if !dir.is_dir() {
        return 0;
    }
    let mut shim = ShimConfig {
        endpoint: cfg.endpoint.clone(),
        queue_dir: Some(dir.clone()),
        run_id: Some(run_id.to_owned()),
        auth_token: cfg.credentials.worker_token(run_id),
        ..ShimConfig::default()
    };
    if let Some(tls) = &cfg.tls {
        shim.tls_ca_file = Some(tls.ca_file.clone());
        shim.tls_domain = tls.domain.clone();
    }
    let id = run_id.to_owned();
    let done = tokio::task::spawn_blocking(move || -> Result<(u64, bool), String> {
        let t = Telemetry::new(shim).map_err(|e| e.to_string())?;
        let pending = t.stats().queue_records;
        let report = t.close(DRAIN_TIMEOUT).map_err(|e| e.to_string())?;
        Ok((pending, report.outcome == FlushOutcome::Acked))
    })
    .await;
    match done {
        Ok(Ok((delivered, true))) => {
            if delivered > 0 {
                tracing::info!(run_id = %id, records = delivered, "delivered a spawned worker's queued tail");
            }
            metrics.queue_records_drained.inc_by(delivered);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a drained queue dir");
            }
            delivered
        }
        Ok(Ok((pending, false))) => {
            tracing::warn!(run_id = %id, pending, "a spawned worker's queue was not fully delivered; kept for the next start");
            0
        }
        Ok(Err(e)) => {
            // Most often: still locked by a live process.
            tracing::debug!(run_id = %id, error = %e, "queue not drained");
            0
        }
        Err(e) => {
            tracing::warn!(run_id = %id, error = %e, "queue drain task failed");
            0
        }
    }
}

/// Drains every queue dir under `<var_dir>/queues` (at start-up), one at a time.
pub async fn drain_all(cfg: &DispatchConfig, var_dir: &Path, metrics: &Metrics) {
    let Ok(entries) = std::fs::read_dir(var_dir.join("queues")) else {
        return;
    };
    let mut runs: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| telemetry_core::check_run_id(name).is_ok())
        .collect();
    runs.sort();
    for run_id in runs {
        drain_run(cfg, var_dir, &run_id, metrics).await;
    }
}
