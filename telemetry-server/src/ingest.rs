//! `gym_telemetry.v1.Ingest`: where shims deliver telemetry, a thin gRPC layer over
//! [`Publisher`] (validation, commit, ack: `publish.rs`).
//!
//! A `Publish` stream is one [`Publisher::open_stream`]: the first failed batch ends it with
//! `UNAVAILABLE` (retryable), and the shim resends from its last ack on a new stream.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use telemetry_core::pb::{ingest_server::Ingest, IngestAck, IngestBatch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{auth::Principal, publish::Publisher};

/// The Ingest service.
#[derive(Clone)]
pub struct IngestService {
    publisher: Publisher,
}

impl IngestService {
    /// A service publishing through `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        IngestService { publisher }
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
        let principal = Principal::of(&request);
        let mut inbound = request.into_inner();
        let (batches, acks) = self.publisher.open_stream_as(principal).into_parts();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(b)) => {
                        if batches.send(b).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "ingest stream ended by the client");
                        break;
                    }
                }
            }
        });
        let out = ReceiverStream::new(acks).map(|ack| ack.map_err(Status::from));
        Ok(Response::new(Box::pin(out)))
    }

    async fn publish_batch(
        &self,
        request: Request<IngestBatch>,
    ) -> Result<Response<IngestAck>, Status> {
        let principal = Principal::of(&request);
        self.publisher
            .publish_as(&principal, request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}
