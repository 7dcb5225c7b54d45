//! The commit pipeline: the one thread that writes the store, and the order it keeps.
//!
//! A store has one writer and its calls block, so one OS thread owns the [`BackendWriter`] and
//! everything that writes goes to it through a bounded channel ([`WRITER_QUEUE`] commands):
//! ingest batches, run-registry updates. Being the only writer makes it the one place where
//! `seq` is assigned and the one place that publishes to the hub, in commit order, right after
//! each commit (never before: a live viewer must never see a record the store does not have).
//!
//! Guarantees, each tested in `tests/pipeline_*.rs`:
//!
//! 1. **Commit, then ack, then publish.** A caller's [`PendingAppend`] resolves only after its
//!    records committed; the hub gets them after that, in commit order.
//! 2. **Group commit.** Appends already queued are merged (up to [`MAX_GROUP_RECORDS`]) into one
//!    transaction, and the report is split back per caller.
//! 3. **No producer overtakes its own failure** ([`fence`]). When an append fails, each of its
//!    producers is fenced: a later append of that producer commits only if it resends from its
//!    durable watermark (its first seq ≤ watermark + 1) or comes on a stream opened after the
//!    failure (a reconnect, which resends from the last ack by protocol). Anything else fails
//!    with [`WriteError::Fenced`], which is retryable. Without this, a later in-flight batch
//!    could commit and move the watermark past the failed records, and their resend would be
//!    taken for duplicates: silent loss.
//! 4. **One retry policy** ([`RetryPolicy`]): a retryable store error is retried here, a bounded
//!    number of times; backends make one attempt per call.
//!
//! The publish itself runs on a second thread (`hub-publisher`), fed in commit order through a
//! bounded channel ([`PUBLISH_QUEUE`] groups; full policy: the writer waits, which backs up into
//! the writer queue and from there into ingest). The writer thread is the pipeline's bottleneck
//! (one SQLite connection): wrapping each record for the hub, pushing it into its run's ring and
//! freeing the record the ring lets go of are work it no longer does between commits.

mod commit;
mod fence;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use telemetry_core::pb::{Record, RunInfo};
use telemetry_hub::Hub;
use telemetry_store::{AppendReport, BackendWriter};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Commands queued at most (each may hold a whole batch): the bound of the ingest pipeline.
/// Full policy: the caller waits for room (this is the ingest backpressure).
pub const WRITER_QUEUE: usize = 64;
/// Most records merged into one transaction. It is also the largest batch the hub is handed at
/// once, so the server's subscriber queues are at least this long: a viewer that keeps up never
/// loses records to a large group.
pub const MAX_GROUP_RECORDS: usize = 4096;
/// Committed groups waiting for the publisher thread at most (each at most
/// [`MAX_GROUP_RECORDS`] records). Full policy: the writer waits for room before its next
/// commit. Exported as `gym_telemetry_publish_queue_depth`.
pub const PUBLISH_QUEUE: usize = 8;
/// Producers fenced at most; past it the oldest fence is dropped (and counted in
/// `gym_telemetry_fences_evicted`).
pub const MAX_FENCES: usize = 65_536;

/// A producer stamp that was rejected for good: `(producer_id, producer_seq)`.
pub type Rejected = (String, u64);

/// How a retryable store error (a lock held elsewhere) is retried: the only retry of a write
/// in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Pause after the first failed attempt; it doubles after each further one.
    pub first_pause: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, 10 ms then 20 ms apart: with SQLite's 5 s `busy_timeout` inside each
    /// attempt, one batch holds the writer for at most about 15 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            first_pause: Duration::from_millis(10),
        }
    }
}

/// Where an append comes from, for the fence: the epoch of the stream that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    /// The stream's epoch from [`Pipeline::open_stream`]; 0 for a single call (never counts as
    /// a reconnect).
    pub epoch: u64,
}

enum WriteCmd {
    Append {
        records: Vec<Record>,
        rejected: Vec<Rejected>,
        origin: Origin,
        reply: oneshot::Sender<Result<AppendReport, WriteError>>,
    },
    PutRun(Box<RunInfo>),
    Shutdown(oneshot::Sender<()>),
}

/// Why an append was not stored. Nothing of it was stored in any case.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// The writer thread is gone (the server is shutting down).
    #[error("the store writer has stopped")]
    Stopped,
    /// The store refused the write (after the retry policy, when retryable).
    #[error("store write failed: {0}")]
    Store(String),
    /// An earlier append of this producer failed and this one does not resend from its
    /// watermark: resend from `durable_seq + 1`.
    #[error(
        "producer {producer_id} must resend from seq {} first: an earlier batch of it was not \
         stored",
        durable_seq + 1
    )]
    Fenced {
        /// The producer.
        producer_id: String,
        /// Its durable watermark.
        durable_seq: u64,
    },
    /// The append's seqs for this producer (`first_seq..=last_seq`) reach more than
    /// [`telemetry_core::MAX_SEQ_JUMP`] past the producer's durable watermark (0 when it has
    /// none): storing them would move the watermark so far that every later record of the
    /// producer would count as a duplicate. Nothing of the append was stored; resending it can
    /// never succeed.
    #[error(
        "producer {producer_id}: seqs {first_seq}..={last_seq} reach more than {} past its \
         durable watermark {durable_seq}",
        telemetry_core::MAX_SEQ_JUMP
    )]
    SeqJump {
        /// The producer.
        producer_id: String,
        /// Its durable watermark.
        durable_seq: u64,
        /// The first (lowest) seq of the append for that producer.
        first_seq: u64,
        /// The highest seq of the append for that producer (the one checked).
        last_seq: u64,
    },
}

impl WriteError {
    /// Whether sending the same records again later may succeed (every case but bad data).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, WriteError::SeqJump { .. })
    }
}

/// An append that is queued or being committed.
pub struct PendingAppend(oneshot::Receiver<Result<AppendReport, WriteError>>);

impl PendingAppend {
    /// Waits for the commit (or its failure: then nothing of the append was stored).
    pub async fn wait(self) -> Result<AppendReport, WriteError> {
        self.0.await.map_err(|_| WriteError::Stopped)?
    }
}

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<WriteCmd>,
    epochs: Arc<AtomicU64>,
}

impl Pipeline {
    /// Stores `records` (already validated) in one transaction with the rest of its group and
    /// publishes the stored ones to the hub. `rejected` stamps only advance watermarks.
    /// Waits for room in the queue and for the commit.
    pub async fn append(
        &self,
        records: Vec<Record>,
        rejected: Vec<Rejected>,
    ) -> Result<AppendReport, WriteError> {
        self.submit(records, rejected, Origin::default())
            .await?
            .wait()
            .await
    }

    /// Queues an append (waiting only for room in the queue) and returns a handle to wait for
    /// its commit. Appends are committed in the order they were submitted, so a stream can
    /// submit its next batch before the previous one is acknowledged without reordering a
    /// producer's records.
    pub async fn submit(
        &self,
        records: Vec<Record>,
        rejected: Vec<Rejected>,
        origin: Origin,
    ) -> Result<PendingAppend, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Append {
                records,
                rejected,
                origin,
                reply,
            })
            .await
            .map_err(|_| WriteError::Stopped)?;
        Ok(PendingAppend(rx))
    }

    /// Commands waiting in the writer's queue (at most [`WRITER_QUEUE`]).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A new stream's origin: its epoch is later than every failure so far.
    pub fn open_stream(&self) -> Origin {
        Origin {
            epoch: self.epochs.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// Upserts a run of the run registry (fire and forget, in order with appends).
    pub async fn put_run(&self, info: RunInfo) -> Result<(), WriteError> {
        self.tx
            .send(WriteCmd::PutRun(Box::new(info)))
            .await
            .map_err(|_| WriteError::Stopped)
    }

    /// Stops the writer after everything queued before this call: a final checkpoint runs, and
    /// later writes fail with [`WriteError::Stopped`].
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(WriteCmd::Shutdown(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the writer thread. It ends on [`Pipeline::shutdown`] or when every handle is dropped,
/// after a final checkpoint; join the returned handle to wait for that.
///
/// With `follower` (a store shared with other daemons), a commit that stored records calls it
/// instead of publishing them: the follower publishes every daemon's records in seq order (see
/// follow.rs).
pub fn spawn(
    writer: Box<dyn BackendWriter>,
    hub: Hub,
    follower: Option<telemetry_store::ChangeWake>,
    metrics: Metrics,
    retry: RetryPolicy,
) -> std::io::Result<(Pipeline, thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let epochs = Arc::new(AtomicU64::new(0));
    let (publish_tx, publish_rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(PUBLISH_QUEUE);
    let publisher = {
        let depth = metrics.publish_queue_depth.clone();
        thread::Builder::new()
            .name("hub-publisher".into())
            .spawn(move || {
                // Ends when the writer thread drops its sender, after publishing what was sent.
                for records in publish_rx {
                    depth.dec();
                    hub.publish_batch(records);
                }
            })?
    };
    let mut thread_state =
        commit::Committer::new(writer, publish_tx, follower, metrics, retry, epochs.clone());
    let join = thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            run(&mut thread_state, rx);
            // Structural shutdown: the publisher drains every committed group, then ends.
            drop(thread_state);
            if publisher.join().is_err() {
                tracing::error!("the hub publisher thread panicked");
            }
        })?;
    Ok((Pipeline { tx, epochs }, join))
}

fn run(c: &mut commit::Committer, mut rx: mpsc::Receiver<WriteCmd>) {
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
                c.final_checkpoint();
                let _ = reply.send(());
                return;
            }
            WriteCmd::PutRun(info) => c.put_run(&info),
            WriteCmd::Append {
                records,
                rejected,
                origin,
                reply,
            } => {
                let mut group = commit::Group::default();
                c.admit(&mut group, records, rejected, origin, reply);
                // Merge whatever else is already queued, up to the group limit.
                while group.len() < MAX_GROUP_RECORDS {
                    match rx.try_recv() {
                        Ok(WriteCmd::Append {
                            records,
                            rejected,
                            origin,
                            reply,
                        }) => c.admit(&mut group, records, rejected, origin, reply),
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                c.commit(group);
            }
        }
    }
    c.final_checkpoint();
}
