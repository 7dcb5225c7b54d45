//! The predecessor's `gymgui.trainer.TrainerService`, served so its clients work unchanged.
//!
//! Every call maps onto the same store, hub and run registry as our own API. Records cross
//! between the two packages by their wire bytes (the field numbers are shared), which is also a
//! running proof of the compatibility the proto files promise. What the old API cannot express
//! is left out: its step streams carry no lag/gap notices (they end when the run completes).
//!
//! **Identity of legacy records.** The predecessor's records carry no producer stamp, so a
//! client that retries a cut `PublishRunSteps` stream from the start would store every record
//! it had already delivered a second time. The daemon therefore gives each published legacy
//! record a stamp derived from its natural key ([`legacy_identity`]): a step of
//! `(run, agent, episode, step)` gets the producer `legacy:<hash of run, agent, episode>` and
//! the producer seq `step + 1`; an episode of `(run, agent, episode)` gets the producer
//! `legacy:<hash of run, agent>` and the seq `episode + 1`. The ordinary exactly-once rule
//! (a seq at or below its producer's durable watermark is a duplicate) then stores a retried
//! record once. Consequences, documented in ARCHITECTURE.md: within one episode (for steps) or
//! one agent (for episodes) records must arrive in increasing index order, as a training loop
//! emits them; a record whose index is at or below one already stored (a repeat of the same
//! index included) is counted as a duplicate. An index of `MAX_SEQ_JUMP` (2^32) or more gets
//! no stamp and is stored as is, not deduplicated, rather than refused.
//!
//! Every call needs the daemon's credential, like our own API: `authorization: Bearer <token>`
//! call metadata, the operator's token being in `<var-dir>/auth-token`. The predecessor's GUI
//! sent none, so it needs that one change (one `metadata=` argument per call), or the daemon
//! started with `--insecure-no-auth` (loopback only).
//!
//! `SubmitRun` takes the predecessor's `TrainRunConfig` (validated and normalised as
//! [`crate::legacy_config`] describes; the worker is run as [`crate::legacy_runs`] describes:
//! `metadata.worker.module` as `<entry_point> -m <module>`, else `script` as
//! `<entry_point> <script>`, then `metadata.worker.arguments`, under the JSONL proxy with
//! `environment` merged in; with neither, the built-in demo worker `gym-telemetry-demo worker`).
//! A config with an `argv` (or `command`) key is the older invented form, see [`parse_submit`].
//! `GetHealth` answers with the daemon's pid, start time and listen address.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use prost::Message;
use telemetry_core::pb::{
    self,
    legacy::{
        self, trainer_service_server::TrainerService, CancelRunRequest, CancelRunResponse,
        HealthCheckRequest, HealthCheckResponse, HeartbeatRequest, HeartbeatResponse,
        ListRunsRequest, ListRunsResponse, PublishTelemetryResponse, RunRecord,
        StreamEpisodesRequest, StreamStepsRequest, SubmitRunRequest, SubmitRunResponse,
        WatchRunsRequest,
    },
    IngestBatch, Record, StreamRequest, WorkerCommand,
};
use telemetry_hub::StreamKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    auth::Principal,
    control::watch_slot,
    dispatch::{self, DispatchConfig},
    legacy_config::{is_train_run_config, parse_train_run_config},
    legacy_runs::{build_submission, run_id_for, LegacyOptions, LegacyRuns},
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
    compat: Arc<LegacyRuns>,
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
        let compat = LegacyRuns::start(&registry, LegacyOptions::default(), shutdown.clone());
        LegacyService {
            ingest,
            query,
            registry,
            dispatch,
            shutdown,
            compat,
        }
    }

    /// Sets the GPU pool, the demo worker and the listen address reported by `GetHealth`.
    #[must_use]
    pub fn with_options(self, opts: LegacyOptions) -> Self {
        self.compat.set_opts(opts);
        self
    }

    /// `SubmitRun` with a TrainRunConfig.
    async fn submit_train_run(
        &self,
        run_id: &str,
        config: &serde_json::Value,
    ) -> Result<SubmitRunResponse, Status> {
        let cfg =
            parse_train_run_config(config).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let run_id = run_id_for(run_id, &cfg, &telemetry_core::timestamp::now());
        telemetry_core::check_run_id(&run_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.registry.get(&run_id).is_some() {
            return Err(Status::already_exists(format!(
                "run {run_id:?} already exists"
            )));
        }
        let opts = self.compat.opts();
        let slots = self
            .compat
            .take_gpus(&run_id, cfg.gpus_requested, cfg.gpus_mandatory)
            .map_err(Status::resource_exhausted)?;
        let sub = match build_submission(
            &cfg,
            &run_id,
            &self.registry.var_dir,
            &opts.demo_exe,
            &slots,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.compat.release_gpus(&run_id);
                return Err(e);
            }
        };
        self.compat.mark_dispatching(&run_id);
        let run_id = match dispatch::submit(&self.registry, &self.dispatch, sub.request).await {
            Ok(id) => id,
            Err(e) => {
                self.compat.release_gpus(&run_id);
                return Err(Status::from(e));
            }
        };
        if let Some(secs) = cfg.max_duration_seconds {
            self.compat.enforce_duration(
                self.registry.clone(),
                run_id.clone(),
                Duration::from_secs(secs),
                self.shutdown.clone(),
            );
        }
        Ok(SubmitRunResponse {
            run_id,
            digest: sub.digest,
        })
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

/// The producer stamp (`producer_id`, `producer_seq`) of a legacy record that carries none,
/// derived from its natural key so that a retried record gets the same one (see the module
/// documentation); `None` for other kinds, for a record already stamped, and for an index too
/// large to be a seq (at least [`telemetry_core::MAX_SEQ_JUMP`]).
pub fn legacy_identity(record: &Record) -> Option<(String, u64)> {
    use telemetry_core::pb::record::Kind;
    let (key, index) = match &record.kind {
        Some(Kind::Step(s)) if s.producer_id.is_empty() => (
            format!("steps\0{}\0{}\0{}", s.run_id, s.agent_id, s.episode_index),
            s.step_index,
        ),
        Some(Kind::Episode(e)) if e.producer_id.is_empty() => (
            format!("episodes\0{}\0{}", e.run_id, e.agent_id),
            e.episode_index,
        ),
        _ => return None,
    };
    if index >= telemetry_core::MAX_SEQ_JUMP {
        return None;
    }
    // Ids cannot hold control characters, so `\0` separates the parts unambiguously; 128 bits
    // of SHA-256 keep the id short (run and agent ids may each be long).
    let digest = crate::legacy_config::sha256_hex(key.as_bytes());
    Some((format!("legacy:{}", &digest[..32]), index + 1))
}

/// Stamps a legacy record with [`legacy_identity`], if it has one.
fn stamp_legacy(mut record: Record) -> Record {
    if let Some((id, seq)) = legacy_identity(&record) {
        record.set_producer(&id, seq);
    }
    record
}

/// Re-reads a message as another message type with the same field numbers.
pub fn transcode<A: Message, B: Message + Default>(a: &A) -> Result<B, Status> {
    B::decode(a.encode_to_vec().as_slice())
        .map_err(|e| Status::invalid_argument(format!("undecodable record: {e}")))
}

pub use crate::legacy_runs::run_record;

/// One step of a legacy `PublishRunSteps` stream as our record (re-read by its wire bytes).
pub(crate) fn step_record(s: legacy::RunStep) -> Result<Record, Status> {
    transcode::<_, pb::RunStep>(&s)
        .map(Record::from)
        .map(stamp_legacy)
}

/// One episode of a legacy `PublishRunEpisodes` stream as our record: re-read by its wire bytes,
/// `control_mode` taken from the metadata when the top level has none (the predecessor kept
/// it there), and stamped with its retry-proof identity ([`stamp_legacy`]).
pub(crate) fn episode_record(e: legacy::RunEpisode) -> Result<Record, Status> {
    let mut ep: pb::RunEpisode = transcode(&e)?;
    if ep.control_mode.is_empty() {
        if let Ok(serde_json::Value::Object(m)) =
            serde_json::from_str::<serde_json::Value>(&ep.metadata_json)
        {
            if let Some(mode) = m.get("control_mode").and_then(|v| v.as_str()) {
                ep.control_mode = mode.to_owned();
            }
        }
    }
    Ok(stamp_legacy(Record::from(ep)))
}

/// The older, invented configuration form (kept for scripts written against it; a config with
/// an `argv` or `command` key). Understood keys: `argv` (or `command`, a list or a shell string), `env`, `working_dir` (or `cwd`), `run_id`, `agent_id`,
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
        ..Default::default()
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
        let cfg: serde_json::Value = serde_json::from_str(&req.config_json)
            .map_err(|e| Status::invalid_argument(format!("config_json is not JSON: {e}")))?;
        if cfg.as_object().is_some_and(is_train_run_config) || !cfg.is_object() {
            return Ok(Response::new(
                self.submit_train_run(&req.run_id, &cfg).await?,
            ));
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
            .map(|i| self.compat.view(i))
            .filter(|r| filter.is_empty() || filter.contains(&r.status))
            .collect();
        Ok(Response::new(ListRunsResponse { runs }))
    }

    type WatchRunsStream = Out<RunRecord>;

    async fn watch_runs(
        &self,
        request: Request<WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        let slot = watch_slot(&self.registry, &self.dispatch)?;
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        self.compat.watch(
            req.since_seq,
            req.status_filter,
            tx,
            self.shutdown.clone(),
            slot,
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let principal = Principal::of(&request);
        let run_id = request.into_inner().run_id;
        principal.require_run(&run_id, "heartbeat")?;
        if self.registry.beat(&run_id).await {
            Ok(Response::new(HeartbeatResponse {}))
        } else {
            Err(Status::not_found(format!("no active run {run_id:?}")))
        }
    }

    async fn get_health(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            pid: u64::from(std::process::id()),
            started_at: Some(self.compat.started_at),
            listen_address: self.compat.opts().listen_address,
            healthy: !self.shutdown.is_cancelled(),
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
            .publish(&principal, request.into_inner(), step_record)
            .await?;
        Ok(Response::new(resp))
    }

    async fn publish_run_episodes(
        &self,
        request: Request<Streaming<legacy::RunEpisode>>,
    ) -> Result<Response<PublishTelemetryResponse>, Status> {
        let principal = Principal::of(&request);
        let resp = self
            .publish(&principal, request.into_inner(), episode_record)
            .await?;
        Ok(Response::new(resp))
    }
}
