//! `gym_telemetry.v1.Ingest`: where shims deliver telemetry, a thin gRPC layer over
//! [`Publisher`] (validation, commit, ack: `publish.rs`).
//!
//! A `Publish` stream is one [`Publisher::open_stream`]: the first failed batch ends it with
//! `UNAVAILABLE` (retryable), and the shim resends from its last ack on a new stream.
//!
//! A message that cannot be read (over the gRPC message limit, or not an `IngestBatch`) ends the
//! stream too, after the acks of every batch before it, with a status saying why
//! ([`refused_message`]: `OUT_OF_RANGE` or `INVALID_ARGUMENT`, neither worth resending as is),
//! and is counted in `gym_telemetry_rejected_messages_total{reason}`. Before, the stream ended
//! with `OK` and no word of the message, so a sender could not tell it was refused.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use telemetry_core::pb::{ingest_server::Ingest, IngestAck, IngestBatch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{auth::Principal, metrics::Metrics, publish::Publisher};

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
        let metrics = self.publisher.metrics().clone();
        let (refused_tx, refused_rx) = tokio::sync::oneshot::channel::<Status>();
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
                        match refused_message(&status, &metrics) {
                            Some(answer) => {
                                tracing::debug!(%status, "ingest message refused");
                                // Sent before `batches` is dropped: it follows the last ack.
                                let _ = refused_tx.send(answer);
                            }
                            None => tracing::debug!(%status, "ingest stream ended by the client"),
                        }
                        break;
                    }
                }
            }
        });
        // The acks end once every batch read before the refused message is answered; then the
        // refusal, if any, ends the stream.
        let refusal =
            futures::stream::once(refused_rx).filter_map(|r| async move { r.ok().map(Err) });
        let out = ReceiverStream::new(acks)
            .map(|ack| ack.map_err(Status::from))
            .chain(refusal);
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

/// The answer to a `Publish` message that could not be read, counted in `metrics`: `Some` for
/// a message over the size limit (`OUT_OF_RANGE`, reason `too_large`) or one that is not an
/// `IngestBatch` (`INVALID_ARGUMENT`, reason `undecodable`; tonic reports it as `INTERNAL`,
/// but the fault is in the sender's bytes), `None` for anything else (the client went away).
fn refused_message(status: &Status, metrics: &Metrics) -> Option<Status> {
    match status.code() {
        tonic::Code::OutOfRange => {
            metrics.reject_message("too_large");
            Some(Status::out_of_range(format!(
                "ingest message refused: {}",
                status.message()
            )))
        }
        tonic::Code::Internal if status.message().starts_with("failed to decode Protobuf") => {
            metrics.reject_message("undecodable");
            Some(Status::invalid_argument(format!(
                "ingest message is not an IngestBatch: {}",
                status.message()
            )))
        }
        _ => None,
    }
}

/// The Ingest service wrapped to count unary `PublishBatch` messages tonic refuses before the
/// handler runs (over the size limit: `OUT_OF_RANGE`; not an `IngestBatch`: `INTERNAL`), which
/// the handler never sees. Such an answer carries its status in the response headers; the
/// handler's own answers never use these two codes, and a `Publish` stream's status comes in
/// the trailers (counted by [`refused_message`]), so nothing is counted twice.
#[derive(Clone)]
pub struct CountRefusedMessages<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> CountRefusedMessages<S> {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: S, metrics: Metrics) -> Self {
        CountRefusedMessages { inner, metrics }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for CountRefusedMessages<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for CountRefusedMessages<S>
where
    S: tonic::codegen::Service<
        tonic::codegen::http::Request<B>,
        Response = tonic::codegen::http::Response<R>,
    >,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let call = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = call.await?;
            match response
                .headers()
                .get("grpc-status")
                .map(tonic::codegen::http::HeaderValue::as_bytes)
            {
                Some(b"11") => metrics.reject_message("too_large"),
                Some(b"13") => metrics.reject_message("undecodable"),
                _ => {}
            }
            Ok(response)
        })
    }
}
