//! The glue between the hub and the store: catch-up reads, warming after a restart, and the
//! metrics snapshot of both.
//!
//! The hub does not depend on the store (it sees stored records through its `CatchUpSource`
//! trait); this module implements that trait over the backend's shared reader.

use std::sync::Arc;

use telemetry_core::pb::{Record, RunCompleted, RunState};
use telemetry_hub::{CatchUpError, CatchUpQuery, CatchUpSource, Hub, StreamKind};
use telemetry_store::{BackendReader, Filter, StoreError};

use crate::{metrics::Metrics, runs::Registry};

/// Catch-up reads from the store.
pub struct StoreCatchUp {
    reader: Arc<dyn BackendReader>,
}

impl StoreCatchUp {
    /// A source reading through `reader`.
    pub fn new(reader: Arc<dyn BackendReader>) -> Self {
        StoreCatchUp { reader }
    }
}

/// Records read from the store at a time while filling a byte-bounded catch-up page: the most
/// held beyond the page's byte budget (each record is at most 1 MiB by validation).
pub const CATCH_UP_SUB_PAGE: usize = 32;

impl StoreCatchUp {
    fn read(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, CatchUpError> {
        let filter = Filter {
            run_id: query.run_id.clone(),
            agent_id: query.agent_id.clone(),
            control_mode: query.control_mode,
        };
        let r = &self.reader;
        let page = match query.stream {
            StreamKind::Steps => r
                .steps_page(since_seq, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Episodes => r
                .episodes_page(since_seq, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Lifecycle => r.events_page(since_seq, query.run_id.as_deref(), limit),
            StreamKind::Scalars => r
                .scalars_page(since_seq, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
        };
        page.map_err(CatchUpError::read)
    }
}

impl CatchUpSource for StoreCatchUp {
    fn read_page(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, CatchUpError> {
        self.read(query, since_seq, limit)
    }

    /// Reads sub-pages of [`CATCH_UP_SUB_PAGE`] records until `limit` records or `max_bytes`
    /// (encoded) are reached, so a catch-up of large records holds at most about `max_bytes`
    /// plus one sub-page.
    fn read_page_bounded(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Record>, bool), CatchUpError> {
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = since_seq;
        while out.len() < limit {
            let want = CATCH_UP_SUB_PAGE.min(limit - out.len());
            let sub = self.read(query, cursor, want)?;
            let short = sub.len() < want;
            if let Some(last) = sub.last() {
                cursor = last.seq_id();
            }
            bytes += sub.iter().map(prost::Message::encoded_len).sum::<usize>();
            out.extend(sub);
            if short {
                return Ok((out, false));
            }
            if bytes >= max_bytes {
                let cut = out.len() < limit;
                return Ok((out, cut));
            }
        }
        Ok((out, false))
    }

    fn run_completion(&self, run_id: &str) -> Result<Option<RunCompleted>, CatchUpError> {
        self.reader
            .run_completion(run_id)
            .map_err(CatchUpError::read)
    }
}

/// After a restart, fills the hub's recent-past buffers of runs that have not completed
/// (workers may still be sending), so late joiners get context without a store read.
pub fn warm_hub(reader: &dyn BackendReader, hub: &Hub, per_run: usize) -> Result<(), StoreError> {
    let mut warmed = 0usize;
    for run in reader.list_runs()? {
        if run.completion.is_some() {
            continue;
        }
        let mut records: Vec<Record> = reader
            .events_page(0, Some(&run.run_id), 64)?
            .into_iter()
            .collect();
        records.extend(
            reader
                .run_agent_episodes(&run.run_id, None, per_run / 4)?
                .into_iter()
                .map(Record::from),
        );
        records.extend(
            reader
                .tail_steps(&run.run_id, per_run)?
                .into_iter()
                .map(Record::from),
        );
        if !records.is_empty() {
            warmed += 1;
            hub.warm(&run.run_id, records);
        }
    }
    if warmed > 0 {
        tracing::info!(runs = warmed, "warmed the hub from the store");
    }
    Ok(())
}

/// Refreshes the metrics that are snapshots of the hub and the registry.
pub fn refresh_metrics(metrics: &Metrics, hub: &Hub, registry: &Registry) {
    metrics
        .writer_queue_depth
        .set(i64::try_from(registry.writer().queued()).unwrap_or(i64::MAX));
    let snap = hub.metrics();
    metrics.dropped.clear();
    metrics.subscriber_queue_depth.clear();
    metrics.subscriber_lag_records.clear();
    for run in &snap.runs {
        for (kind, n) in [
            ("steps", run.dropped_steps_total),
            ("episodes", run.dropped_episodes_total),
            ("lifecycle", run.dropped_lifecycle_total),
        ] {
            if n > 0 {
                metrics
                    .dropped
                    .get_or_create(&vec![
                        ("stage".into(), "hub_subscriber".into()),
                        ("run_id".into(), run.run_id.clone()),
                        ("kind".into(), kind.into()),
                    ])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        if run.ring_evicted_total > 0 {
            metrics
                .dropped
                .get_or_create(&vec![
                    ("stage".into(), "hub_ring".into()),
                    ("run_id".into(), run.run_id.clone()),
                    ("kind".into(), "any".into()),
                ])
                .set(i64::try_from(run.ring_evicted_total).unwrap_or(i64::MAX));
        }
    }
    for sub in &snap.subscribers {
        let run = sub.run_id.clone().unwrap_or_else(|| "*".into());
        let labels = vec![("run_id".to_owned(), run)];
        let depth = metrics.subscriber_queue_depth.get_or_create(&labels);
        depth.set(depth.get() + i64::try_from(sub.queue_depth).unwrap_or(i64::MAX));
        let lag = metrics.subscriber_lag_records.get_or_create(&labels);
        lag.set(
            lag.get()
                .max(i64::try_from(sub.lag_records).unwrap_or(i64::MAX)),
        );
    }
    metrics.runs_by_state.clear();
    for info in registry.snapshot() {
        let state = RunState::try_from(info.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("RUN_STATE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        metrics
            .runs_by_state
            .get_or_create(&vec![("state".into(), state)])
            .inc();
    }
}
