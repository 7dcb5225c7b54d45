//! Publishing into the server: validation, the commit through the pipeline, the ack.
//!
//! Each batch is validated record by record (an invalid record is rejected on its own, with its
//! index and reason in the ack, and counted; the valid records of the same batch are stored, and
//! the rejected record's stamp still advances its producer's watermark), appended through the
//! pipeline, and acknowledged only after the commit, with each producer's durable watermark. A
//! resent batch is recognised by the watermark and stored once. Batches larger than
//! [`IngestLimits::max_batch_records`] are refused whole, before any work.
//!
//! [`Publisher`] is the public, in-process entry; the gRPC `Ingest` service (`ingest.rs`) is a
//! thin layer over it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use telemetry_core::{
    pb::{record::Kind, IngestAck, IngestBatch, ProducerWatermark, Record, RejectedRecord},
    validate,
};
use telemetry_store::AppendOutcome;
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    auth::Principal,
    ingest_limits::IngestLimits,
    metrics::Metrics,
    owners::Owners,
    pipeline::{Origin, PendingAppend, Pipeline, WriteError},
    runs::Registry,
};

/// Batches of one stream queued with the writer and not yet acknowledged. A stream that sends
/// ahead (the shim keeps several batches in flight) has them committed together (group
/// commit) instead of one transaction and one round trip at a time.
pub const PUBLISH_WINDOW: usize = 8;

/// A pipelined publish stream (see [`Publisher::open_stream`]).
pub struct PublishStream {
    batches: mpsc::Sender<IngestBatch>,
    acks: mpsc::Receiver<Result<IngestAck, PublishError>>,
}

impl PublishStream {
    /// Queues a batch (waits while [`PUBLISH_WINDOW`] batches are unacknowledged).
    pub async fn send(&self, batch: IngestBatch) -> Result<(), PublishError> {
        self.batches
            .send(batch)
            .await
            .map_err(|_| PublishError::Closed)
    }

    /// The next ack, in send order; `None` once the stream has ended (after its error, or
    /// after [`PublishStream::finish`] and the last ack).
    pub async fn next_ack(&mut self) -> Option<Result<IngestAck, PublishError>> {
        self.acks.recv().await
    }

    /// No more batches will be sent; acks of those sent still arrive.
    pub fn finish(self) -> mpsc::Receiver<Result<IngestAck, PublishError>> {
        self.acks
    }

    /// The two halves, for a forwarding task.
    pub(crate) fn into_parts(
        self,
    ) -> (
        mpsc::Sender<IngestBatch>,
        mpsc::Receiver<Result<IngestAck, PublishError>>,
    ) {
        (self.batches, self.acks)
    }
}

/// Publishes records into a running server in-process: the same validation, commit, ack and
/// publish as the gRPC `Ingest` service (which is a thin layer over this), with no network.
///
/// Get one from [`ServerHandle::publisher`](crate::ServerHandle::publisher). Cloning is cheap.
#[derive(Clone)]
pub struct Publisher {
    owners: Arc<Mutex<Owners>>,
    pipeline: Pipeline,
    registry: Registry,
    metrics: Metrics,
    limits: IngestLimits,
    /// Registers the files of `artifact` events of kind `policy` (none: not registered).
    policies: Option<Arc<crate::policies::PolicyContext>>,
}

/// Why a batch was not acknowledged. Nothing of it was stored, except where said.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// The batch holds more records than [`IngestLimits::max_batch_records`]; refused whole.
    #[error("batch {batch_id} holds {records} records, the limit is {limit}")]
    TooLarge {
        /// The batch.
        batch_id: u64,
        /// Records in it.
        records: usize,
        /// The limit.
        limit: usize,
    },
    /// The store did not take the batch; resend it (from the last acknowledged watermark).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The stream was closed before the batch was taken.
    #[error("the publish stream is closed")]
    Closed,
}

impl PublishError {
    /// Whether resending (from the producer's last acknowledged watermark) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PublishError::TooLarge { .. } => false,
            PublishError::Write(e) => e.is_retryable(),
            PublishError::Closed => true,
        }
    }
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Status {
        match &e {
            PublishError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
            // Bad data: resending the same records can never succeed.
            PublishError::Write(WriteError::SeqJump { .. }) => {
                Status::invalid_argument(e.to_string())
            }
            // UNAVAILABLE: the standard retryable code; the shim resends from its last ack.
            PublishError::Write(_) | PublishError::Closed => Status::unavailable(e.to_string()),
        }
    }
}

impl Publisher {
    pub(crate) fn new(
        pipeline: Pipeline,
        registry: Registry,
        metrics: Metrics,
        limits: IngestLimits,
    ) -> Self {
        Publisher {
            owners: Arc::default(),
            pipeline,
            registry,
            metrics,
            limits,
            policies: None,
        }
    }

    /// Registers the file of every stored `artifact` event of kind `policy` in `ctx`.
    pub(crate) fn with_policies(mut self, ctx: Arc<crate::policies::PolicyContext>) -> Self {
        self.policies = Some(ctx);
        self
    }

    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Validates, stores and acknowledges one batch (a unary call: it never counts as a new
    /// stream for the producer fence).
    pub async fn publish(&self, batch: IngestBatch) -> Result<IngestAck, PublishError> {
        self.publish_as(&Principal::Operator, batch).await
    }

    /// [`Publisher::publish`] on behalf of a credential: records of runs it may not write, and
    /// records under producer ids another credential owns, are rejected in the ack.
    pub(crate) async fn publish_as(
        &self,
        principal: &Principal,
        batch: IngestBatch,
    ) -> Result<IngestAck, PublishError> {
        let mut prepared = self.prepare(batch, principal)?;
        let pending = self.submit(&mut prepared, Origin::default()).await?;
        self.finish(prepared, pending).await
    }

    /// Opens a pipelined stream, as a gRPC `Publish` stream is: batches sent on it are
    /// committed in order, up to [`PUBLISH_WINDOW`] queued ahead of their acks. The first error
    /// ends the stream (every later batch of it is refused): open a new one and resend from the
    /// last acknowledged watermark.
    pub fn open_stream(&self) -> PublishStream {
        self.open_stream_as(Principal::Operator)
    }

    /// [`Publisher::open_stream`] on behalf of a credential.
    pub(crate) fn open_stream_as(&self, principal: Principal) -> PublishStream {
        let origin = self.pipeline.open_stream();
        let (batch_tx, mut batch_rx) = mpsc::channel::<IngestBatch>(PUBLISH_WINDOW);
        let (ack_tx, ack_rx) = mpsc::channel(PUBLISH_WINDOW);
        // Reader: validates and queues batches in arrival order (the writer commits them in
        // that order, so a producer's records are never reordered). Acker: waits for each
        // commit in the same order and answers. The window between them bounds what one
        // stream may have queued.
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<Result<(Prepared, PendingAppend), PublishError>>(PUBLISH_WINDOW);
        let reader = self.clone();
        tokio::spawn(async move {
            while let Some(batch) = batch_rx.recv().await {
                let queued = match reader.prepare(batch, &principal) {
                    Ok(mut p) => reader
                        .submit(&mut p, origin)
                        .await
                        .map(|pending| (p, pending)),
                    Err(e) => Err(e),
                };
                let failed = queued.is_err();
                if pending_tx.send(queued).await.is_err() || failed {
                    break;
                }
            }
        });
        let acker = self.clone();
        tokio::spawn(async move {
            while let Some(queued) = pending_rx.recv().await {
                let ack = match queued {
                    Ok((prepared, pending)) => acker.finish(prepared, pending).await,
                    Err(e) => Err(e),
                };
                let failed = ack.is_err();
                if ack_tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        PublishStream {
            batches: batch_tx,
            acks: ack_rx,
        }
    }

    /// Validates a batch record by record: the valid records to store, the rejected ones with
    /// their reasons, and the facts the run registry needs. Refuses an oversized batch whole.
    fn prepare(&self, batch: IngestBatch, principal: &Principal) -> Result<Prepared, PublishError> {
        let IngestBatch { batch_id, records } = batch;
        if records.len() > self.limits.max_batch_records {
            self.metrics
                .reject_n("batch_too_large", records.len() as u64);
            return Err(PublishError::TooLarge {
                batch_id,
                records: records.len(),
                limit: self.limits.max_batch_records,
            });
        }
        let mut valid: Vec<Record> = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        let mut rejected_stamps = Vec::new();
        let owner = principal.id();
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = SeqsInBatch::default();
        for (index, mut record) in records.into_iter().enumerate() {
            let checked = validate::normalize(&mut record, &self.limits.record);
            let denied = if checked.is_ok() {
                access(principal, &owner, &mut owners, &record).or_else(|| seen.backwards(&record))
            } else {
                None
            };
            if let Some((label, reason)) = denied {
                self.metrics.reject(label);
                let (pid, pseq) = record.producer();
                // A record of the wrong run is the sender's own mistake: its stamp advances its
                // own producer's watermark (so its flush ends, as for any rejected record). A
                // record under another credential's producer id must not move that watermark,
                // and a seq that went backwards is below a stamp of this batch already.
                if label == "wrong_run" && !pid.is_empty() {
                    rejected_stamps.push((pid.to_owned(), pseq));
                }
                tracing::debug!(batch_id, index, %reason, "record refused for its credential");
                rejected.push(RejectedRecord {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    reason,
                    producer_id: pid.to_owned(),
                    producer_seq: pseq,
                });
                continue;
            }
            match checked {
                Ok(()) => valid.push(record),
                Err(e) => {
                    self.metrics.reject(e.label());
                    let (pid, pseq) = record.producer();
                    if !pid.is_empty() {
                        rejected_stamps.push((pid.to_owned(), pseq));
                    }
                    tracing::debug!(batch_id, index, reason = %e, "record rejected");
                    rejected.push(RejectedRecord {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        reason: e.to_string(),
                        producer_id: pid.to_owned(),
                        producer_seq: pseq,
                    });
                }
            }
        }
        drop(owners);
        const EMPTY_MODE: String = String::new();
        let mut runs: HashMap<String, (String, String)> = HashMap::new();
        let mut completions = Vec::new();
        let mut policy_artifacts = Vec::new();
        for r in &valid {
            let (run, agent, mode) = match &r.kind {
                Some(Kind::Step(s)) => (&s.run_id, &s.agent_id, &s.control_mode),
                Some(Kind::Episode(e)) => (&e.run_id, &e.agent_id, &e.control_mode),
                Some(Kind::RunStarted(s)) => (&s.run_id, &s.agent_id, &s.control_mode),
                // A run fed only by scalars (a learner process, a TensorBoard import) is a run
                // too, and its scalars keep it alive like steps do.
                Some(Kind::Scalar(s)) => (&s.run_id, &s.agent_id, &EMPTY_MODE),
                Some(Kind::RunCompleted(c)) => {
                    completions.push(c.clone());
                    continue;
                }
                Some(Kind::Artifact(a)) if a.kind == "policy" => {
                    policy_artifacts.push(a.clone());
                    continue;
                }
                _ => continue,
            };
            runs.entry(run.clone())
                .or_insert_with(|| (agent.clone(), mode.clone()));
        }
        Ok(Prepared {
            batch_id,
            valid,
            rejected,
            rejected_stamps,
            runs,
            completions,
            policy_artifacts,
        })
    }

    /// Hands the batch's valid records to the writer (queued in call order).
    async fn submit(
        &self,
        prepared: &mut Prepared,
        origin: Origin,
    ) -> Result<PendingAppend, PublishError> {
        Ok(self
            .pipeline
            .submit(
                std::mem::take(&mut prepared.valid),
                std::mem::take(&mut prepared.rejected_stamps),
                origin,
            )
            .await?)
    }

    /// Waits for the commit and builds the ack; updates the run registry.
    async fn finish(
        &self,
        prepared: Prepared,
        pending: PendingAppend,
    ) -> Result<IngestAck, PublishError> {
        let report = pending.wait().await?;
        self.metrics.batches.inc();
        for (run_id, (agent, mode)) in prepared.runs {
            self.registry
                .observe_telemetry(&run_id, &agent, &mode)
                .await;
        }
        if report
            .outcomes
            .iter()
            .any(|o| matches!(o, AppendOutcome::Stored { .. }))
        {
            for c in &prepared.completions {
                self.registry.set_completion_recorded(&c.run_id);
                self.registry.observe_completion(c).await;
            }
            // After the commit, before the ack: a worker that saw its ack finds the policy
            // listed. (A resend registers the same bytes again, which changes nothing.)
            if let Some(ctx) = &self.policies {
                for a in &prepared.policy_artifacts {
                    let game = self
                        .registry
                        .get(&a.run_id)
                        .map(|i| i.game_id)
                        .unwrap_or_default();
                    ctx.register_artifact(a.clone(), game).await;
                }
            }
        }
        Ok(IngestAck {
            batch_id: prepared.batch_id,
            watermarks: report
                .watermarks
                .into_iter()
                .map(|(producer_id, durable_seq)| ProducerWatermark {
                    producer_id,
                    durable_seq,
                })
                .collect(),
            stored: u32::try_from(report.stored).unwrap_or(u32::MAX),
            duplicates: u32::try_from(report.duplicates).unwrap_or(u32::MAX),
            rejected: prepared.rejected,
        })
    }
}

/// Why `principal` may not write `record`: `(metric label, reason)`, or `None` when it may.
fn access(
    principal: &Principal,
    owner: &str,
    owners: &mut Owners,
    record: &Record,
) -> Option<(&'static str, String)> {
    let run = record.run_id();
    if !principal.may_write(run) {
        return Some((
            "wrong_run",
            format!("run {run:?} is not the run of this worker credential"),
        ));
    }
    let (pid, _) = record.producer();
    if !pid.is_empty() && !owners.check_or_bind(pid, owner) {
        return Some((
            "producer_owned",
            format!("producer_id {pid:?} belongs to another credential"),
        ));
    }
    None
}

/// The highest producer seq of each producer seen so far in one batch, to refuse a record
/// whose seq is not above an earlier one of the same batch. Across batches a seq at or below
/// the watermark is a resend (a duplicate); inside one batch it can only be a producer bug,
/// since a sender stamps each record once and sends them in order. Batches hold few producers
/// (one, from a shim): a short list, checked against the last producer first.
#[derive(Default)]
struct SeqsInBatch {
    last: Vec<(String, u64)>,
}

impl SeqsInBatch {
    /// `Some((label, reason))` when `record`'s seq is not above an earlier seq of its producer
    /// in this batch; otherwise notes its seq. Records without a producer id are never refused.
    fn backwards(&mut self, record: &Record) -> Option<(&'static str, String)> {
        let (pid, seq) = record.producer();
        if pid.is_empty() {
            return None;
        }
        let slot = match self.last.last() {
            Some((p, _)) if p == pid => Some(self.last.len() - 1),
            _ => self.last.iter().position(|(p, _)| p == pid),
        };
        match slot {
            Some(i) if seq <= self.last[i].1 => Some((
                "seq_not_increasing",
                format!(
                    "producer_seq {seq} of producer {pid:?} is not above {} earlier in the same batch",
                    self.last[i].1
                ),
            )),
            Some(i) => {
                self.last[i].1 = seq;
                None
            }
            None => {
                self.last.push((pid.to_owned(), seq));
                None
            }
        }
    }
}

/// A validated batch on its way to the store.
struct Prepared {
    batch_id: u64,
    valid: Vec<Record>,
    rejected: Vec<RejectedRecord>,
    rejected_stamps: Vec<(String, u64)>,
    runs: HashMap<String, (String, String)>,
    completions: Vec<telemetry_core::pb::RunCompleted>,
    policy_artifacts: Vec<telemetry_core::pb::Artifact>,
}
