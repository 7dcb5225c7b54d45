//! The single store writer, on its own thread.
//!
//! SQLite allows one writer; rusqlite connections are blocking. So one OS thread owns the
//! [`Store`] and everything that writes goes through a bounded channel to it: ingest batches,
//! run-registry updates, checkpoints. Being the only writer also makes it the one place where
//! `seq` is assigned and the one place that publishes to the hub, in commit order, right after
//! each commit (never before: a live viewer must never see a record the store does not have).
//!
//! Group commit: when several appends are queued, the thread merges them (up to
//! [`MAX_GROUP_RECORDS`]) into one transaction and splits the report back per caller, so many
//! small shims cost one fsync-free commit instead of many.

use std::{collections::HashSet, thread};

use telemetry_core::pb::{Record, RunInfo};
use telemetry_hub::Hub;
use telemetry_store::{AppendOutcome, AppendReport, CheckpointStats, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Commands queued at most (each may hold a whole batch): the bound of the ingest pipeline.
pub const WRITER_QUEUE: usize = 64;
/// Most records merged into one transaction. It is also the largest batch the hub is handed at
/// once, so the daemon's subscriber queues are at least this long: a viewer that keeps up never
/// loses records to a large group.
pub const MAX_GROUP_RECORDS: usize = 4096;

/// A producer stamp that was rejected for good: `(producer_id, producer_seq)`.
pub type Rejected = (String, u64);

enum WriteCmd {
    Append {
        records: Vec<Record>,
        rejected: Vec<Rejected>,
        reply: oneshot::Sender<Result<AppendReport, String>>,
    },
    PutRun(Box<RunInfo>),
    Checkpoint(oneshot::Sender<Result<CheckpointStats, String>>),
    Shutdown(oneshot::Sender<()>),
}

/// The writer thread stopped (the daemon is shutting down or the store failed for good).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The writer thread is gone.
    #[error("the store writer has stopped")]
    Stopped,
    /// The store refused the write; nothing of it was stored.
    #[error("store write failed: {0}")]
    Store(String),
}

/// An append that is queued or being committed.
pub struct PendingAppend(oneshot::Receiver<Result<AppendReport, String>>);

impl PendingAppend {
    /// Waits for the commit (or its failure: then nothing of the append was stored).
    pub async fn wait(self) -> Result<AppendReport, WriteError> {
        self.0
            .await
            .map_err(|_| WriteError::Stopped)?
            .map_err(WriteError::Store)
    }
}

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteCmd>,
}

impl WriterHandle {
    /// Stores `records` (already validated) in one transaction with the rest of its group and
    /// publishes the stored ones to the hub. `rejected` stamps only advance watermarks.
    /// Waits for room in the queue (this is the ingest backpressure) and for the commit.
    pub async fn append(
        &self,
        records: Vec<Record>,
        rejected: Vec<Rejected>,
    ) -> Result<AppendReport, WriteError> {
        self.submit(records, rejected).await?.wait().await
    }

    /// Queues an append (waiting only for room in the queue) and returns a handle to wait for
    /// its commit. Appends are committed in the order they were submitted, so a stream can
    /// submit its next batch before the previous one is acknowledged without reordering a
    /// producer's records.
    pub async fn submit(
        &self,
        records: Vec<Record>,
        rejected: Vec<Rejected>,
    ) -> Result<PendingAppend, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Append {
                records,
                rejected,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(PendingAppend(rx))
    }

    /// Upserts a run of the run registry (fire and forget, in order with appends).
    pub async fn put_run(&self, info: RunInfo) -> Result<(), WriteError> {
        self.tx
            .send(WriteCmd::PutRun(Box::new(info)))
            .await
            .map_err(|_| WriteError::Stopped)
    }

    /// Runs a WAL checkpoint.
    pub async fn checkpoint(&self) -> Result<CheckpointStats, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Checkpoint(reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await
            .map_err(|_| WriteError::Stopped)?
            .map_err(WriteError::Store)
    }
}

impl WriterHandle {
    /// Stops the writer after everything queued before this call: a final checkpoint runs, and
    /// later writes fail with [`WriteError::Stopped`].
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteCmd::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the writer thread. It ends on [`WriterHandle::shutdown`] or when every handle is
/// dropped, after a final checkpoint; join the returned handle to wait for that.
pub fn spawn(
    store: Store,
    hub: Hub,
    metrics: Metrics,
) -> std::io::Result<(WriterHandle, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let join = thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(store, hub, metrics, rx))?;
    Ok((WriterHandle { tx }, join))
}

struct Pending {
    len: usize,
    producers: HashSet<String>,
    reply: oneshot::Sender<Result<AppendReport, String>>,
}

fn run(mut store: Store, hub: Hub, metrics: Metrics, mut rx: mpsc::Receiver<WriteCmd>) {
    let mut deferred: Option<WriteCmd> = None;
    loop {
        let cmd = match deferred.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => break,
            },
        };
        match cmd {
            WriteCmd::Shutdown(reply) => {
                final_checkpoint(&mut store);
                let _ = reply.send(());
                return;
            }
            WriteCmd::PutRun(info) => {
                if let Err(e) = store.put_run_info(&info) {
                    tracing::error!(run_id = %info.run_id, error = %e, "cannot persist run state");
                }
            }
            WriteCmd::Checkpoint(reply) => {
                let res = store.checkpoint();
                if let Ok(stats) = &res {
                    metrics.record_checkpoint(stats);
                }
                let _ = reply.send(res.map_err(|e| e.to_string()));
            }
            WriteCmd::Append {
                mut records,
                mut rejected,
                reply,
            } => {
                let mut group = vec![Pending {
                    len: records.len(),
                    producers: producers_of(&records, &rejected),
                    reply,
                }];
                // Merge whatever else is already queued, up to the group limit.
                while records.len() < MAX_GROUP_RECORDS {
                    match rx.try_recv() {
                        Ok(WriteCmd::Append {
                            records: more,
                            rejected: more_rejected,
                            reply,
                        }) => {
                            group.push(Pending {
                                len: more.len(),
                                producers: producers_of(&more, &more_rejected),
                                reply,
                            });
                            records.extend(more);
                            rejected.extend(more_rejected);
                        }
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut store, &hub, &metrics, records, &rejected, group);
            }
        }
    }
    final_checkpoint(&mut store);
}

fn final_checkpoint(store: &mut Store) {
    match store.checkpoint() {
        Ok(stats) => tracing::info!(?stats, "final checkpoint"),
        Err(e) => tracing::warn!(error = %e, "final checkpoint failed"),
    }
}

fn producers_of(records: &[Record], rejected: &[Rejected]) -> HashSet<String> {
    records
        .iter()
        .map(|r| r.producer().0)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .chain(rejected.iter().map(|(p, _)| p.clone()))
        .collect()
}

fn commit_group(
    store: &mut Store,
    hub: &Hub,
    metrics: &Metrics,
    mut records: Vec<Record>,
    rejected: &[Rejected],
    group: Vec<Pending>,
) {
    let started = std::time::Instant::now();
    let report = match append_with_retry(store, &mut records, rejected) {
        Ok(r) => r,
        Err(e) => {
            metrics.store_errors.inc();
            tracing::error!(error = %e, records = records.len(), "batch not stored (rolled back)");
            let msg = e.to_string();
            for p in group {
                let _ = p.reply.send(Err(msg.clone()));
            }
            return;
        }
    };
    metrics.observe_commit(report.stored, report.duplicates, started.elapsed());
    // Split the merged report back per caller.
    let mut outcomes = report.outcomes.into_iter();
    let mut to_publish = Vec::with_capacity(report.stored);
    let mut recs = records.into_iter();
    for p in group {
        let mine: Vec<AppendOutcome> = outcomes.by_ref().take(p.len).collect();
        let stored = mine
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
            .count();
        for (rec, outcome) in recs.by_ref().take(p.len).zip(&mine) {
            if matches!(outcome, AppendOutcome::Stored { .. }) {
                to_publish.push(rec);
            }
        }
        let sub = AppendReport {
            stored,
            duplicates: mine.len() - stored,
            outcomes: mine,
            watermarks: report
                .watermarks
                .iter()
                .filter(|(id, _)| p.producers.contains(id))
                .cloned()
                .collect(),
        };
        let _ = p.reply.send(Ok(sub));
    }
    hub.publish_batch(to_publish);
}

/// SQLITE_BUSY is retried a bounded number of times (the store already waits `busy_timeout`
/// inside each attempt); every other error is final for this batch.
fn append_with_retry(
    store: &mut Store,
    records: &mut [Record],
    rejected: &[Rejected],
) -> Result<AppendReport, StoreError> {
    let mut attempt = 0;
    loop {
        match store.append(records, rejected) {
            Err(StoreError::Busy) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(attempt, "store busy, retrying batch");
            }
            other => return other,
        }
    }
}
