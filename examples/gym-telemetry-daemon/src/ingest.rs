//! `gym_telemetry.v1.Ingest`: where shims deliver telemetry.
//!
//! Each batch is validated record by record (an invalid record is rejected on its own, with its
//! index and reason in the ack, and counted; the valid records of the same batch are stored),
//! appended through the single store writer, and acknowledged only after the commit, with each
//! producer's durable watermark. A resent batch is recognised by the watermark and stored once.
//! Batches larger than [`IngestLimits::max_batch_records`] or the gRPC message limit are refused
//! whole with `RESOURCE_EXHAUSTED`/`OUT_OF_RANGE`, before any work.

use std::{collections::HashMap, pin::Pin};

use futures::Stream;
use telemetry_core::{
    pb::{
        ingest_server::Ingest, record::Kind, IngestAck, IngestBatch, ProducerWatermark, Record,
        RejectedRecord,
    },
    validate::{self, Limits},
};
use telemetry_store::AppendOutcome;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    metrics::Metrics,
    runs::Registry,
    writer::{PendingAppend, WriterHandle},
};

/// Bounds on what one batch may hold.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Per-record limits.
    pub record: Limits,
    /// Most records in one batch.
    pub max_batch_records: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            record: Limits::default(),
            max_batch_records: 16 * 1024,
        }
    }
}

/// The Ingest service.
#[derive(Clone)]
pub struct IngestService {
    writer: WriterHandle,
    registry: Registry,
    metrics: Metrics,
    limits: IngestLimits,
}

impl IngestService {
    /// A service storing through `writer`.
    pub fn new(
        writer: WriterHandle,
        registry: Registry,
        metrics: Metrics,
        limits: IngestLimits,
    ) -> Self {
        IngestService {
            writer,
            registry,
            metrics,
            limits,
        }
    }

    /// Validates, stores and acknowledges one batch.
    pub async fn handle_batch(&self, batch: IngestBatch) -> Result<IngestAck, Status> {
        let mut prepared = self.prepare(batch)?;
        let pending = self.submit(&mut prepared).await?;
        self.finish(prepared, pending).await
    }

    /// Validates a batch record by record: the valid records to store, the rejected ones with
    /// their reasons, and the facts the run registry needs. Refuses an oversized batch whole.
    fn prepare(&self, batch: IngestBatch) -> Result<Prepared, Status> {
        let IngestBatch { batch_id, records } = batch;
        if records.len() > self.limits.max_batch_records {
            return Err(Status::resource_exhausted(format!(
                "batch {batch_id} holds {} records, the limit is {}",
                records.len(),
                self.limits.max_batch_records
            )));
        }
        let mut valid: Vec<Record> = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        let mut rejected_stamps = Vec::new();
        for (index, mut record) in records.into_iter().enumerate() {
            match validate::normalize(&mut record, &self.limits.record) {
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
        let mut runs: HashMap<String, (String, String)> = HashMap::new();
        let mut completions = Vec::new();
        for r in &valid {
            let (run, agent, mode) = match &r.kind {
                Some(Kind::Step(s)) => (&s.run_id, &s.agent_id, &s.control_mode),
                Some(Kind::Episode(e)) => (&e.run_id, &e.agent_id, &e.control_mode),
                Some(Kind::RunStarted(s)) => (&s.run_id, &s.agent_id, &s.control_mode),
                Some(Kind::RunCompleted(c)) => {
                    completions.push(c.clone());
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
        })
    }

    /// Hands the batch's valid records to the writer (queued in call order).
    async fn submit(&self, prepared: &mut Prepared) -> Result<PendingAppend, Status> {
        self.writer
            .submit(
                std::mem::take(&mut prepared.valid),
                std::mem::take(&mut prepared.rejected_stamps),
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Waits for the commit and builds the ack; updates the run registry.
    async fn finish(
        &self,
        prepared: Prepared,
        pending: PendingAppend,
    ) -> Result<IngestAck, Status> {
        let report = pending
            .wait()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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

/// A validated batch on its way to the store.
struct Prepared {
    batch_id: u64,
    valid: Vec<Record>,
    rejected: Vec<RejectedRecord>,
    rejected_stamps: Vec<(String, u64)>,
    runs: HashMap<String, (String, String)>,
    completions: Vec<telemetry_core::pb::RunCompleted>,
}

/// Batches of one Publish stream queued with the writer and not yet acknowledged. A stream
/// that sends ahead (the shim keeps several batches in flight) has them committed together
/// (group commit) instead of one transaction and one round trip at a time.
pub const PUBLISH_WINDOW: usize = 8;

type AckStream = Pin<Box<dyn Stream<Item = Result<IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<IngestBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PUBLISH_WINDOW);
        // Reader: validates and queues batches in arrival order (the writer commits them in
        // that order, so a producer's records are never reordered). Acker: waits for each
        // commit in the same order and answers. The window between them bounds what one
        // stream may have queued.
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<Result<(Prepared, PendingAppend), Status>>(PUBLISH_WINDOW);
        let reader = self.clone();
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ingest stream ended by the client");
                        break;
                    }
                };
                let queued = match reader.prepare(batch) {
                    Ok(mut p) => reader.submit(&mut p).await.map(|pending| (p, pending)),
                    Err(status) => Err(status),
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
                    Err(status) => Err(status),
                };
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish_batch(
        &self,
        request: Request<IngestBatch>,
    ) -> Result<Response<IngestAck>, Status> {
        self.handle_batch(request.into_inner())
            .await
            .map(Response::new)
    }
}
