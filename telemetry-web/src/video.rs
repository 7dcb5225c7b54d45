//! The dashboard's frame views (issue 18): a run agent's live frames as a rate-limited SSE
//! stream, a frame by its `frame_ref` for episode replay, an episode's frame list, and
//! "export clip" through the same library as `gym-telemetry-daemon export-video`.
//!
//! Frames come from the server's frame store ([`telemetry_server::LocalAccess::frame_store`]);
//! nothing here keeps pixels beyond the one frame being sent. Bounds: the live stream sends at
//! most `WebConfig::video_max_hz` frames a second (default 10; a page may ask for fewer) and
//! skips the frames stored in between, counting them; it shares the SSE stream slots; a frame
//! above `WebConfig::max_live_frame_bytes` is not sent (counted). One export runs at a time
//! (another is refused with 503, counted). A missing or evicted frame is a 404 whose JSON body
//! says `"missing": true` and why, never an error page.

use std::{convert::Infallible, path::PathBuf, sync::atomic::Ordering, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use base64::Engine as _;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use telemetry_core::{frames::parse_frame_ref, pb};
use telemetry_frames::{
    export::{export_episode, ExportOptions, VideoFormat},
    ExportRecord, FrameStore, Lookup, MissingReason, StoreError as FrameStoreError, MAX_LIST,
};
use tokio::time::MissedTickBehavior;

use crate::{AppState, WebError, WebStats};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/runs/{run}/video", get(live))
        .route("/runs/{run}/frames", get(episode_frames))
        .route("/runs/{run}/export", post(export))
        .route("/runs/{run}/exports", get(exports))
        .route("/frame", get(frame))
}

impl From<FrameStoreError> for WebError {
    fn from(e: FrameStoreError) -> Self {
        match e {
            FrameStoreError::Frame(r) => WebError::BadRequest(r.to_string()),
            other => WebError::Internal(format!("frame store: {other}")),
        }
    }
}

async fn frames_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FrameStoreError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(WebError::from)
}

/// The JSON body of a frame that is not there (served with 404).
fn missing(frame_ref: &str, reason: MissingReason) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "missing": true, "reason": reason.as_str(), "frame_ref": frame_ref })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct FrameQuery {
    #[serde(rename = "ref")]
    frame_ref: String,
}

/// `GET /api/frame?ref=FRAME_REF`: the frame's PNG, or 404 `{"missing": true, "reason": …}`.
async fn frame(
    State(st): State<AppState>,
    Query(q): Query<FrameQuery>,
) -> Result<Response, WebError> {
    // Checked here so a malformed reference is a 400 before the store is touched.
    parse_frame_ref(&q.frame_ref).map_err(|e| WebError::BadRequest(e.to_string()))?;
    let store = st.access.frame_store();
    let r = q.frame_ref.clone();
    let lookup = frames_blocking(move || store.get_ref(&r)).await?;
    Ok(match lookup {
        Lookup::Found(f) => {
            WebStats::bump(&st.stats.frames_served, 1);
            (
                [
                    (header::CONTENT_TYPE, "image/png"),
                    // A stored frame never changes under its reference.
                    (header::CACHE_CONTROL, "private, max-age=3600"),
                ],
                f.data,
            )
                .into_response()
        }
        Lookup::Missing(reason) => {
            WebStats::bump(&st.stats.frames_missing, 1);
            missing(&q.frame_ref, reason)
        }
    })
}

#[derive(Debug, Deserialize)]
struct EpisodeFramesQuery {
    #[serde(default)]
    agent: String,
    episode: u64,
}

/// `GET /api/runs/{run}/frames?agent=A&episode=N`: the episode's stored frames (no pixels), at
/// most the store's page size.
async fn episode_frames(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<EpisodeFramesQuery>,
) -> Result<Json<Value>, WebError> {
    let store = st.access.frame_store();
    let (r, a) = (run.clone(), q.agent.clone());
    let ep = frames_blocking(move || store.list_episode(&r, &a, q.episode, None, MAX_LIST)).await?;
    let frames: Vec<Value> = ep
        .frames
        .iter()
        .map(|f| {
            json!({
                "step_index": f.step_index,
                "frame_ref": telemetry_core::frames::frame_ref(&run, &q.agent, q.episode, f.step_index),
                "width": f.width, "height": f.height, "bytes": f.bytes, "render_fps": f.render_fps,
            })
        })
        .collect();
    Ok(Json(json!({
        "frames": frames,
        "pinned": ep.pinned,
        "truncated": ep.frames.len() >= MAX_LIST,
    })))
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    #[serde(default)]
    agent: String,
    hz: Option<f64>,
}

/// Where the live stream stands: the last frame sent and what it counted.
#[derive(Debug, Default)]
struct LiveState {
    last: Option<(u64, u64)>,
    last_ref: String,
    sent: u64,
    dropped: u64,
    too_large: u64,
}

/// Frames stored between `last` (exclusive) and `new` (exclusive) of one agent: the ones the
/// live view skipped. Counts the rest of the last episode and the start of the new one (an
/// episode entirely in between is not counted; each count is bounded by the store's page).
fn skipped_between(
    store: &FrameStore,
    run: &str,
    agent: &str,
    last: Option<(u64, u64)>,
    new: (u64, u64),
) -> Result<u64, FrameStoreError> {
    let Some((lep, lstep)) = last else {
        return Ok(0);
    };
    let before_new = |after: Option<u64>| -> Result<u64, FrameStoreError> {
        let page = store.list_episode(run, agent, new.0, after, MAX_LIST)?;
        Ok(page.frames.iter().filter(|f| f.step_index < new.1).count() as u64)
    };
    if lep == new.0 {
        return before_new(Some(lstep));
    }
    let rest = store
        .list_episode(run, agent, lep, Some(lstep), MAX_LIST)?
        .frames
        .len() as u64;
    Ok(rest + before_new(None)?)
}

/// One tick of the live stream: the newest frame when it is new, as an SSE event.
fn tick(
    store: &FrameStore,
    run: &str,
    agent: &str,
    max_bytes: usize,
    s: &mut LiveState,
) -> Result<Option<(Event, u64)>, FrameStoreError> {
    let Some((fref, lookup)) = store.latest(run, Some(agent))? else {
        return Ok(None);
    };
    if fref == s.last_ref {
        return Ok(None);
    }
    let Lookup::Found(f) = lookup else {
        return Ok(None);
    };
    let key = (f.episode_index, f.step_index);
    let skipped = skipped_between(store, run, agent, s.last, key)?;
    s.last = Some(key);
    s.last_ref = fref.clone();
    if f.data.len() > max_bytes {
        s.too_large += 1;
        s.dropped += skipped + 1;
        return Ok(None);
    }
    s.dropped += skipped;
    s.sent += 1;
    let data = json!({
        "frame_ref": fref,
        "episode_index": f.episode_index,
        "step_index": f.step_index,
        "width": f.width,
        "height": f.height,
        "wall_time_unix_ns": f.wall_time_unix_ns,
        "png": base64::engine::general_purpose::STANDARD.encode(&f.data),
        "sent": s.sent,
        "dropped": s.dropped,
        "too_large": s.too_large,
    });
    Ok(Some((
        Event::default().event("frame").data(data.to_string()),
        skipped,
    )))
}

/// `GET /api/runs/{run}/video?agent=A&hz=H`: SSE of the agent's newest frame, at most
/// `min(hz, video_max_hz)` a second. Each `frame` event carries the PNG (base64) and the
/// counts so far: `sent`, `dropped` (stored frames skipped between two sent ones) and
/// `too_large`.
async fn live(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + Send>, WebError> {
    let max = st.cfg.video_max_hz;
    let hz = match q.hz {
        Some(h) if !(h.is_finite() && h > 0.0) => {
            return Err(WebError::BadRequest(format!(
                "hz {h} must be a positive number"
            )))
        }
        Some(h) => h.min(max),
        None => max,
    };
    let permit = st.sse_slots.clone().try_acquire_owned().map_err(|_| {
        WebStats::bump(&st.stats.sse_refused, 1);
        WebError::TooManyStreams(st.cfg.max_sse_streams)
    })?;
    WebStats::bump(&st.stats.video_streams, 1);
    let period = Duration::from_secs_f64(1.0 / hz);
    let store = st.access.frame_store();
    let stats = st.stats.clone();
    let stop = st.access.shutdown_token();
    let max_bytes = st.cfg.max_live_frame_bytes;
    let agent = q.agent;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let state = (interval, LiveState::default());
    let events = futures::stream::unfold(state, move |(mut interval, mut s)| {
        let (store, run, agent, stats, stop) = (
            store.clone(),
            run.clone(),
            agent.clone(),
            stats.clone(),
            stop.clone(),
        );
        let _held = &permit;
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return None,
                    _ = interval.tick() => {}
                }
                let (r, a) = (run.clone(), agent.clone());
                let st2 = store.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let mut s = s;
                    let out = tick(&st2, &r, &a, max_bytes, &mut s);
                    (s, out)
                })
                .await;
                let (back, out) = match res {
                    Ok(v) => v,
                    Err(_) => return None,
                };
                s = back;
                match out {
                    Ok(Some((event, skipped))) => {
                        WebStats::bump(&stats.video_frames_sent, 1);
                        WebStats::bump(&stats.video_frames_dropped, skipped);
                        return Some((Ok(event), (interval, s)));
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "live frames: frame store read failed");
                        let ev = Event::default()
                            .event("error")
                            .data(json!({ "error": e.to_string() }).to_string());
                        return Some((Ok(ev), (interval, s)));
                    }
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Debug, Deserialize)]
struct ExportForm {
    #[serde(default)]
    agent: String,
    episode: u64,
    /// `mp4` (default), `webm` or `gif`.
    #[serde(default)]
    format: String,
}

/// A file-name-safe form of an id.
fn safe(s: &str) -> String {
    let t: String = s
        .chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() || t.starts_with('.') {
        format!("_{t}")
    } else {
        t
    }
}

/// `POST /api/runs/{run}/export` `{agent, episode, format}`: encodes the stored episode into
/// `<var-dir>/exports/<run>/` (the library `export-video` uses; a GIF when ffmpeg is absent)
/// and registers the clip as an artifact of the run (the frame store's export list and an
/// `Artifact` record). One export at a time: another gets 503.
async fn export(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Json(f): Json<ExportForm>,
) -> Result<Json<Value>, WebError> {
    let format = match f.format.as_str() {
        "" | "mp4" => VideoFormat::Mp4,
        "webm" => VideoFormat::Webm,
        "gif" => VideoFormat::Gif,
        other => {
            return Err(WebError::BadRequest(format!(
                "format {other:?}: mp4, webm or gif"
            )))
        }
    };
    let Ok(_slot) = st.export_slot.clone().try_acquire_owned() else {
        WebStats::bump(&st.stats.exports_refused, 1);
        return Err(WebError::Busy(
            "an export is already running; try again when it ends".into(),
        ));
    };
    let dir: PathBuf = st.access.var_dir().join("exports").join(safe(&run));
    let out = dir.join(format!(
        "{}-ep{}.{}",
        safe(if f.agent.is_empty() {
            "agent"
        } else {
            &f.agent
        }),
        f.episode,
        format.as_str()
    ));
    let opts = ExportOptions {
        format: Some(format),
        ffmpeg: st.cfg.ffmpeg.clone(),
        ..ExportOptions::default()
    };
    let store = st.access.frame_store();
    let (r, a, ep) = (run.clone(), f.agent.clone(), f.episode);
    let report = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let report = export_episode(&store, &r, &a, ep, &out, &opts).map_err(|e| match e {
            telemetry_frames::export::ExportError::NoFrames { .. } => format!("missing: {e}"),
            other => other.to_string(),
        })?;
        store
            .register_export(&ExportRecord {
                run_id: r,
                agent_id: a,
                episode_index: ep,
                path: report.path.display().to_string(),
                format: report.format.as_str().to_owned(),
                frames: report.frames,
            })
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(report)
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))?;
    let report = match report {
        Ok(r) => r,
        Err(e) if e.starts_with("missing: ") => {
            WebStats::bump(&st.stats.exports_refused, 1);
            return Err(WebError::NotFound(e.trim_start_matches("missing: ").into()));
        }
        Err(e) => return Err(WebError::Internal(format!("export: {e}"))),
    };
    WebStats::bump(&st.stats.exports, 1);
    let path = report.path.display().to_string();
    let info = json!({
        "agent_id": f.agent,
        "episode_index": f.episode,
        "format": report.format.as_str(),
        "frames": report.frames,
        "skipped_frames": report.skipped,
        "width": report.width,
        "height": report.height,
        "fps": report.fps,
    });
    st.access
        .append_records(vec![pb::Record::from(pb::Artifact {
            run_id: run.clone(),
            timestamp: Some(telemetry_core::timestamp::now()),
            kind: "video".into(),
            path: path.clone(),
            info_json: info.to_string(),
            ..pb::Artifact::default()
        })])
        .await?;
    Ok(Json(json!({
        "path": path,
        "format": report.format.as_str(),
        "frames": report.frames,
        "skipped": report.skipped,
        "width": report.width,
        "height": report.height,
        "fps": report.fps,
        "fell_back_to_gif": report.fell_back_to_gif,
    })))
}

/// `GET /api/runs/{run}/exports`: the clips exported from the run, oldest first.
async fn exports(
    State(st): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, WebError> {
    let store = st.access.frame_store();
    let list = frames_blocking(move || store.exports(&run)).await?;
    Ok(Json(json!({
        "exports": list.iter().map(|e| json!({
            "agent_id": e.agent_id, "episode_index": e.episode_index, "path": e.path,
            "format": e.format, "frames": e.frames,
        })).collect::<Vec<_>>(),
    })))
}

/// Counters of the frame views, for `GET /api/stats`.
pub(crate) fn stats_json(st: &AppState) -> Value {
    let s = &st.stats;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "video_streams": g(&s.video_streams),
        "video_frames_sent": g(&s.video_frames_sent),
        "video_frames_dropped": g(&s.video_frames_dropped),
        "frames_served": g(&s.frames_served),
        "frames_missing": g(&s.frames_missing),
        "exports": g(&s.exports),
        "exports_refused": g(&s.exports_refused),
    })
}
