//! The JSON endpoints under `/api` (behind `auth::require`): runs, tags, downsampled scalars,
//! episodes, the steps of one episode for replay, live streams, run control, counters.
//!
//! Every read is bounded: list sizes are capped, ReadScalars keeps its own caps (buckets per
//! series), and the replay read scans a bounded number of stored steps.

use std::{collections::HashMap, sync::atomic::Ordering};

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Value};
use telemetry_core::{
    jsonl::to_line,
    pb::{
        CancelRunRequest, ListRunsRequest, ListTagsRequest, ReadScalarsRequest, Record,
        SubmitRunRequest, WorkerCommand,
    },
    timestamp, ControlMode, ModeFilter,
};
use telemetry_hub::StreamKind;
use telemetry_store::Filter;

use crate::{
    sse::{self, StreamSelect},
    AppState, WebError,
};

/// Episodes returned by one request at most.
pub const MAX_EPISODES: usize = 5000;
/// Steps returned for one replayed episode at most.
pub const MAX_REPLAY_STEPS: usize = 20_000;
/// Stored steps one replay read scans at most to find its episode.
pub const MAX_REPLAY_SCAN: usize = 1_000_000;
/// Runs the replay list looks into at most.
pub const MAX_REPLAY_RUNS: usize = 100;
/// Steps a page gets when it opens a steps stream without a resume point.
pub const STEP_TAIL: usize = 100;

pub(crate) fn routes(_state: AppState) -> Router<AppState> {
    Router::new()
        .route("/runs", get(crate::runs::runs).post(submit))
        .route("/runs/live", get(crate::runs::live))
        .route("/runs/{run}/cancel", post(cancel))
        .route("/runs/{run}/tags", get(tags))
        .route("/runs/{run}/scalars", get(scalars))
        .route("/runs/{run}/episodes", get(episodes))
        .route("/runs/{run}/replay", get(replay))
        .route("/runs/{run}/events/{kind}", get(events))
        .route("/replays", get(replays))
        .route("/stats", get(stats))
        .merge(crate::video::routes())
        .merge(crate::policies::routes())
}

pub(crate) fn ts_ms(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| timestamp::to_unix_nanos(t) / 1_000_000)
}

fn mode_filter(mode: Option<&str>) -> Result<ModeFilter, WebError> {
    match mode.filter(|m| !m.is_empty()) {
        None => Ok(ModeFilter::Any),
        Some(m) => m
            .parse::<ControlMode>()
            .map(ModeFilter::Exact)
            .map_err(|e| WebError::BadRequest(format!("control mode {m:?}: {e}"))),
    }
}

async fn tags(
    State(st): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, WebError> {
    let resp = st.access.list_tags(ListTagsRequest { run_id: run }).await?;
    let tags: Vec<Value> = resp
        .tags
        .into_iter()
        .map(|t| {
            json!({
                "tag": t.tag, "agent_id": t.agent_id, "points": t.points,
                "first_step": t.first_step, "last_step": t.last_step,
                "last_value": finite(t.last_value),
                "last_ts_ms": ts_ms(t.last_timestamp.as_ref()),
            })
        })
        .collect();
    Ok(Json(json!({ "tags": tags })))
}

/// JSON has no NaN or infinity: those become strings, as in the JSONL shape.
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

#[derive(Debug, Deserialize)]
struct ScalarsQuery {
    tag: String,
    agent: Option<String>,
    min_step: Option<i64>,
    max_step: Option<i64>,
    max_points: Option<u32>,
}

async fn scalars(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<ScalarsQuery>,
) -> Result<Json<Value>, WebError> {
    let resp = st
        .access
        .read_scalars(ReadScalarsRequest {
            run_id: run,
            tags: vec![q.tag],
            tag_prefix: String::new(),
            min_step: q.min_step,
            max_step: q.max_step,
            max_points: q.max_points.unwrap_or(1000),
            agent_id: q.agent.unwrap_or_default(),
        })
        .await?;
    let series: Vec<Value> = resp
        .series
        .into_iter()
        .map(|s| {
            // Columns, as uPlot takes them: far smaller than an object per bucket.
            let n = s.buckets.len();
            let (mut step, mut last, mut min, mut max, mut count, mut time_ms) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for b in &s.buckets {
                step.push(json!(b.last_step));
                last.push(finite(b.last));
                min.push(finite(b.min));
                max.push(finite(b.max));
                count.push(json!(b.count));
                // Milliseconds (what JavaScript dates take); null when the point had no time.
                time_ms.push(if b.last_time_ns == 0 {
                    Value::Null
                } else {
                    json!(b.last_time_ns.div_euclid(1_000_000))
                });
            }
            json!({
                "tag": s.tag, "agent_id": s.agent_id, "points": s.points,
                "step": step, "last": last, "min": min, "max": max, "count": count,
                "time_ms": time_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "series": series })))
}

#[derive(Debug, Deserialize)]
struct EpisodesQuery {
    agent: Option<String>,
    mode: Option<String>,
    limit: Option<usize>,
}

fn lines(records: impl IntoIterator<Item = Record>) -> Value {
    Value::Array(
        records
            .into_iter()
            .filter_map(|r| serde_json::from_str(&to_line(&r)).ok())
            .collect(),
    )
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
}

async fn episodes(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<EpisodesQuery>,
) -> Result<Json<Value>, WebError> {
    let mode = mode_filter(q.mode.as_deref())?;
    let limit = q.limit.unwrap_or(MAX_EPISODES).min(MAX_EPISODES);
    let reader = st.access.reader();
    let eps = blocking(move || {
        Ok(reader.run_agent_episodes(&run, q.agent.as_deref().filter(|a| !a.is_empty()), limit)?)
    })
    .await?;
    let eps = eps
        .into_iter()
        .filter(|e| mode.matches(&e.control_mode))
        .map(Record::from);
    Ok(Json(json!({ "episodes": lines(eps) })))
}

#[derive(Debug, Deserialize)]
struct ReplayQuery {
    agent: Option<String>,
    episode: u64,
}

/// The steps of one stored episode, in order (bounded scan of the run's steps).
async fn replay(
    State(st): State<AppState>,
    Path(run): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<Value>, WebError> {
    let reader = st.access.reader();
    let (steps, scanned, complete) = blocking(move || {
        let filter = Filter {
            run_id: Some(run),
            agent_id: q.agent.filter(|a| !a.is_empty()),
            ..Filter::default()
        };
        let mut since = 0;
        let mut scanned = 0usize;
        let mut out = Vec::new();
        loop {
            let page = reader.steps_page(since, &filter, 4096)?;
            let Some(last) = page.last() else {
                return Ok((out, scanned, true));
            };
            since = last.seq_id;
            scanned += page.len();
            let mut past = false;
            for s in page {
                if s.episode_index == q.episode {
                    if out.len() < MAX_REPLAY_STEPS {
                        out.push(s);
                    }
                } else if s.episode_index > q.episode && !out.is_empty() {
                    past = true;
                }
            }
            if past {
                return Ok((out, scanned, true));
            }
            if scanned >= MAX_REPLAY_SCAN {
                return Ok((out, scanned, false));
            }
        }
    })
    .await?;
    let n = steps.len();
    Ok(Json(json!({
        "steps": lines(steps.into_iter().map(Record::from)),
        "scanned": scanned,
        "complete": complete && n < MAX_REPLAY_STEPS,
    })))
}

#[derive(Debug, Deserialize)]
struct ReplaysQuery {
    mode: Option<String>,
}

/// Stored episodes across runs, newest runs first (`?mode=human`: the Human Replay list).
async fn replays(
    State(st): State<AppState>,
    Query(q): Query<ReplaysQuery>,
) -> Result<Json<Value>, WebError> {
    let filter = mode_filter(q.mode.as_deref())?;
    let runs = st
        .access
        .list_runs(ListRunsRequest {
            control_mode: match filter {
                ModeFilter::Exact(m) => m.as_str().to_owned(),
                _ => String::new(),
            },
        })
        .await?
        .runs;
    let mut ids: Vec<(i64, String)> = runs
        .into_iter()
        .map(|r| (ts_ms(r.last_timestamp.as_ref()).unwrap_or(0), r.run_id))
        .collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids.truncate(MAX_REPLAY_RUNS);
    let reader = st.access.reader();
    let eps = blocking(move || {
        let mut all = Vec::new();
        for (_, run) in ids {
            let room = MAX_EPISODES.saturating_sub(all.len());
            if room == 0 {
                break;
            }
            let eps = reader.run_agent_episodes(&run, None, room)?;
            all.extend(
                eps.into_iter()
                    .filter(|e| filter.matches(&e.control_mode))
                    .map(Record::from),
            );
        }
        Ok(all)
    })
    .await?;
    Ok(Json(json!({ "episodes": lines(eps) })))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    agent: Option<String>,
    mode: Option<String>,
    since: Option<u64>,
}

async fn events(
    State(st): State<AppState>,
    Path((run, kind)): Path<(String, String)>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, WebError> {
    let stream = match kind.as_str() {
        "steps" => StreamKind::Steps,
        "episodes" => StreamKind::Episodes,
        "scalars" => StreamKind::Scalars,
        other => {
            return Err(WebError::BadRequest(format!(
                "no stream {other:?}: steps, episodes or scalars"
            )))
        }
    };
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| WebError::BadRequest("Last-Event-ID is not a seq".into()))?,
        ),
        None => None,
    };
    let agent = q.agent.filter(|a| !a.is_empty());
    let mut since = last_event_id.or(q.since);
    if since.is_none() && stream == StreamKind::Steps {
        // A fresh page wants the last steps, not the whole run: start just before them.
        let reader = st.access.reader();
        let r = run.clone();
        since = Some(
            blocking(move || {
                let tail = reader.tail_steps(&r, STEP_TAIL)?;
                Ok(tail.first().map_or(0, |s| s.seq_id.saturating_sub(1)))
            })
            .await?,
        );
    }
    let sel = StreamSelect {
        run_id: run,
        stream,
        agent_id: agent,
        mode: mode_filter(q.mode.as_deref())?,
        since,
    };
    sse::open(&st, sel)
}

#[derive(Debug, Deserialize)]
struct SubmitForm {
    #[serde(default)]
    run_id: String,
    argv: Vec<String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    legacy_jsonl: bool,
    #[serde(default)]
    agent_id: String,
    #[serde(default)]
    control_mode: String,
    #[serde(default)]
    game_id: String,
    seed: Option<u64>,
}

/// `POST /api/runs` (JSON): SubmitRun as the operator, with the service's checks.
async fn submit(
    State(st): State<AppState>,
    Json(f): Json<SubmitForm>,
) -> Result<Json<Value>, WebError> {
    if f.argv.is_empty() {
        return Err(WebError::BadRequest("the command (argv) is empty".into()));
    }
    let resp = st
        .access
        .submit_run(SubmitRunRequest {
            run_id: f.run_id,
            command: Some(WorkerCommand {
                argv: f.argv,
                env: f.env,
                working_dir: f.working_dir,
                legacy_jsonl: f.legacy_jsonl,
            }),
            agent_id: f.agent_id,
            control_mode: f.control_mode,
            game_id: f.game_id,
            seed: f.seed,
            metadata_json: String::new(),
            ..Default::default()
        })
        .await?;
    Ok(Json(json!({ "run_id": resp.run_id })))
}

/// `POST /api/runs/{run}/cancel`.
async fn cancel(
    State(st): State<AppState>,
    Path(run): Path<String>,
) -> Result<Json<Value>, WebError> {
    let resp = st
        .access
        .cancel_run(CancelRunRequest { run_id: run })
        .await?;
    Ok(Json(json!({ "cancelled": resp.cancelled })))
}

async fn stats(State(st): State<AppState>) -> Json<Value> {
    let s = &st.stats;
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Json(json!({
        "unauthenticated": g(&s.unauthenticated),
        "logins": g(&s.logins),
        "sse_opened": g(&s.sse_opened),
        "sse_open": st.cfg.max_sse_streams - st.sse_slots.available_permits(),
        "sse_refused": g(&s.sse_refused),
        "sse_lagged": g(&s.sse_lagged),
        "sse_records": g(&s.sse_records),
        "rate_meter_runs": st.rates.len(),
        "rate_meter_evicted": g(&s.rate_meter_evicted),
        "evaluations_submitted": g(&s.evaluations_submitted),
        "video": crate::video::stats_json(&st),
    }))
}
