//! `gym_telemetry.v1.Query`: stored records first, then live ones, gap-free.
//!
//! A stream for one run is a hub subscription with `since_seq`: the hub reads the store up to
//! the seam and then follows live records, so replay and live share one source of truth. The
//! hub's notices (`Lagged`, `Gap`, `CaughtUp`, the run's completion) are passed on as
//! `StreamNotice` messages the client can show. A stream over every run (empty `run_id`) is a
//! plain store read and cannot follow. Each stream task ends when the client goes away, even if
//! no record arrives.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use telemetry_core::{
    pb::{
        query_server::Query, record::Kind, stream_notice, CaughtUp, EpisodeStreamMessage, Gap,
        Lagged, ListRunsRequest, ListRunsResponse, Record, RunEpisode, RunState, RunStep,
        RunSummary, StepStreamMessage, StreamNotice, StreamRequest,
    },
    timestamp, ControlMode,
};
use telemetry_hub::{
    AllOf, CloseReason, Delivery, EveryKthStep, Hub, ModeFilter, RecordFilter, StreamKind,
    StripRender, SubscribeOptions, Subscription,
};
use telemetry_store::{BackendReader, Filter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runs::Registry;

/// Records per message when the client does not say.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Messages buffered per stream between the stream task and gRPC.
const STREAM_BUFFER: usize = 16;

/// The Query service.
#[derive(Clone)]
pub struct QueryService {
    hub: Hub,
    reader: Arc<dyn BackendReader>,
    registry: Registry,
}

/// A step or an episode message, so one forwarding loop serves both streams.
pub trait StreamMessage: Send + 'static {
    /// A message carrying records.
    fn records(records: &[Arc<Record>]) -> Option<Self>
    where
        Self: Sized;
    /// A message carrying a notice.
    fn notice(kind: stream_notice::Kind) -> Self;
}

impl StreamMessage for StepStreamMessage {
    fn records(records: &[Arc<Record>]) -> Option<Self> {
        let steps: Vec<RunStep> = records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(Kind::Step(s)) => Some(s.clone()),
                _ => None,
            })
            .collect();
        (!steps.is_empty()).then_some(StepStreamMessage {
            steps,
            notice: None,
        })
    }
    fn notice(kind: stream_notice::Kind) -> Self {
        StepStreamMessage {
            steps: Vec::new(),
            notice: Some(StreamNotice { kind: Some(kind) }),
        }
    }
}

impl StreamMessage for EpisodeStreamMessage {
    fn records(records: &[Arc<Record>]) -> Option<Self> {
        let episodes: Vec<RunEpisode> = records
            .iter()
            .filter_map(|r| match &r.kind {
                Some(Kind::Episode(e)) => Some(e.clone()),
                _ => None,
            })
            .collect();
        (!episodes.is_empty()).then_some(EpisodeStreamMessage {
            episodes,
            notice: None,
        })
    }
    fn notice(kind: stream_notice::Kind) -> Self {
        EpisodeStreamMessage {
            episodes: Vec::new(),
            notice: Some(StreamNotice { kind: Some(kind) }),
        }
    }
}

fn mode_filter(req: &StreamRequest) -> Result<ModeFilter, Status> {
    if req.human_or_unknown {
        return Ok(ModeFilter::HumanOrUnknown);
    }
    if req.control_mode.is_empty() {
        return Ok(ModeFilter::Any);
    }
    req.control_mode
        .parse::<ControlMode>()
        .map(ModeFilter::Exact)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The hub subscription options for a request.
pub fn subscribe_options(
    req: &StreamRequest,
    stream: StreamKind,
) -> Result<SubscribeOptions, Status> {
    let mut opts = SubscribeOptions::run(req.run_id.clone(), stream)
        .since(req.since_seq)
        .follow(req.follow)
        .mode(mode_filter(req)?);
    if !req.agent_id.is_empty() {
        opts = opts.agent(req.agent_id.clone());
    }
    let max_batch = match req.max_batch {
        0 => DEFAULT_MAX_BATCH,
        n => n as usize,
    };
    opts = opts.rate(
        Duration::from_millis(u64::from(req.min_interval_ms)),
        max_batch,
    );
    let mut filters: Vec<Arc<dyn RecordFilter>> = Vec::new();
    if req.drop_render {
        filters.push(Arc::new(StripRender));
    }
    if req.every_kth > 1 {
        filters.push(Arc::new(EveryKthStep::new(u64::from(req.every_kth))));
    }
    match filters.len() {
        0 => {}
        1 => opts = opts.filter(filters.remove(0)),
        _ => opts = opts.filter(Arc::new(AllOf(filters))),
    }
    Ok(opts)
}

/// Forwards a hub subscription into a gRPC stream until the run completes, the subscription
/// closes, or the client goes away.
pub async fn forward<M: StreamMessage>(mut sub: Subscription, tx: mpsc::Sender<Result<M, Status>>) {
    loop {
        let delivery = tokio::select! {
            () = tx.closed() => return,
            d = sub.next() => d,
        };
        let Some(delivery) = delivery else { return };
        let (msg, last) = match delivery {
            Delivery::Records(records) => match M::records(&records) {
                Some(m) => (Ok(m), false),
                None => continue,
            },
            Delivery::Lagged {
                dropped_steps,
                dropped_episodes,
                dropped_lifecycle,
            } => (
                Ok(M::notice(stream_notice::Kind::Lagged(Lagged {
                    dropped: dropped_steps + dropped_episodes + dropped_lifecycle,
                    dropped_steps,
                    dropped_episodes,
                }))),
                false,
            ),
            Delivery::Gap {
                after_seq,
                next_seq,
            } => (
                Ok(M::notice(stream_notice::Kind::Gap(Gap {
                    after_seq,
                    next_seq,
                }))),
                false,
            ),
            Delivery::CaughtUp { last_seq } => (
                Ok(M::notice(stream_notice::Kind::CaughtUp(CaughtUp {
                    last_seq,
                }))),
                false,
            ),
            Delivery::Completed(done) => (
                Ok(M::notice(stream_notice::Kind::RunCompleted(
                    (*done).clone(),
                ))),
                true,
            ),
            Delivery::Closed(CloseReason::Shutdown) => (
                Err(Status::unavailable("the daemon is shutting down")),
                true,
            ),
            Delivery::Closed(CloseReason::Refused(e)) => {
                (Err(Status::resource_exhausted(e.to_string())), true)
            }
            Delivery::Closed(CloseReason::CatchUpFailed(e)) => {
                (Err(Status::internal(e.to_string())), true)
            }
        };
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

impl QueryService {
    /// A service over the hub and the store file.
    pub fn new(hub: Hub, reader: Arc<dyn BackendReader>, registry: Registry) -> Self {
        QueryService {
            hub,
            reader,
            registry,
        }
    }

    /// Opens a stream of `stream` records for `req` (hub-backed for one run, store-backed for
    /// every run).
    pub fn open<M: StreamMessage>(
        &self,
        req: &StreamRequest,
        stream: StreamKind,
    ) -> Result<mpsc::Receiver<Result<M, Status>>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        if req.run_id.is_empty() {
            if req.follow {
                return Err(Status::invalid_argument(
                    "follow needs a run_id (every run can be read, not followed)",
                ));
            }
            let filter = Filter {
                run_id: None,
                agent_id: (!req.agent_id.is_empty()).then(|| req.agent_id.clone()),
                control_mode: mode_filter(req)?,
            };
            let reader = self.reader.clone();
            let since = req.since_seq;
            let batch = match req.max_batch {
                0 => DEFAULT_MAX_BATCH,
                n => n as usize,
            };
            tokio::task::spawn_blocking(move || {
                read_all::<M>(reader.as_ref(), since, filter, stream, batch, tx)
            });
            return Ok(rx);
        }
        let sub = self
            .hub
            .try_subscribe(subscribe_options(req, stream)?)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        tokio::spawn(forward(sub, tx));
        Ok(rx)
    }

    fn list_runs_blocking(&self, req: &ListRunsRequest) -> Result<ListRunsResponse, Status> {
        let wanted = if req.control_mode.is_empty() {
            None
        } else {
            Some(
                ControlMode::from_wire(&req.control_mode)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
                    .as_str()
                    .to_owned(),
            )
        };
        let stats = self
            .reader
            .list_runs()
            .map_err(|e| Status::internal(e.to_string()))?;
        let hub = self.hub.metrics();
        let mut runs = Vec::with_capacity(stats.len());
        for s in stats {
            if let Some(w) = &wanted {
                if !s.control_modes.iter().any(|m| m == w) {
                    continue;
                }
            }
            let info = self.registry.get(&s.run_id);
            let (dropped_steps, dropped_episodes) = hub
                .runs
                .iter()
                .find(|r| r.run_id == s.run_id)
                .map_or((0, 0), |r| {
                    (r.dropped_steps_total, r.dropped_episodes_total)
                });
            let state = match (&info, &s.completion) {
                (Some(i), _) => i.state,
                (None, Some(_)) => RunState::Completed as i32,
                (None, None) => RunState::Unspecified as i32,
            };
            runs.push(RunSummary {
                run_id: s.run_id,
                state,
                agent_ids: s.agent_ids,
                control_modes: s.control_modes,
                step_count: s.step_count,
                episode_count: s.episode_count,
                first_timestamp: s.first_timestamp_ns.map(timestamp::from_unix_nanos),
                last_timestamp: s.last_timestamp_ns.map(timestamp::from_unix_nanos),
                last_seq: s.last_step_seq.max(s.last_episode_seq),
                dropped_steps,
                dropped_episodes,
                failure_reason: info
                    .as_ref()
                    .map(|i| i.failure_reason.clone())
                    .unwrap_or_default(),
                game_id: info.map(|i| i.game_id).unwrap_or_default(),
            });
        }
        Ok(ListRunsResponse { runs })
    }
}

fn read_all<M: StreamMessage>(
    reader: &dyn BackendReader,
    since: u64,
    filter: Filter,
    stream: StreamKind,
    batch: usize,
    tx: mpsc::Sender<Result<M, Status>>,
) {
    let mut cursor = since;
    loop {
        let page: Result<Vec<Record>, _> = match stream {
            StreamKind::Steps => reader
                .steps_page(cursor, &filter, batch)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Episodes => reader
                .episodes_page(cursor, &filter, batch)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Lifecycle => reader.events_page(cursor, None, batch),
        };
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
        };
        let Some(last) = page.last().map(Record::seq_id) else {
            let _ = tx.blocking_send(Ok(M::notice(stream_notice::Kind::CaughtUp(CaughtUp {
                last_seq: cursor,
            }))));
            return;
        };
        cursor = last;
        let full = page.len() >= batch;
        let arcs: Vec<Arc<Record>> = page.into_iter().map(Arc::new).collect();
        if let Some(m) = M::records(&arcs) {
            if tx.blocking_send(Ok(m)).is_err() {
                return;
            }
        }
        if !full {
            let _ = tx.blocking_send(Ok(M::notice(stream_notice::Kind::CaughtUp(CaughtUp {
                last_seq: cursor,
            }))));
            return;
        }
    }
}

type Out<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

#[tonic::async_trait]
impl Query for QueryService {
    type StreamRunStepsStream = Out<StepStreamMessage>;
    type StreamRunEpisodesStream = Out<EpisodeStreamMessage>;

    async fn stream_run_steps(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunStepsStream>, Status> {
        let rx = self.open::<StepStreamMessage>(request.get_ref(), StreamKind::Steps)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_run_episodes(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunEpisodesStream>, Status> {
        let rx = self.open::<EpisodeStreamMessage>(request.get_ref(), StreamKind::Episodes)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let this = self.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || this.list_runs_blocking(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }
}
