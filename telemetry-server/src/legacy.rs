//! The predecessor's `gymgui.trainer.TrainerService`, served so its clients work unchanged.
//!
//! Every call maps onto the same store, hub and run registry as our own API. Records cross
//! between the two packages by their wire bytes (the field numbers are shared), which is also a
//! running proof of the compatibility the proto files promise. What the old API cannot express
//! is left out: its step streams carry no lag/gap notices (they end when the run completes), and
//! its records carry no producer stamp (so they are not deduplicated).

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    pin::Pin,
    sync::Arc,
};

use futures::Stream;
use prost::Message;
use telemetry_core::pb::{
    self,
    legacy::{
        self, trainer_service_server::TrainerService, CancelRunRequest, CancelRunResponse,
        HealthRequest, HealthResponse, HeartbeatRequest, HeartbeatResponse, ListRunsRequest,
        ListRunsResponse, PublishTelemetryResponse, RunRecord, RunStatus, StreamEpisodesRequest,
        StreamStepsRequest, SubmitRunRequest, SubmitRunResponse, WatchRunsRequest,
    },
    IngestBatch, Record, RunInfo, RunState, StreamRequest, WorkerCommand,
};
use telemetry_hub::StreamKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::Principal,
    control::{forward_runs, watch_slot},
    dispatch::{self, DispatchConfig},
    publish::Publisher,
    query::QueryService,
    runs::Registry,
};

/// Records committed at most per batch when a legacy client streams them one by one.
pub const PUBLISH_BATCH: usize = 64;
/// Encoded bytes committed at most per batch (a batch ends at the record that reaches it).
pub const PUBLISH_BATCH_BYTES: usize = 1024 * 1024;

/// The legacy service.
#[derive(Clone)]
pub struct LegacyService {
    ingest: Publisher,
    query: QueryService,
    registry: Registry,
    dispatch: Arc<DispatchConfig>,
    shutdown: CancellationToken,
}

impl LegacyService {
    /// A service sharing the daemon's components.
    pub fn new(
        ingest: Publisher,
        query: QueryService,
        registry: Registry,
        dispatch: Arc<DispatchConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        LegacyService {
            ingest,
            query,
            registry,
            dispatch,
            shutdown,
        }
    }

    /// Stores a legacy Publish stream as it arrives: records are committed in batches of at
    /// most [`PUBLISH_BATCH`] records or [`PUBLISH_BATCH_BYTES`] bytes, and whatever has
    /// arrived is committed as soon as the stream pauses (no next message ready), so memory per
    /// stream is bounded in bytes and a record is stored before the client closes the stream.
    async fn publish<L: Message + Default, F: Fn(L) -> Result<Record, Status>>(
        &self,
        principal: &Principal,
        mut inbound: Streaming<L>,
        convert: F,
    ) -> Result<PublishTelemetryResponse, Status> {
        use futures::FutureExt;
        let mut accepted = 0u64;
        let mut dropped = 0u64;
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let mut bytes = 0usize;
        loop {
            // Wait for the next message only with nothing held; otherwise take one if ready.
            let (next, cause) = if batch.is_empty() {
                (inbound.message().await?, "end")
            } else {
                match inbound.message().now_or_never() {
                    Some(next) => (next?, "end"),
                    None => (None, "pause"),
                }
            };
            let end = next.is_none() && cause == "end";
            let mut cause = cause;
            if let Some(msg) = next {
                let record = convert(msg)?;
                bytes += record.encoded_len();
                batch.push(record);
                cause = if batch.len() >= PUBLISH_BATCH {
                    "records"
                } else if bytes >= PUBLISH_BATCH_BYTES {
                    "bytes"
                } else {
                    continue;
                };
            }
            if !batch.is_empty() {
                self.ingest.metrics().legacy_flush(cause);
                let ack = self
                    .ingest
                    .publish_as(
                        principal,
                        IngestBatch {
                            batch_id: 0,
                            records: std::mem::take(&mut batch),
                        },
                    )
                    .await
                    .map_err(Status::from)?;
                bytes = 0;
                accepted += u64::from(ack.stored) + u64::from(ack.duplicates);
                dropped += ack.rejected.len() as u64;
            }
            if end {
                return Ok(PublishTelemetryResponse { accepted, dropped });
            }
        }
    }
}

impl LegacyService {
    /// Follows one of a run's streams the predecessor's way: from `since_seq`, until the run
    /// completes, records re-typed by their wire bytes and notices left out.
    fn follow<M, R, L>(
        &self,
        run_id: String,
        since_seq: u64,
        kind: StreamKind,
        peer: Option<std::net::SocketAddr>,
        records: fn(M) -> Vec<R>,
    ) -> Result<Response<Out<L>>, Status>
    where
        M: crate::query::StreamMessage,
        R: Message + Send + 'static,
        L: Message + Default + Send + 'static,
    {
        let req = StreamRequest {
            run_id,
            since_seq,
            follow: true,
            ..Default::default()
        };
        let rx = self.query.open::<M>(&req, kind, peer)?;
        let stream = retype(
            rx,
            move |m: M| {
                records(m)
                    .iter()
                    .filter_map(|r| transcode::<R, L>(r).ok())
                    .collect()
            },
            self.shutdown.clone(),
        );
        Ok(Response::new(stream))
    }
}

/// Re-reads a message as another message type with the same field numbers.
pub fn transcode<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice())
        .map_err(|e| Status::invalid_argument(format!("undecodable record: {e}")))
}

/// The predecessor's status for one of our run states.
pub fn legacy_status(state: i32) -> RunStatus {
    match RunState::try_from(state) {
        Ok(RunState::Pending) => RunStatus::Pending,
        Ok(RunState::Running) => RunStatus::Running,
        Ok(RunState::Completed) => RunStatus::Completed,
        Ok(RunState::Failed) => RunStatus::Failed,
        Ok(RunState::Cancelled) => RunStatus::Cancelled,
        _ => RunStatus::Unspecified,
    }
}

/// The predecessor's run record for one of ours.
pub fn run_record(info: RunInfo) -> RunRecord {
    let mut h = DefaultHasher::new();
    info.metadata_json.hash(&mut h);
    info.agent_id.hash(&mut h);
    info.game_id.hash(&mut h);
    RunRecord {
        status: legacy_status(info.state) as i32,
        digest: format!("{:016x}", h.finish()),
        created_at: info.created_at,
        updated_at: info.updated_at,
        last_heartbeat: info.last_heartbeat,
        gpu_slot: None,
        failure_reason: (!info.failure_reason.is_empty()).then_some(info.failure_reason),
        gpu_slots: Vec::new(),
        seq_id: 0,
        run_id: info.run_id,
    }
}

/// The predecessor submitted a JSON run configuration. Understood keys: `argv` (or `command`,
/// a list or a shell string), `env`, `working_dir` (or `cwd`), `run_id`, `agent_id`,
/// `control_mode`, `game_id` (or `env_id`), `seed`, and `legacy_jsonl` (default true: the
/// predecessor's workers print JSONL).
pub fn parse_submit(req: &SubmitRunRequest) -> Result<pb::SubmitRunRequest, Status> {
    let cfg: serde_json::Value = serde_json::from_str(&req.config_json)
        .map_err(|e| Status::invalid_argument(format!("config_json is not JSON: {e}")))?;
    let obj = cfg
        .as_object()
        .ok_or_else(|| Status::invalid_argument("config_json must be a JSON object"))?;
    let s = |k: &str| obj.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let argv: Vec<String> = match obj.get("argv").or_else(|| obj.get("command")) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| Status::invalid_argument("argv must be a list of strings"))?,
        Some(serde_json::Value::String(cmd)) => vec!["sh".into(), "-c".into(), cmd.clone()],
        _ => {
            return Err(Status::invalid_argument(
                "config_json needs `argv` (or `command`)",
            ))
        }
    };
    let env = obj
        .get("env")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let run_id = if req.run_id.is_empty() {
        s("run_id")
    } else {
        req.run_id.clone()
    };
    let game_id = if obj.contains_key("game_id") {
        s("game_id")
    } else {
        s("env_id")
    };
    Ok(pb::SubmitRunRequest {
        run_id,
        command: Some(WorkerCommand {
            argv,
            env,
            working_dir: if obj.contains_key("working_dir") {
                s("working_dir")
            } else {
                s("cwd")
            },
            legacy_jsonl: obj
                .get("legacy_jsonl")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true),
        }),
        agent_id: s("agent_id"),
        control_mode: s("control_mode"),
        game_id,
        seed: obj.get("seed").and_then(serde_json::Value::as_u64),
        metadata_json: req.config_json.clone(),
    })
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Re-types one of our streams as the predecessor's, dropping notices.
fn retype<M, T, F>(
    mut rx: mpsc::Receiver<Result<M, Status>>,
    f: F,
    stop: CancellationToken,
) -> Out<T>
where
    M: Send + 'static,
    T: Send + 'static,
    F: Fn(M) -> Vec<T> + Send + 'static,
{
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                m = rx.recv() => m,
            };
            let Some(msg) = msg else { return };
            match msg {
                Ok(m) => {
                    for item in f(m) {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

#[tonic::async_trait]
impl TrainerService for LegacyService {
    async fn submit_run(
        &self,
        request: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        Principal::of(&request).require_operator("SubmitRun")?;
        let req = request.into_inner();
        let limit = self.dispatch.limits.max_metadata_bytes;
        if req.config_json.len() > limit {
            self.dispatch.queue.metrics().refuse_submission("too_large");
            return Err(dispatch::SubmitError::TooLarge {
                field: "config_json",
                size: req.config_json.len(),
                limit,
            }
            .into());
        }
        let ours = parse_submit(&req)?;
        let run_id = dispatch::submit(&self.registry, &self.dispatch, ours)
            .await
            .map_err(Status::from)?;
        let digest = self
            .registry
            .get(&run_id)
            .map(|i| run_record(i).digest)
            .unwrap_or_default();
        Ok(Response::new(SubmitRunResponse { run_id, digest }))
    }

    async fn cancel_run(
        &self,
        request: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        Principal::of(&request).require_operator("CancelRun")?;
        let run_id = request.into_inner().run_id;
        dispatch::cancel(&self.registry, &self.dispatch, &run_id)
            .await
            .map_err(Status::not_found)?;
        Ok(Response::new(CancelRunResponse {}))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let filter = request.into_inner().status_filter;
        let runs = self
            .registry
            .snapshot()
            .into_iter()
            .map(run_record)
            .filter(|r| filter.is_empty() || filter.contains(&r.status))
            .collect();
        Ok(Response::new(ListRunsResponse { runs }))
    }

    type WatchRunsStream = Out<RunRecord>;

    async fn watch_runs(
        &self,
        request: Request<WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let filter = request.into_inner().status_filter;
        let slot = watch_slot(&self.registry, &self.dispatch)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward_runs(
            self.registry.clone(),
            tx,
            run_record,
            self.shutdown.clone(),
            slot,
        ));
        let stream = retype(
            rx,
            move |r: RunRecord| {
                if filter.is_empty() || filter.contains(&r.status) {
                    vec![r]
                } else {
                    Vec::new()
                }
            },
            self.shutdown.clone(),
        );
        Ok(Response::new(stream))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let principal = Principal::of(&request);
        let run_id = request.into_inner().run_id;
        if !principal.may_write(&run_id) {
            return Err(Status::permission_denied(format!(
                "this credential may not heartbeat run {run_id:?}"
            )));
        }
        if self.registry.heartbeat(&run_id) {
            Ok(Response::new(HeartbeatResponse {}))
        } else {
            Err(Status::not_found(format!("no active run {run_id:?}")))
        }
    }

    async fn get_health(
        &self,
        _request: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: !self.shutdown.is_cancelled(),
            detail: format!("gym-telemetry-daemon {}", env!("CARGO_PKG_VERSION")),
        }))
    }

    type StreamRunStepsStream = Out<legacy::RunStep>;

    async fn stream_run_steps(
        &self,
        request: Request<StreamStepsRequest>,
    ) -> Result<Response<Self::StreamRunStepsStream>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        self.follow::<pb::StepStreamMessage, _, _>(
            r.run_id,
            r.since_seq,
            StreamKind::Steps,
            peer,
            |m| m.steps,
        )
    }

    type StreamRunEpisodesStream = Out<legacy::RunEpisode>;

    async fn stream_run_episodes(
        &self,
        request: Request<StreamEpisodesRequest>,
    ) -> Result<Response<Self::StreamRunEpisodesStream>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        self.follow::<pb::EpisodeStreamMessage, _, _>(
            r.run_id,
            r.since_seq,
            StreamKind::Episodes,
            peer,
            |m| m.episodes,
        )
    }

    async fn publish_run_steps(
        &self,
        request: Request<Streaming<legacy::RunStep>>,
    ) -> Result<Response<PublishTelemetryResponse>, Status> {
        let principal = Principal::of(&request);
        let resp = self
            .publish(&principal, request.into_inner(), |s: legacy::RunStep| {
                transcode::<_, pb::RunStep>(&s).map(Record::from)
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn publish_run_episodes(
        &self,
        request: Request<Streaming<legacy::RunEpisode>>,
    ) -> Result<Response<PublishTelemetryResponse>, Status> {
        let principal = Principal::of(&request);
        let resp = self
            .publish(&principal, request.into_inner(), |e: legacy::RunEpisode| {
                let mut ep: pb::RunEpisode = transcode(&e)?;
                // The predecessor kept control_mode inside the metadata.
                if ep.control_mode.is_empty() {
                    if let Ok(serde_json::Value::Object(m)) =
                        serde_json::from_str::<serde_json::Value>(&ep.metadata_json)
                    {
                        if let Some(mode) = m.get("control_mode").and_then(|v| v.as_str()) {
                            ep.control_mode = mode.to_owned();
                        }
                    }
                }
                Ok(Record::from(ep))
            })
            .await?;
        Ok(Response::new(resp))
    }
}
