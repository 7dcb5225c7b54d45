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

use crate::{metrics::Metrics, runs::Registry, writer::WriterHandle};

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
        // Facts the registry needs, gathered before the records move to the writer.
        let mut runs: HashMap<String, (String, String)> = HashMap::new();
        let mut completions = Vec::new();
        for r in &valid {
            match &r.kind {
                Some(Kind::Step(s)) => {
                    runs.entry(s.run_id.clone())
                        .or_insert_with(|| (s.agent_id.clone(), s.control_mode.clone()));
                }
                Some(Kind::Episode(e)) => {
                    runs.entry(e.run_id.clone())
                        .or_insert_with(|| (e.agent_id.clone(), e.control_mode.clone()));
                }
                Some(Kind::RunStarted(s)) => {
                    runs.entry(s.run_id.clone())
                        .or_insert_with(|| (s.agent_id.clone(), s.control_mode.clone()));
                }
                Some(Kind::RunCompleted(c)) => completions.push(c.clone()),
                _ => {}
            }
        }
        let report = self
            .writer
            .append(valid, rejected_stamps)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.metrics.batches.inc();
        for (run_id, (agent, mode)) in runs {
            self.registry
                .observe_telemetry(&run_id, &agent, &mode)
                .await;
        }
        if report
            .outcomes
            .iter()
            .any(|o| matches!(o, AppendOutcome::Stored { .. }))
        {
            for c in &completions {
                self.registry.set_completion_recorded(&c.run_id);
                self.registry.observe_completion(c).await;
            }
        }
        Ok(IngestAck {
            batch_id,
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
            rejected,
        })
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<IngestAck, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<IngestBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let mut inbound = request.into_inner();
        // One ack in flight per stream: the shim's window, plus HTTP/2 flow control, is the
        // backpressure; the writer's bounded queue is behind it.
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
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
                let ack = this.handle_batch(batch).await;
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
