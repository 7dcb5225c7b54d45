//! Periodic work while serving (heartbeat enforcement, metrics snapshots, a health line) and
//! stopping the workers at shutdown.

use std::time::{Duration, Instant};

use telemetry_hub::Hub;
use tokio_util::sync::CancellationToken;

use crate::{config::ServerConfig, metrics::Metrics, runs::Registry};

pub(crate) async fn stop_workers(registry: &Registry, grace: Duration) {
    let live = registry.live_processes();
    if live.is_empty() {
        return;
    }
    tracing::info!(count = live.len(), "stopping workers");
    for run_id in &live {
        registry.request_stop(run_id, Some("daemon shut down".into()));
    }
    // Bounded wait for their exit handlers (SIGKILL follows SIGTERM after `grace`).
    let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(2);
    while !registry.live_processes().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Periodic work: heartbeat enforcement, metrics snapshots, a health line.
pub(crate) async fn housekeeping(
    cfg: ServerConfig,
    registry: Registry,
    hub: Hub,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut health = tokio::time::interval(cfg.health_interval);
    let beat_every = (cfg.heartbeat_timeout / 4).max(Duration::from_millis(100));
    let mut beats = tokio::time::interval(beat_every);
    for t in [&mut health, &mut beats] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut last_ingested = metrics.ingested.get();
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = beats.tick() => {
                registry.enforce_heartbeats(Instant::now(), cfg.heartbeat_timeout).await;
            }
            _ = health.tick() => {
                crate::catchup::refresh_metrics(&metrics, &hub, &registry);
                let now_ingested = metrics.ingested.get();
                let secs = last_at.elapsed().as_secs_f64().max(1e-9);
                let rate = (now_ingested - last_ingested) as f64 / secs;
                last_ingested = now_ingested;
                last_at = Instant::now();
                let runs = registry.snapshot();
                let active = runs.iter().filter(|r| !crate::runs::is_final(r.state)).count();
                tracing::info!(
                    ingest_per_s = format!("{rate:.0}"),
                    stored_total = now_ingested,
                    runs = runs.len(),
                    active,
                    wal_frames = metrics.wal_log_frames.get(),
                    "health"
                );
            }
        }
    }
}
