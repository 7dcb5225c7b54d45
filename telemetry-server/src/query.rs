//! `gym_telemetry.v1.Query`: stored records first, then live ones, gap-free.
//!
//! A stream for one run is a hub subscription with `since_seq`: the hub reads the store up to
//! the seam and then follows live records, so replay and live share one source of truth. The
//! hub's notices (`Lagged`, `Gap`, `CaughtUp`, the run's completion) are passed on as
//! `StreamNotice` messages the client can show. A stream over every run (empty `run_id`) is a
//! plain store read and cannot follow. Each stream task ends when the client goes away, even if
//! no record arrives.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::Stream;
use telemetry_core::{
    pb::{
        query_server::Query, record::Kind, stream_notice, CaughtUp, EpisodeStreamMessage, Gap,
        Lagged, ListRunsRequest, ListRunsResponse, ListTagsRequest, ListTagsResponse,
        ReadScalarsRequest, ReadScalarsResponse, Record, RunState, RunSummary, ScalarStreamMessage,
        ScalarStreamRequest, StepStreamMessage, StreamNotice, StreamRequest,
    },
    timestamp, ControlMode,
};
use telemetry_hub::{
    AllOf, CloseReason, Delivery, EveryKthStep, Hub, ModeFilter, RecordFilter, StreamKind,
    StripRender, SubscribeOptions, Subscription,
};
use telemetry_store::{BackendReader, Filter, ScalarQuery};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{metrics::Metrics, runs::Registry};

/// Most series one `ListTags` answer lists.
pub const MAX_LIST_TAGS: usize = 10_000;
/// Records per message when the client does not say.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Messages buffered per stream between the stream task and gRPC.
const STREAM_BUFFER: usize = 16;
/// Largest page the store-backed stream reads at once, in records (its byte bound is
/// [`QueryLimits::max_message_bytes`], see [`read_all`]).
const MAX_PAGE_RECORDS: usize = 4096;
/// Records of the first page of a store-backed stream, before record sizes are known.
const FIRST_PAGE_RECORDS: usize = 16;

/// Limits of the Query streams (and of the predecessor's, which open the same streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Largest stream message, in encoded bytes. A message still holds at least one record, so
    /// every valid record (at most `telemetry_core::validate::Limits::max_record_bytes`) can
    /// be streamed; the store-backed stream also sizes its store pages by it.
    pub max_message_bytes: usize,
    /// Live streams one client connection (TCP peer address and port) may hold at once.
    pub max_subscriptions_per_connection: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_message_bytes: 3 * 1024 * 1024,
            max_subscriptions_per_connection: 64,
        }
    }
}

/// Live streams per client connection, each held by a [`PeerSlot`] for as long as its stream
/// task runs.
#[derive(Clone, Default)]
struct PeerSlots {
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

/// One stream's place in its connection's count; released on drop.
struct PeerSlot {
    held: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    peer: SocketAddr,
}

impl PeerSlots {
    /// A slot for one more stream of `peer`, or `None` when it holds `cap` already. Streams
    /// without a peer address (not over TCP) are not counted.
    fn acquire(&self, peer: Option<SocketAddr>, cap: usize) -> Result<Option<PeerSlot>, usize> {
        let Some(peer) = peer else { return Ok(None) };
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(peer).or_insert(0);
        if *n >= cap {
            return Err(*n);
        }
        *n += 1;
        Ok(Some(PeerSlot {
            held: self.held.clone(),
            peer,
        }))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.peer);
            }
        }
    }
}

/// The Query service.
#[derive(Clone)]
pub struct QueryService {
    hub: Hub,
    reader: Arc<dyn BackendReader>,
    registry: Registry,
    limits: QueryLimits,
    metrics: Metrics,
    slots: PeerSlots,
}

/// A step or an episode message, so one forwarding loop serves both streams.
pub trait StreamMessage: Send + 'static {
    /// The records of this stream's kind in `records`, as messages of at most `max_bytes`
    /// encoded bytes each, in order. A message holds at least one record, so a record larger
    /// than `max_bytes` (never larger than the validation limit) still goes out, alone.
    fn records(records: &[Arc<Record>], max_bytes: usize) -> Vec<Self>
    where
        Self: Sized;
    /// A message carrying a notice.
    fn notice(kind: stream_notice::Kind) -> Self;
}

/// Bytes one element of a repeated message field (field number < 16) takes in its message.
fn element_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Packs `items` into groups of at most `max_bytes` encoded bytes each (at least one item per
/// group), in order.
fn pack<T: prost::Message>(items: impl Iterator<Item = T>, max_bytes: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let len = element_len(item.encoded_len());
        if !current.is_empty() && bytes + len > max_bytes {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// One [`StreamMessage`] impl per stream: its message type, its repeated field, and the record
/// kind it carries.
macro_rules! stream_message {
    ($msg:ident, $field:ident, $kind:ident) => {
        impl StreamMessage for $msg {
            fn records(records: &[Arc<Record>], max_bytes: usize) -> Vec<Self> {
                let items = records.iter().filter_map(|r| match &r.kind {
                    Some(Kind::$kind(x)) => Some(x.clone()),
                    _ => None,
                });
                pack(items, max_bytes)
                    .into_iter()
                    .map(|$field| $msg {
                        $field,
                        notice: None,
                    })
                    .collect()
            }
            fn notice(kind: stream_notice::Kind) -> Self {
                $msg {
                    $field: Vec::new(),
                    notice: Some(StreamNotice { kind: Some(kind) }),
                }
            }
        }
    };
}

stream_message!(StepStreamMessage, steps, Step);
stream_message!(EpisodeStreamMessage, episodes, Episode);
stream_message!(ScalarStreamMessage, scalars, Scalar);

/// The tag selection of a scalar stream, applied by the hub to stored and live scalars alike.
struct TagFilter {
    tags: Vec<String>,
    prefix: Option<String>,
}

impl RecordFilter for TagFilter {
    fn keep(&self, record: &Record) -> bool {
        match &record.kind {
            Some(Kind::Scalar(s)) => {
                self.tags.contains(&s.tag)
                    || self.prefix.as_deref().is_some_and(|p| s.tag.starts_with(p))
            }
            _ => true,
        }
    }
}

/// Most exact tags one scalar request may name.
pub const MAX_REQUEST_TAGS: usize = 256;

fn check_tags(tags: &[String], prefix: &str) -> Result<(), Status> {
    if tags.len() > MAX_REQUEST_TAGS {
        return Err(Status::invalid_argument(format!(
            "{} tags named; at most {MAX_REQUEST_TAGS}",
            tags.len()
        )));
    }
    for t in tags
        .iter()
        .map(String::as_str)
        .chain((!prefix.is_empty()).then_some(prefix))
    {
        telemetry_core::validate::check_tag(t)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(())
}

/// The hub subscription options for a scalar stream (one run).
pub fn scalar_subscribe_options(req: &ScalarStreamRequest) -> Result<SubscribeOptions, Status> {
    if req.run_id.is_empty() {
        return Err(Status::invalid_argument("a scalar stream needs a run_id"));
    }
    check_tags(&req.tags, &req.tag_prefix)?;
    let mut opts = SubscribeOptions::run(req.run_id.clone(), StreamKind::Scalars)
        .since(req.since_seq)
        .follow(req.follow);
    if !req.agent_id.is_empty() {
        opts = opts.agent(req.agent_id.clone());
    }
    let max_batch = match req.max_batch {
        0 => DEFAULT_MAX_BATCH,
        n => n as usize,
    };
    opts = opts.rate(Duration::ZERO, max_batch);
    if !req.tags.is_empty() || !req.tag_prefix.is_empty() {
        opts = opts.filter(Arc::new(TagFilter {
            tags: req.tags.clone(),
            prefix: (!req.tag_prefix.is_empty()).then(|| req.tag_prefix.clone()),
        }));
    }
    Ok(opts)
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
pub async fn forward<M: StreamMessage>(
    mut sub: Subscription,
    tx: mpsc::Sender<Result<M, Status>>,
    max_message_bytes: usize,
) {
    loop {
        let delivery = tokio::select! {
            () = tx.closed() => return,
            d = sub.next() => d,
        };
        let Some(delivery) = delivery else { return };
        let (msg, last) = match delivery {
            Delivery::Records(records) => {
                for m in M::records(&records, max_message_bytes) {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Delivery::Lagged {
                dropped_steps,
                dropped_episodes,
                dropped_lifecycle,
                dropped_scalars,
            } => (
                Ok(M::notice(stream_notice::Kind::Lagged(Lagged {
                    dropped: dropped_steps + dropped_episodes + dropped_lifecycle + dropped_scalars,
                    dropped_steps,
                    dropped_episodes,
                    dropped_scalars,
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
    /// A service over the hub and the store file, with default [`QueryLimits`].
    pub fn new(hub: Hub, reader: Arc<dyn BackendReader>, registry: Registry) -> Self {
        QueryService {
            hub,
            reader,
            registry,
            limits: QueryLimits::default(),
            metrics: Metrics::new(),
            slots: PeerSlots::default(),
        }
    }

    /// The same service with these limits, counting refusals in `metrics`.
    pub fn with_limits(mut self, limits: QueryLimits, metrics: Metrics) -> Self {
        self.limits = limits;
        self.metrics = metrics;
        self
    }

    /// Opens a stream of `stream` records for `req` (hub-backed for one run, store-backed for
    /// every run) for the client connection `peer`: refused with `RESOURCE_EXHAUSTED` when that
    /// connection holds [`QueryLimits::max_subscriptions_per_connection`] streams already.
    pub fn open<M: StreamMessage>(
        &self,
        req: &StreamRequest,
        stream: StreamKind,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<Result<M, Status>>, Status> {
        let slot = self.slot(peer)?;
        let max_bytes = self.limits.max_message_bytes;
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
            let page = Page {
                records: batch.min(MAX_PAGE_RECORDS),
                bytes: max_bytes,
            };
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                read_all::<M>(reader.as_ref(), since, filter, stream, page, tx);
            });
            return Ok(rx);
        }
        let sub = self
            .hub
            .try_subscribe(subscribe_options(req, stream)?)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        tokio::spawn(async move {
            let _slot = slot;
            forward(sub, tx, max_bytes).await;
        });
        Ok(rx)
    }

    /// A place for one more live stream of the client connection `peer`, or
    /// `RESOURCE_EXHAUSTED` (counted) when it holds
    /// [`QueryLimits::max_subscriptions_per_connection`] already.
    fn slot(&self, peer: Option<SocketAddr>) -> Result<Option<PeerSlot>, Status> {
        let cap = self.limits.max_subscriptions_per_connection;
        self.slots.acquire(peer, cap).map_err(|held| {
            self.metrics.refuse_subscription("per_connection");
            Status::resource_exhausted(format!(
                "this connection holds {held} streams already (at most {cap} per connection)"
            ))
        })
    }

    /// Opens a scalar stream of one run for the client connection `peer` (the same
    /// per-connection limit as [`QueryService::open`]).
    pub fn open_scalars(
        &self,
        req: &ScalarStreamRequest,
        peer: Option<SocketAddr>,
    ) -> Result<mpsc::Receiver<Result<ScalarStreamMessage, Status>>, Status> {
        let opts = scalar_subscribe_options(req)?;
        let slot = self.slot(peer)?;
        let max_bytes = self.limits.max_message_bytes;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let sub = self
            .hub
            .try_subscribe(opts)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        tokio::spawn(async move {
            let _slot = slot;
            forward(sub, tx, max_bytes).await;
        });
        Ok(rx)
    }

    fn read_scalars_blocking(
        &self,
        req: &ReadScalarsRequest,
    ) -> Result<ReadScalarsResponse, Status> {
        if req.run_id.is_empty() {
            return Err(Status::invalid_argument("ReadScalars needs a run_id"));
        }
        check_tags(&req.tags, &req.tag_prefix)?;
        if let (Some(lo), Some(hi)) = (req.min_step, req.max_step) {
            if lo > hi {
                return Err(Status::invalid_argument(format!(
                    "min_step {lo} is above max_step {hi}"
                )));
            }
        }
        let q = ScalarQuery {
            run_id: req.run_id.clone(),
            tags: req.tags.clone(),
            tag_prefix: (!req.tag_prefix.is_empty()).then(|| req.tag_prefix.clone()),
            agent_id: (!req.agent_id.is_empty()).then(|| req.agent_id.clone()),
            min_step: req.min_step,
            max_step: req.max_step,
            max_points: req.max_points as usize,
        };
        let series = self
            .reader
            .read_scalars(&q)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(ReadScalarsResponse { series })
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

/// How much a store-backed stream reads and sends at once.
#[derive(Debug, Clone, Copy)]
struct Page {
    /// Records per page (the client's `max_batch`).
    records: usize,
    /// Bytes per message, and roughly per page.
    bytes: usize,
}

/// Streams every stored record after `since` matching `filter`. Pages are bounded in records
/// and in bytes: the first reads a few records, each later one as many as fit `page.bytes` at
/// the largest record size seen so far (at least one), so a page of large records stays near
/// the byte budget and a page of small ones is a full `page.records`.
fn read_all<M: StreamMessage>(
    reader: &dyn BackendReader,
    since: u64,
    filter: Filter,
    stream: StreamKind,
    page: Page,
    tx: mpsc::Sender<Result<M, Status>>,
) {
    let mut cursor = since;
    let mut largest = 0usize;
    let mut limit = page.records.clamp(1, FIRST_PAGE_RECORDS);
    loop {
        let read: Result<Vec<Record>, _> = match stream {
            StreamKind::Steps => reader
                .steps_page(cursor, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Episodes => reader
                .episodes_page(cursor, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
            StreamKind::Lifecycle => reader.events_page(cursor, None, limit),
            StreamKind::Scalars => reader
                .scalars_page(cursor, &filter, limit)
                .map(|v| v.into_iter().map(Record::from).collect()),
        };
        let records = match read {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
        };
        let Some(last) = records.last().map(Record::seq_id) else {
            let _ = tx.blocking_send(Ok(M::notice(stream_notice::Kind::CaughtUp(CaughtUp {
                last_seq: cursor,
            }))));
            return;
        };
        cursor = last;
        let full = records.len() >= limit;
        largest = records
            .iter()
            .map(prost::Message::encoded_len)
            .fold(largest, usize::max);
        limit = (page.bytes / largest.max(1)).clamp(1, page.records.max(1));
        let arcs: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
        for m in M::records(&arcs, page.bytes) {
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
    type StreamRunScalarsStream = Out<ScalarStreamMessage>;

    async fn stream_run_scalars(
        &self,
        request: Request<ScalarStreamRequest>,
    ) -> Result<Response<Self::StreamRunScalarsStream>, Status> {
        let peer = request.remote_addr();
        let rx = self.open_scalars(request.get_ref(), peer)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read_scalars(
        &self,
        request: Request<ReadScalarsRequest>,
    ) -> Result<Response<ReadScalarsResponse>, Status> {
        let this = self.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || this.read_scalars_blocking(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn list_tags(
        &self,
        request: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        let reader = self.reader.clone();
        let req = request.into_inner();
        if req.run_id.is_empty() {
            return Err(Status::invalid_argument("ListTags needs a run_id"));
        }
        tokio::task::spawn_blocking(move || reader.list_tags(&req.run_id, MAX_LIST_TAGS))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(|tags| Response::new(ListTagsResponse { tags }))
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn stream_run_steps(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunStepsStream>, Status> {
        let peer = request.remote_addr();
        let rx = self.open::<StepStreamMessage>(request.get_ref(), StreamKind::Steps, peer)?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_run_episodes(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunEpisodesStream>, Status> {
        let peer = request.remote_addr();
        let rx =
            self.open::<EpisodeStreamMessage>(request.get_ref(), StreamKind::Episodes, peer)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn step(seq: u64, bytes: usize) -> Arc<Record> {
        Arc::new(Record::from(telemetry_core::pb::RunStep {
            run_id: "r".into(),
            observation_json: "x".repeat(bytes),
            producer_seq: seq,
            ..Default::default()
        }))
    }

    #[test]
    fn messages_stay_within_the_byte_budget_and_keep_every_record_in_order() {
        let records: Vec<_> = (1..=50)
            .map(|s| step(s, 900 * (s as usize % 7 + 1)))
            .collect();
        let budget = 8 * 1024;
        let msgs = StepStreamMessage::records(&records, budget);
        assert!(msgs.len() > 1);
        for m in &msgs {
            assert!(m.encoded_len() <= budget, "{} > {budget}", m.encoded_len());
            assert!(!m.steps.is_empty());
        }
        let seqs: Vec<u64> = msgs
            .iter()
            .flat_map(|m| m.steps.iter().map(|s| s.producer_seq))
            .collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_larger_than_the_budget_goes_alone() {
        let records = vec![step(1, 10), step(2, 5000), step(3, 10)];
        let msgs = StepStreamMessage::records(&records, 1000);
        let sizes: Vec<usize> = msgs.iter().map(|m| m.steps.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert!(EpisodeStreamMessage::records(&records, 1000).is_empty());
    }
}
