//! `gym_telemetry.v1.Frames`: frames on their own stream into the frame store
//! (`telemetry-frames`, `<var-dir>/frames`), and the small read API a viewer needs.
//!
//! Frames never pass through the record pipeline: a frame is large, is kept by a different
//! retention, and its loss must never hold records back. A `Publish` stream is acked batch by
//! batch, in order, after the batch is durable in the frame store; resends are duplicates by
//! the frame's natural key (run, agent, episode, step), so a shim resends after a reconnect
//! without a watermark. A worker credential may publish frames of its own run only (others are
//! rejected in the ack as `wrong_run`); pinning is the operator's. Reads answer a missing,
//! evicted or corrupt frame with `missing` and a reason, never with an error status.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use telemetry_core::pb::{
    frames_server::Frames, FrameAck, FrameBatch, FrameInfo, FrameResponse, FrameStats,
    FrameStatsRequest, GetFrameRequest, LatestFrameRequest, ListFramesRequest, ListFramesResponse,
    PinEpisodeRequest, PinEpisodeResponse,
};
use telemetry_frames::{FrameStore, StoreError};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Principal;

/// Frame batches of one stream waiting for the store at most; then the stream stops reading.
const FRAME_WINDOW: usize = 4;

/// The Frames service over one frame store.
#[derive(Clone)]
pub struct FramesService {
    store: Arc<FrameStore>,
    wrong_run: prometheus_client::metrics::counter::Counter,
}

impl FramesService {
    /// A service over `store`.
    pub fn new(store: Arc<FrameStore>) -> Self {
        FramesService {
            store,
            wrong_run: Default::default(),
        }
    }

    /// Counts frames refused for another run's credential in `counter` (the daemon's
    /// `gym_telemetry_frames_rejected_total{reason="wrong_run"}`).
    pub fn with_wrong_run_counter(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.wrong_run = counter;
        self
    }
}

fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::Frame(e) => Status::invalid_argument(e.to_string()),
        other => {
            tracing::warn!(error = %other, "frame store failed");
            Status::unavailable(format!("frame store: {other}"))
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("frame store task: {e}")))?
        .map_err(status_of)
}

type AckStream = Pin<Box<dyn Stream<Item = Result<FrameAck, Status>> + Send>>;

#[tonic::async_trait]
impl Frames for FramesService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<FrameBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let principal = Principal::of(&request);
        let mut inbound = request.into_inner();
        let store = Arc::clone(&self.store);
        let wrong_run = self.wrong_run.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(FRAME_WINDOW);
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let batch_id = batch.batch_id;
                // Frames of runs this credential may not write are refused here, one by one.
                let mut wrong = Vec::new();
                let mut frames = Vec::with_capacity(batch.frames.len());
                let mut index_of = Vec::with_capacity(batch.frames.len());
                for (i, f) in batch.frames.into_iter().enumerate() {
                    if principal.may_write(&f.run_id) {
                        index_of.push(i as u32);
                        frames.push(f);
                    } else {
                        wrong.push(i as u32);
                    }
                }
                if !wrong.is_empty() {
                    wrong_run.inc_by(wrong.len() as u64);
                }
                let store = Arc::clone(&store);
                let result = blocking(move || store.append(&frames)).await;
                let ack = result.map(|report| {
                    let mut ack = report.into_ack(batch_id);
                    for r in &mut ack.rejected {
                        r.index = index_of.get(r.index as usize).copied().unwrap_or(r.index);
                    }
                    ack.rejected.extend(wrong.into_iter().map(|index| {
                        telemetry_core::pb::RejectedFrame {
                            index,
                            reason: "wrong_run".into(),
                        }
                    }));
                    ack
                });
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_frame(
        &self,
        request: Request<GetFrameRequest>,
    ) -> Result<Response<FrameResponse>, Status> {
        let frame_ref = request.into_inner().frame_ref;
        let store = Arc::clone(&self.store);
        let r = frame_ref.clone();
        let lookup = blocking(move || store.get_ref(&r)).await?;
        Ok(Response::new(lookup.into_response(frame_ref)))
    }

    async fn latest_frame(
        &self,
        request: Request<LatestFrameRequest>,
    ) -> Result<Response<FrameResponse>, Status> {
        let req = request.into_inner();
        let store = Arc::clone(&self.store);
        let latest = blocking(move || {
            let agent = (!req.agent_id.is_empty()).then_some(req.agent_id.as_str());
            store.latest(&req.run_id, agent)
        })
        .await?;
        Ok(Response::new(match latest {
            Some((frame_ref, lookup)) => lookup.into_response(frame_ref),
            None => FrameResponse {
                missing: true,
                missing_reason: telemetry_frames::MissingReason::NotFound
                    .as_str()
                    .to_owned(),
                ..Default::default()
            },
        }))
    }

    async fn list_frames(
        &self,
        request: Request<ListFramesRequest>,
    ) -> Result<Response<ListFramesResponse>, Status> {
        let req = request.into_inner();
        let store = Arc::clone(&self.store);
        let (run, agent, episode) = (req.run_id.clone(), req.agent_id.clone(), req.episode_index);
        let listed = blocking(move || {
            let limit = if req.limit == 0 {
                telemetry_frames::MAX_LIST
            } else {
                req.limit as usize
            };
            let after = u64::try_from(req.after_step).ok();
            store.list_episode(&req.run_id, &req.agent_id, req.episode_index, after, limit)
        })
        .await?;
        let render_fps = listed
            .frames
            .iter()
            .map(|f| f.render_fps)
            .find(|f| *f > 0.0)
            .unwrap_or(0.0);
        Ok(Response::new(ListFramesResponse {
            frames: listed
                .frames
                .into_iter()
                .map(|f| FrameInfo {
                    frame_ref: telemetry_core::frames::frame_ref(
                        &run,
                        &agent,
                        episode,
                        f.step_index,
                    ),
                    step_index: f.step_index,
                    width: f.width,
                    height: f.height,
                    bytes: f.bytes,
                    wall_time_unix_ns: f.wall_time_unix_ns,
                })
                .collect(),
            pinned: listed.pinned,
            render_fps,
        }))
    }

    async fn pin_episode(
        &self,
        request: Request<PinEpisodeRequest>,
    ) -> Result<Response<PinEpisodeResponse>, Status> {
        Principal::of(&request).require_operator("pin episodes of")?;
        let req = request.into_inner();
        let store = Arc::clone(&self.store);
        let found =
            blocking(move || store.pin(&req.run_id, &req.agent_id, req.episode_index, req.pinned))
                .await?;
        Ok(Response::new(PinEpisodeResponse { found }))
    }

    async fn stats(
        &self,
        _request: Request<FrameStatsRequest>,
    ) -> Result<Response<FrameStats>, Status> {
        let store = Arc::clone(&self.store);
        Ok(Response::new(blocking(move || store.stats()).await?))
    }
}
