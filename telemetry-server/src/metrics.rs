//! Prometheus metrics of the server, served as text on a separate loopback port.
//!
//! Counters on the hot path (ingest, rejects, commits) are updated inline: they are atomics.
//! Everything that is a snapshot of another component (hub queues and drops, WAL checkpoint
//! state, runs by status) is refreshed by the periodic health task, so a scrape never takes a
//! lock on the ingest path. Label sets per run are bounded by the hub's run limit and are cleared
//! and rebuilt at each refresh, so finished runs do not accumulate series forever.
//!
//! The frame store's counters (`gym_telemetry_frames_*`) are read at scrape time by a
//! collector from the store's atomics (`FrameStore::counters`), so they are exact when the scrape
//! answers and never wait for an append; its per-run bytes are the [`MAX_FRAME_RUN_SERIES`]
//! largest runs.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};
use telemetry_frames::FrameStore;
use telemetry_store::CheckpointStats;

/// Runs whose frame bytes `/metrics` shows one by one (the largest); the rest are in the total.
pub const MAX_FRAME_RUN_SERIES: usize = 32;

type Labels = Vec<(String, String)>;

/// Every metric of the daemon. Cloning shares the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Records stored.
    pub ingested: Counter,
    /// Records that were already stored (resends).
    pub duplicates: Counter,
    /// Batches acknowledged.
    pub batches: Counter,
    /// Records rejected by validation, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Ingest messages refused before any record of them could be read, by `reason`
    /// (`too_large`: over the gRPC message limit; `undecodable`: not an `IngestBatch`).
    pub rejected_messages: Family<Labels, Counter>,
    /// Store transactions that failed and rolled back.
    pub store_errors: Counter,
    /// Retries of retryable store errors (the pipeline's retry policy).
    pub store_retries: Counter,
    /// Batches refused because an earlier batch of their producer failed (the fence).
    pub fenced_batches: Counter,
    /// Producers fenced now.
    pub fenced_producers: Gauge,
    /// Commands waiting in the store writer's queue.
    pub writer_queue_depth: Gauge,
    /// Committed groups waiting for the hub publisher thread.
    pub publish_queue_depth: Gauge,
    /// Records the server delivered from spawned workers' queue dirs.
    pub queue_records_drained: Counter,
    /// RPCs refused for a missing or wrong token.
    pub unauthenticated: Counter,
    /// Seconds per store commit (group).
    pub commit_seconds: Histogram,
    /// Records dropped per stage (`stage` = hub_subscriber | hub_ring | viewer ...), per run.
    pub dropped: Family<Labels, Gauge>,
    /// Subscriber queue depth and lag, per run.
    pub subscriber_queue_depth: Family<Labels, Gauge>,
    /// Subscriber lag in records, per run.
    pub subscriber_lag_records: Family<Labels, Gauge>,
    /// Runs in the registry by state.
    pub runs_by_state: Family<Labels, Gauge>,
    /// Last checkpoint: WAL frames in the log.
    pub wal_log_frames: Gauge,
    /// Last checkpoint: frames checkpointed.
    pub wal_checkpointed_frames: Gauge,
    /// Last checkpoint was blocked by readers (1) or not (0).
    pub wal_checkpoint_busy: Gauge,
    /// Checkpoints blocked in a row.
    pub wal_checkpoints_blocked_in_a_row: Gauge,
    /// Streams refused by a per-client limit, by `reason` (`per_connection`, `watch_runs`).
    pub subscriptions_refused: Family<Labels, Counter>,
    /// Appends refused because a producer's first seq jumped too far past its watermark.
    pub seq_jumps_refused: Counter,
    /// Run submissions refused, by `reason` (`pending_queue_full`, `too_large`).
    pub submissions_refused: Family<Labels, Counter>,
    /// Submitted runs waiting for a worker slot.
    pub dispatch_pending: Gauge,
    /// Workers the daemon started that are running now.
    pub dispatch_running: Gauge,
    /// Commits of the predecessor's Publish streams, by `cause` (`records`, `bytes`, `pause`,
    /// `end`).
    pub legacy_publish_flushes: Family<Labels, Counter>,
    /// Following a shared store (follow.rs), by `event`: `hints` received, `coalesced` (hints
    /// merged into a read already due), `reconnects` of the feed, `reads` (catch-up rounds),
    /// `records` published to the hub, `errors` (failed rounds, retried).
    pub store_follow: Family<Labels, Gauge>,
    /// Owner leases of a shared store, by `event`: `renewals`, `renew_errors`, `lapsed`
    /// (renewals that found our lease had lapsed), `takeover_rounds`, `takeover_errors`,
    /// `taken_runs` (runs of lapsed owners taken over), `beats_stored` (`Heartbeat`s for other
    /// daemons' runs stored for their owners), `beats_seen` (runs of ours kept alive by such a
    /// stored beat), `beat_errors`.
    pub store_leases: Family<Labels, Counter>,
    /// `artifact` events of kind `policy`, by `outcome` (`registered`, `refused`).
    pub policy_artifacts: Family<Labels, Counter>,
    /// Frames refused by the Frames service before the store: another run's frames on a
    /// worker credential (`gym_telemetry_frames_rejected_total{reason="wrong_run"}`).
    pub frames_wrong_run: Counter,
    /// The frame store the collector reads (set once the store is open).
    frame_store: Arc<OnceLock<Arc<FrameStore>>>,
}

/// Reads the frame store's counters at each scrape.
#[derive(Debug)]
struct FramesCollector {
    store: Arc<OnceLock<Arc<FrameStore>>>,
    wrong_run: Counter,
}

fn const_counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn const_gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for FramesCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        let c = store.counters();
        let e = &mut enc;
        const_counter(
            e,
            "frames_stored",
            "Frames written to the frame store",
            c.stored,
        )?;
        const_counter(
            e,
            "frames_duplicates",
            "Frames the store already held (resends after a lost ack), not stored again",
            c.duplicates,
        )?;
        {
            let mut m = e.encode_descriptor(
                "frames_rejected",
                "Frames refused, by reason (validation in the store; wrong_run: another run's frame on a worker credential)",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &c.rejected_by_reason {
                ConstCounter::new(*n).encode(m.encode_family(&[("reason", *reason)])?)?;
            }
            let wrong = self.wrong_run.get();
            if wrong > 0 {
                ConstCounter::new(wrong).encode(m.encode_family(&[("reason", "wrong_run")])?)?;
            }
        }
        const_counter(
            e,
            "frames_over_limit",
            "Frames refused because retention could not make room (pinned or own episodes fill the budget)",
            c.over_limit,
        )?;
        const_counter(
            e,
            "frames_evicted_episodes",
            "Episodes evicted by retention (oldest unpinned first)",
            c.evicted_episodes,
        )?;
        const_counter(
            e,
            "frames_evicted_frames",
            "Frames evicted by retention",
            c.evicted_frames,
        )?;
        const_counter(
            e,
            "frames_evicted_bytes",
            "Frame bytes evicted by retention",
            c.evicted_bytes,
        )?;
        const_counter(
            e,
            "frames_corrupt",
            "Frame reads whose bytes failed their checksum (answered as missing)",
            c.corrupt,
        )?;
        const_counter(
            e,
            "frames_missing_lookups",
            "Frame lookups answered missing (not found, evicted or corrupt)",
            c.missing,
        )?;
        const_gauge(
            e,
            "frames_held",
            "Frames held in the frame store",
            c.held_frames,
        )?;
        const_gauge(
            e,
            "frames_held_bytes",
            "Frame bytes held, counted against frames_max_total_bytes",
            c.held_bytes,
        )?;
        const_gauge(
            e,
            "frames_max_total_bytes",
            "Frame bytes the store keeps in total (--frames-max-total-bytes)",
            c.max_total_bytes,
        )?;
        const_gauge(
            e,
            "frames_max_run_bytes",
            "Frame bytes the store keeps per run (--frames-max-run-bytes)",
            c.max_run_bytes,
        )?;
        const_gauge(
            e,
            "frames_runs",
            "Runs holding frames",
            c.held_bytes_by_run.len() as u64,
        )?;
        let mut m = e.encode_descriptor(
            "frames_run_held_bytes",
            "Frame bytes held per run, counted against frames_max_run_bytes (the largest runs only)",
            None,
            MetricType::Gauge,
        )?;
        for (run, b) in c.held_bytes_by_run.iter().take(MAX_FRAME_RUN_SERIES) {
            ConstGauge::new(*b).encode(m.encode_family(&[("run", run.as_str())])?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counts `n` lease events of `event` (`store_leases`; the events are listed there).
    pub fn lease_event(&self, event: &str, n: u64) {
        self.store_leases
            .get_or_create(&vec![("event".to_owned(), event.to_owned())])
            .inc_by(n);
    }

    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut reg = Registry::with_prefix("gym_telemetry");
        let mut m = Metrics {
            registry: Arc::new(Registry::default()),
            ingested: Counter::default(),
            duplicates: Counter::default(),
            batches: Counter::default(),
            rejected: Family::default(),
            rejected_messages: Family::default(),
            store_errors: Counter::default(),
            store_retries: Counter::default(),
            fenced_batches: Counter::default(),
            fenced_producers: Gauge::default(),
            writer_queue_depth: Gauge::default(),
            publish_queue_depth: Gauge::default(),
            queue_records_drained: Counter::default(),
            unauthenticated: Counter::default(),
            commit_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            dropped: Family::default(),
            subscriber_queue_depth: Family::default(),
            subscriber_lag_records: Family::default(),
            runs_by_state: Family::default(),
            wal_log_frames: Gauge::default(),
            wal_checkpointed_frames: Gauge::default(),
            wal_checkpoint_busy: Gauge::default(),
            wal_checkpoints_blocked_in_a_row: Gauge::default(),
            subscriptions_refused: Family::default(),
            seq_jumps_refused: Counter::default(),
            submissions_refused: Family::default(),
            dispatch_pending: Gauge::default(),
            dispatch_running: Gauge::default(),
            legacy_publish_flushes: Family::default(),
            store_follow: Family::default(),
            store_leases: Family::default(),
            policy_artifacts: Family::default(),
            frames_wrong_run: Counter::default(),
            frame_store: Arc::new(OnceLock::new()),
        };
        reg.register("ingested_records", "Records stored", m.ingested.clone());
        reg.register(
            "duplicate_records",
            "Resent records recognised and not stored again",
            m.duplicates.clone(),
        );
        reg.register("ingest_batches", "Batches acknowledged", m.batches.clone());
        reg.register(
            "rejected_records",
            "Records rejected by validation, by reason",
            m.rejected.clone(),
        );
        reg.register(
            "rejected_messages",
            "Ingest messages refused before decoding (over the size limit, undecodable), by reason",
            m.rejected_messages.clone(),
        );
        reg.register(
            "store_errors",
            "Store transactions rolled back",
            m.store_errors.clone(),
        );
        reg.register(
            "store_retries",
            "Store writes retried after a retryable error (a lock held elsewhere)",
            m.store_retries.clone(),
        );
        reg.register(
            "fenced_batches",
            "Batches refused until their producer resends an earlier failed batch",
            m.fenced_batches.clone(),
        );
        reg.register(
            "fenced_producers",
            "Producers that must resend a failed batch before later ones commit",
            m.fenced_producers.clone(),
        );
        reg.register(
            "queue_records_drained",
            "Records the server delivered from spawned workers' queue dirs",
            m.queue_records_drained.clone(),
        );
        reg.register(
            "writer_queue_depth",
            "Commands waiting in the store writer's queue (publishers wait when it is full)",
            m.writer_queue_depth.clone(),
        );
        reg.register(
            "publish_queue_depth",
            "Committed groups waiting to be published to live subscribers (the writer waits when \
             8 are)",
            m.publish_queue_depth.clone(),
        );
        reg.register(
            "unauthenticated_requests",
            "RPCs refused for a missing or wrong bearer token",
            m.unauthenticated.clone(),
        );
        reg.register(
            "commit_seconds",
            "Seconds per store commit",
            m.commit_seconds.clone(),
        );
        reg.register(
            "dropped_records",
            "Records dropped, by stage, run and kind",
            m.dropped.clone(),
        );
        reg.register(
            "subscriber_queue_depth",
            "Records waiting in subscriber queues, by run",
            m.subscriber_queue_depth.clone(),
        );
        reg.register(
            "subscriber_lag_records",
            "Largest subscriber lag in records, by run",
            m.subscriber_lag_records.clone(),
        );
        reg.register(
            "runs",
            "Runs in the registry, by state",
            m.runs_by_state.clone(),
        );
        reg.register(
            "wal_log_frames",
            "WAL frames at the last checkpoint",
            m.wal_log_frames.clone(),
        );
        reg.register(
            "wal_checkpointed_frames",
            "Frames checkpointed at the last checkpoint",
            m.wal_checkpointed_frames.clone(),
        );
        reg.register(
            "wal_checkpoint_busy",
            "1 when the last checkpoint was blocked by readers",
            m.wal_checkpoint_busy.clone(),
        );
        reg.register(
            "wal_checkpoints_blocked_in_a_row",
            "Checkpoints blocked in a row",
            m.wal_checkpoints_blocked_in_a_row.clone(),
        );
        reg.register(
            "subscriptions_refused",
            "Streams refused by a per-client limit, by reason",
            m.subscriptions_refused.clone(),
        );
        reg.register(
            "seq_jumps_refused",
            "Appends refused: a producer's first seq was too far past its durable watermark",
            m.seq_jumps_refused.clone(),
        );
        reg.register(
            "submissions_refused",
            "Run submissions refused, by reason",
            m.submissions_refused.clone(),
        );
        reg.register(
            "dispatch_pending_runs",
            "Submitted runs waiting for a worker slot",
            m.dispatch_pending.clone(),
        );
        reg.register(
            "dispatch_running_workers",
            "Workers started by the daemon that are running",
            m.dispatch_running.clone(),
        );
        reg.register(
            "legacy_publish_flushes",
            "Commits of the predecessor's Publish streams, by what triggered them",
            m.legacy_publish_flushes.clone(),
        );
        reg.register(
            "store_follow",
            "Following a store shared with other daemons, by event (hints, coalesced, reconnects, reads, records, errors)",
            m.store_follow.clone(),
        );
        reg.register(
            "store_leases",
            "Owner leases of a shared store, by event (renewals, renew_errors, lapsed, takeover_rounds, takeover_errors, taken_runs, beats_stored, beats_seen, beat_errors)",
            m.store_leases.clone(),
        );
        reg.register(
            "policy_artifacts",
            "Policy artifact events registered in the inventory or refused, by outcome",
            m.policy_artifacts.clone(),
        );
        reg.register_collector(Box::new(FramesCollector {
            store: Arc::clone(&m.frame_store),
            wrong_run: m.frames_wrong_run.clone(),
        }));
        m.registry = Arc::new(reg);
        m
    }

    /// Exposes `store`'s counters (`gym_telemetry_frames_*`). The first store attached stays.
    pub fn attach_frame_store(&self, store: Arc<FrameStore>) {
        let _ = self.frame_store.set(store);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one rejected record.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts `n` records rejected for the same reason (a batch refused whole).
    pub fn reject_n(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc_by(n);
    }

    /// Counts one ingest message refused before it could be decoded.
    pub fn reject_message(&self, reason: &str) {
        self.rejected_messages
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts one stream refused by a per-client limit.
    pub fn refuse_subscription(&self, reason: &str) {
        self.subscriptions_refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts one policy artifact event by outcome.
    pub fn policy_artifact(&self, outcome: &str) {
        self.policy_artifacts
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    /// Counts one refused run submission.
    pub fn refuse_submission(&self, reason: &str) {
        self.submissions_refused
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts one commit of a legacy Publish stream.
    pub fn legacy_flush(&self, cause: &str) {
        self.legacy_publish_flushes
            .get_or_create(&vec![("cause".to_owned(), cause.to_owned())])
            .inc();
    }

    /// Records one commit.
    pub fn observe_commit(&self, stored: usize, duplicates: usize, took: Duration) {
        self.ingested.inc_by(stored as u64);
        self.duplicates.inc_by(duplicates as u64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Records the result of a checkpoint.
    pub fn record_checkpoint(&self, s: &CheckpointStats) {
        self.wal_log_frames.set(s.log_frames);
        self.wal_checkpointed_frames.set(s.checkpointed_frames);
        self.wal_checkpoint_busy.set(i64::from(s.busy != 0));
        self.wal_checkpoints_blocked_in_a_row
            .set(i64::try_from(s.consecutive_blocked).unwrap_or(i64::MAX));
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. With `auth` (a listener off
/// loopback), each scrape must carry `authorization: Bearer <operator token>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    auth: Option<crate::auth::AuthInterceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::StatusCode, response::IntoResponse};
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            let auth = auth.clone();
            async move {
                if let Some(a) = &auth {
                    let header = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if let Err(e) = a.check_header(header) {
                        return (StatusCode::UNAUTHORIZED, e.to_string()).into_response();
                    }
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
