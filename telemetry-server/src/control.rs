//! `gym_telemetry.v1.RunControl`: submit, cancel and watch runs; worker heartbeats.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use telemetry_core::pb::{
    run_control_server::RunControl, CancelRunRequest, CancelRunResponse, HeartbeatRequest,
    HeartbeatResponse, RunInfo, SubmitRunRequest, SubmitRunResponse, WatchRunsRequest,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    auth::Principal,
    dispatch::{self, DispatchConfig},
    runs::{Registry, WatchSlot},
};

/// The RunControl service.
#[derive(Clone)]
pub struct ControlService {
    registry: Registry,
    dispatch: Arc<DispatchConfig>,
    shutdown: CancellationToken,
}

impl ControlService {
    /// A service over the registry.
    pub fn new(
        registry: Registry,
        dispatch: Arc<DispatchConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        ControlService {
            registry,
            dispatch,
            shutdown,
        }
    }
}

/// A place for one more `WatchRuns` stream, or `RESOURCE_EXHAUSTED` (counted in
/// `subscriptions_refused_total{reason="watch_runs"}`).
pub fn watch_slot(registry: &Registry, dispatch: &DispatchConfig) -> Result<WatchSlot, Status> {
    registry.watch_slot().map_err(|open| {
        dispatch.queue.metrics().refuse_subscription("watch_runs");
        Status::resource_exhausted(format!(
            "{open} WatchRuns streams are open, the most the daemon serves at once"
        ))
    })
}

type InfoStream = Pin<Box<dyn Stream<Item = Result<RunInfo, Status>> + Send>>;

/// Streams the registry's current runs, then every change, into `tx` until the receiver goes
/// or the daemon shuts down. A subscriber that falls behind the change buffer gets a fresh
/// snapshot instead.
pub async fn forward_runs<T: Send + 'static>(
    registry: Registry,
    tx: mpsc::Sender<Result<T, Status>>,
    map: impl Fn(RunInfo) -> T + Send + 'static,
    shutdown: CancellationToken,
    slot: WatchSlot,
) {
    let _slot = slot; // held until this stream ends
                      // The client going away ends the forwarder at once, not at the next change (which may
                      // never come): its place is free again.
    let gone = tx.clone();
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = gone.closed() => {}
        () = forward_runs_inner(registry, tx, map) => {}
    }
}

async fn forward_runs_inner<T: Send + 'static>(
    registry: Registry,
    tx: mpsc::Sender<Result<T, Status>>,
    map: impl Fn(RunInfo) -> T + Send + 'static,
) {
    let (snapshot, mut rx) = registry.watch();
    for info in snapshot {
        if tx.send(Ok(map(info))).await.is_err() {
            return;
        }
    }
    loop {
        match rx.recv().await {
            Ok(info) => {
                if tx.send(Ok(map(info))).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(
                    missed = n,
                    "WatchRuns subscriber lagged, resending snapshot"
                );
                for info in registry.snapshot() {
                    if tx.send(Ok(map(info))).await.is_err() {
                        return;
                    }
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[tonic::async_trait]
impl RunControl for ControlService {
    async fn submit_run(
        &self,
        request: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        Principal::of(&request).require_operator("SubmitRun")?;
        let run_id = dispatch::submit(&self.registry, &self.dispatch, request.into_inner())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(SubmitRunResponse { run_id }))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        Principal::of(&request).require_operator("CancelRun")?;
        let run_id = request.into_inner().run_id;
        let cancelled = dispatch::cancel(&self.registry, &self.dispatch, &run_id)
            .await
            .map_err(Status::not_found)?;
        Ok(Response::new(CancelRunResponse { cancelled }))
    }

    type WatchRunsStream = InfoStream;

    async fn watch_runs(
        &self,
        _request: Request<WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let slot = watch_slot(&self.registry, &self.dispatch)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward_runs(
            self.registry.clone(),
            tx,
            |i| i,
            self.shutdown.clone(),
            slot,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let principal = Principal::of(&request);
        let run_id = request.into_inner().run_id;
        principal.require_run(&run_id, "heartbeat")?;
        let known = self.registry.beat(&run_id).await;
        Ok(Response::new(HeartbeatResponse { known }))
    }
}
